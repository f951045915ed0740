"""The per-trial budget: one set of ``TrainConfig`` overrides shared by every trial and baseline of a study.

A budget is not a copy of ``TrainConfig``'s fields: it names only what a study fixes for all its trials (data, epochs,
subset, schedule, device, ...) and is validated by building a ``TrainConfig`` from it, so a bad budget (``--epochs 0``)
fails before the first trial and a new ``TrainConfig`` field needs no edit here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fractal_space.engine import TrainConfig

#: What every search trial sets whatever the budget: per-column evaluation (the anytime metrics) and no bars.
TRIAL_FIELDS: dict[str, Any] = {"eval_columns": True, "progress": False}


@dataclass(frozen=True)
class Budget:
    """``TrainConfig`` overrides for every trial of a study; :meth:`config` adds a trial's own fields."""

    overrides: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "overrides", dict(self.overrides))
        self.config()  # validates: unknown fields and bad values are one-line ValueErrors now, not in a trial

    @classmethod
    def default(cls, hardware: str, **overrides: Any) -> Budget:
        """The stock budget for ``hardware`` ('cpu' or 'cuda'), with ``overrides`` applied.

        CPU (2 cores, one single-threaded trial per core): 3 epochs x 2000 images + 500 validation images; the whole
        200-trial search measured 25 min 47 s on the shared machine (8.3 min of it baselines, median trial 9 s), up to
        ~45 min when TPE favours larger nets. GPU: 45k images x 15 epochs with 5k validation images is a meaningful
        (if short-schedule) ranking of architectures.
        """
        if hardware == "cpu":
            base = {"epochs": 3, "train_subset": 2000, "val_size": 500, "device": "cpu"}
        else:
            base = {"epochs": 15, "train_subset": None, "val_size": 5000, "device": "cuda"}
        return cls({"schedule": "cosine", **base, **overrides})

    def replace(self, **overrides: Any) -> Budget:
        """A copy with some overrides changed (validated like the original)."""
        return Budget({**self.overrides, **overrides})

    def config(self, **trial: Any) -> TrainConfig:
        """The ``TrainConfig`` of one trial: the budget, then the trial's own fields (model, its kwargs, lr, ...)."""
        return TrainConfig.from_dict({**TRIAL_FIELDS, **self.overrides, **trial})

    def __getitem__(self, name: str) -> Any:
        """A field as trials see it (the override, else ``TrainConfig``'s default)."""
        return getattr(self.config(), name)

    def __str__(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.overrides.items() if k != "data_dir")
