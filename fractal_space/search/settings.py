"""Everything a search run needs, validated once before any trial and picklable for worker processes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fractal_space.search.trial import Budget
from fractal_space.space import SearchSpace


@dataclass(frozen=True)
class SearchSettings:
    """One study: where it is stored, what it optimises, its space and its per-trial budget."""

    study: str
    study_dir: Path
    storage_url: str | None
    objective: str
    trials: int
    space_specs: dict[str, Any]
    input_size: int
    budget: Budget
    baselines: tuple[str, ...] = ()
    workers: int = 1
    seed: int | None = 0
    heartbeat_s: int = 30
    ray: dict[str, Any] = field(default_factory=dict)

    @property
    def space(self) -> SearchSpace:
        return SearchSpace(self.space_specs, self.input_size)

    def baseline_train(self) -> dict[str, Any]:
        """The baselines' recipe: the space's fixed values, else the paper's (lr 0.02, batch 100, wd 1e-4)."""
        import optuna

        config = self.space.suggest(optuna.trial.FixedTrial(self.space.reference_point()))
        return {k: config["train"][k] for k in ("lr", "weight_decay", "batch_size")}
