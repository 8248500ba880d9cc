# Shared by the benchmark scripts (sourced, not run), with no side effects: medians, ratios, and the
# realistic plugin chain they measure.

# The median of the numbers on standard input.
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

# $1 / $2, for ratios.
ratio() { python3 -c "print($1 / $2)"; }

# The `[[plugins]]` entries of the realistic chain (router + headers + a per-client rate limit on the
# host's counters) for a static target `site`, with the fixtures built in directory $1.
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
use = "$1/headers.wasm"
config = { "x-frame-options" = "DENY", "x-content-type-options" = "nosniff" }

[[plugins]]
use = "$1/ratelimit.wasm"
config = { limit = 1000000000, window_ms = 1000 }
CONF
}
