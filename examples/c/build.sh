#!/usr/bin/env bash
# Builds examples/c/wordfreq.c into a WASI command module (wasm32-wasip1):
#   target/examples/c/wordfreq.wasm
# Toolchain: Debian's clang + lld + wasi-libc + compiler-rt for wasm32,
# installed by `bash scripts/install-toolchains.sh`. Set CC to use another
# clang that targets wasm32-wasi (with WASI_SYSROOT for its sysroot).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OUT_DIR="$ROOT/target/examples/c"
OUT="$OUT_DIR/wordfreq.wasm"

die() {
    echo "examples/c/build.sh: $*" >&2
    echo "examples/c/build.sh: install the toolchains with: bash scripts/install-toolchains.sh" >&2
    exit 1
}

CC="${CC:-}"
if [[ -z "$CC" ]]; then
    for candidate in clang-14 clang; do
        if command -v "$candidate" >/dev/null 2>&1; then CC="$candidate"; break; fi
    done
fi
[[ -n "$CC" ]] || die "no clang found (need clang-14, lld-14, wasi-libc, libclang-rt-14-dev-wasm32)"
command -v "$CC" >/dev/null 2>&1 || die "C compiler '$CC' (from \$CC) not found"
WASI_SYSROOT="${WASI_SYSROOT:-/usr}"
[[ -f "$WASI_SYSROOT/lib/wasm32-wasi/libc.a" || -f "$WASI_SYSROOT/lib/libc.a" ]] \
    || die "wasi-libc not found under $WASI_SYSROOT (Debian package wasi-libc)"

mkdir -p "$OUT_DIR"
# --target=wasm32-wasi is wasm32-wasip1 (the name clang 14 knows).
# --strip-all drops the name section and debug info: the module is smaller.
# --stack-first puts the stack below the data, so that a stack overflow
# traps (out of bounds) instead of silently overwriting static data.
"$CC" --target=wasm32-wasi --sysroot="$WASI_SYSROOT" \
    -O2 -std=c11 -Wall -Wextra -Werror \
    -Wl,--strip-all -Wl,--stack-first \
    -o "$OUT" "$HERE/wordfreq.c" \
    || die "compiling wordfreq.c with $CC failed (is lld / libclang-rt-14-dev-wasm32 installed?)"

echo "built $OUT ($(wc -c <"$OUT") bytes)"
