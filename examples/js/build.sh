#!/usr/bin/env bash
# Builds examples/js/wordfreq.js into a component of world `task`
# (wit/task.wit, package wpool:task@0.1.0):
#   target/examples/js/wordfreq.wasm
# Toolchain: componentize-js (SpiderMonkey via StarlingMonkey) from npm,
# pinned in package.json / package-lock.json and installed into
# examples/js/node_modules by `bash scripts/install-toolchains.sh` (npm ci).
# The wasi:http features are left out: wpool links no HTTP, so a component
# importing it could not be instantiated.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT_DIR="$ROOT/target/examples/js"
OUT="$OUT_DIR/wordfreq.wasm"
COMPONENTIZE="$HERE/node_modules/.bin/componentize-js"

die() {
    echo "examples/js/build.sh: $*" >&2
    echo "examples/js/build.sh: install the toolchains with: bash scripts/install-toolchains.sh" >&2
    exit 1
}

command -v node >/dev/null 2>&1 || die "node not found"
[[ -x "$COMPONENTIZE" ]] || die "componentize-js not found in examples/js/node_modules"

mkdir -p "$OUT_DIR"
# Paths relative to the repo root: the tool reads the WIT from inside its
# own WASI sandbox, which sees the host filesystem through preview2-shim.
cd "$ROOT"
"$COMPONENTIZE" examples/js/wordfreq.js --wit wit --world-name task \
    --disable http fetch-event -o "$OUT" >/dev/null \
    || die "componentize-js failed to build wordfreq.js"

echo "built $OUT ($(wc -c <"$OUT") bytes)"
