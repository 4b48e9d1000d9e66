#!/usr/bin/env bash
# Builds examples/zig/wordfreq.zig into a WASI command module (wasm32-wasi,
# which is wasm32-wasip1, exporting `_start`):
#   target/examples/zig/wordfreq.wasm
# Toolchain: Zig 0.14 from the PyPI package `ziglang`, in the venv that
# `bash scripts/install-toolchains.sh` creates (target/toolchains/venv, or
# $WPOOL_TOOLCHAINS_DIR/venv). A `zig` 0.14.x on PATH works too.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT_DIR="$ROOT/target/examples/zig"
OUT="$OUT_DIR/wordfreq.wasm"
TOOLCHAINS="${WPOOL_TOOLCHAINS_DIR:-$ROOT/target/toolchains}"
VENV="$TOOLCHAINS/venv"

die() {
    echo "examples/zig/build.sh: $*" >&2
    echo "examples/zig/build.sh: install the toolchains with: bash scripts/install-toolchains.sh" >&2
    exit 1
}

if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -m ziglang version >/dev/null 2>&1; then
    ZIG=("$VENV/bin/python" -m ziglang)
elif command -v zig >/dev/null 2>&1; then
    ZIG=(zig)
else
    die "zig not found (looked for the ziglang package in $VENV and for zig on PATH)"
fi
version="$("${ZIG[@]}" version)"
[[ "$version" == 0.14.* ]] || die "wordfreq.zig is written for Zig 0.14, found $version"

mkdir -p "$OUT_DIR"
# ReleaseSmall + strip: a small module. Caches stay under target/.
"${ZIG[@]}" build-exe "$HERE/wordfreq.zig" \
    -target wasm32-wasi -O ReleaseSmall -fstrip \
    --cache-dir "$TOOLCHAINS/zig-cache" --global-cache-dir "$TOOLCHAINS/zig-global-cache" \
    -femit-bin="$OUT" \
    || die "zig build-exe failed"
rm -f "$OUT.o"

echo "built $OUT ($(wc -c <"$OUT") bytes)"
