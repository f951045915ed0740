"""experiments/oneshot_fidelity: a scale that shares another's supernets trains only its stand-alone nets against
the one-shot side that scale recorded, when the supernets are gone; a full run records that side (slow)."""

import json

import pytest

from experiments.ledger import Ledger
from experiments.oneshot_fidelity import run as bench

SMOKE = bench.SCALES["smoke"]
SHARED = bench.Scale(2, 2, (4, 4), 200, 2, 2, "a smoke test", supernets="smoke")


@pytest.fixture
def shared_scale(monkeypatch):
    monkeypatch.setitem(bench.SCALES, "smoke-shared", SHARED)


def test_recorded_one_shot_side_is_used_only_when_the_supernets_are_gone(tmp_path, shared_scale):
    data, out = tmp_path / "data", tmp_path / "runs" / "smoke-shared"
    data.mkdir()
    assert bench.recorded(SHARED, out, data) is None  # nothing recorded: train the supernet
    (data / "smoke.json").write_text(json.dumps({"chosen": ["1-2"]}))
    assert bench.recorded(SHARED, out, data) == {"chosen": ["1-2"]}
    (tmp_path / "runs" / "smoke" / "supernet-uniform+dp").mkdir(parents=True)
    assert bench.recorded(SHARED, out, data) is None  # the supernet is here: score on it
    assert bench.recorded(SMOKE, out, data) is None  # a scale with its own supernets never reads a record


def test_the_ledger_units_are_the_scores_the_report_reads(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.complete("rank/12-2", {"acc": 0.3})
    ledger.complete("uniform+dp/bn10/12-2", {"acc": 0.25, "seconds": 1.5})
    ledger.complete("uniform+dp/bn0/1-1", {"acc": 0.1, "seconds": 0.5})
    ledger.add_invocation(started="2026-12-01 00:00 UTC", wall_seconds=3.0, load=[1.0, 2.0])
    ledger.add_invocation(started="2026-12-01 01:00 UTC", wall_seconds=1.0, load=[3.0])
    scores = bench.cached_scores(ledger)
    assert scores == {"rank": {"12-2": 0.3}, "uniform+dp/bn10": {"12-2": 0.25}, "uniform+dp/bn0": {"1-1": 0.1},
                      "score_seconds": [1.5, 0.5], "load": [1.0, 2.0, 3.0]}  # the rank pass is not timed


@pytest.mark.slow  # two tiny trainings, each validated and tested on real CIFAR-10: ~15 s of the default run
def test_shared_scale_trains_the_recorded_sub_fractals_alone(tmp_path, shared_scale):
    data = tmp_path / "data"
    data.mkdir()
    chosen = ["12-2", "1-1"]
    source = {"machine": "the source machine", "sample": 4, "variants": ["uniform+dp"], "chosen": chosen,
              "supernet_seconds": {"uniform+dp": 12.0},
              "scores": {"rank": {"12-2": 0.3, "1-1": 0.2}, "uniform+dp/bn10": {"12-2": 0.3, "1-1": 0.2},
                         "score_seconds": [1.5]}}
    (data / "smoke.json").write_text(json.dumps(source))
    bench.main(["--scale", "smoke-shared", "--out-dir", str(tmp_path / "runs"), "--data-dir", str(data),
                "--processes", "1"])
    assert not (tmp_path / "runs" / "smoke").exists()  # no supernet was trained
    assert Ledger(tmp_path / "runs" / "smoke-shared").units() == {}  # shown, never recorded as scored here
    record = json.loads((data / "smoke-shared.json").read_text())
    assert record["chosen"] == chosen and record["machine"] == "the source machine"
    assert record["scores"]["uniform+dp/bn10"] == source["scores"]["uniform+dp/bn10"]
    for name in chosen:
        assert (tmp_path / "runs" / "smoke-shared" / "standalone" / name).is_dir()
        assert 0 <= record["standalone"][name]["val_acc"] <= 1 and record["standalone"][name]["params"] > 0
    text = (tmp_path / "runs" / "smoke-shared" / "smoke-shared.md").read_text()
    assert f"`{data / 'smoke.json'}` on the source machine" in text  # where the one-shot side came from
    assert "| uniform+dp | 10 |" in text and "| uniform+dp | 0 |" not in text  # only the recorded BN rows
    assert "raises one-shot accuracy" not in text  # no BN gain without the BN 0 scores


@pytest.mark.slow
def test_a_full_run_records_the_one_shot_side_its_sharers_read(tmp_path):
    bench.main(["--scale", "smoke", "--out-dir", str(tmp_path / "runs"), "--sample", "4", "--n", "2",
                "--processes", "1", "--variants", "uniform+dp"])
    record = json.loads((tmp_path / "runs" / "smoke" / "smoke.json").read_text())  # smoke records in its run folder
    assert len(record["chosen"]) == 2 and set(record["scores"]["uniform+dp/bn0"]) == set(record["chosen"])
    assert record["sample"] == 4 and record["supernet_seconds"]["uniform+dp"] > 0


def test_a_variant_splits_into_model_keywords_and_train_fields():
    model, train = bench.variant_settings("uniform+dp+warmup")
    assert train == {"supernet_sampling": "uniform", "drop_path_warmup": 0.5}
    assert model == {"drop_path_rate": 0.15, "global_drop_fraction": 0.5}
    assert bench.variant_settings("local-dp")[1] == {"supernet_sampling": "none"}


@pytest.mark.slow
def test_rescore_trains_new_supernets_against_the_recorded_stand_alone_side(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    chosen = ["12-2", "1-1"]
    alone = {n: {"name": n, "val_acc": acc, "test_acc": acc, "params": 100, "seconds": 3.0}
             for n, acc in zip(chosen, (0.3, 0.2), strict=True)}
    (data / "smoke.json").write_text(json.dumps({
        "machine": "the stand-alone machine", "sample": 4, "variants": ["uniform+dp"], "chosen": chosen,
        "supernet_seconds": {"uniform+dp": 12.0}, "standalone": alone,
        "scores": {"rank": {"12-2": 0.3, "1-1": 0.2}, "uniform+dp/bn10": {"12-2": 0.9, "1-1": 0.8}}}))
    bench.main(["--scale", "smoke", "--out-dir", str(tmp_path / "runs"), "--data-dir", str(data), "--name", "warm",
                "--processes", "1", "--rescore", "--variants", "uniform+dp", "uniform+dp+warmup", "--bn", "10"])
    runs = tmp_path / "runs" / "smoke"
    assert not (runs / "standalone").exists()  # nothing trained alone
    run = runs / "supernet-uniform+dp+warmup"
    manifest = json.loads((run / json.loads((run / "checkpoint.json").read_text())["manifest"]).read_text())
    config = manifest["state"]["config"]
    assert config["drop_path_warmup"] == 0.5 and config["supernet_sampling"] == "uniform"
    record = json.loads((data / "warm.json").read_text())
    assert record["standalone"] == alone and record["standalone_machine"] == "the stand-alone machine"
    for variant in ("uniform+dp", "uniform+dp+warmup"):
        scored = record["scores"][f"{variant}/bn10"]
        assert set(scored) == set(chosen) and all(0 <= v <= 1 for v in scored.values())
    assert record["scores"]["uniform+dp/bn10"] != {"12-2": 0.9, "1-1": 0.8}  # scored here, not copied
    text = (runs / "warm.md").read_text()
    assert "| uniform+dp+warmup | 10 |" in text and "was not varied" not in text
    assert f"`{data / 'smoke.json'}` on the stand-alone machine" in text  # where the stand-alone side came from


def test_every_run_trains_with_the_papers_recipe_as_its_recorded_results_did(tmp_path):
    """The recorded scores were trained with the paper's recipe; the engine's default recipe is another one."""
    cfg = bench._config(bench.SCALES["smoke"], tmp_path, 1, {})
    assert (cfg.recipe, cfg.lr, cfg.schedule, cfg.nesterov) == ("paper", 0.02, "cosine", False)
