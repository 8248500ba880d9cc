#!/usr/bin/env bash
# Two Gatehouse binaries side by side: the same workloads against each, interleaved round by round,
# for changes that must not cost throughput (an architecture change, a dependency bump).
#
#   bench/compare.sh OLD_BIN NEW_BIN [DURATION] [ROUNDS]     defaults: 10s, 5 rounds
#
# The plugins are built from this checkout; when the plugin contract changed between the two, set
# OLD_FIXTURES to the wasm32-wasip2 release directory of the old checkout's `plugins/` build.
#
# Workloads: a static 1 KiB file with no plugins; the same with the realistic chain of
# bench/helpers.sh (router + headers + rate limit); WSGI hello world (2 workers); a 1 KiB POST to
# it (the request body path). Both binaries serve at the same time; within a round each workload
# runs against the old binary, then the new one (the order alternates between rounds), and the
# ratio new/old is taken round by round. wrk runs under SCHED_BATCH (see bench/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=$(realpath "$1"); NEW=$(realpath "$2"); shift 2
DURATION=${1:-10s}
ROUNDS=${2:-5}
CONNS=${CONNS:-64}
command -v wrk >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
source bench/helpers.sh

rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
FIX=$PWD/plugins/target/wasm32-wasip2/release
OLD_FIX=${OLD_FIXTURES:-$FIX}
APPS=$PWD/bench/apps

with_workdir
mkdir -p "$work/site"
head -c 1024 /dev/urandom > "$work/site/1k.bin"
cat > "$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = string.rep("x", 1024)
wrk.headers["Content-Type"] = "application/octet-stream"
LUA

base='[server]
listen = ["127.0.0.1:0"]
[log]
access_log = "off"
level = "warn"
'
printf '%s[targets.site]\nstatic = "site"\n' "$base" > "$work/static.toml"
for v in old new; do
  fix=$FIX; [ "$v" = old ] && fix=$OLD_FIX
  printf '%s[targets.site]\nstatic = "site"\n%s\n' "$base" "$(realistic_chain "$fix")" > "$work/chain-$v.toml"
done
printf '%s[targets.app]\nwsgi = "hello:app"\nchdir = "%s"\nworkers = 2\n' "$base" "$APPS" > "$work/wsgi.toml"

declare -A addr
start() { # name binary config
  "$2" -c "$work/$3.toml" --ready-file "$work/$1.ready" >"$work/$1.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 300); do [ -s "$work/$1.ready" ] && break; sleep 0.05; done
  [ -s "$work/$1.ready" ] || { echo "$1 did not start:" >&2; cat "$work/$1.log" >&2; exit 1; }
  addr[$1]=$(head -1 "$work/$1.ready")
}
# Two WSGI pools and four static servers on 2 cores: each pair runs alone, the others idle.
rps() { # url [wrk args...]
  local url=$1 out; shift
  out=$(chrt -b 0 wrk -t2 -c"$CONNS" -d"$DURATION" "$@" "$url")
  if grep -q 'Non-2xx' <<<"$out"; then echo "error responses from $url:" >&2; echo "$out" >&2; exit 1; fi
  awk '/Requests\/sec/ {print $2}' <<<"$out"
}

workloads=(static chain hello post)
for v in old new; do
  bin=$OLD; [ "$v" = new ] && bin=$NEW
  start "static-$v" "$bin" static
  start "chain-$v" "$bin" "chain-$v"
  start "wsgi-$v" "$bin" wsgi
done
url() { # workload version
  case $1 in
    static) echo "http://${addr[static-$2]}/1k.bin" ;;
    chain) echo "http://${addr[chain-$2]}/1k.bin" ;;
    hello|post) echo "http://${addr[wsgi-$2]}/" ;;
  esac
}
args() { [ "$1" = post ] && echo "-s $work/post.lua" || true; }
for w in "${workloads[@]}"; do
  for v in old new; do
    # shellcheck disable=SC2046
    wrk -t2 -c"$CONNS" -d2s $(args "$w") "$(url "$w" "$v")" >/dev/null
  done
  : > "$work/$w.old"; : > "$work/$w.new"; : > "$work/$w.ratio"
done
for round in $(seq "$ROUNDS"); do
  order=(old new); [ $((round % 2)) -eq 0 ] && order=(new old)
  for w in "${workloads[@]}"; do
    for v in "${order[@]}"; do
      # shellcheck disable=SC2046
      rps "$(url "$w" "$v")" $(args "$w") >> "$work/$w.$v"
    done
    paste -d' ' <(tail -1 "$work/$w.old") <(tail -1 "$work/$w.new") | awk '{print $2 / $1}' >> "$work/$w.ratio"
  done
done

echo "wrk -t2 -c$CONNS -d$DURATION under SCHED_BATCH, $ROUNDS rounds; 2 cores shared by wrk and both servers"
printf '%-8s %10s %10s %18s\n' workload old new 'new/old (range)'
for w in "${workloads[@]}"; do
  r=$(sort -n "$work/$w.ratio")
  printf '%-8s %10.0f %10.0f %8.2fx (%.2f-%.2f)\n' "$w" "$(median < "$work/$w.old")" "$(median < "$work/$w.new")" \
    "$(median <<<"$r")" "$(head -1 <<<"$r")" "$(tail -1 <<<"$r")"
done
