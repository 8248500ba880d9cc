#!/usr/bin/env bash
# WSGI: Gatehouse vs Gunicorn (gthread, direct and behind nginx) vs Granian, same apps, one run.
#
#   bench/wsgi.sh [DURATION] [ROUNDS]       defaults: 10s, 3 rounds, interleaved; medians reported
#
# Installs nginx and wrk with apt-get and gunicorn, granian and flask with pip when missing; builds
# gatehouse in release mode. Every server gets 2 worker processes; Gunicorn 4 threads each.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
python3 -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt
APPS=$PWD/bench/apps

work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  sleep 0.5
  rm -rf "$work"
}
trap cleanup EXIT

wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done; echo "nothing on port $1" >&2; exit 1; }


start_servers() {  # $1 = module:callable
  local app=$1
  GH=$(port); GU=$(port); GR=$(port); NG=$(port)
  cat > "$work/gatehouse.toml" <<CONF
[server]
listen = ["127.0.0.1:$GH"]
[log]
access_log = "off"
level = "warn"
[targets.app]
wsgi = "$app"
chdir = "$APPS"
workers = 2
CONF
  "$GATEHOUSE" -c "$work/gatehouse.toml" & pids+=($!)
  (cd "$APPS" && exec python3 -m gunicorn -k gthread -w 2 --threads 4 -b "127.0.0.1:$GU" --log-level warning "$app") & pids+=($!)
  (cd "$APPS" && exec python3 -m granian --interface wsgi --workers 2 --host 127.0.0.1 --port "$GR" --log-level warning "$app") & pids+=($!)
  cat > "$work/nginx.conf" <<CONF
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream gunicorn { server 127.0.0.1:$GU; keepalive 64; }
  server {
    listen 127.0.0.1:$NG;
    location / { proxy_pass http://gunicorn; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
  "$NGINX" -c "$work/nginx.conf" -p "$work" -g 'daemon on;'
  for p in $GH $GU $GR $NG; do wait_port "$p"; done
}

stop_servers() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  pids=()
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  rm -f "$work/nginx.pid"
  sleep 1
}

echo "wrk -t2 -c$CONNS -d$DURATION, $ROUNDS interleaved rounds, medians (req/s); 2 workers each"
printf '%-12s %10s %10s %14s %10s %10s %10s\n' app gatehouse granian nginx+gunicorn gunicorn vs-granian vs-nginx+g
for case in "hello:app /" "flaskjson:app /json"; do
  set -- $case
  start_servers "$1"
  for name in gh gr ng gu; do : > "$work/$name"; done
  # Warm-up: Granian in particular gets faster over its first seconds (its thread pool grows).
  for name in gh gr ng gu; do
    eval "p=\$$(tr a-z A-Z <<<"$name")"
    wrk -t2 -c"$CONNS" -d3s "http://127.0.0.1:$p$2" >/dev/null
  done
  for _ in $(seq "$ROUNDS"); do
    rps "http://127.0.0.1:$GH$2" >> "$work/gh"
    rps "http://127.0.0.1:$GR$2" >> "$work/gr"
    rps "http://127.0.0.1:$NG$2" >> "$work/ng"
    rps "http://127.0.0.1:$GU$2" >> "$work/gu"
  done
  gh=$(median < "$work/gh"); gr=$(median < "$work/gr"); ng=$(median < "$work/ng"); gu=$(median < "$work/gu")
  printf '%-12s %10.0f %10.0f %14.0f %10.0f %9.2fx %9.2fx\n' "$1" "$gh" "$gr" "$ng" "$gu" \
    "$(ratio "$gh" "$gr")" "$(ratio "$gh" "$ng")"
  stop_servers
done
