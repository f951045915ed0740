#!/usr/bin/env bash
# The GPU path in one command (benchmarks/gpu_check.py): every model family, training throughput, a Ray search with
# fractional GPUs, Optuna workers sharing one GPU, the final stage and its exports; about 5 minutes on one GPU,
# results in gpu-check/summary.json and gpu-check/summary.md (docs/gpu.md says what to do with them).
# Works from a fresh copy of the working tree: scripts/bootstrap.sh creates .venv first. Arguments go to the check:
# --dry-run (the same steps on CPU at the smallest size), --out DIR, --steps families,ray,...
# CIFAR-10 comes from $FRACTAL_SPACE_DATA, else ../shared/data, else data/ in the repository (an ignored folder).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/bootstrap.sh
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
.venv/bin/python benchmarks/gpu_check.py "$@"
