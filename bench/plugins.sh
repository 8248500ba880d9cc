#!/usr/bin/env bash
# The plugin chain's cost: a static 1 KiB file served by Gatehouse with no plugins, with 3 no-op
# plugins, and with a realistic chain (router + a header-setting filter + a per-client rate limit on
# the host's counters), side by side in one run; then the cost of one plugin call (criterion).
#
#   bench/plugins.sh [DURATION] [ROUNDS]     defaults: 10s, 3 rounds, interleaved; medians reported
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
echo
echo "one plugin call (criterion, in-process):"
NOOP_WASM=$FIX/noop.wasm cargo bench --locked -p gatehouse --bench plugin_call -- --noplot 2>/dev/null \
  | grep -E '^[a-z0-9].*on-request|time:' | paste - - | awk '{$1=$1; print}'
