#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests of the PostgreSQL backend.
#
#   cluster=$(bash scripts/pg-cluster.sh start) && eval "$cluster"   # exports WPOOL_TEST_POSTGRES and WPOOL_PG_CLUSTER
#   bash scripts/pg-cluster.sh stop "$WPOOL_PG_CLUSTER"
#
# `start` installs Debian's `postgresql` package if no initdb is found,
# creates a cluster in a new temporary directory, starts it listening on
# 127.0.0.1 at a free port (and on a Unix socket in that directory), and
# prints the `export` lines of its URL and directory. The server runs as an
# unprivileged user (`postgres`, or `WPOOL_PG_USER`): initdb refuses root.
# Its superuser is `wpool`, trusted on loopback, so the tests can create a
# database each. fsync stays on: the tests check that a result is durable
# before it is seen, and the cluster is the same as a real one but for its
# size.
#
# `stop DIR` stops the cluster in DIR and removes DIR.
#
# `down DIR` stops the server of the cluster in DIR (fast: sessions are
# ended) and keeps its data; `up DIR` starts it again on the same port.
# Tests that take the database away under load use them on a cluster of
# their own.
set -euo pipefail

PG_USER=${WPOOL_PG_USER:-postgres}

find_bin() {
    if [ -n "${WPOOL_PG_BIN:-}" ]; then
        echo "$WPOOL_PG_BIN"
        return
    fi
    local dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$dir/initdb" ]; then
            echo "$dir"
            return
        fi
    done
    if command -v initdb > /dev/null; then
        dirname "$(command -v initdb)"
    fi
}

as_pg_user() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u "$PG_USER" -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

start_server() {
    local bin=$1 dir=$2 port=$3
    as_pg_user "$bin/pg_ctl" --pgdata "$dir/data" --log "$dir/server.log" --wait \
        --timeout 60 \
        -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir -c max_connections=300 -c synchronous_commit=on" \
        start > "$dir/pg_ctl.log" 2>&1
}

start() {
    local bin
    bin=$(find_bin)
    if [ -z "$bin" ]; then
        echo "pg-cluster: no initdb found; installing Debian's postgresql package" >&2
        if [ "$(id -u)" != 0 ]; then
            echo "pg-cluster: installing needs root: run 'apt-get install postgresql' first" >&2
            exit 1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
        bin=$(find_bin)
        if [ -z "$bin" ]; then
            echo "pg-cluster: postgresql was installed but no initdb was found" >&2
            exit 1
        fi
    fi
    if [ "$(id -u)" = 0 ] && ! id "$PG_USER" > /dev/null 2>&1; then
        useradd --system --no-create-home --shell /usr/sbin/nologin "$PG_USER" >&2
    fi

    local dir port
    # /tmp rather than $TMPDIR: the server's user must be able to reach it.
    dir=$(mktemp -d /tmp/wpool-pg.XXXXXX)
    chmod 755 "$dir"
    if [ "$(id -u)" = 0 ]; then
        chown "$PG_USER" "$dir"
    fi
    # The server's user may not be allowed into the caller's directory.
    cd "$dir"
    as_pg_user "$bin/initdb" --pgdata "$dir/data" --username wpool --auth trust \
        --encoding UTF8 --locale C.UTF-8 > "$dir/initdb.log" 2>&1 || {
        cat "$dir/initdb.log" >&2
        echo "pg-cluster: initdb failed" >&2
        exit 1
    }
    for attempt in 1 2 3 4 5; do
        port=$(free_port)
        if start_server "$bin" "$dir" "$port"; then
            echo "$port" > "$dir/port"
            echo "export WPOOL_TEST_POSTGRES='postgres://wpool@127.0.0.1:$port/postgres'"
            echo "export WPOOL_PG_CLUSTER='$dir'"
            echo "pg-cluster: PostgreSQL on 127.0.0.1:$port, data in $dir" >&2
            return
        fi
        # Another process took the port between the probe and the start.
        echo "pg-cluster: start on port $port failed (attempt $attempt)" >&2
    done
    cat "$dir/server.log" >&2 || true
    echo "pg-cluster: the server did not start" >&2
    exit 1
}

stop() {
    local dir=${1:-${WPOOL_PG_CLUSTER:-}}
    if [ -z "$dir" ] || [ ! -d "$dir" ]; then
        echo "pg-cluster: stop: no cluster directory given" >&2
        exit 1
    fi
    local bin
    bin=$(find_bin)
    cd /
    if [ -f "$dir/data/postmaster.pid" ]; then
        as_pg_user "$bin/pg_ctl" --pgdata "$dir/data" --mode fast --wait stop > /dev/null 2>&1 || true
    fi
    rm -rf "$dir"
}

down() {
    local dir=${1:-}
    if [ -z "$dir" ] || [ ! -f "$dir/port" ]; then
        echo "pg-cluster: down: no cluster directory given (or one made before \`port\` was kept)" >&2
        exit 1
    fi
    cd "$dir"
    as_pg_user "$(find_bin)/pg_ctl" --pgdata "$dir/data" --mode fast --wait stop > /dev/null
}

up() {
    local dir=${1:-}
    if [ -z "$dir" ] || [ ! -f "$dir/port" ]; then
        echo "pg-cluster: up: no cluster directory given (or one made before \`port\` was kept)" >&2
        exit 1
    fi
    cd "$dir"
    start_server "$(find_bin)" "$dir" "$(cat "$dir/port")" || {
        cat "$dir/pg_ctl.log" >&2
        exit 1
    }
}

case "${1:-}" in
start) start ;;
stop) stop "${2:-}" ;;
down) down "${2:-}" ;;
up) up "${2:-}" ;;
*)
    echo "usage: $0 start | stop DIR | down DIR | up DIR" >&2
    exit 2
    ;;
esac
