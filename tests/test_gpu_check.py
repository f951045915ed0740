"""fractal_space.checks.gpu, the GPU acceptance check: its refusal without CUDA, its dry run on CPU (real CIFAR-10
slice, real engine, real local Ray and Optuna storage) with the steps whose packages are not installed skipped, its
per-step timeout."""

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fractal_space.checks import gpu
from fractal_space.checks.gpu import DRY, Context, family_models, installed, main, max_at_once, reference_model

REPO_ROOT = Path(__file__).resolve().parents[1]
#: Makes packages not installed for the interpreter it starts in: the path finder no longer finds them, so their
#: import fails as it does where they were never installed (and ``importlib.util.find_spec`` returns None).
HIDE_PACKAGES = """
from importlib.machinery import PathFinder
import sys

HIDDEN = {hidden!r}


class HidingPathFinder(PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        return None if name.partition(".")[0] in HIDDEN else super().find_spec(name, path, target)


sys.meta_path[sys.meta_path.index(PathFinder)] = HidingPathFinder
"""


def _run(args: list[str], tmp_path: Path, hidden: tuple[str, ...] = (), **env: str) -> subprocess.CompletedProcess:
    """The check as a user runs it, with this interpreter; ``hidden`` packages not installed for it."""
    path = [str(REPO_ROOT)]
    if hidden:
        site = tmp_path / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(HIDE_PACKAGES.format(hidden=set(hidden)))
        path.insert(0, str(site))
    return subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(path), **env})


def _steps(summary: dict) -> dict[str, dict]:
    return {s["step"]: s for s in summary["steps"]}


def test_hidden_packages_fail_to_import_as_if_not_installed(tmp_path):
    """The test's way of removing a package is a real import failure, and find_spec (what the check asks) agrees."""
    probe = ("import importlib.util\n"
             "print(importlib.util.find_spec('ray'), importlib.util.find_spec('timm') is not None)\nimport optuna\n")
    done = _run([sys.executable, "-c", probe], tmp_path, hidden=("ray", "optuna"))
    assert done.stdout.split() == ["None", "True"], done.stderr
    assert done.returncode == 1 and "ModuleNotFoundError: No module named 'optuna'" in done.stderr


def test_a_bare_folder_named_like_a_package_is_not_the_package(tmp_path, monkeypatch):
    """Run from /tmp, Ray's temporary folder /tmp/ray is on the path as a namespace package: Ray is still missing."""
    (tmp_path / "fractal_space_absent").mkdir()
    monkeypatch.syspath_prepend(str(tmp_path))
    assert not installed("fractal_space_absent") and installed("fractal_space")


def _dry_run_without_ray_and_optuna(tmp_path: Path, *steps: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "out"
    done = _run([sys.executable, "-m", "fractal_space.checks.gpu", "--dry-run", "--out", str(out),
                 *(["--steps", ",".join(steps)] if steps else [])], tmp_path, hidden=("ray", "optuna"))
    assert done.returncode == 0, done.stdout + done.stderr
    return done, json.loads((out / "summary.json").read_text())


def test_dry_run_skips_what_is_not_installed_and_measures_throughput(data_root, tmp_path):
    """Without Ray and Optuna the dry run skips their steps (and the final stage, which needs Optuna), runs the
    throughput step on CPU and exits 0; the summary says what ran, what was skipped and why."""
    done, summary = _dry_run_without_ray_and_optuna(tmp_path, "throughput", "ray", "optuna", "final")
    steps = _steps(summary)
    assert summary["passed"] and summary["skipped"] == ["ray", "optuna", "final"]
    assert steps["ray"]["skipped"] == "ray and optuna are not installed"
    assert steps["optuna"]["skipped"] == steps["final"]["skipped"] == "optuna is not installed"
    throughput = steps["throughput"]
    assert throughput["passed"] and throughput["error"] is None and throughput["skipped"] is None, throughput
    assert throughput["peak_memory_mb"] is None  # CPU: no CUDA memory counter
    assert {"fractalnet_c4 / reference", "fractalnet20_cifar / reference"} <= set(throughput["numbers"])
    assert throughput["numbers"]["reference"].startswith("benchmarks/")
    env = summary["environment"]
    assert env["ray"] is None and env["optuna"] is None and env["torch"] and env["timm"] and env["gpu"] is None
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "1 of 1 steps that ran passed" in md and "| throughput | pass |" in md and "n/a (CPU)" in md
    assert "| ray | skipped: ray and optuna are not installed |" in md
    assert "ray not installed" in md and "optuna not installed" in md
    printed = done.stdout.splitlines()
    assert [line.split(":")[0] for line in printed[:4]] == ["throughput", "ray", "optuna", "final"]
    assert printed[1] == "ray: skipped: ray and optuna are not installed"


@pytest.mark.slow
def test_the_whole_dry_run_trains_every_family(data_root, tmp_path):
    """Every step in its order; the families step trains every registered family on CPU, fractalnet34 at 224x224."""
    done, summary = _dry_run_without_ray_and_optuna(tmp_path)
    assert summary["passed"] and summary["skipped"] == ["ray", "optuna", "final"]
    families = _steps(summary)["families"]
    assert families["passed"] and families["error"] is None and families["peak_memory_mb"] is None, families
    assert families["numbers"]["models"] == len(family_models()) and families["numbers"]["models"] >= 17
    assert families["numbers"]["fractalnet34"]["input"] == "224x224"
    assert families["numbers"]["fractalnet_c4"]["input"] == "32x32"
    assert [line.split(":")[0] for line in done.stdout.splitlines()[:5]] == [
        "families", "throughput", "ray", "optuna", "final"]


@pytest.mark.slow
def test_dry_run_of_the_searches_and_the_final_stage(data_root, tmp_path, capsys):
    """Ray trials run 4 at once (Tune keeps only one pending otherwise), two Optuna workers both train, and the final
    stage's exports load on CPU with equal outputs and run in ONNX Runtime."""
    code = main(["--dry-run", "--out", str(tmp_path), "--steps", "ray,optuna,final"])
    printed = capsys.readouterr().out
    steps = _steps(json.loads((tmp_path / "summary.json").read_text()))
    assert steps["ray"]["passed"] and steps["ray"]["numbers"]["at_once"] == 4, steps["ray"]
    assert steps["optuna"]["passed"] and steps["optuna"]["numbers"]["workers"] == 2, steps["optuna"]
    assert steps["final"]["passed"], steps["final"]
    exports = steps["final"]["numbers"]["exports"]
    assert len(exports) >= 2 and all(e["onnx_max_diff"] is not None for e in exports)
    assert code == 0, printed


def test_without_cuda_it_says_so_in_one_line_and_exits_2(tmp_path):
    """scripts/gpu_check.sh --python runs ``python -m fractal_space.checks.gpu`` with that interpreter (no bootstrap):
    without CUDA, one line naming the interpreter, exit code 2, nothing written."""
    done = _run(["bash", str(REPO_ROOT / "scripts" / "gpu_check.sh"), "--python", sys.executable, "--out",
                 str(tmp_path / "out")], tmp_path, CUDA_VISIBLE_DEVICES="")
    assert done.returncode == 2 and done.stdout == "", done.stdout + done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "no CUDA device" in done.stderr and sys.executable in done.stderr and "--dry-run" in done.stderr
    assert not (tmp_path / "out").exists()


def test_gpu_check_sh_refuses_a_python_that_is_not_an_interpreter(tmp_path):
    done = _run(["bash", str(REPO_ROOT / "scripts" / "gpu_check.sh"), "--python", str(tmp_path / "nope")], tmp_path)
    assert done.returncode == 2 and done.stderr.strip() == f"error: --python {tmp_path / 'nope'}: not an executable " \
        "interpreter"


def test_the_reference_comparison_is_skipped_without_a_checkout(monkeypatch, tmp_path):
    """Installed without a checkout (no benchmarks/ beside the package) the throughput step has no reference."""
    assert reference_model()[1].startswith("benchmarks/")  # this checkout has it
    monkeypatch.setattr(gpu, "CHECKOUT", tmp_path)
    name, why = reference_model()
    assert name is None and why.startswith("no benchmarks/") and str(tmp_path) in why


def test_a_step_past_its_timeout_is_killed_and_recorded_as_failed(tmp_path):
    """A hang costs its step only: the step's whole process group is killed at the timeout, the step fails with why."""
    sizes = dataclasses.replace(DRY, timeouts={"families": 1})
    ctx = Context(sizes, tmp_path, "cifar10", "cifar10", str(tmp_path))
    line = gpu._spawn_step("families", argparse.Namespace(dry_run=True), ctx)
    assert not line["passed"] and line["error"].startswith("timed out after 1 s") and line["seconds"] < 30
    assert not line["numbers"] and not (tmp_path / "logs" / "families.json").exists()
    assert not [p for p in Path("/proc").glob("[0-9]*/cmdline") if str(tmp_path) in _read(p)]  # nothing left running


def _read(path: Path) -> str:
    try:
        return path.read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:  # the process ended meanwhile
        return ""


def test_max_at_once_counts_overlapping_intervals_only():
    assert max_at_once([]) == 0
    assert max_at_once([(0, 2), (1, 3), (1.5, 4), (3.5, 5)]) == 3
    assert max_at_once([(0, 1), (1, 2), (2, 3)]) == 1  # one ends as the next starts: never together
