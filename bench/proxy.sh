#!/usr/bin/env bash
# Proxying: a Gatehouse upstream target vs nginx proxy_pass, both in front of the same origin
# (an nginx instance serving a 1 KiB file from 1 worker), one run.
#
#   bench/proxy.sh [DURATION] [ROUNDS]     defaults: 10s, 3 rounds, interleaved; medians reported
#
# Both proxies: 2 workers (event loops), keep-alive connections to the origin (nginx: upstream
# keepalive 64 with proxy_http_version 1.1), access logs off. The origin and wrk share the same 2
# cores, so the absolute numbers are low; the ratio is the figure.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

work=$(mktemp -d)
cleanup() {
  [ -n "${gh_pid:-}" ] && kill "$gh_pid" 2>/dev/null || true
  for pid in "$work"/*.pid; do [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true; done
  sleep 0.3
  rm -rf "$work"
}
trap cleanup EXIT
chmod 755 "$work"
mkdir -p "$work/site"
head -c 1024 /dev/urandom > "$work/site/1k.bin"
chmod 644 "$work/site/"*

ORIGIN_PORT=$(port)
cat > "$work/origin.conf" <<CONF
worker_processes 1;
pid $work/origin.pid;
error_log $work/origin-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  open_file_cache max=1000;
  keepalive_requests 1000000;
  default_type application/octet-stream;
  server { listen 127.0.0.1:$ORIGIN_PORT; root $work/site; }
}
CONF
"$NGINX" -c "$work/origin.conf" -p "$work" -g 'daemon on;'

PROXY_PORT=$(port)
cat > "$work/proxy.conf" <<CONF
worker_processes 2;
pid $work/proxy.pid;
error_log $work/proxy-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream origin { server 127.0.0.1:$ORIGIN_PORT; keepalive 64; }
  server {
    listen 127.0.0.1:$PROXY_PORT;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
CONF
"$NGINX" -c "$work/proxy.conf" -p "$work" -g 'daemon on;'

cat > "$work/gatehouse.toml" <<CONF
[server]
listen = ["127.0.0.1:0"]
threads = 2
[log]
access_log = "off"
level = "warn"
[targets.origin]
upstream = ["http://127.0.0.1:$ORIGIN_PORT"]
keepalive = 64
CONF
"$GATEHOUSE" -c "$work/gatehouse.toml" --ready-file "$work/ready" &
gh_pid=$!
for _ in $(seq 100); do [ -s "$work/ready" ] && break; sleep 0.05; done
GH_ADDR=$(head -1 "$work/ready")

echo "proxying a 1 KiB file, wrk -t2 -c$CONNS, $ROUNDS interleaved rounds of $DURATION, medians (req/s); 2 cores shared by wrk, proxy and origin"
printf '%-24s %12s %12s %8s\n' workload nginx gatehouse ratio
: > "$work/n"; : > "$work/g"
wrk -t2 -c"$CONNS" -d1s "http://127.0.0.1:$PROXY_PORT/1k.bin" >/dev/null
wrk -t2 -c"$CONNS" -d1s "http://$GH_ADDR/1k.bin" >/dev/null
for _ in $(seq "$ROUNDS"); do
  rps "http://127.0.0.1:$PROXY_PORT/1k.bin" >> "$work/n"
  rps "http://$GH_ADDR/1k.bin" >> "$work/g"
done
n=$(median < "$work/n"); g=$(median < "$work/g")
printf '%-24s %12.0f %12.0f %7.2fx\n' "1 KiB via proxy" "$n" "$g" "$(ratio "$g" "$n")"
