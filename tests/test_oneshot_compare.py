"""benchmarks/oneshot_compare.py: pauses left out of a run's wall time; the document from two real tiny searches, one
per strategy, both retrained by the final stage (slow)."""

import importlib.util
import sys
from pathlib import Path

import pytest
from search_cli import run_search

REPO_ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("oneshot_compare", REPO_ROOT / "benchmarks" / "oneshot_compare.py")
bench = importlib.util.module_from_spec(spec)
sys.modules["oneshot_compare"] = bench
spec.loader.exec_module(bench)


def test_pauses_inside_the_window_are_left_out_of_the_wall_time(tmp_path):
    pauses = tmp_path / "pauses.log"
    assert bench.paused_seconds(pauses, 0, 100) == 0  # no log, no pauses
    pauses.write_text("10 stop\n20 cont\n50 stop\n70 cont\n90 stop\n130 cont\n200 stop\n210 cont\n")
    assert bench.paused_seconds(pauses, 0, 100) == 10 + 20 + 10  # the pause across the end counts up to the end
    assert bench.paused_seconds(pauses, 15, 60) == 5 + 10


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
    assert "| FractalNet trials | 2 (trained from scratch" in text and "| 2 (sub-fractals on one supernet) |" in text
    assert text.count("top 1 retrained, test accuracy best") == 2
    assert "(`--trials 2`, not the CPU default of 200 trials" in text
    whole = [line for line in text.splitlines() if line.startswith("| search and final stage |")]
    assert len(whole) == 1 and whole[0].count(" min") == 2  # both runs end to end, final stage included
    assert bench.main(["--no-run", "--trials", "2", "--multitrial-runs", str(multi), "--oneshot-runs", str(one),
                       "--oneshot-args", "--final-spread 0", "--doc", str(doc)]) == 0
    assert "one-shot with `--final-spread 0`" in doc.read_text()  # what the one-shot side alone ran with
    assert bench.main(["--no-run", "--multitrial-runs", str(tmp_path / "none"), "--oneshot-runs", str(one),
                       "--doc", str(doc)]) == 2
