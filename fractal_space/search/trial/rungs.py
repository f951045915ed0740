"""The rungs of successive halving, counted in training images seen; one definition for Optuna and Ray Tune.

A trial trains in epochs of ``min_images`` images (``TrainConfig.epoch_images``), each drawn from a new shuffle of the
whole training split. Rung k is reached after ``factor**k`` such epochs; at each rung only the best ``1/factor`` of the
trials that reached it go on. A promoted trial simply continues its own training (the trial is never restarted), so
the learning-rate schedule runs over the top rung's whole length: a trial stopped at a lower rung was compared
mid-schedule, at a higher learning rate than it would have ended with, which is the usual successive-halving trade
(cheap early comparisons) and is the same for every trial at a rung.

Optuna: ``SuccessiveHalvingPruner`` with ``min_resource=1`` and the trial's epoch as its step. Ray: ``ASHAScheduler``
with ``grace_period=1``, ``max_t`` = the top rung's epochs, on the reported ``epoch``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Rungs:
    """Rungs at ``min_images * factor**k`` training images, k = 0 .. ``levels - 1``."""

    min_images: int
    levels: int
    factor: int = 3

    def __post_init__(self) -> None:
        if self.min_images < 1 or self.levels < 1 or self.factor < 2:
            raise ValueError(f"rungs: min_images={self.min_images}, levels={self.levels} and factor={self.factor} "
                             "must be >= 1, >= 1 and >= 2")

    @property
    def epochs(self) -> int:
        """Epochs of ``min_images`` images to the top rung."""
        return self.factor ** (self.levels - 1)

    @property
    def images(self) -> list[int]:
        """Training images seen at each rung."""
        return [self.min_images * self.factor**k for k in range(self.levels)]

    def rung_of(self, epoch: int) -> int:
        """The highest rung (0-based) that ``epoch`` epochs have reached."""
        return max(k for k in range(self.levels) if self.factor**k <= epoch)

    def pruned_reason(self, epoch: int) -> str:
        """Why a trial that stopped after ``epoch`` epochs stopped, as its ``pruned_reason`` and dashboard note say."""
        return (f"stopped at rung {self.rung_of(epoch)} ({epoch} epochs of {self.min_images:,} images) by successive "
                "halving")

    def expected_images(self, trials: int) -> int:
        """Images all of ``trials`` trials train under successive halving (1/factor of them reach each next rung)."""
        total, reaching, done = 0.0, float(trials), 0
        for images in self.images:
            total += reaching * (images - done)
            reaching, done = reaching / self.factor, images
        return int(total)

    def optuna_pruner(self) -> Any:
        import optuna

        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=self.factor,
                                                      min_early_stopping_rate=0)

    def ray_scheduler(self, *, metric: str | None = "val_acc", mode: str | None = "max") -> Any:
        """ASHA on these rungs; ``metric=None, mode=None`` leaves them to ``tune.TuneConfig``."""
        from ray.tune.schedulers import ASHAScheduler

        return ASHAScheduler(metric=metric, mode=mode, time_attr="epoch", max_t=self.epochs, grace_period=1,
                             reduction_factor=self.factor)

    def __str__(self) -> str:
        return " -> ".join(f"{n:,}" for n in self.images) + f" training images (x{self.factor})"
