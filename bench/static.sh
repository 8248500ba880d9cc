#!/usr/bin/env bash
# Static files: Gatehouse vs nginx (2 worker processes), same files, same machine, one run.
#
#   bench/static.sh [DURATION] [ROUNDS]     defaults: 10s, 3 rounds, interleaved; medians reported
#
# Installs nginx and wrk with apt-get when missing, builds gatehouse in release mode, serves a 1 KiB and
# a 1 MiB file from both servers with access logs off, and prints requests/s and the ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10s}
ROUNDS=${2:-3}
CONNS=${CONNS:-64}

missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

cargo build --release --locked -p gatehouse >&2
GATEHOUSE=$PWD/target/release/gatehouse

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

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
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

rps() {
  local out
  out=$(wrk -t2 -c"$CONNS" -d"$DURATION" "$1")
  if grep -q 'Non-2xx' <<<"$out"; then echo "error responses from $1:" >&2; echo "$out" >&2; exit 1; fi
  awk '/Requests\/sec/ {print $2}' <<<"$out"
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

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
  printf '%-8s %12.0f %12.0f %7.2fx\n' "$file" "$n" "$g" "$(python3 -c "print($g / $n)")"
done
