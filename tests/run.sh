#!/usr/bin/env bash
# Every test: README's test command, and what `.ci/run` runs. First makes sure of what the
# tests cannot provide themselves: cargo-generate, for tests/it/template.rs (installed into
# target/tools once, saying so), and a PostgreSQL server for the PostgreSQL driver's tests
# (a throwaway cluster under target/, on a Unix socket, stopped when this script ends,
# unless CASTOR_TEST_POSTGRES already names a server). Then runs `cargo test --workspace
# --locked` with any arguments given (e.g. `bash tests/run.sh -- --skip template`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash plugin-template/cargo-generate.sh >/dev/null

# Starts a throwaway PostgreSQL cluster and exports CASTOR_TEST_POSTGRES for it. PostgreSQL
# refuses to run as root, so as root the cluster runs as the `postgres` user.
start_postgres() {
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [[ -z "$bin" || ! -x "$bin/initdb" ]]; then
        echo "tests/run.sh: PostgreSQL's initdb is missing; install Debian's postgresql package (as .ci/run does) or set CASTOR_TEST_POSTGRES to a server's URL" >&2
        exit 1
    fi
    PG_DIR="$PWD/target/postgres-test"
    local as=()
    if ((EUID == 0)); then as=(runuser -u postgres --); fi
    mkdir -p target
    # The server's user must reach the directory, and the socket's path must stay under
    # the kernel's 107 bytes; else a private directory under /tmp.
    if ! "${as[@]}" test -x "$PWD/target" || ((${#PG_DIR} > 80)); then
        PG_DIR=$(mktemp -d /tmp/castor-postgres-test.XXXXXX)
    fi
    local dir=$PG_DIR
    rm -rf "$dir"
    mkdir -p "$dir"
    if ((EUID == 0)); then chown postgres: "$dir"; fi
    PG_CTL=("${as[@]}" "$bin/pg_ctl" -D "$dir/data")
    # Started before initdb so that a failure anywhere below removes what it left.
    trap 'rm -rf "$PG_DIR"' EXIT
    "${as[@]}" "$bin/initdb" -D "$dir/data" -A trust -U postgres --no-sync >"$dir/initdb.log" 2>&1 ||
        { cat "$dir/initdb.log" >&2; exit 1; }
    # No TCP port (nothing to collide with), no fsync (a throwaway cluster), enough
    # connections for the tests running in parallel (each opens a few).
    "${PG_CTL[@]}" -l "$dir/server.log" -w -o "-k $dir -c listen_addresses= \
        -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
        start >/dev/null || { cat "$dir/server.log" >&2; exit 1; }
    trap '"${PG_CTL[@]}" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$PG_DIR"' EXIT
    export CASTOR_TEST_POSTGRES="postgres:///postgres?host=$dir&user=postgres"
}

if [[ -z "${CASTOR_TEST_POSTGRES:-}" ]]; then
    start_postgres
fi
cargo test --workspace --locked "$@"
