#!/usr/bin/env bash
# Builds examples/python/app.py into a component of world `task`
# (wit/task.wit, package wpool:task@0.1.0):
#   target/examples/python/wordfreq.wasm
# Toolchain: componentize-py from PyPI, in the venv that
# `bash scripts/install-toolchains.sh` creates (target/toolchains/venv, or
# $WPOOL_TOOLCHAINS_DIR/venv). The component bundles the CPython runtime and
# the parts of the standard library it uses: it needs no files at run time.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT_DIR="$ROOT/target/examples/python"
OUT="$OUT_DIR/wordfreq.wasm"
VENV="${WPOOL_TOOLCHAINS_DIR:-$ROOT/target/toolchains}/venv"

die() {
    echo "examples/python/build.sh: $*" >&2
    echo "examples/python/build.sh: install the toolchains with: bash scripts/install-toolchains.sh" >&2
    exit 1
}

if [[ -x "$VENV/bin/componentize-py" ]]; then
    COMPONENTIZE_PY="$VENV/bin/componentize-py"
elif command -v componentize-py >/dev/null 2>&1; then
    COMPONENTIZE_PY="$(command -v componentize-py)"
else
    die "componentize-py not found (looked in $VENV/bin and on PATH)"
fi

mkdir -p "$OUT_DIR"
export PYTHONDONTWRITEBYTECODE=1 # no __pycache__ in the source tree
# componentize-py finds the module `app` through -p (the source dir).
"$COMPONENTIZE_PY" -d "$ROOT/wit" -w task componentize app -p "$HERE" -o "$OUT" >/dev/null \
    || die "componentize-py failed to build app.py"

echo "built $OUT ($(wc -c <"$OUT") bytes)"
