#!/usr/bin/env bash
# Normal traffic beside hostile clients (issue 15's torture figures): wrk measures a static 1 KiB
# file and a WSGI hello world on one Gatehouse, alone and then beside 500 slow-header clients and
# 500 slow-reading clients (bench/apps/slow_clients.py: a head one line a second, a 4 MiB response
# read 1 KiB a second; each reconnects when cut). Rounds alternate quiet / hostile; the ratio
# hostile / quiet is given round by round.
#
#   bench/torture.sh [DURATION] [ROUNDS]     defaults: 10s, 3 rounds
#
# Gatehouse runs with its defaults (header_read_timeout 10 s, send_timeout 60 s), 2 event loops,
# access log off; the app 2 workers x 4 threads. wrk, the server and the slow clients share the
# machine's 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
python3 -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt

with_workdir
mkdir -p "$work/site"
head -c 1024 /dev/urandom > "$work/site/1k.bin"
head -c $((4 << 20)) /dev/urandom > "$work/site/4m.bin"
cat > "$work/gatehouse.toml" <<CONF
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
wsgi = "hello:app"
chdir = "$PWD/bench/apps"
workers = 2
threads = 4
[[plugins]]
use = "router"
[[plugins.config.routes]]
path = "/hello"
target = "app"
[[plugins.config.routes]]
path = "/"
target = "site"
CONF
ulimit -n 65536 2>/dev/null || true
"$GATEHOUSE" -c "$work/gatehouse.toml" --ready-file "$work/ready" > "$work/log" 2>&1 &
pids+=($!)
for _ in $(seq 200); do [ -s "$work/ready" ] && break; sleep 0.05; done
addr=$(sed -n 1p "$work/ready")
host=${addr%:*}
portno=${addr##*:}

hostile() {
  python3 bench/apps/slow_clients.py "$host" "$portno" 500 500 /4m.bin &
  slow=$!
  pids+=("$slow")
  sleep 3 # every slow connection open
}
calm() { kill "$slow" 2>/dev/null || true; wait "$slow" 2>/dev/null || true; sleep 1; }

runs=("static 1 KiB|http://$addr/1k.bin" "WSGI hello|http://$addr/hello")
for r in "${runs[@]}"; do wrk -t2 -c"$CONNS" -d1s "${r#*|}" >/dev/null; done
for i in "${!runs[@]}"; do : > "$work/quiet$i"; : > "$work/hostile$i"; done
for _ in $(seq "$ROUNDS"); do
  for i in "${!runs[@]}"; do rps "${runs[$i]#*|}" >> "$work/quiet$i"; done
  hostile
  for i in "${!runs[@]}"; do rps "${runs[$i]#*|}" >> "$work/hostile$i"; done
  open=$(ss -Htn state established "( sport = :$portno )" | wc -l)
  echo "connections open to the server during the hostile round: $open" >&2
  calm
done

echo "wrk -t2 -c$CONNS, $ROUNDS rounds of $DURATION (quiet, then beside 500 slow-header + 500 slow-reading clients), medians (req/s); 2 cores shared by wrk, the server and the slow clients; $(date -u +%F)"
printf '%-16s %10s %10s %s\n' workload quiet hostile "hostile/quiet by round (goal >= 0.9x)"
for i in "${!runs[@]}"; do
  by_round=$(paste "$work/hostile$i" "$work/quiet$i" | awk '{printf "%.2f ", $1 / $2}')
  printf '%-16s %10.0f %10.0f %s\n' "${runs[$i]%%|*}" "$(median < "$work/quiet$i")" "$(median < "$work/hostile$i")" "$by_round"
done
