#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs the toolchains the
# tests build guests with (wasm targets, C/Zig/Python/JS for the examples),
# then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-toolchains.sh
cargo test --workspace "$@"
