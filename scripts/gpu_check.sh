#!/usr/bin/env bash
# The GPU acceptance check (python -m fractal_space.checks.gpu): every model family, training throughput, a Ray search
# with fractional GPUs, Optuna workers sharing one GPU, the final stage and its exports; about 5 minutes on one GPU,
# results in gpu-check/summary.json and gpu-check/summary.md (docs/gpu.md says what each step proves).
#
#   bash scripts/gpu_check.sh [ARGS]                  # creates .venv from the package index (scripts/bootstrap.sh)
#   bash scripts/gpu_check.sh --python PATH [ARGS]    # an existing interpreter with torch and CUDA; installs nothing
#
# ARGS go to the check: --dry-run (the steps it can run, on CPU at the smallest size), --out DIR, --steps ray,....
# CIFAR-10 comes from $FRACTAL_SPACE_DATA, else ../shared/data, else data/ in the repository (an ignored folder).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python_bin=""
if [ "${1:-}" = "--python" ]; then
    if [ -z "${2:-}" ] || ! [ -x "$(command -v "$2" || true)" ]; then
        echo "error: --python ${2:-}: not an executable interpreter" >&2
        exit 2
    fi
    python_bin="$2"
    shift 2
else
    bash scripts/bootstrap.sh
    python_bin=.venv/bin/python
fi
if [ -z "${FRACTAL_SPACE_DATA:-}" ]; then
    for candidate in "$root/../shared/data" "$root/data"; do
        if [ -d "$candidate/cifar10" ]; then
            FRACTAL_SPACE_DATA="$(cd "$candidate" && pwd)"
            export FRACTAL_SPACE_DATA
            break
        fi
    done
fi
export MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824
# This checkout first: the package is importable from it without being installed.
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" exec "$python_bin" -m fractal_space.checks.gpu "$@"
