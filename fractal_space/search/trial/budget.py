"""The per-trial budget: the rungs, and one set of ``TrainConfig`` overrides shared by every trial and baseline.

A trial's resource is training images seen over the whole training split (the validation split excluded), in epochs
of the lowest rung's size (:mod:`fractal_space.search.trial.rungs`). A budget is not a copy of ``TrainConfig``'s
fields: it names only what a study fixes for all its trials (data, rungs, schedule, device, ...) and is validated by
building a ``TrainConfig`` from it, so a bad budget fails before the first trial and a new ``TrainConfig`` field needs
no edit here.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from fractal_space.core.recipes import DEFAULT_RECIPE
from fractal_space.engine import TrainConfig
from fractal_space.search.trial.rungs import Rungs

#: What every search trial sets whatever the budget: no bars; columns are evaluated once, after the last epoch; no
#: test-time augmentation, since trials rank on the plain validation accuracy and flip TTA doubles every evaluation
#: (the final stage passes ``tta=None`` for the recipe's).
TRIAL_FIELDS: dict[str, Any] = {"eval_columns": False, "progress": False, "tta": "none"}
#: The stock rungs. CPU: 3,500 -> 94,500 images in 4 rungs, the top one 2 passes over CIFAR-10's 45-48k training
#: images. GPU: 28,000 -> 2.27M in 5 rungs, 50 passes over 45k.
DEFAULT_RUNGS = {"cpu": Rungs(min_images=3_500, levels=4), "cuda": Rungs(min_images=28_000, levels=5)}
#: What the stock budget of a device sets besides its rungs. On CPU no augmentation: the top rung and the final stage
#: are 2 passes over the training split, far from fitting it, and there ResNet-20 trained with the fast recipe
#: reaches 74.1% test accuracy without augmentation against 69.9% with ``+`` (experiments/time_to_accuracy/).
DEVICE_BASE: dict[str, dict[str, Any]] = {"cpu": {"val_size": 2_000, "augment": "none"},
                                          "cuda": {"val_size": 5_000, "augment": "+"}}


class Budget:
    """What every trial of a study shares: the rungs (in training images seen) and the ``TrainConfig`` overrides.

    ``Budget(dataset="cifar10", rung_images=[500, 1500], val_size=200, device="cpu")``: ``rung_images`` are the
    images a trial has seen at each rung (a geometric series: each rung a whole multiple >= 2 of the one before; the
    stock rungs of ``device`` when omitted); every other keyword is a ``TrainConfig`` field all trials share. The
    stock budget of a device (``DEVICE_BASE``: its validation size and augmentation; the default recipe ``fast``,
    ``recipe="paper"`` for the paper's) lies under what is given. Validated at once: an unknown field or a bad value
    is a one-line ``ValueError`` here, not in a trial.
    """

    def __init__(self, *, rung_images: Sequence[int] | Rungs | None = None, device: str = "cpu",
                 **overrides: Any) -> None:
        hardware = "cpu" if device == "cpu" else "cuda"
        self.rungs = _rungs(rung_images) if rung_images is not None else DEFAULT_RUNGS[hardware]
        base = {**DEVICE_BASE[hardware], "device": device, "recipe": DEFAULT_RECIPE}
        self.overrides: dict[str, Any] = {**base, **overrides}
        self.config()

    def replace(self, **overrides: Any) -> Budget:
        """A copy with some overrides changed (validated like the original)."""
        return Budget(rung_images=self.rungs, **{**self.overrides, **overrides})

    def config(self, **trial: Any) -> TrainConfig:
        """The ``TrainConfig`` of one trial: the rungs, the budget, then the trial's own fields (model, lr, ...)."""
        rungs = {"epochs": self.rungs.epochs, "epoch_images": self.rungs.min_images}
        return TrainConfig.from_dict({**TRIAL_FIELDS, **rungs, **self.overrides, **trial})

    def optuna_pruner(self) -> Any:
        """Optuna's successive-halving pruner on these rungs (a trial reports once per epoch of the lowest rung)."""
        return self.rungs.optuna_pruner()

    def ray_scheduler(self, *, metric: str | None = None, mode: str | None = None) -> Any:
        """Ray Tune's ASHA on these rungs (``time_attr="epoch"``); metric and mode come from ``tune.TuneConfig``
        unless given here."""
        return self.rungs.ray_scheduler(metric=metric, mode=mode)

    def __getitem__(self, name: str) -> Any:
        """A field as trials see it (the override, else ``TrainConfig``'s default)."""
        return getattr(self.config(), name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Budget) and (self.rungs, self.overrides) == (other.rungs, other.overrides)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.overrides.items())
        return f"Budget(rung_images={self.rungs.images}, {shown})"

    def __str__(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in self.overrides.items() if k != "data_dir")
        return f"rungs {self.rungs}; {shown}"


def _rungs(images: Sequence[int] | Rungs) -> Rungs:
    """Rungs from the images seen at each rung: ``[500, 1500, 4500]`` is 3 rungs of factor 3 from 500 images."""
    if isinstance(images, Rungs):
        return images
    images = list(images)
    if not images or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in images):
        raise ValueError(f"rung_images: {images!r} must be a non-empty list of positive whole numbers of images")
    factor = images[1] // images[0] if len(images) > 1 else 3
    if any(b != a * factor for a, b in itertools.pairwise(images)) or (len(images) > 1 and factor < 2):
        raise ValueError(f"rung_images: {images} is not geometric (each rung a whole multiple >= 2 of the one before)")
    return Rungs(min_images=images[0], levels=len(images), factor=factor)
