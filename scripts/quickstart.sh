#!/usr/bin/env bash
# Runs a real task end to end on a fresh machine: installs the wasm target,
# builds the `hello` example task, and submits it with `wpool submit --wait`.
# No daemon is running, so wpool queues the task durably in the embedded
# sled store (./wpool-data) and runs it there.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target add wasm32-wasip1 >/dev/null
cargo build --quiet --release --target wasm32-wasip1 \
  --manifest-path examples/rust/Cargo.toml -p hello \
  --target-dir target/guests/examples
cargo run --quiet -p wpool -- submit target/guests/examples/wasm32-wasip1/release/hello.wasm \
  --input examples/inputs/hello.json --wait
echo
