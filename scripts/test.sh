#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs the toolchains the
# tests build guests with (wasm targets, C/Zig/Python/JS for the examples),
# starts a throwaway PostgreSQL cluster for the PostgreSQL backend's tests
# (scripts/pg-cluster.sh; stopped and removed on exit), then runs every
# test of the workspace.
#
# With WPOOL_TEST_POSTGRES already set, that server is used instead (each
# test creates a database of its own on it).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-toolchains.sh

if [ -z "${WPOOL_TEST_POSTGRES:-}" ]; then
    # Assigned first, so that a failed start stops the script.
    cluster=$(bash scripts/pg-cluster.sh start)
    eval "$cluster"
    cleanup() {
        bash scripts/pg-cluster.sh stop "$WPOOL_PG_CLUSTER"
    }
    trap cleanup EXIT
fi
export WPOOL_TEST_POSTGRES

cargo test --workspace "$@"
