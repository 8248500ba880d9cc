#!/usr/bin/env bash
# Static files: Gatehouse vs nginx (2 worker processes), same files, same machine, one run.
#
#   bench/static.sh [DURATION] [ROUNDS]     defaults: 10s, 3 rounds, interleaved; medians reported
#
# Installs nginx and wrk with apt-get when missing, builds gatehouse in release mode, serves a 1 KiB and
# a 1 MiB file from both servers with access logs off, and prints requests/s and the ratio.
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

# nginx workers run as an unprivileged user: let them read the files.
chmod 755 "$work"
mkdir -p "$work/site"
head -c 1024 /dev/urandom > "$work/site/1k.bin"
head -c $((1024 * 1024)) /dev/urandom > "$work/site/1m.bin"
chmod 644 "$work/site/"*

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
  keepalive_requests 1000000;
  default_type application/octet-stream;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    root $work/site;
  }
}
CONF
"$NGINX" -c "$work/nginx.conf" -p "$work" -g 'daemon on;'

cat > "$work/gatehouse.toml" <<CONF
[server]
listen = ["127.0.0.1:0"]
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


echo "wrk -t2 -c$CONNS -d$DURATION, $ROUNDS interleaved rounds, medians (req/s)"
printf '%-8s %12s %12s %8s\n' file nginx gatehouse ratio
for file in 1k.bin 1m.bin; do
  : > "$work/n"; : > "$work/g"
  # Warm both (page cache, connection pools).
  wrk -t2 -c"$CONNS" -d1s "http://127.0.0.1:$NGINX_PORT/$file" >/dev/null
  wrk -t2 -c"$CONNS" -d1s "http://$GH_ADDR/$file" >/dev/null
  for _ in $(seq "$ROUNDS"); do
    rps "http://127.0.0.1:$NGINX_PORT/$file" >> "$work/n"
    rps "http://$GH_ADDR/$file" >> "$work/g"
  done
  n=$(median < "$work/n"); g=$(median < "$work/g")
  printf '%-8s %12.0f %12.0f %7.2fx\n' "$file" "$n" "$g" "$(ratio "$g" "$n")"
done
