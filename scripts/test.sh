#!/usr/bin/env bash
# Sets everything up (virtualenv, pinned dependencies) and runs the default test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/bootstrap.sh
# Stable CPU timings and memory use for small batches (see shared/docs/performance-notes.md).
export MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824
export FRACTAL_SPACE_PG_URL="${FRACTAL_SPACE_PG_URL:-$(bash scripts/postgres.sh)}"  # PostgreSQL for the storage test
exec .venv/bin/python -m pytest "$@"
