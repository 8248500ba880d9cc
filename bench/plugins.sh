#!/usr/bin/env bash
# The plugin chain's cost: a static 1 KiB file served by Gatehouse with no plugins, with 3 no-op
# plugins, and with a realistic chain (router + a header-setting filter + a per-client rate limit on
# the host's counters), side by side in one run; then the cost of one plugin call (criterion).
#
#   bench/plugins.sh [DURATION] [ROUNDS]     defaults: 10s, 3 rounds, interleaved; medians reported
#
# A second table runs each chain (and each plugin of the realistic one alone) on one event-loop
# thread with wrk on the other core, so 1/throughput is the per-request cost and the difference to
# "no plugins" is what the plugins add per request inside the real server (caches cold between
# calls), next to criterion's in-process, hot-cache cost per call.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
(cd plugins && cargo build --release --locked --target wasm32-wasip2 -p noop -p headers -p ratelimit >&2)
FIX=$PWD/plugins/target/wasm32-wasip2/release

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.3
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/site"
head -c 1024 /dev/urandom > "$work/site/1k.bin"

head_conf='[server]
listen = ["127.0.0.1:0"]
plugin_cache_dir = "cache"
[log]
access_log = "off"
level = "warn"
[targets.site]
static = "site"
'
noop="[[plugins]]
use = \"$FIX/noop.wasm\"
"
printf '%s' "$head_conf" > "$work/none.toml"
printf '%s%s%s%s' "$head_conf" "$noop" "$noop" "$noop" > "$work/noop3.toml"
cat > "$work/real.toml" <<CONF
$head_conf
[[plugins]]
use = "router"
[[plugins.config.routes]]
path = "/admin/"
redirect = "/"
[[plugins.config.routes]]
path = "/"
target = "site"

[[plugins]]
use = "$FIX/headers.wasm"
config = { "x-frame-options" = "DENY", "x-content-type-options" = "nosniff" }

[[plugins]]
use = "$FIX/ratelimit.wasm"
config = { limit = 1000000000, window_ms = 1000 }
CONF

declare -A addr
for c in none noop3 real; do
  "$GATEHOUSE" -c "$work/$c.toml" --ready-file "$work/$c.ready" >"$work/$c.log" 2>&1 &
  pids+=($!)
done
for c in none noop3 real; do
  for _ in $(seq 200); do [ -s "$work/$c.ready" ] && break; sleep 0.05; done
  [ -s "$work/$c.ready" ] || { echo "gatehouse ($c) did not start:" >&2; cat "$work/$c.log" >&2; exit 1; }
  addr[$c]=$(head -1 "$work/$c.ready")
done

echo "static 1 KiB, wrk -t2 -c$CONNS -d$DURATION, $ROUNDS interleaved rounds, medians (req/s)"
for c in none noop3 real; do
  : > "$work/$c.rps"
  wrk -t2 -c"$CONNS" -d1s "http://${addr[$c]}/1k.bin" >/dev/null
done
for _ in $(seq "$ROUNDS"); do
  for c in none noop3 real; do rps "http://${addr[$c]}/1k.bin" >> "$work/$c.rps"; done
done
none=$(median < "$work/none.rps")
printf '%-28s %10.0f\n' "no plugins" "$none"
for c in noop3 real; do
  v=$(median < "$work/$c.rps")
  label=$([ "$c" = noop3 ] && echo "3 no-op plugins" || echo "router + headers + ratelimit")
  printf '%-28s %10.0f %7.2fx\n' "$label" "$v" "$(ratio "$v" "$none")"
done

for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
pids=()

# One event loop: per-request cost in microseconds, and what each chain adds to it.
router_only="[[plugins]]
use = \"router\"
[[plugins.config.routes]]
path = \"/\"
target = \"site\"
"
printf '%s%s' "$head_conf" "$router_only" > "$work/router.toml"
sed -n '/headers.wasm/,/^config/p' "$work/real.toml" | sed '1s/^/[[plugins]]\n/' > "$work/h.part"
printf '%s' "$head_conf" > "$work/headers.toml"; cat "$work/h.part" >> "$work/headers.toml"
sed -n '/ratelimit.wasm/,/^config/p' "$work/real.toml" | sed '1s/^/[[plugins]]\n/' > "$work/r.part"
printf '%s' "$head_conf" > "$work/ratelimit.toml"; cat "$work/r.part" >> "$work/ratelimit.toml"
singles="none noop3 router headers ratelimit real"
for c in $singles; do
  sed 's/^\[server\]$/[server]\nthreads = 1/' "$work/$c.toml" > "$work/$c-1.toml"
  "$GATEHOUSE" -c "$work/$c-1.toml" --ready-file "$work/$c-1.ready" >"$work/$c-1.log" 2>&1 &
  pids+=($!)
done
for c in $singles; do
  for _ in $(seq 200); do [ -s "$work/$c-1.ready" ] && break; sleep 0.05; done
  addr[$c]=$(head -1 "$work/$c-1.ready")
  : > "$work/$c-1.rps"
done
for _ in $(seq "$ROUNDS"); do
  for c in $singles; do
    wrk -t1 -c32 -d"$DURATION" "http://${addr[$c]}/1k.bin" | awk '/Requests\/sec/ {print $2}' >> "$work/$c-1.rps"
  done
done
echo
echo "one event-loop thread (wrk -t1 -c32): microseconds per request, and added by the plugins"
base=$(median < "$work/none-1.rps")
for c in $singles; do
  v=$(median < "$work/$c-1.rps")
  python3 -c "print(f'{\"$c\":<12} {1e6/$v:8.2f} us  +{1e6/$v - 1e6/$base:6.2f} us')"
done
for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
pids=()

echo
echo "one plugin call (criterion, in-process):"
FIXTURES=$FIX cargo bench --locked -p gatehouse --bench plugin_call -- --noplot 2>/dev/null \
  | grep -E '^[a-z0-9].*(on-request|one request)|time:' | paste - - | awk '{$1=$1; print}'
