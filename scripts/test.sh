#!/usr/bin/env bash
# Sets everything up (virtualenv, pinned dependencies) and runs the default test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow`.
# Unless FRACTAL_SPACE_PG_URL names a server, it starts a private PostgreSQL server for the storage test (its own
# port and folder) and stops it again when pytest ends: on success, failure, Ctrl-C or kill.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/bootstrap.sh
# Stable CPU timings and memory use for small batches (see shared/docs/performance-notes.md).
export MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824
if [ -z "${FRACTAL_SPACE_PG_URL:-}" ]; then
    free_port='import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
    FRACTAL_SPACE_PG_DIR="$(mktemp -d "${TMPDIR:-/tmp}/fractal_space_pg.XXXXXX")"
    FRACTAL_SPACE_PG_PORT="$(.venv/bin/python -c "$free_port")"
    export FRACTAL_SPACE_PG_DIR FRACTAL_SPACE_PG_PORT
    trap 'bash scripts/postgres.sh stop' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    FRACTAL_SPACE_PG_URL="$(bash scripts/postgres.sh)"  # PostgreSQL for the storage test
    export FRACTAL_SPACE_PG_URL
fi
# Two pytest-xdist workers (FRACTAL_SPACE_TEST_WORKERS; 0 runs in this process): much of the suite waits on child
# processes, Ray and storages, so two keep both cores busy; tests that share a fixture run in one (xdist_group).
.venv/bin/python -m pytest -n "${FRACTAL_SPACE_TEST_WORKERS:-2}" --dist loadgroup "$@"
