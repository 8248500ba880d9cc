#!/usr/bin/env bash
# HTTPS: Gatehouse vs nginx with the same certificate (ECDSA P-256), same 1 KiB file, one run.
#
#   bench/tls.sh [DURATION] [ROUNDS]     defaults: 10s, 3 rounds, interleaved; medians reported
#
# Two measures: small responses over kept-alive HTTPS connections (wrk -c64), and full handshakes
# per second (every request on a new connection: wrk with "Connection: close"; wrk keeps no TLS
# session between connections, so each is a full handshake). Both servers: 2 workers (event loops),
# TLS 1.3, session tickets on, access logs off.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh

work=$(mktemp -d)
cleanup() {
  [ -n "${gh_pid:-}" ] && kill "$gh_pid" 2>/dev/null || true
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  sleep 0.3
  rm -rf "$work"
}
trap cleanup EXIT
chmod 755 "$work"
mkdir -p "$work/site"
head -c 1024 /dev/urandom > "$work/site/1k.bin"
chmod 644 "$work/site/"*

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=bench.test -addext subjectAltName=DNS:bench.test,IP:127.0.0.1 \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
chmod 644 "$work/key.pem" "$work/cert.pem"

NGINX_PORT=$(port)
cat > "$work/nginx.conf" <<CONF
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  open_file_cache max=1000;
  keepalive_requests 1000000;
  default_type application/octet-stream;
  ssl_protocols TLSv1.2 TLSv1.3;
  ssl_session_cache shared:SSL:10m;
  ssl_session_tickets on;
  server {
    listen 127.0.0.1:$NGINX_PORT ssl;
    http2 on;
    ssl_certificate $work/cert.pem;
    ssl_certificate_key $work/key.pem;
    root $work/site;
  }
}
CONF
# nginx before 1.25 has no `http2 on;` directive: put it on the listen line instead.
if ! "$NGINX" -t -c "$work/nginx.conf" -p "$work" >/dev/null 2>&1; then
  sed -i 's/    http2 on;//; s/ssl;$/ssl http2;/' "$work/nginx.conf"
fi
"$NGINX" -c "$work/nginx.conf" -p "$work" -g 'daemon on;'

cat > "$work/gatehouse.toml" <<CONF
[server]
threads = 2
[[server.listeners]]
listen = ["127.0.0.1:0"]
tls = true
[[server.certificates]]
cert = "cert.pem"
key = "key.pem"
[log]
access_log = "off"
level = "warn"
[targets.site]
static = "site"
CONF
"$GATEHOUSE" -c "$work/gatehouse.toml" --ready-file "$work/ready" &
gh_pid=$!
for _ in $(seq 100); do [ -s "$work/ready" ] && break; sleep 0.05; done
GH_ADDR=$(head -1 "$work/ready")

echo "HTTPS, wrk -t2, $ROUNDS interleaved rounds of $DURATION, medians (req/s); 2 cores shared with wrk"
printf '%-34s %12s %12s %8s\n' workload nginx gatehouse ratio
run() {
  local label=$1; shift
  : > "$work/n"; : > "$work/g"
  wrk -t2 "$@" -d1s "https://127.0.0.1:$NGINX_PORT/1k.bin" >/dev/null
  wrk -t2 "$@" -d1s "https://$GH_ADDR/1k.bin" >/dev/null
  for _ in $(seq "$ROUNDS"); do
    rps_args "https://127.0.0.1:$NGINX_PORT/1k.bin" "$@" >> "$work/n"
    rps_args "https://$GH_ADDR/1k.bin" "$@" >> "$work/g"
  done
  local n g
  n=$(median < "$work/n"); g=$(median < "$work/g")
  printf '%-34s %12.0f %12.0f %7.2fx\n' "$label" "$n" "$g" "$(ratio "$g" "$n")"
}
run "1 KiB, keep-alive (c$CONNS)" -c"$CONNS"
run "full handshake per request (c32)" -c32 -H "Connection: close"
