"""experiments/oneshot_compare: pauses left out of a run's wall time; the report from two real tiny searches, one per
strategy, both retrained by the final stage (slow)."""

import pytest
from search_cli import run_search

from experiments.ledger import Ledger
from experiments.oneshot_compare import run as bench


def test_pauses_inside_the_window_are_left_out_of_the_wall_time(tmp_path):
    ledger = Ledger(tmp_path)
    assert ledger.paused_seconds(0, 100) == 0  # no ledger, no pauses
    for at, event in ((10, "stop"), (20, "cont"), (50, "stop"), (70, "cont"), (90, "stop"), (130, "cont"),
                      (200, "stop"), (210, "cont")):
        ledger.pause(event, at)
    assert ledger.paused_seconds(0, 100) == 10 + 20 + 10  # the pause across the end counts up to the end
    assert ledger.paused_seconds(15, 60) == 5 + 10


@pytest.mark.slow
def test_the_document_compares_two_real_searches_and_their_final_stages(tmp_path):
    final = ("--trials", "2", "--final-top", "1", "--final-epochs", "1")
    multi, one = tmp_path / "multi", tmp_path / "one"
    assert run_search(multi, bench.STUDIES["multitrial"], *final) == 0
    assert run_search(one, bench.STUDIES["oneshot"], *final, "--strategy", "oneshot") == 0
    doc = tmp_path / "compare.md"
    assert bench.main(["--no-run", "--trials", "2", "--multitrial-runs", str(multi), "--oneshot-runs", str(one),
                       "--doc", str(doc)]) == 0
    stage = bench.search_stage(one, "oneshot")
    assert stage["wall_s"] >= stage["supernet_s"] > 0 and stage["supernet_images"] > 0  # the supernet is in the stage
    text = doc.read_text()
    trials = next(line for line in text.splitlines() if line.startswith("| FractalNet trials |"))
    assert [cell.split()[0] for cell in trials.strip("|").split("|")[1:]] == ["2", "2"]  # multi-trial, one-shot
    assert text.count("top 1 retrained") == 2  # both final stages
    assert "`--trials 2`" in text.splitlines()[0] and "not the CPU default" in text.splitlines()[0]
    whole = [line for line in text.splitlines() if line.startswith("| search and final stage |")]
    assert len(whole) == 1 and whole[0].count(" min") == 2  # both runs end to end, final stage included
    assert bench.main(["--no-run", "--trials", "2", "--multitrial-runs", str(multi), "--oneshot-runs", str(one),
                       "--oneshot-args", "--final-spread 0", "--doc", str(doc)]) == 0
    assert "one-shot with `--final-spread 0`" in doc.read_text().splitlines()[0]  # what the one-shot side ran with
    assert bench.main(["--no-run", "--multitrial-runs", str(tmp_path / "none"), "--oneshot-runs", str(one),
                       "--doc", str(doc)]) == 2
