"""experiments/ledger.py: the resume record every experiment keeps in its run folder."""

import json

import pytest

from experiments.ledger import LEDGER, Ledger, main


def test_the_ledger_keeps_invocations_units_and_pauses_in_one_json_file(tmp_path):
    ledger = Ledger(tmp_path / "run")
    assert ledger.invocations() == [] and ledger.units() == {} and ledger.unit("a") is None
    assert not (tmp_path / "run").exists()  # reading creates nothing
    ledger.add_invocation(started="2026-12-01 00:00 UTC", wall_seconds=5.0)
    ledger.complete("a", {"acc": 0.5})
    ledger.complete("a", {"acc": 0.6})  # a unit finished again replaces its record
    ledger.pause("stop", 1.0)
    again = Ledger(tmp_path / "run")  # what a later invocation reads
    assert again.invocations() == [{"started": "2026-12-01 00:00 UTC", "wall_seconds": 5.0}]
    assert again.unit("a") == {"acc": 0.6}
    assert json.loads((tmp_path / "run" / LEDGER).read_text())["pauses"] == [{"at": 1.0, "event": "stop"}]
    assert [p.name for p in (tmp_path / "run").iterdir()] == [LEDGER]  # atomic writes leave no temporary file


def test_a_pause_event_other_than_stop_or_cont_is_refused_in_one_line(tmp_path):
    with pytest.raises(ValueError, match="pause event 'pause' is not one of stop, cont"):
        Ledger(tmp_path).pause("pause")


def test_the_command_line_records_a_pause_now(tmp_path):
    assert main([str(tmp_path), "stop"]) == 0
    assert main([str(tmp_path), "cont"]) == 0
    (stop, cont) = Ledger(tmp_path).read()["pauses"]
    assert (stop["event"], cont["event"]) == ("stop", "cont") and stop["at"] <= cont["at"]
    assert Ledger(tmp_path).paused_seconds(0, 1e12) == cont["at"] - stop["at"]


def test_threads_sharing_a_ledger_lose_no_unit(tmp_path):
    """The search-efficiency experiment's workers record finished studies from several threads at once."""
    from concurrent.futures import ThreadPoolExecutor

    ledger = Ledger(tmp_path)
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda i: ledger.complete(f"unit{i}", {"i": i}), range(40)))
    assert Ledger(tmp_path).units() == {f"unit{i}": {"i": i} for i in range(40)}
