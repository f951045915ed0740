#!/usr/bin/env bash
# Starts a throwaway PostgreSQL server for the search's storage tests and prints its URL on stdout; `stop` stops it.
#   bash scripts/postgres.sh          start (or reuse) the server, print postgresql://postgres@127.0.0.1:PORT/fractal_space
#   bash scripts/postgres.sh stop     stop the server of FRACTAL_SPACE_PG_DIR and delete that throwaway cluster
# Installs Debian's postgresql package if it is missing (apt-get), keeps the cluster under /tmp, listens on
# 127.0.0.1 only, on its own port (FRACTAL_SPACE_PG_PORT, default 55432). Idempotent: a running server is reused.
# Everything except the URL goes to stderr, so `export FRACTAL_SPACE_PG_URL=$(bash scripts/postgres.sh)` works;
# initdb's and pg_ctl's chatter is shown only if they fail.
set -euo pipefail
port="${FRACTAL_SPACE_PG_PORT:-55432}"
dir="${FRACTAL_SPACE_PG_DIR:-/tmp/fractal_space_pg_$port}"
db=fractal_space

find_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
bin="$(find_bin)"

# initdb and postgres refuse to run as root: use the package's postgres user then.
as_owner() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
# Run quietly; print the command's output only when it fails.
quiet() { local out; if ! out="$("$@" 2>&1)"; then echo "$out" >&2; return 1; fi; }

if [ "${1:-start}" = stop ]; then
    # Ctrl-C reaches the server too (same process group) and may have stopped it already.
    if [ -n "$bin" ] && [ -f "$dir/PG_VERSION" ] && as_owner "$bin/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
        quiet as_owner "$bin/pg_ctl" -D "$dir" -m fast -w stop
    fi
    if [ -f "$dir/PG_VERSION" ]; then rm -rf "$dir"; elif [ -d "$dir" ]; then rmdir "$dir"; fi  # a cluster only
    exit 0
fi

if [ -z "$bin" ]; then
    echo "postgres.sh: installing Debian's postgresql package" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends postgresql >&2
    bin="$(find_bin)"
fi
[ -n "$bin" ] || { echo "postgres.sh: no PostgreSQL binaries after installing" >&2; exit 1; }

if ! "$bin/pg_isready" -q -h 127.0.0.1 -p "$port"; then
    if [ ! -f "$dir/PG_VERSION" ]; then
        mkdir -p "$dir"
        [ "$(id -u)" = 0 ] && chown postgres: "$dir"
        quiet as_owner "$bin/initdb" -D "$dir" -U postgres --auth=trust -E UTF8
    fi
    quiet as_owner "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -o "-h 127.0.0.1 -p $port -k $dir" start
fi
if ! "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$db'" \
        | grep -q 1; then
    "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres "$db" >&2
fi
echo "postgresql://postgres@127.0.0.1:$port/$db"
