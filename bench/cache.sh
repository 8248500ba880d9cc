#!/usr/bin/env bash
# The cache and the filters (issue 17's figures), one run, rounds interleaved, ratios round by round:
#   - a cache hit vs the same 1 KiB from the static target, and vs a miss through a WSGI app;
#   - the example chain (ip-filter, rate-limit, auth on /admin, cache, router, headers) vs no
#     plugins, on a static 1 KiB file;
#   - rate-limit and cache hits with the store in Redis vs in memory.
#
#   bench/cache.sh [DURATION] [ROUNDS]     defaults: 10s, 3 rounds
#
# Every server: 2 event loops, access log off; the WSGI app 1 worker x 4 threads. wrk, the servers
# and redis-server share the machine's 2 cores, so absolute numbers are low; the ratios are the
# figures.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
command -v redis-server >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }
python3 -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt

with_workdir
mkdir -p "$work/site"
head -c 1024 /dev/urandom > "$work/site/1k.bin"
# Dated a day back, as deployed files are: a file written a second ago is fresh for a tenth of a
# second by heuristic (10% of its age) and the chain's cache would measure revalidations.
touch -d "1 day ago" "$work/site/1k.bin"
cp bench/apps/cached.py "$work/"

REDIS_PORT=$(port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 &
pids+=($!)

base() {
  cat <<CONF
[server]
listen = ["127.0.0.1:0"]
threads = 2
default_target = "site"
[log]
access_log = "off"
level = "warn"
[targets.site]
static = "$work/site"
[targets.app]
wsgi = "cached:app"
chdir = "$work"
workers = 1
threads = 4
CONF
  [ "${1:-}" = redis ] && printf '[store]\nbackend = "redis://127.0.0.1:%s/0"\n' "$REDIS_PORT"
  return 0
}
cache_app() {
  cat <<CONF
[[plugins]]
use = "cache"
[[plugins]]
use = "router"
[[plugins.config.routes]]
path = "/cached"
target = "app"
[[plugins.config.routes]]
path = "/fresh"
target = "app"
CONF
}
echo 'changeme:$2b$10$tlCR9fVj7cKQwkZPQZVP/eUPastfi1CWlIEd2bcNwJjJtjDIanrUK' > "$work/admin.htpasswd"
chain() {
  cat <<CONF
[[plugins]]
use = "ip-filter"
[plugins.config]
deny = ["192.0.2.0/24"]
[[plugins]]
use = "rate-limit"
[plugins.config]
rate = 1000000000
per = "1s"
[[plugins]]
use = "auth"
paths = ["/admin"]
files = { htpasswd = "$work/admin.htpasswd" }
[[plugins]]
use = "cache"
[[plugins]]
use = "router"
[[plugins.config.routes]]
path = "/"
target = "site"
[[plugins]]
use = "headers"
[plugins.config]
security = true
CONF
}
rate() { printf '[[plugins]]\nuse = "rate-limit"\n[plugins.config]\nrate = 1000000000\nper = "1s"\nheaders = false\n'; }

base > "$work/none.toml"
{ base; cache_app; } > "$work/cache.toml"
{ base; chain; } > "$work/chain.toml"
{ base; rate; } > "$work/rate-memory.toml"
{ base redis; rate; } > "$work/rate-redis.toml"
{ base redis; cache_app; } > "$work/cache-redis.toml"
declare -A addr
for c in none cache chain rate-memory rate-redis cache-redis; do
  "$GATEHOUSE" -c "$work/$c.toml" --ready-file "$work/$c.ready" > "$work/$c.log" 2>&1 &
  pids+=($!)
done
for c in none cache chain rate-memory rate-redis cache-redis; do
  for _ in $(seq 200); do [ -s "$work/$c.ready" ] && break; sleep 0.05; done
  addr[$c]=$(sed -n 1p "$work/$c.ready")
done

# name|url
runs=(
  "static 1 KiB|http://${addr[none]}/1k.bin"
  "cache hit|http://${addr[cache]}/cached"
  "miss through WSGI|http://${addr[cache]}/fresh"
  "example chain, static|http://${addr[chain]}/1k.bin"
  "rate-limit, memory|http://${addr[rate-memory]}/1k.bin"
  "rate-limit, redis|http://${addr[rate-redis]}/1k.bin"
  "cache hit, redis|http://${addr[cache-redis]}/cached"
)
for r in "${runs[@]}"; do
  status=$(curl -s -o "$work/probe" -w '%{http_code}' "${r#*|}")
  [ "$status" = 200 ] || { echo "${r%%|*}: ${r#*|} answered $status: $(head -c 300 "$work/probe")" >&2; exit 1; }
  wrk -t2 -c"$CONNS" -d1s "${r#*|}" >/dev/null
done
for i in "${!runs[@]}"; do : > "$work/r$i"; done
for _ in $(seq "$ROUNDS"); do
  for i in "${!runs[@]}"; do rps "${runs[$i]#*|}" >> "$work/r$i"; done
done

echo "wrk -t2 -c$CONNS, $ROUNDS interleaved rounds of $DURATION, medians (req/s); 2 cores shared by wrk, the servers and redis-server; $(date -u +%F)"
printf '%-26s %10s\n' workload req/s
for i in "${!runs[@]}"; do
  printf '%-26s %10.0f\n' "${runs[$i]%%|*}" "$(median < "$work/r$i")"
done
# Ratios round by round, then their median and range.
ratio_of() {
  paste "$work/r$1" "$work/r$2" | awk '{print $1 / $2}' | sort -n | awk '{a[NR]=$1} END {printf "%.2fx (%.2f-%.2f)", (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2, a[1], a[NR]}'
}
echo
echo "cache hit / static 1 KiB (goal >= 0.9x):         $(ratio_of 1 0)"
echo "cache hit / miss through WSGI:                   $(ratio_of 1 2)"
echo "example chain / no plugins, static (goal >= 0.85x): $(ratio_of 3 0)"
echo "rate-limit: redis / memory:                      $(ratio_of 5 4)"
echo "cache hit: redis / memory:                       $(ratio_of 6 1)"
