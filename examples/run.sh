#!/usr/bin/env bash
# Builds and serves the example site on http://127.0.0.1:8000/ (see gatehouse.toml): makes
# examples/.venv with Flask, builds the bot-block plugin from source, then runs Gatehouse.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
rustup target add wasm32-wasip2
[ -x "$here/.venv/bin/python" ] || python3 -m venv "$here/.venv"
"$here/.venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
cargo build --release --locked --target wasm32-wasip2 \
  --manifest-path "$here/plugins/bot-block/Cargo.toml" --target-dir "$here/plugins/bot-block/target"
cd "$here/.."
exec cargo run --release --locked -p gatehouse -- -c examples/gatehouse.toml
