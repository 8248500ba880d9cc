# Shared by the benchmark scripts (sourced, not run): tools, the release build, wrk and medians.

source "$(dirname "${BASH_SOURCE[0]}")/helpers.sh"

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

# A free TCP port on loopback.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Requests/s of one wrk run. Error responses fail the script (a fast error is no result); socket
# errors (timeouts under load) are reported.
rps() { rps_args "$1" -c"$CONNS"; }


# Requests/s of one wrk run against $1 with the wrk options after it (connections, headers).
rps_args() {
  local url=$1 out
  shift
  out=$(wrk -t2 "$@" -d"$DURATION" "$url")
  if grep -q 'Non-2xx' <<<"$out"; then echo "error responses from $url:" >&2; echo "$out" >&2; exit 1; fi
  if grep -q 'Socket errors' <<<"$out"; then echo "socket errors from $url:" >&2; grep 'Socket errors' <<<"$out" >&2; fi
  awk '/Requests\/sec/ {print $2}' <<<"$out"
}
