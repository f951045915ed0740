"""The one training recipe every caller (search, baselines, benchmarks, CLI) fills in; defaults are the paper's."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from fractal_space.data import AUGMENTS
from fractal_space.hardware import DEVICES, is_device_name
from fractal_space.recipe import PAPER

SCHEDULES = ("paper", "cosine", "constant")
REGULARIZATIONS = ("paper", "none")
#: Field metadata of settings that only say how and where a run executes, not what it trains: a checkpoint may be
#: resumed with other values for them. Every other field is part of the recipe.
RUN_TIME = {"recipe": False}


@dataclass
class TrainConfig:
    """A JSON-serialisable training run: model, data, recipe and where to write checkpoints and metrics.

    The recipe's defaults come from ``fractal_space.recipe.PAPER``. ``regularization="paper"`` gives FractalNet models
    the paper's drop-path and per-block dropout (``PAPER.regularization``); keys given in ``model_kwargs`` win. Other
    models are unchanged.
    """

    model: str = "fractalnet_c3"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    dataset: str = "cifar10"
    data_dir: str | None = field(default=None, metadata=RUN_TIME)
    epochs: int = 10
    batch_size: int = PAPER.batch_size
    lr: float = PAPER.lr
    momentum: float = PAPER.momentum
    weight_decay: float = PAPER.weight_decay
    schedule: str = PAPER.schedule
    label_smoothing: float = 0.0
    regularization: str = "paper"
    augment: str = PAPER.augment
    train_subset: int | None = None
    val_size: int | None = None
    val_seed: int = 0
    seed: int = 0
    device: str = field(default="auto", metadata=RUN_TIME)
    channels_last: bool = field(default=True, metadata=RUN_TIME)
    num_threads: int | None = field(default=None, metadata=RUN_TIME)
    out_dir: str | None = field(default=None, metadata=RUN_TIME)
    eval_columns: bool = field(default=True, metadata=RUN_TIME)
    bn_batches: int = field(default=10, metadata=RUN_TIME)
    progress: bool = field(default=True, metadata=RUN_TIME)
    download: bool = field(default=True, metadata=RUN_TIME)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Reject bad values up front with a one-line message naming the field and the value."""
        checks = [
            (self.epochs >= 1, "epochs", "must be >= 1"),
            (self.batch_size >= 1, "batch_size", "must be >= 1"),
            (self.lr > 0, "lr", "must be > 0"),
            (0 <= self.momentum < 1, "momentum", "must be in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay", "must be >= 0"),
            (self.schedule in SCHEDULES, "schedule", f"must be one of {SCHEDULES}"),
            (0 <= self.label_smoothing < 1, "label_smoothing", "must be in [0, 1)"),
            (self.regularization in REGULARIZATIONS, "regularization", f"must be one of {REGULARIZATIONS}"),
            (self.augment in AUGMENTS, "augment", f"must be one of {AUGMENTS}"),
            (self.train_subset is None or self.train_subset >= 1, "train_subset", "must be >= 1 or None"),
            (self.val_size is None or self.val_size >= 0, "val_size", "must be >= 0 or None (auto)"),
            (is_device_name(self.device), "device", f"must be one of {', '.join(DEVICES)}, cuda:N"),
            (self.num_threads is None or self.num_threads >= 1, "num_threads", "must be >= 1 or None"),
            (self.bn_batches >= 1, "bn_batches", "must be >= 1"),
            (isinstance(self.model_kwargs, dict), "model_kwargs", "must be a dict"),
        ]
        for ok, name, rule in checks:
            if not ok:
                raise ValueError(f"TrainConfig.{name} {rule}, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a dict (e.g. a search trial or a saved config); unknown keys are an error, not ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; known: {sorted(known)}")
        return cls(**values)


def recipe_fields(cls: type = TrainConfig) -> tuple[str, ...]:
    """The fields of ``cls`` that define what is trained: all but those marked ``RUN_TIME``, so a new field is part
    of the recipe (and guards resume) unless it says otherwise."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("recipe", True))


#: A checkpoint may only be resumed by a config that agrees on all of these.
RECIPE_FIELDS = recipe_fields()
