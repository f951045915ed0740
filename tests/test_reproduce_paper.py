"""benchmarks/reproduce_paper.py: the --quick smoke run writes both experiments' tables and plots, and resumes."""

import importlib.util
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("reproduce_paper", REPO_ROOT / "benchmarks" / "reproduce_paper.py")
reproduce_paper = importlib.util.module_from_spec(spec)
sys.modules["reproduce_paper"] = reproduce_paper
spec.loader.exec_module(reproduce_paper)


@pytest.fixture(scope="module")
def tiny_cifar(data_root, tmp_path_factory) -> Path:
    """The first 300 training and 100 test images of the real CIFAR-10, as a parquet dataset."""
    folder = tmp_path_factory.mktemp("tiny_cifar")
    for split, n in (("train", 300), ("test", 100)):
        table = pq.read_table(data_root / "cifar10" / f"{split}.parquet").slice(0, n)
        pq.write_table(table, folder / f"{split}.parquet")
    return folder


def test_quick_run_writes_tables_and_plots_and_resumes(tiny_cifar, tmp_path, capsys) -> None:
    doc = tmp_path / "doc" / "reproduction.md"
    # two of experiment A's five variants: the other three train the same network the same way, with other rates
    argv = ["--quick", "--dataset", f"parquet:{tiny_cifar}", "--train-subset", "200", "--val-size", "50",
            "--variants", "none", "paper", "--num-threads", "1", "--out-dir", str(tmp_path / "runs"), "--doc", str(doc)]
    assert reproduce_paper.main(argv) == 0
    assert "estimated" in capsys.readouterr().out.splitlines()[0]
    text = doc.read_text()
    assert "Smoke test (`--quick`), not a result" in text
    assert "Written by `python benchmarks/reproduce_paper.py --quick --dataset parquet:" in text
    for heading in ("## A. Anytime prediction", "## B. Table 4 at CPU scale", "| variant | column 1 acc (%)",
                    "| full fractal net |", "Claim (a)", "Claim (b)", "Wall time of the whole run"):
        assert heading in text
    for variant in ("none", "paper"):
        assert f"| {variant} |" in text
    assert "| warmup |" not in text
    assert "Latencies: ms per image at batch 1, ONNX Runtime." in text  # deployed, not eager
    for depth in (5, 10, 20, 40):
        assert f"\n| {depth} | " in text
    for png in ("anytime.png", "table4.png"):
        path = doc.parent / "reproduction" / png
        assert path.read_bytes().startswith(b"\x89PNG")
        assert f"(reproduction/{png})" in text
    results = sorted((tmp_path / "runs").rglob("result.json"))
    assert len(results) == 6  # 2 variants of experiment A + 4 plain nets, one seed
    stamps = [p.stat().st_mtime_ns for p in results]
    assert "Wall time of the whole run: **" in text and "1 invocation(s) that trained" in text
    assert reproduce_paper.main(argv) == 0  # a re-run reuses every finished run
    assert [p.stat().st_mtime_ns for p in results] == stamps
    (ledger,) = [reproduce_paper.read_invocations(tmp_path / "runs")]
    assert len(ledger) == 1 and ledger[0].trained == 6 and ledger[0].runs == 6  # the re-render trained nothing
    assert "This invocation trained nothing (every run cached)" in doc.read_text()


def _result(columns: list[float], full: float, loss: float = 1.0) -> dict:
    return {"test_acc": full, "latency_ms": 2.0, "train_loss": loss, "train_seconds": 1.0,
            "columns": [{"column": k + 1, "test_acc": a, "latency_ms": 0.1 * (k + 1)} for k, a in enumerate(columns)],
            "column_train_loss": [loss] * len(columns)}


def test_doc_says_which_claims_hold_and_which_fail(tmp_path) -> None:
    """A claim that fails is written as failing: here (a) holds for one variant only, (b) fails."""
    variants = [v for v in reproduce_paper.VARIANTS if v.name in ("none", "paper")]
    by_run = {("A", "none"): [_result([0.3, 0.2, 0.2, 0.1], 0.8)] * 2,
              ("A", "paper"): [_result([0.5, 0.6, 0.7, 0.78], 0.8), _result([0.5, 0.6, 0.7, 0.8], 0.8)]}
    for depth, acc in zip(reproduce_paper.DEPTHS, (0.5, 0.6, 0.7, 0.9), strict=True):  # no degradation at 40
        by_run[("B", f"plain{depth}")] = [_result([], acc)] * 2
    scale = reproduce_paper.SCALES["cpu"]
    common = dict(device="cpu", dataset="cifar10")
    doc = tmp_path / "reproduction.md"
    runs = [reproduce_paper.Invocation("2026-12-01 23:54 UTC", 4500.0, 13, 18),
            reproduce_paper.Invocation("2026-12-02 01:09 UTC", 1350.0, 5, 18),
            reproduce_paper.Invocation("2026-12-02 01:40 UTC", 3.0, 0, 18)]  # a re-render of cached results
    reproduce_paper.write_doc(reproduce_paper.Results(by_run), variants, "python benchmarks/reproduce_paper.py",
                              "cpu", scale, 2, common, runs[:2], runs[2], doc)
    text = doc.read_text()
    assert "Wall time of the whole run: **97.5 min** in 2 invocation(s) that trained: 75.0 min (13 of 18 runs, " \
           "started 2026-12-01 23:54 UTC) + 22.5 min (5 of 18 runs, started 2026-12-02 01:09 UTC). This invocation " \
           "trained nothing (every run cached) and took 0.1 min." in text
    assert "Smoke test" not in text
    assert "**holds** for: paper." in text
    assert "**none**: columns do not rise with depth (30.0 / 20.0 / 20.0 / 10.0); deepest column 10.0 vs full net " \
           "80.0, 70.0 points below it (not within 3 below)" in text
    assert "| paper | 50.0 (50.0-50.0) | 60.0 (60.0-60.0) | 70.0 (70.0-70.0) | 79.0 (78.0-80.0) | 80.0" in text
    assert "Claim (b), a 40-layer plain network that trains badly alone trains better as a fractal column, " \
           "**cannot be tested** at this budget: the 40-layer plain net did not degrade here." in text
    assert "- Drop-path's cost to the full network against none: paper +0.0 points." in text

    by_run[("B", "plain40")] = [_result([], 0.1)] * 2  # now it degrades, and the paper variant's column 4 beats it
    reproduce_paper.write_doc(reproduce_paper.Results(by_run), variants, "python benchmarks/reproduce_paper.py",
                              "cpu", scale, 2, common, runs[:2], runs[1], doc)
    text = doc.read_text()
    assert "trains better as a fractal column, **holds** at this budget for: paper." in text
    assert "This invocation trained nothing" not in text

    by_run[("B", "plain40")] = [_result([], 0.15), _result([], 0.79)]  # column 4's errors inside the plain's range
    reproduce_paper.write_doc(reproduce_paper.Results(by_run), variants, "python benchmarks/reproduce_paper.py",
                              "cpu", scale, 2, common, runs[:2], runs[1], doc)
    text = doc.read_text()
    assert "the 40-layer column is within the seeds' spread of the 40-layer plain net" in text
    assert "**is not shown** at this budget: no 40-layer column's error was below the 40-layer plain net's on " \
           "every seed." in text
    assert "- Columns of the fractal net (paper): error 50.0 / 40.0 / 30.0 / 21.0, not rising with every step" in text


def test_default_budget_fits_in_two_and_a_half_hours(tmp_path) -> None:
    """Every variant, both experiments, 2 seeds at the CPU scale: estimated at most 2.5 h on 2 idle cores."""
    plan = reproduce_paper.Plan.build(reproduce_paper.SCALES["cpu"], 2, reproduce_paper.VARIANTS, tmp_path,
                                      dict(device="cpu", dataset="cifar10"))
    assert len(plan.runs) == 2 * (len(reproduce_paper.VARIANTS) + 4)
    warmups = {name: cfg.drop_path_warmup for experiment, name, _, cfg in plan.runs if experiment == "A"}
    assert warmups == {"none": 0.0, "paper": 0.0, "no-dropout": 0.0, "low-rate": 0.0, "warmup": 0.5}  # the engine's
    assert 60 <= plan.estimate_seconds() / 60 <= 150
