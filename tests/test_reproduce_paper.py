"""experiments/reproduce_paper: the --quick smoke run writes both experiments' tables and plots, and resumes; the
claims' verdicts follow the numbers."""

import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from experiments.ledger import Ledger
from experiments.reproduce_paper.run import (
    DEPTHS,
    SCALES,
    VARIANTS,
    Invocation,
    Plan,
    Results,
    anytime_verdict,
    claim_b,
    main,
    read_invocations,
    write_doc,
)

HEADER = re.compile(r"Written by `(?P<command>[^`]+)`, run from the repository root \(a re-run resumes\), at "
                    r"(commit \w+ \((clean|with uncommitted changes)\)|an unknown commit \(not a git checkout\)) "
                    r"on .+, \d{4}-\d\d-\d\d \d\d:\d\d UTC\.")


def table_row(text: str, first: str) -> list[str]:
    """The cells of the Markdown table row whose first cell is ``first``."""
    (row,) = [line for line in text.splitlines() if line.startswith(f"| {first} |")]
    return [cell.strip() for cell in row.strip("|").split("|")]


@pytest.fixture(scope="module")
def tiny_cifar(data_root, tmp_path_factory) -> Path:
    """The first 300 training and 100 test images of the real CIFAR-10, as a parquet dataset."""
    folder = tmp_path_factory.mktemp("tiny_cifar")
    for split, n in (("train", 300), ("test", 100)):
        table = pq.read_table(data_root / "cifar10" / f"{split}.parquet").slice(0, n)
        pq.write_table(table, folder / f"{split}.parquet")
    return folder


@pytest.mark.slow
def test_quick_run_writes_tables_and_plots_and_resumes(tiny_cifar, tmp_path, capsys) -> None:
    doc = tmp_path / "doc" / "README.md"
    # two of experiment A's five variants: the other three train the same network the same way, with other rates
    argv = ["--quick", "--dataset", f"parquet:{tiny_cifar}", "--train-subset", "200", "--val-size", "50",
            "--variants", "none", "paper", "--num-threads", "1", "--out-dir", str(tmp_path / "runs"), "--doc", str(doc)]
    assert main(argv) == 0
    assert "estimated" in capsys.readouterr().out.splitlines()[0]
    text = doc.read_text()
    assert "Smoke test (`--quick`)" in text
    assert HEADER.search(text)["command"] == "python -m experiments.reproduce_paper.run " + " ".join(argv)
    for heading in ("## A. Anytime prediction", "## B. Table 4 at CPU scale", "| variant | column 1 acc (%)",
                    "| full fractal net |", "Claim (a)", "Claim (b)", "Wall time of the whole run"):
        assert heading in text
    for variant in ("none", "paper"):
        cells = table_row(text, variant)
        assert len(cells) == 11  # variant, 4 columns' and the full net's accuracy, then their 5 latencies
        assert all(0 <= float(c) <= 100 for c in cells[1:6])
    assert "| warmup |" not in text
    assert "ONNX Runtime" in text  # latencies deployed, not eager
    for depth in DEPTHS:
        assert len(table_row(text, str(depth))) == 7  # depth, plain (2), the paper variant's column (2), paper (2)
    for png in ("anytime.png", "table4.png"):
        assert (doc.parent / png).read_bytes().startswith(b"\x89PNG")
        assert f"]({png})" in text
    ledger = Ledger(tmp_path / "runs")
    units = ledger.units()
    assert sorted(units) == sorted([f"A/{v}/seed0" for v in ("none", "paper")]
                                   + [f"B/plain{d}/seed0" for d in DEPTHS])  # 2 variants + 4 plain nets, one seed
    assert all("deployed_latency_ms" in units[f"A/{v}/seed0"] for v in ("none", "paper"))
    written = ledger.path.stat().st_mtime_ns
    assert "1 invocation(s) that trained" in text
    assert main(argv) == 0  # a re-run reuses every finished run: nothing trained, nothing recorded
    assert ledger.path.stat().st_mtime_ns == written
    (invocation,) = read_invocations(ledger)
    assert (invocation.trained, invocation.runs) == (6, 6)
    assert "trained nothing" in doc.read_text()


def _result(columns: list[float], full: float, loss: float = 1.0) -> dict:
    return {"test_acc": full, "latency_ms": 2.0, "train_loss": loss, "train_seconds": 1.0,
            "columns": [{"column": k + 1, "test_acc": a, "latency_ms": 0.1 * (k + 1)} for k, a in enumerate(columns)],
            "column_train_loss": [loss] * len(columns)}


def test_doc_says_which_claims_hold_and_which_fail(tmp_path) -> None:
    """A claim that fails is written as failing: here (a) holds for one variant only, (b) fails."""
    variants = [v for v in VARIANTS if v.name in ("none", "paper")]
    dropped = [v for v in variants if v.drop_path]
    by_run = {("A", "none"): [_result([0.3, 0.2, 0.2, 0.1], 0.8)] * 2,
              ("A", "paper"): [_result([0.5, 0.6, 0.7, 0.78], 0.8), _result([0.5, 0.6, 0.7, 0.8], 0.8)]}
    for depth, acc in zip(DEPTHS, (0.5, 0.6, 0.7, 0.9), strict=True):  # no degradation at 40
        by_run[("B", f"plain{depth}")] = [_result([], acc)] * 2
    scale = SCALES["cpu"]
    common = dict(device="cpu", dataset="cifar10")
    doc = tmp_path / "README.md"
    runs = [Invocation("2026-12-01 23:54 UTC", 4500.0, 13, 18), Invocation("2026-12-02 01:09 UTC", 1350.0, 5, 18),
            Invocation("2026-12-02 01:40 UTC", 3.0, 0, 18)]  # a re-render of recorded results
    results = Results(by_run)
    write_doc(results, variants, "python -m experiments.reproduce_paper.run", "cpu", scale, 2, common, runs[:2],
              runs[2], doc)
    text = doc.read_text()
    wall = next(line for line in text.splitlines() if line.startswith("Wall time of the whole run"))
    assert [float(m) for m in re.findall(r"([\d.]+) min", wall)] == [97.5, 75.0, 22.5, 0.1, 0.2]
    assert "(13 of 18 runs" in wall and "(5 of 18 runs" in wall and "trained nothing" in wall
    assert "Smoke test" not in text
    rising, close, why = anytime_verdict(results, "none")
    assert (rising, close) == (False, False) and "30.0 / 20.0 / 20.0 / 10.0" in why and "70.0 points" in why
    assert anytime_verdict(results, "paper")[:2] == (True, True)
    assert "**holds** for: paper." in text
    assert table_row(text, "paper")[1:6] == ["50.0 (50.0-50.0)", "60.0 (60.0-60.0)", "70.0 (70.0-70.0)",
                                             "79.0 (78.0-80.0)", "80.0 (80.0-80.0)"]
    assert claim_b(results, dropped) == ("cannot be tested", {"paper": "worse than"})
    assert "**cannot be tested**" in text
    assert "paper +0.0 points" in text  # drop-path's cost to the full network against none

    by_run[("B", "plain40")] = [_result([], 0.1)] * 2  # now it degrades, and the paper variant's column 4 beats it
    write_doc(results, variants, "python -m experiments.reproduce_paper.run", "cpu", scale, 2, common, runs[:2],
              runs[1], doc)
    text = doc.read_text()
    assert claim_b(results, dropped) == ("holds", {"paper": "better than"})
    assert "trains better as a fractal column, **holds** at this budget for: paper." in text
    assert "trained nothing" not in text

    by_run[("B", "plain40")] = [_result([], 0.15), _result([], 0.79)]  # column 4's errors inside the plain's range
    write_doc(results, variants, "python -m experiments.reproduce_paper.run", "cpu", scale, 2, common, runs[:2],
              runs[1], doc)
    text = doc.read_text()
    assert claim_b(results, dropped) == ("is not shown", {"paper": "within the seeds' spread of"})
    assert "**is not shown**" in text
    columns = next(line for line in text.splitlines() if line.startswith("- Columns of the fractal net (paper)"))
    assert "50.0 / 40.0 / 30.0 / 21.0" in columns and "not rising" in columns


def test_default_budget_fits_in_two_and_a_half_hours(tmp_path) -> None:
    """Every variant, both experiments, 2 seeds at the CPU scale: estimated at most 2.5 h on 2 idle cores."""
    plan = Plan.build(SCALES["cpu"], 2, VARIANTS, tmp_path, dict(device="cpu", dataset="cifar10"))
    assert len(plan.runs) == 2 * (len(VARIANTS) + 4)
    warmups = {name: cfg.drop_path_warmup for experiment, name, _, cfg in plan.runs if experiment == "A"}
    assert warmups == {"none": 0.0, "paper": 0.0, "no-dropout": 0.0, "low-rate": 0.0, "warmup": 0.5}  # the engine's
    assert {cfg.recipe for *_, cfg in plan.runs} == {"paper"}  # the paper's claims, tested with the paper's recipe
    assert 60 <= plan.estimate_seconds() / 60 <= 150
