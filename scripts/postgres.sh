#!/usr/bin/env bash
# Starts a throwaway PostgreSQL server for the search's storage tests and prints its URL on stdout.
# Installs Debian's postgresql package if it is missing (apt-get), keeps the cluster under /tmp, listens on
# 127.0.0.1 only, on its own port (FRACTAL_SPACE_PG_PORT, default 55432). Idempotent: a running server is reused.
# Everything except the URL goes to stderr, so `export FRACTAL_SPACE_PG_URL=$(bash scripts/postgres.sh)` works.
set -euo pipefail
port="${FRACTAL_SPACE_PG_PORT:-55432}"
dir="${FRACTAL_SPACE_PG_DIR:-/tmp/fractal_space_pg_$port}"
db=fractal_space

find_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
bin="$(find_bin)"
if [ -z "$bin" ]; then
    echo "postgres.sh: installing Debian's postgresql package" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends postgresql >&2
    bin="$(find_bin)"
fi
[ -n "$bin" ] || { echo "postgres.sh: no PostgreSQL binaries after installing" >&2; exit 1; }

# initdb and postgres refuse to run as root: use the package's postgres user then.
as_owner() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

if ! "$bin/pg_isready" -q -h 127.0.0.1 -p "$port"; then
    if [ ! -f "$dir/PG_VERSION" ]; then
        mkdir -p "$dir"
        [ "$(id -u)" = 0 ] && chown postgres: "$dir"
        as_owner "$bin/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 >&2
    fi
    as_owner "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -o "-h 127.0.0.1 -p $port -k $dir" start >&2
fi
if ! "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$db'" \
        | grep -q 1; then
    "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres "$db" >&2
fi
echo "postgresql://postgres@127.0.0.1:$port/$db"
