#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for SECONDS each (default 30): the wire guard, the config loader,
# the worker frames, the WSGI environ and what plugins hand the host. Stable Rust: cargo-fuzz with
# RUSTC_BOOTSTRAP=1 and no sanitizer (`-s none`; coverage guidance still works). A crash stops the
# run with the input saved in fuzz/artifacts/TARGET/; each one found so far is a regression test
# next to the code it broke.
#
#   scripts/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked --quiet cargo-fuzz
export RUSTC_BOOTSTRAP=1
# The host links libpython: the fuzz binaries find the one it was built against.
libdir=$(python3 -c 'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))')
export LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for target in config wire frames environ host_calls; do
  mkdir -p "$work/$target"
  echo "fuzzing $target for ${seconds}s"
  if ! cargo fuzz run --fuzz-dir fuzz -s none "$target" "$work/$target" "fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 > "$work/$target.log" 2>&1; then
    tail -60 "$work/$target.log" >&2
    echo "fuzz target $target failed (a crash's input is in fuzz/artifacts/$target/)" >&2
    exit 1
  fi
  grep -E '^stat::number_of_executed_units' "$work/$target.log" || true
done
echo "fuzzing: every target ran ${seconds}s without a crash"
