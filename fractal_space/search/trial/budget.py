"""The per-trial budget: the rungs, and one set of ``TrainConfig`` overrides shared by every trial and baseline.

A trial's resource is training images seen over the whole training split (the validation split excluded), in epochs
of the lowest rung's size (:mod:`fractal_space.search.trial.rungs`). A budget is not a copy of ``TrainConfig``'s
fields: it names only what a study fixes for all its trials (data, rungs, schedule, device, ...) and is validated by
building a ``TrainConfig`` from it, so a bad budget fails before the first trial and a new ``TrainConfig`` field needs
no edit here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fractal_space.engine import TrainConfig
from fractal_space.search.trial.rungs import Rungs

#: What every search trial sets whatever the budget: no bars; columns are evaluated once, after the last epoch.
TRIAL_FIELDS: dict[str, Any] = {"eval_columns": False, "progress": False}
#: The stock rungs. CPU: 3,500 -> 94,500 images in 4 rungs, the top one 2 passes over CIFAR-10's 45-48k training
#: images. GPU: 28,000 -> 2.27M in 5 rungs, 50 passes over 45k.
DEFAULT_RUNGS = {"cpu": Rungs(min_images=3_500, levels=4), "cuda": Rungs(min_images=28_000, levels=5)}
DEFAULT_VAL_SIZE = {"cpu": 2_000, "cuda": 5_000}


@dataclass(frozen=True)
class Budget:
    """The rungs and the ``TrainConfig`` overrides of every trial of a study; :meth:`config` adds a trial's fields."""

    rungs: Rungs
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "overrides", dict(self.overrides))
        self.config()  # validates: unknown fields and bad values are one-line ValueErrors now, not in a trial

    @classmethod
    def default(cls, hardware: str, rungs: Rungs | None = None, **overrides: Any) -> Budget:
        """The stock budget for ``hardware`` ('cpu' or 'cuda'): the whole training split, the paper's recipe with a
        cosine schedule."""
        base = {"val_size": DEFAULT_VAL_SIZE[hardware], "device": hardware, "recipe": "paper", "schedule": "cosine"}
        return cls(rungs or DEFAULT_RUNGS[hardware], {**base, **overrides})

    def replace(self, **overrides: Any) -> Budget:
        """A copy with some overrides changed (validated like the original)."""
        return Budget(self.rungs, {**self.overrides, **overrides})

    def config(self, **trial: Any) -> TrainConfig:
        """The ``TrainConfig`` of one trial: the rungs, the budget, then the trial's own fields (model, lr, ...)."""
        rungs = {"epochs": self.rungs.epochs, "epoch_images": self.rungs.min_images}
        return TrainConfig.from_dict({**TRIAL_FIELDS, **rungs, **self.overrides, **trial})

    def __getitem__(self, name: str) -> Any:
        """A field as trials see it (the override, else ``TrainConfig``'s default)."""
        return getattr(self.config(), name)

    def __str__(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in self.overrides.items() if k != "data_dir")
        return f"rungs {self.rungs}; {shown}"
