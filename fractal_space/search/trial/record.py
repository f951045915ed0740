"""The trial record: what one trial reports after each epoch, defined once for every consumer.

:class:`TrialRecord` is stored as the ``record`` user attribute of the trial (Optuna objective and Ray's tell), is what
a Ray trial reports to Tune, and its fields are the metric columns of ``trials.parquet`` (each field's Arrow type is
its metadata). A new metric is one new field here.

Also here: the objectives (what a multi-objective study minimises next to accuracy), the objective values with their
finiteness check, the attributes every trial is tagged with, and how a failure's reason is written.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

#: What each objective name minimises next to (maximised) validation accuracy; ``accuracy`` is single-objective.
OBJECTIVES: dict[str, str | None] = {"accuracy": None, "params": "params", "flops": "flops", "latency": "latency_ms"}
MAX_REASON = 2000


def _col(arrow: pa.DataType, column: str | None = None, **kw: Any) -> Any:
    """A record field with its Parquet type (and column name, if it differs from the field's)."""
    return field(metadata={"arrow": arrow, "column": column}, **kw)


@dataclass
class TrialRecord:
    """One trial after one epoch (the last one it ran, once it has finished); accuracies are fractions."""

    epoch: int = _col(pa.int64(), column="epochs_run")
    epochs: int = _col(pa.int64(), column="epochs_budget")
    val_acc: float = _col(pa.float64())
    val_loss: float = _col(pa.float64())
    train_loss: float = _col(pa.float64())
    train_acc: float = _col(pa.float64())
    #: Deployment latency (ms / image, batch 1; ``latency_runtime`` says what ran it: ONNX Runtime on CPU), measured
    #: once the budget is spent (NaN for a pruned trial); ``eager_latency_ms`` is eager PyTorch's, every epoch.
    latency_ms: float = _col(pa.float64())
    train_images_per_s: float = _col(pa.float64())
    epoch_seconds: float = _col(pa.float64())
    #: Trial start to this epoch's end, as the trial measured it (data loading and evaluation included).
    wall_seconds: float = _col(pa.float64())
    params: int = _col(pa.int64())
    flops: int = _col(pa.int64())
    #: FractalNet columns (None for other models); ``column_val_acc[k-1]`` is column k alone.
    num_columns: int | None = _col(pa.int64())
    column_val_acc: list[float] = _col(pa.list_(pa.float64()), default_factory=list)
    column_latency_ms: list[float] = _col(pa.list_(pa.float64()), default_factory=list)  # deployed, like latency_ms
    val_acc_history: list[float] = _col(pa.list_(pa.float64()), default_factory=list)
    latency_runtime: str | None = _col(pa.string(), default=None)
    eager_latency_ms: float = _col(pa.float64(), default=math.nan)
    #: What measuring the deployment latencies cost the trial: the ONNX exports, their checks and the timing.
    deploy_seconds: float = _col(pa.float64(), default=math.nan)
    #: Where the trial trained (``cpu``, ``cuda:0 (<GPU name>)``), when it started (Unix time, as its own process saw
    #: it: with ``wall_seconds`` its interval, which shows how many trials ran at once) and its GPU memory peak in MiB
    #: (``torch.cuda.max_memory_allocated``; None on CPU).
    device: str = _col(pa.string(), default="")
    started_at: float = _col(pa.float64(), default=math.nan)
    peak_memory_mb: float | None = _col(pa.float64(), default=None)
    #: CPU threads the trial trained with (None: not trained, a one-shot sub-fractal) and those its latencies were
    #: timed at: a search-stage baseline trains on every core and is timed at the trials' count, so they compare.
    train_threads: int | None = _col(pa.int64(), default=None)
    latency_threads: int | None = _col(pa.int64(), default=None)

    @property
    def finished_budget(self) -> bool:
        """Whether the trial ran its whole budget (a partial record is a pruned or stopped trial)."""
        return self.epoch >= self.epochs

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrialRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def objective_values(self, objective: str) -> list[float]:
        """The study's objective values: accuracy first, then the cost it trades against; all must be finite."""
        cost = OBJECTIVES[objective]
        values = [float(self.val_acc)] + ([float(getattr(self, cost))] if cost else [])
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"non-finite objective values {values}")
        return values


def record_columns() -> list[tuple[str, str, pa.DataType]]:
    """(field, Parquet column, Arrow type) of every record field, in field order."""
    return [(f.name, f.metadata["column"] or f.name, f.metadata["arrow"]) for f in dataclasses.fields(TrialRecord)]


def worker_id() -> str:
    """This process as a trial owner (``host:pid``): the reaper fails the RUNNING trials of owners that are gone.

    Read at each call, not at import: forked workers (the Optuna backend's forkserver) share what was imported."""
    return f"{socket.gethostname()}:{os.getpid()}"


def tag(trial: Any, kind: str, model: str) -> None:
    """The attributes every trial carries from its first moment: who runs it, what it is, which model."""
    trial.set_user_attr("worker", worker_id())
    trial.set_user_attr("kind", kind)
    trial.set_user_attr("model", model)


def fail_reason(exc: BaseException) -> str:
    """A failure as stored in ``fail_reason``: the exception type and its message, bounded."""
    return f"{type(exc).__name__}: {exc}"[:MAX_REASON]


def directions(objective: str) -> list[str]:
    """Maximise accuracy; minimise the cost of a multi-objective study."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; expected one of {', '.join(OBJECTIVES)}")
    return ["maximize"] if OBJECTIVES[objective] is None else ["maximize", "minimize"]
