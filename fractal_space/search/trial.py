"""One search trial: build a TrainConfig from a sampled config and a budget, train it, summarise it as a record.

Both backends call :func:`run_trial`; they differ only in what ``on_epoch`` does with each epoch's record
(Optuna: ``trial.report`` + pruning; Ray: ``tune.report`` for ASHA), so there is one trial procedure.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FRACTAL_MODEL = "fractalnet_c3"  # any registered FractalNet variant: model_kwargs override its B, C and widths
#: What each objective name minimises next to (maximised) validation accuracy; ``accuracy`` is single-objective.
OBJECTIVES = {"accuracy": None, "params": "params", "flops": "flops", "latency": "latency_ms"}


@dataclass(frozen=True)
class Budget:
    """Per-trial data and compute budget shared by every trial and every baseline of a study (same recipe)."""

    dataset: str = "cifar10"
    data_dir: str | None = None
    epochs: int = 3
    train_subset: int | None = 2000
    val_size: int = 500
    schedule: str = "cosine"
    augment: str = "+"
    momentum: float = 0.9
    seed: int = 0
    device: str = "auto"
    num_threads: int | None = None

    @classmethod
    def default(cls, hardware: str, **overrides: Any) -> Budget:
        """The stock budget for ``hardware`` ('cpu' or 'cuda').

        CPU (2 cores, one single-threaded trial per core): 3 epochs x 2000 images + 500 validation images; the
        whole 200-trial search measured 25 min 47 s on the shared machine (8.3 min of it baselines, median trial
        9 s), up to ~45 min when TPE favours larger nets. GPU: 45k images x 15 epochs with 5k validation images
        is a meaningful (if short-schedule) ranking of architectures.
        """
        if hardware == "cpu":
            base = cls(epochs=3, train_subset=2000, val_size=500, device="cpu")
        else:
            base = cls(epochs=15, train_subset=None, val_size=5000, device="cuda")
        return dataclasses.replace(base, **overrides)


class Pruned(Exception):
    """Raised by an ``on_epoch`` callback to stop a trial early (the backend records it as PRUNED)."""


def epoch_record(report: Any, trainer: Any, epochs: int) -> dict[str, Any]:
    """Flatten one EpochReport + the model's size into the JSON-able record stored with the trial."""
    return {
        "epoch": report.epoch,
        "epochs": epochs,
        "val_acc": float(report.val_acc),
        "val_loss": float(report.val_loss),
        "train_loss": float(report.train_loss),
        "train_acc": float(report.train_acc),
        "latency_ms": float(report.latency_ms),
        "train_images_per_s": float(report.train_images_per_s),
        "epoch_seconds": float(report.epoch_seconds),
        "params": int(trainer.num_params),
        "flops": int(trainer.flops),
        "column_val_acc": [float(c.val_acc) for c in report.columns],
        "column_latency_ms": [float(c.latency_ms) for c in report.columns],
    }


def objective_values(record: dict[str, Any], objective: str) -> list[float]:
    """The study's objective values for a finished record: accuracy first, then the cost it trades against."""
    values = [record["val_acc"]]
    if OBJECTIVES[objective]:
        values.append(float(record[OBJECTIVES[objective]]))
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"non-finite objective values {values}")
    return values


def run_trial(model: str, model_kwargs: dict[str, Any], train: dict[str, Any], budget: Budget,
              out_dir: Path | None, on_epoch: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Train one network under ``budget``; ``on_epoch`` sees each epoch's record and may raise :class:`Pruned`.

    Returns the last epoch's record plus the wall time; exceptions (incl. TrainingDiverged, OOM) propagate so the
    backend can mark the trial FAIL with the reason.
    """
    from fractal_space.engine import TrainConfig, Trainer

    started = time.perf_counter()
    cfg = TrainConfig(
        model=model, model_kwargs=dict(model_kwargs), dataset=budget.dataset, data_dir=budget.data_dir,
        epochs=budget.epochs, schedule=budget.schedule, augment=budget.augment, momentum=budget.momentum,
        train_subset=budget.train_subset, val_size=budget.val_size, seed=budget.seed, device=budget.device,
        num_threads=budget.num_threads, out_dir=None if out_dir is None else str(out_dir), eval_columns=True,
        progress=False, **train,
    )
    trainer = Trainer(cfg)
    record: dict[str, Any] = {}
    for report in trainer.epochs():
        record = epoch_record(report, trainer, budget.epochs)
        record["wall_seconds"] = time.perf_counter() - started
        on_epoch(record)
    if not record:
        raise RuntimeError("the trainer yielded no epoch")
    return record
