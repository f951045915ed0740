"""benchmarks/gpu_check.py, the GPU path in one command: its dry run on CPU (real CIFAR-10 slice, real engine, real
local Ray and Optuna storage), its refusal without CUDA, its per-step timeout."""

import argparse
import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "benchmarks" / "gpu_check.py"
spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
gpu_check = importlib.util.module_from_spec(spec)
sys.modules["gpu_check"] = gpu_check
spec.loader.exec_module(gpu_check)


def _dry_run(out: Path, steps: str, capsys) -> tuple[int, str, dict]:
    """The check's own main in this process (its steps still run in child processes, as always)."""
    code = gpu_check.main(["--dry-run", "--out", str(out), "--steps", steps])
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    return code, printed, summary


def _steps(summary: dict) -> dict[str, dict]:
    return {s["step"]: s for s in summary["steps"]}


def test_dry_run_trains_every_family_and_measures_throughput(data_root, tmp_path, capsys):
    """The training steps on CPU: every registered family (fractalnet34 at 224x224) and the throughput ratios."""
    code, printed, summary = _dry_run(tmp_path, "families,throughput", capsys)
    assert code == 0, printed
    steps = _steps(summary)
    assert summary["passed"] and all(s["passed"] and s["error"] is None for s in steps.values()), steps
    families = steps["families"]["numbers"]
    assert families["models"] == len(gpu_check.family_models()) and families["models"] >= 17
    assert families["fractalnet34"]["input"] == "224x224" and families["fractalnet_c4"]["input"] == "32x32"
    assert {"fractalnet_c4 / public", "fractalnet20_cifar / public"} <= set(steps["throughput"]["numbers"])
    assert all(s["peak_memory_mb"] is None for s in steps.values())  # CPU: no CUDA memory counter
    md = (tmp_path / "summary.md").read_text()
    assert "2 of 2 steps passed" in md and "| families | pass |" in md and "n/a (CPU)" in md
    assert [line.split(":")[0] for line in printed.splitlines()[:2]] == ["families", "throughput"]


@pytest.mark.slow
def test_dry_run_of_the_searches_and_the_final_stage(data_root, tmp_path, capsys):
    """Ray trials run 4 at once (Tune keeps only one pending otherwise), two Optuna workers both train, and the final
    stage's exports load on CPU with equal outputs and run in ONNX Runtime."""
    code, printed, summary = _dry_run(tmp_path, "ray,optuna,final", capsys)
    steps = _steps(summary)
    assert steps["ray"]["passed"] and steps["ray"]["numbers"]["at_once"] == 4, steps["ray"]
    assert steps["optuna"]["passed"] and steps["optuna"]["numbers"]["workers"] == 2, steps["optuna"]
    assert steps["final"]["passed"], steps["final"]
    exports = steps["final"]["numbers"]["exports"]
    assert len(exports) >= 2 and all(e["onnx_max_diff"] is not None for e in exports)
    assert code == 0, printed


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_it_says_so_in_one_line_and_exits_2(tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    printed = capsys.readouterr()
    assert printed.out == "" and len(printed.err.strip().splitlines()) == 1
    assert "CUDA" in printed.err and "--dry-run" in printed.err and not (tmp_path / "summary.json").exists()


def test_a_step_past_its_timeout_is_killed_and_recorded_as_failed(tmp_path):
    """A hang costs its step only: the step's whole process group is killed at the timeout, the step fails with why."""
    sizes = dataclasses.replace(gpu_check.DRY, timeouts={"families": 1})
    ctx = gpu_check.Context(sizes, tmp_path, "cifar10", "cifar10", str(tmp_path))
    line = gpu_check._spawn_step("families", argparse.Namespace(dry_run=True), ctx)
    assert not line["passed"] and line["error"].startswith("timed out after 1 s") and line["seconds"] < 30
    assert not line["numbers"] and not (tmp_path / "logs" / "families.json").exists()
    assert not [p for p in Path("/proc").glob("[0-9]*/cmdline") if str(tmp_path) in _read(p)]  # nothing left running


def _read(path: Path) -> str:
    try:
        return path.read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:  # the process ended meanwhile
        return ""

def test_max_at_once_counts_overlapping_intervals_only():
    assert gpu_check.max_at_once([]) == 0
    assert gpu_check.max_at_once([(0, 2), (1, 3), (1.5, 4), (3.5, 5)]) == 3
    assert gpu_check.max_at_once([(0, 1), (1, 2), (2, 3)]) == 1  # one ends as the next starts: never together
