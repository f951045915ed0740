"""The trial procedure, the same for every backend: a sampled config and a budget in, one record per epoch out.

Both backends call :func:`run_trial`; they differ only in what ``on_epoch`` does with each epoch's record (Optuna:
``trial.report`` and pruning; Ray: ``tune.report`` for ASHA).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fractal_space.core.hardware import device_label, peak_memory_mb, reset_peak_memory, resolve_device
from fractal_space.deploy.metrics import Latency, deployment_latency
from fractal_space.engine import Trainer
from fractal_space.search.trial.budget import Budget
from fractal_space.search.trial.record import TrialRecord


class Pruned(Exception):
    """Raised by an ``on_epoch`` callback to stop a trial early (the backend records it as PRUNED)."""


def run_trial(*, model: str, config: dict[str, Any], budget: Budget, out_dir: Path | None,
              on_epoch: Callable[[TrialRecord], None]) -> TrialRecord:
    """Train ``model`` with ``config`` (``{"model_kwargs", "train"}``, as ``TrialConfig.to_dict`` gives it) under
    ``budget``; ``on_epoch`` sees each epoch's record and may raise :class:`Pruned`. Returns the last epoch's record;
    exceptions (TrainingDiverged, out of memory, ...) propagate so the backend can mark the trial FAIL with the
    reason. :func:`trial_records` is the same trial one epoch at a time."""
    record: TrialRecord | None = None
    for record in trial_records(model=model, config=config, budget=budget, out_dir=out_dir):
        on_epoch(record)
    if record is None:
        raise RuntimeError("the trainer yielded no epoch")
    return record


def trial_records(*, model: str, config: dict[str, Any], budget: Budget, out_dir: Path | None
                  ) -> Iterator[TrialRecord]:
    """The trial procedure as a generator: one :class:`TrialRecord` per epoch, for callers that step a trial (a Ray
    Tune class trainable) rather than hand it a callback.

    Every FractalNet column is evaluated, and the deployment latencies (ONNX Runtime, the network and each column at
    batch 1: one export each) are measured, after the last epoch only: a pruned trial has neither, and no epoch pays
    for an export.
    """
    started, started_at = time.perf_counter(), time.time()
    cfg = budget.config(model=model, model_kwargs=dict(config["model_kwargs"]),
                        out_dir=None if out_dir is None else str(out_dir), **config["train"])
    reset_peak_memory(resolve_device(cfg.device))  # this trial's peak, not an earlier one's in the same worker
    trainer = Trainer(cfg)
    history: list[float] = []
    for report in trainer.epochs():
        history.append(float(report.val_acc))
        deployed: list[Latency] = []
        deploy_seconds = math.nan
        if report.epoch == cfg.epochs:  # the anytime and deployment metrics, once the budget is spent
            report.columns = trainer.evaluate_columns("val")
            start = time.perf_counter()
            deployed = [deployment_latency(trainer.model, trainer.input_size, threads=cfg.latency_threads, **kw)
                        for kw in _deployed(trainer)]
            deploy_seconds = time.perf_counter() - start
        yield TrialRecord(
            epoch=report.epoch, epochs=cfg.epochs, val_acc=float(report.val_acc), val_loss=float(report.val_loss),
            train_loss=float(report.train_loss), train_acc=float(report.train_acc),
            latency_ms=deployed[0].ms[1] if deployed else math.nan,
            latency_runtime=deployed[0].runtime if deployed else None, eager_latency_ms=float(report.latency_ms),
            deploy_seconds=deploy_seconds,
            train_images_per_s=float(report.train_images_per_s),
            epoch_seconds=float(report.epoch_seconds), wall_seconds=time.perf_counter() - started,
            params=int(trainer.num_params), flops=int(trainer.flops), num_columns=trainer.num_columns or None,
            column_val_acc=[float(c.acc) for c in report.columns],
            column_latency_ms=[d.ms[1] for d in deployed[1:]], val_acc_history=list(history),
            device=device_label(trainer.device), started_at=started_at, peak_memory_mb=peak_memory_mb(trainer.device),
            train_threads=trainer.threads, latency_threads=cfg.latency_threads or trainer.threads)


def _deployed(trainer: Trainer) -> list[dict[str, Any]]:
    """What a finished trial times deployed: the whole network, then each FractalNet column alone (a sub-fractal's:
    those it keeps in every block, as ``Trainer.evaluate`` reports them)."""
    columns = trainer.model.anytime_columns() if trainer.num_columns else []
    return [{}] + [{"column": k} for k in columns]
