#!/usr/bin/env bash
# A throwaway local PostgreSQL server for trying castor on PostgreSQL, in one command:
#
#   bash examples/postgres/local-server.sh          # start it; prints the --db URL
#   bash examples/postgres/local-server.sh stop     # stop it and delete its files
#
# Needs Debian's (or Ubuntu's) `postgresql` package (`apt-get install postgresql`). The
# cluster lives in target/local-postgres (or /tmp if that path is too long for a
# socket), listens only on a Unix socket there (no TCP
# port), trusts local connections, and has a database `tasks`. As root, the server runs as
# the `postgres` user (PostgreSQL refuses root).
set -euo pipefail
cd "$(dirname "$0")/../.."

dir="$PWD/target/local-postgres"
# A socket's path must stay under the kernel's 107 bytes, and the server's user must reach
# the directory: else one under /tmp.
if ((${#dir} > 80)) || { ((EUID == 0)) && ! runuser -u postgres -- test -x "$PWD/target" 2>/dev/null; }; then
    dir="/tmp/castor-local-postgres-$(id -u)"
fi
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [[ -z "$bin" || ! -x "$bin/initdb" ]]; then
    echo "local-server.sh: PostgreSQL is not installed: apt-get install postgresql" >&2
    exit 1
fi
as=()
if ((EUID == 0)); then as=(runuser -u postgres --); fi
url="postgres:///tasks?host=$dir&user=postgres"

if [[ "${1:-start}" == stop ]]; then
    [[ -d "$dir/data" ]] && "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -m fast stop >/dev/null || true
    rm -rf "$dir"
    echo "stopped; $dir removed"
    exit 0
fi

if [[ ! -d "$dir/data" ]]; then
    mkdir -p "$dir"
    if ((EUID == 0)); then chown postgres: "$dir"; fi
    "${as[@]}" "$bin/initdb" -D "$dir/data" -A trust -U postgres >"$dir/initdb.log" 2>&1 ||
        { cat "$dir/initdb.log" >&2; exit 1; }
fi
if ! "${as[@]}" "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
        -o "-k $dir -c listen_addresses=" start >/dev/null ||
        { cat "$dir/server.log" >&2; exit 1; }
fi
"${as[@]}" "$bin/createdb" -h "$dir" -U postgres tasks 2>/dev/null || true
echo "PostgreSQL is running in $dir. Use it with:"
echo "  --db '$url'"
echo "  (or CASTOR_DATABASE='$url'); stop it with: bash examples/postgres/local-server.sh stop"
