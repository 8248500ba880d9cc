#!/usr/bin/env bash
# Runs every test: unit tests next to the code and the black-box tests in tests/, which start the real
# binary. Installs what it needs first, so it works on a fresh Debian machine with Rust and Python.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v prlimit >/dev/null 2>&1 || need_apt+=(util-linux)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# Let's Encrypt's ACME test server and its DNS, for the automatic-certificate tests.
command -v pebble >/dev/null 2>&1 || need_apt+=(pebble)
# A second build of the embedded Python's version (Debian's, beside pyenv's): the tests prove that
# gatehouse refuses an interpreter that is not the build it links.
[ -x /usr/bin/python3.11 ] || need_apt+=(python3.11)
# A real Redis for the shared-store tests.
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
# The public HTTP cache test suite runs on Node.
command -v npm >/dev/null 2>&1 || need_apt+=(nodejs npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]} with apt-get"
  apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
fi

# The WSGI tests serve real Flask and Django apps with the python3 on PATH (the one gatehouse embeds).
python3 -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt

# The public HTTP cache test suite (cache-tests.fyi), pinned by tests/cache-suite/package-lock.json.
npm ci --prefix tests/cache-suite --no-audit --no-fund --silent

# Plugins are WebAssembly components: first-party ones are embedded in the binary and test fixtures
# are built from source, both for this target.
rustup target add wasm32-wasip2

# The first-party plugins' own unit tests (natively, through the SDK's test harness).
(cd plugins && cargo test --locked --quiet)

# Every parser of bytes a client, an app, a plugin or a user controls, fuzzed for 20 s each (cargo-fuzz,
# coverage-guided; a crash fails the run and saves its input in fuzz/artifacts/).
scripts/fuzz.sh 20

# The in-process plugin benchmark (bench/plugins.sh) is behind a feature: checked here so that it
# keeps compiling.
cargo check --locked --quiet -p gatehouse --features bench --benches

# The black-box tests run the binary cargo builds here.
cargo build --locked -p gatehouse
cargo test --locked --workspace
