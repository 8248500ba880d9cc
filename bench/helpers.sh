# Shared by the benchmark scripts (sourced, not run), with no side effects: medians, ratios, a
# temporary directory cleaned up at exit, and the realistic plugin chain they measure.

# The median of the numbers on standard input.
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

# $1 / $2, for ratios.
ratio() { python3 -c "print($1 / $2)"; }

# The `[[plugins]]` entries of the realistic chain (router + headers + a per-client rate limit on the
# host's store, all built in) for a static target `site`. ($1, a fixtures directory, is unused.)
realistic_chain() {
  cat <<CONF
[[plugins]]
use = "router"
[[plugins.config.routes]]
path = "/admin/"
redirect = "/"
[[plugins.config.routes]]
path = "/"
target = "site"

[[plugins]]
use = "headers"
config = { response = { set = { "x-frame-options" = "DENY", "x-content-type-options" = "nosniff" } } }

[[plugins]]
use = "rate-limit"
config = { rate = 1000000000, per = "1s", headers = false }
CONF
}

# Sets up $work (a temporary directory) and $pids (the processes the script starts; add each one):
# at exit the processes are killed and the directory removed.
with_workdir() {
  work=$(mktemp -d)
  pids=()
  trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.5; rm -rf "$work"' EXIT
}
