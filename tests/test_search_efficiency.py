"""experiments/search_efficiency: how a run's trials become a best-so-far curve over training images, the common
budget's comparison and the verdict; the --quick run end to end (slow) through the real CLI, resumed."""

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from experiments.ledger import Ledger
from experiments.search_efficiency import run as bench

REPO = bench.REPO


def _trials(rows):
    """trials.parquet rows (state, epochs_run, val_acc) in finishing order, plus a baseline that must not count."""
    t0 = pd.Timestamp("2026-01-01")
    df = pd.DataFrame([{"number": i, "kind": "fractalnet", "state": s, "epochs_run": e, "val_acc": a,
                        "datetime_complete": t0 + pd.Timedelta(seconds=i)} for i, (s, e, a) in enumerate(rows)])
    baseline = {"number": 99, "kind": "baseline", "state": "COMPLETE", "epochs_run": 27, "val_acc": 0.99,
                "datetime_complete": t0}
    return pd.concat([df, pd.DataFrame([baseline])], ignore_index=True).sample(frac=1, random_state=0)


def test_curve_counts_every_trials_images_and_only_top_rung_scores():
    run = bench.curve(_trials([("COMPLETE", 9, 0.30), ("PRUNED", 1, 0.90), ("FAIL", None, math.nan),
                               ("PRUNED", 3, 0.50), ("COMPLETE", 9, 0.40), ("COMPLETE", 9, 0.35)]), 100)
    assert run.images.tolist() == [900, 1000, 1000, 1300, 2200, 3100]
    assert run.best.tolist() == [0.30, 0.30, 0.30, 0.30, 0.40, 0.40]  # a pruned trial's 0.90 is a lower rung's
    assert bench.best_at(run, 999) == 0.30 and bench.best_at(run, 2200) == 0.40 and math.isnan(bench.best_at(run, 5))
    assert bench.images_to_reach(run, 0.38) == 2200 and math.isnan(bench.images_to_reach(run, 0.5))
    other = bench.curve(_trials([("PRUNED", 1, 0.2), ("COMPLETE", 9, 0.2)]), 100)
    median, low, high = bench.band([run, other], np.array([50.0, 1000.0, 3000.0]))
    assert math.isnan(median[0]) and (low[1], high[1]) == (0.2, 0.3) and median[2] == pytest.approx(0.3)


def test_verdict_names_the_winner_only_when_the_seeds_separate_it_even_if_it_is_random_search():
    clear = {"tpe-sh": [0.40, 0.41, 0.42], "random-sh": [0.45, 0.46, 0.47], "random-full": [0.3] * 3}
    first, second, lead, separated = bench.ranking(clear)
    assert (first, second, separated) == ("random-sh", "tpe-sh", True) and lead == pytest.approx(5.0)
    assert bench.verdict(clear).startswith("Random + successive halving wins")  # the sentence starts capitalised
    assert "5.0 points" in bench.verdict(clear)
    overlap = {"tpe-sh": [0.40, 0.45, 0.50], "random-sh": [0.41, 0.44, 0.46], "random-full": [0.3, 0.4, 0.42]}
    first, second, lead, separated = bench.ranking(overlap)
    assert (first, second, separated) == ("tpe-sh", "random-sh", False) and lead == pytest.approx(1.33, abs=0.01)
    assert bench.verdict(overlap).startswith("No method wins")


def test_the_cpu_scale_keeps_the_default_rungs_shape_and_equal_images_for_the_no_early_stopping_control(tmp_path):
    cpu = bench.SCALES["cpu"]
    assert (cpu.rungs, cpu.top, cpu.full_trials, cpu.seeds) == (3, 2_700, 7, 3)  # 27 x 700 = 7 x 2,700 images
    full = bench.cli_args("random-full", 2, cpu, tmp_path, "cifar10")
    sh = bench.cli_args("tpe-sh", 2, cpu, tmp_path, "cifar10")
    arg = lambda args, flag: args[args.index(flag) + 1]  # noqa: E731
    assert [arg(full, f) for f in ("--sampler", "--trials", "--rung-images", "--rungs", "--seed")] == \
        ["random", "7", "2700", "1", "2"]
    assert [arg(sh, f) for f in ("--sampler", "--trials", "--rung-images", "--rungs")] == ["tpe", "27", "300", "3"]
    assert arg(sh, "--final-top") == "1" and arg(sh, "--final-spread") == "0"
    assert (tmp_path / "space.yaml").read_text().startswith("bn_batches: 2")
    assert arg(sh, "--space") == arg(full, "--space") == str(tmp_path / "space.yaml")


def test_a_study_at_the_measured_scale_quotes_the_finding_the_library_ships(tmp_path):
    """The report reads the finding from the package (a path from report.py into the repository pointed nowhere once
    the module moved, and every report said the advantage had not been measured), and it is what the page found."""
    from fractal_space.search.cli import build_parser, settings_from_args
    from fractal_space.search.results import report

    args = bench.cli_args("tpe-sh", 0, bench.SCALES["cpu"], tmp_path, "cifar10")
    shipped = json.loads(report.EFFICIENCY.read_text())
    (tmp_path / "space.yaml").write_text(json.dumps(shipped["scale"]["space"]))  # the space it was measured in
    settings = settings_from_args(build_parser().parse_args(args))
    assert report.EFFICIENCY.parent == Path(report.__file__).parent
    # measured with the paper's recipe and augmentation: a study with others is another experiment
    assert report._sampler_evidence(settings).startswith("not measured at this study's scale")  # noqa: SLF001
    paper = dataclasses.replace(settings, budget=settings.budget.replace(recipe="paper", augment="+"))
    assert report._sampler_evidence(paper) == (  # noqa: SLF001
        f"measured at this study's scale in {report.EFFICIENCY_PAGE}: {shipped['finding']}")
    assert f"**Finding.** {shipped['finding']}" in (REPO / report.EFFICIENCY_PAGE).read_text()


@pytest.mark.slow
def test_quick_run_writes_the_document_and_a_rerun_reuses_every_run(tmp_path, capsys):
    argv = ["--quick", "--out-dir", str(tmp_path / "out"), "--doc", str(tmp_path / "doc" / "README.md")]
    assert bench.main(argv) == 0
    text = (tmp_path / "doc" / "README.md").read_text()
    for heading in ("Smoke test (`--quick`)", "**Finding.**", "## Results", "## Every run",
                    "Images TPE needed", "## Wall time", "](best-so-far.png)"):
        assert heading in text
    assert (tmp_path / "doc" / "best-so-far.png").stat().st_size > 1000
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())  # --quick never replaces the library's
    assert summary["scale"]["trials"] == bench.SCALES["quick"].trials and summary["finding"] in text
    ledger = Ledger(tmp_path / "out")
    assert sorted(ledger.units()) == [f"{m}-s0" for m in sorted(bench.METHODS)] and len(ledger.invocations()) == 1
    capsys.readouterr()
    before = (tmp_path / "out" / "runs" / "tpe-sh-s0" / "trials.parquet").read_bytes()
    assert bench.main(argv) == 0
    assert "3 runs (3 finished before, reused)" in capsys.readouterr().out
    assert (tmp_path / "out" / "runs" / "tpe-sh-s0" / "trials.parquet").read_bytes() == before
    assert len(ledger.invocations()) == 1  # the re-render ran nothing
