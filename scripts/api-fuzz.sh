#!/usr/bin/env bash
# Tests the HTTP API against its own OpenAPI document with schemathesis:
# a real `wpool serve` (with a token) on a free loopback port and a temporary
# data directory, every check, stateful tests included. Exits non-zero on
# any failure. Bounded: WPOOL_API_FUZZ_EXAMPLES examples per operation
# (default 30) and WPOOL_API_FUZZ_SECONDS for the whole run (default 300).
#
#   bash scripts/api-fuzz.sh
#
# schemathesis is installed from PyPI into target/toolchains/schemathesis
# the first time.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
EXAMPLES=${WPOOL_API_FUZZ_EXAMPLES:-30}
SECONDS_BUDGET=${WPOOL_API_FUZZ_SECONDS:-300}
SEED=${WPOOL_API_FUZZ_SEED:-}
VENV=target/toolchains/schemathesis

if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    echo "api-fuzz: installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

cargo build --quiet -p wpool --bin wpool
WPOOL=target/debug/wpool

WORK=$(mktemp -d)
SERVER_PID=
cleanup() {
    # Only the script itself cleans up, never a subshell of it.
    [ "$BASHPID" = "$$" ] || return 0
    if [ -n "$SERVER_PID" ]; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

TOKEN=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
"$WPOOL" serve --data-dir "$WORK/data" --listen 127.0.0.1:0 --workers 2 \
    --token "$TOKEN" --max-wait 2s 2> "$WORK/serve.log" &
SERVER_PID=$!

ADDR=
for _ in $(seq 1 300); do
    ADDR=$(sed -n 's/.*listening on http:\/\/\([^ ]*\).*/\1/p' "$WORK/serve.log" | head -n1)
    [ -n "$ADDR" ] && break
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        cat "$WORK/serve.log" >&2
        echo "api-fuzz: wpool serve exited before listening" >&2
        exit 1
    fi
    sleep 0.1
done
if [ -z "$ADDR" ]; then
    cat "$WORK/serve.log" >&2
    echo "api-fuzz: wpool serve did not say where it listens" >&2
    exit 1
fi
echo "api-fuzz: wpool serve on http://$ADDR"

# The document, fetched with the token: its operations require it.
curl -sf -H "Authorization: Bearer $TOKEN" "http://$ADDR/v1/openapi.json" > "$WORK/openapi.json"

status=0
# From the temporary directory, where schemathesis leaves its cache.
ROOT=$(pwd)
(
    cd "$WORK"
    SCHEMATHESIS_HOOKS="$ROOT/scripts/api-fuzz-hooks.py" "$ROOT/$VENV/bin/schemathesis" \
        --config-file "$ROOT/scripts/api-fuzz.toml" \
        run "$WORK/openapi.json" \
        --url "http://$ADDR" \
        -H "Authorization: Bearer $TOKEN" \
        --checks all \
        --exclude-checks use_after_free \
        --phases examples,coverage,fuzzing,stateful \
        --max-examples "$EXAMPLES" \
        --max-time "$SECONDS_BUDGET" \
        --request-timeout 20 \
        --workers 2 \
        ${SEED:+--seed "$SEED"} \
        --suppress-health-check too_slow,filter_too_much \
        --report junit --report-dir "$WORK/report"
) || status=$?

if grep -q "panicked" "$WORK/serve.log"; then
    echo "api-fuzz: the server panicked:" >&2
    grep -A5 "panicked" "$WORK/serve.log" >&2
    status=1
fi
if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "api-fuzz: the server died during the run:" >&2
    tail -n 20 "$WORK/serve.log" >&2
    status=1
fi
if [ "$status" -eq 0 ]; then
    echo "api-fuzz: passed"
else
    echo "api-fuzz: failed (exit $status)" >&2
fi
exit "$status"
