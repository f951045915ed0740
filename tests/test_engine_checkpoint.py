"""Checkpoints: damaged files are walked back past or named in one line, killed writes leave nothing, no pickle."""

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from fractal_space.engine import CheckpointError, TrainConfig, Trainer

TINY = dict(model="test_efficientnet", train_subset=100, val_size=100, batch_size=50, progress=False,
            download=False, num_threads=1, epochs=2, schedule="constant", eval_columns=False)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A completed 2-epoch run; each test damages its own copy."""
    out = tmp_path_factory.mktemp("run") / "run"
    threads = torch.get_num_threads()
    list(Trainer(TrainConfig(**TINY, out_dir=str(out))).epochs())
    torch.set_num_threads(threads)
    return out


@pytest.fixture
def run(finished_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


def _trainer(out: Path) -> Trainer:
    return Trainer(TrainConfig(**TINY, out_dir=str(out)))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_truncated_newest_weights_resume_from_the_epoch_before(run, caplog):
    _truncate(run / "epoch-0002.safetensors")
    with caplog.at_level(logging.WARNING, logger="fractal_space.engine.checkpoint"):
        trainer = _trainer(run)
    assert trainer.epoch == 1
    (record,) = caplog.records
    assert "epoch-0002.safetensors" in record.getMessage() and "resuming from epoch 1" in record.getMessage()
    assert [r.epoch for r in trainer.history] == [1]
    assert [r.epoch for r in trainer.epochs()] == [2]  # and it trains the lost epoch again
    assert _trainer(run).epoch == 2


@pytest.mark.parametrize("damaged", ["checkpoint.json", "epoch-0002.json", "epoch-0002.state.safetensors"])
def test_truncated_pointer_or_manifest_or_state(run, damaged):
    _truncate(run / damaged)
    assert _trainer(run).epoch == (2 if damaged == "checkpoint.json" else 1)


def test_nothing_verifies_is_one_line_naming_the_file(run):
    for epoch in (1, 2):
        _truncate(run / f"epoch-000{epoch}.safetensors")
    with pytest.raises(CheckpointError) as err:
        _trainer(run)
    msg = str(err.value)
    assert "\n" not in msg and str(run / "epoch-0002.safetensors") in msg and "start over" in msg


def test_temp_files_of_killed_writes_are_removed_on_resume(run):
    stale = [run / ".epoch-0003.safetensors.k2j4.tmp", run / ".checkpoint.json.x9q1.tmp",
             run / ".epoch-0003.state.safetensors.a1.tmp"]
    for path in stale:
        path.write_bytes(b"partial")
    assert _trainer(run).epoch == 2
    assert not any(p.exists() for p in stale)


class _Payload:
    """Unpickling this creates ``path``: the code execution a pickle-based checkpoint would allow."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_a_crafted_pickle_state_is_refused_and_runs_nothing(tmp_path):
    out, marker = tmp_path / "run", tmp_path / "code-ran"
    out.mkdir()
    torch.save({"config": {}, "optimizer": _Payload(marker)}, out / "epoch-0001.state.pt")  # as the old format did
    (out / "checkpoint.json").write_text(json.dumps({"epoch": 1, "weights": "epoch-0001.safetensors",
                                                     "state": "epoch-0001.state.pt"}))
    with pytest.raises(CheckpointError, match="pickle format"):
        _trainer(out)
    assert not marker.exists()


def test_state_is_stored_without_pickle(run):
    manifest = json.loads((run / "epoch-0002.json").read_text())
    assert set(manifest["files"]) == {"epoch-0002.safetensors", "epoch-0002.state.safetensors"}
    assert not list(run.glob("*.pt"))
    resumed = _trainer(run)
    momentum = [s["momentum_buffer"] for s in resumed.optimizer.state_dict()["state"].values()]
    assert momentum and all(isinstance(m, torch.Tensor) and m.abs().sum() > 0 for m in momentum)
