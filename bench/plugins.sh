#!/usr/bin/env bash
# The plugin chain's cost: a static 1 KiB file served by Gatehouse with no plugins, with 3 no-op
# plugins, and with a realistic chain (router + a header-setting filter + a per-client rate limit on
# the host's counters), side by side in one run; then the cost of one plugin call (criterion).
#
#   bench/plugins.sh [DURATION] [ROUNDS]     defaults: 10s, 3 rounds, interleaved; medians reported,
#                                            ratios round by round with their range
#
# wrk shares the machine's cores with Gatehouse. At normal priority it preempts the server each time
# a response wakes it, and on a small VM a context switch costs ~15 us of kernel time on both sides:
# with no plugins ~0.5 switches per request, with the realistic chain ~0.8, because a server that
# spends more CPU per request is preempted more often. That charges a chain about twice the CPU it
# uses. The first table therefore runs wrk under SCHED_BATCH (`chrt -b 0`), which does not preempt
# on wakeup (as a load generator on another machine would not), and also gives the server's own CPU
# per request (all threads, user + system, from /proc); the second repeats the throughput with wrk
# at normal priority, as earlier versions of this script measured.
#
# A third table runs each chain (and each plugin of the realistic one alone) on one event-loop
# thread with wrk on the other core, so 1/throughput is the per-request cost and the difference to
# "no plugins" is what the plugins add per request inside the real server (caches cold between
# calls), next to criterion's in-process, hot-cache cost per call.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
(cd plugins && cargo build --release --locked --target wasm32-wasip2 -p noop >&2)
FIX=$PWD/plugins/target/wasm32-wasip2/release

with_workdir

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
printf '%s%s\n' "$head_conf" "$(realistic_chain "$FIX")" > "$work/real.toml"

declare -A addr
declare -A pid
for c in none noop3 real; do
  "$GATEHOUSE" -c "$work/$c.toml" --ready-file "$work/$c.ready" >"$work/$c.log" 2>&1 &
  pids+=($!)
  pid[$c]=$!
done
for c in none noop3 real; do
  for _ in $(seq 200); do [ -s "$work/$c.ready" ] && break; sleep 0.05; done
  [ -s "$work/$c.ready" ] || { echo "gatehouse ($c) did not start:" >&2; cat "$work/$c.log" >&2; exit 1; }
  addr[$c]=$(head -1 "$work/$c.ready")
done

# CPU clock ticks used so far by all threads of process $1.
ticks() { cat /proc/"$1"/task/*/stat | awk '{sub(/.*\) /, ""); t += $12 + $13} END {print t}'; }

# One wrk run against $1 (server process $2), prefixed by $3 (e.g. `chrt -b 0`): prints requests/s
# and the server's CPU microseconds per request.
measure() {
  local t0 t1 out
  t0=$(ticks "$2")
  out=$($3 wrk -t2 -c"$CONNS" -d"$DURATION" "$1")
  t1=$(ticks "$2")
  if grep -q 'Non-2xx' <<<"$out"; then echo "error responses from $1:" >&2; echo "$out" >&2; exit 1; fi
  awk -v t="$((t1 - t0))" -v hz="$(getconf CLK_TCK)" '
    /requests in/ {n = $1} /Requests\/sec/ {r = $2} END {printf "%s %.3f\n", r, t * 1e6 / hz / n}' <<<"$out"
}

for c in none noop3 real; do
  : > "$work/$c.batch"; : > "$work/$c.normal"
  wrk -t2 -c"$CONNS" -d1s "http://${addr[$c]}/1k.bin" >/dev/null
done
for _ in $(seq "$ROUNDS"); do
  for c in none noop3 real; do
    measure "http://${addr[$c]}/1k.bin" "${pid[$c]}" "chrt -b 0" >> "$work/$c.batch"
    measure "http://${addr[$c]}/1k.bin" "${pid[$c]}" "" >> "$work/$c.normal"
  done
done
col() { awk -v c="$1" '{print $c}' "$2" | median; }
# The ratio of column $1 of $3 to that of $2, round by round (the three servers of a round run within
# seconds of each other, so the VM's slower and faster minutes cancel): "median (min-max)".
paired() {
  local r
  r=$(paste -d' ' "$2" "$3" | awk -v c="$1" '{print $(c + NF / 2) / $c}' | sort -n)
  printf '%.2fx (%.2f-%.2f)' "$(median <<<"$r")" "$(head -1 <<<"$r")" "$(tail -1 <<<"$r")"
}
label() { case $1 in none) echo "no plugins";; noop3) echo "3 no-op plugins";; *) echo "router + headers + ratelimit";; esac; }
echo "static 1 KiB, wrk -t2 -c$CONNS -d$DURATION, $ROUNDS interleaved rounds: medians; ratios to no plugins"
echo "round by round, median (min-max); CPU ratio = no plugins' CPU per request / this chain's"
echo "wrk under SCHED_BATCH:           req/s   ratio                server CPU us/req   ratio"
for c in none noop3 real; do
  printf '%-28s %10.0f   %-20s %10.2f   %s\n' "$(label $c)" "$(col 1 "$work/$c.batch")" \
    "$(paired 1 "$work/none.batch" "$work/$c.batch")" "$(col 2 "$work/$c.batch")" \
    "$(paired 2 "$work/$c.batch" "$work/none.batch")"
done
echo "wrk at normal priority:          req/s   ratio"
for c in none noop3 real; do
  printf '%-28s %10.0f   %s\n' "$(label $c)" "$(col 1 "$work/$c.normal")" \
    "$(paired 1 "$work/none.normal" "$work/$c.normal")"
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
sed -n '/use = "headers"/,/^config/p' "$work/real.toml" | sed '1s/^/[[plugins]]\n/' > "$work/h.part"
printf '%s' "$head_conf" > "$work/headers.toml"; cat "$work/h.part" >> "$work/headers.toml"
sed -n '/use = "rate-limit"/,/^config/p' "$work/real.toml" | sed '1s/^/[[plugins]]\n/' > "$work/r.part"
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
    chrt -b 0 wrk -t1 -c32 -d"$DURATION" "http://${addr[$c]}/1k.bin" | awk '/Requests\/sec/ {print $2}' >> "$work/$c-1.rps"
  done
done
echo
echo "one event-loop thread (wrk -t1 -c32, SCHED_BATCH): microseconds per request, and added by the plugins"
base=$(median < "$work/none-1.rps")
for c in $singles; do
  v=$(median < "$work/$c-1.rps")
  python3 -c "print(f'{\"$c\":<12} {1e6/$v:8.2f} us  +{1e6/$v - 1e6/$base:6.2f} us')"
done
for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
pids=()

echo
echo "one plugin call (criterion, in-process):"
FIXTURES=$FIX cargo bench --locked -p gatehouse --features bench --bench plugin_call -- --noplot 2>/dev/null \
  | awk '/^[a-z0-9]/ && !/time:/ {name = $0} /time:/ {if ($0 ~ /^[a-z0-9]/) name = ""; $1 = $1; print name ? name " " $0 : $0}'
