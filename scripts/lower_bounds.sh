#!/usr/bin/env bash
# Runs the model, space and engine tests against the oldest torch, torchvision, timm and Optuna that pyproject.toml
# allows, in a scratch virtualenv (removed afterwards), so that the declared lower bounds are tested versions.
#
#   bash scripts/lower_bounds.sh                                   # the lower bounds read from pyproject.toml
#   bash scripts/lower_bounds.sh torch==2.11.0 torchvision==0.26.0 # other versions of any of the four
#
# Everything else comes at the pins of constraints.txt; Ray is not installed, so the one test that needs it is
# deselected. Old torch releases on the package index are CUDA builds: expect 2-5 GB of downloads
# per torch version. The last line is pytest's tally; the exit code is pytest's.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python_bin="${PYTHON:-python3}"
families=(torch torchvision timm optuna)
declare -A want
for family in "${families[@]}"; do  # the declared lower bound: ">=2.4" installs 2.4.0
    bound="$(sed -nE "s/^ *\"$family>=([0-9.]+)\".*/\1/p" pyproject.toml)"
    if [ -z "$bound" ]; then
        echo "error: pyproject.toml declares no '$family>=' lower bound" >&2
        exit 2
    fi
    while [ "$(tr -cd . <<<"$bound" | wc -c)" -lt 2 ]; do bound="$bound.0"; done
    want[$family]="$family==$bound"
done
for spec in "$@"; do
    family="${spec%%==*}"
    if [ -z "${want[$family]+set}" ] || [ "$family" = "$spec" ]; then
        echo "error: $spec: expected NAME==VERSION with NAME one of ${families[*]}" >&2
        exit 2
    fi
    want[$family]="$spec"
done
free_gb="$(df -BG --output=avail "${TMPDIR:-/tmp}" | tail -1 | tr -dc 0-9)"
if [ "$free_gb" -lt 12 ]; then
    echo "error: ${free_gb} GB free under ${TMPDIR:-/tmp}; a torch install with its CUDA libraries needs about 12" >&2
    exit 2
fi
scratch="$(mktemp -d "${TMPDIR:-/tmp}/fractal_space-lower-bounds.XXXXXX")"
trap 'rm -rf "$scratch"' EXIT
# The project's pins without the four families under test and the CUDA libraries that follow torch's version.
grep -vE '^(torch|torchvision|timm|optuna|ray|triton|nvidia-.*|cuda-.*)==' constraints.txt \
    > "$scratch/constraints.txt"
"$python_bin" -m venv "$scratch/venv"
py="$scratch/venv/bin/python"
"$py" -m pip install -q --upgrade pip
"$py" -m pip install -q -c "$scratch/constraints.txt" "${want[@]}" optuna-dashboard pyarrow pillow safetensors \
    tqdm matplotlib pyyaml pandas onnx onnxruntime onnxscript pytest
"$py" -m pip install -q --no-deps -e .
"$py" - <<'EOF'
from importlib.metadata import version
import platform
names = ("torch", "torchvision", "timm", "optuna", "optuna-dashboard", "numpy")
print("versions:", ", ".join(f"{name} {version(name)}" for name in names), f"(Python {platform.python_version()})")
EOF
"$py" -m pytest -q tests/test_fractalnet.py tests/test_timm_contract.py tests/test_space.py \
    tests/test_engine.py tests/test_fold.py \
    --deselect tests/test_space.py::test_ray_optuna_search_uses_the_same_define_by_run_function
