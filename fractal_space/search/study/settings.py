"""Everything a search run needs, validated once before any trial and picklable for worker processes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fractal_space.core.hardware import usable_cpus
from fractal_space.search.space import LOOP_FIELDS, SearchSpace
from fractal_space.search.trial.budget import Budget

#: How a search spends its budget: multitrial trains every trial from scratch; oneshot trains one FractalNet supernet
#: and scores sub-fractals on its weights (:mod:`fractal_space.search.backends.oneshot`).
STRATEGIES = ("multitrial", "oneshot")
#: The one-shot supernet's engine run, inside the study folder.
SUPERNET_DIR = "supernet"


@dataclass(frozen=True)
class RaySettings:
    """The Ray Tune backend's resources and cluster."""

    address: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0


@dataclass(frozen=True)
class FinalSettings:
    """The final stage: the ``top`` distinct FractalNet architectures, ``spread`` more across the search's ranking, and
    ``baselines``, ``epochs`` passes each."""

    top: int = 3
    #: Architectures beyond the top ``top``, spread evenly by rank over the rest, retrained to measure proxy fidelity.
    spread: int = 0
    epochs: int = 2
    seeds: int = 1
    baselines: tuple[str, ...] = ()
    #: torch threads per model (None: every usable core; models train one after another).
    threads: int | None = None


@dataclass(frozen=True)
class SearchSettings:
    """One study: where it is stored, what it optimises, its space and its per-trial budget."""

    study: str
    study_dir: Path
    storage_url: str | None
    objective: str
    trials: int
    space: SearchSpace
    budget: Budget
    baselines: tuple[str, ...] = ()
    workers: int = 1
    seed: int | None = 0
    #: multitrial (every trial trained from scratch) or oneshot (one supernet, sub-fractals scored on its weights)
    strategy: str = "multitrial"
    #: ``tpe`` or ``random`` (:data:`fractal_space.search.study.lifecycle.SAMPLERS`), recorded in the study.
    sampler: str = "tpe"
    heartbeat_s: int = 30
    ray: RaySettings = field(default_factory=RaySettings)
    final: FinalSettings = field(default_factory=FinalSettings)
    #: The live dashboards: Optuna's (both backends) and, with Ray, Ray's; the port is Optuna's with the Optuna
    #: backend, Ray's with Ray (None = the default port).
    dashboard: bool = True
    dashboard_port: int | None = None

    @property
    def supernet_dir(self) -> Path:
        """Where ``--strategy oneshot`` trains its supernet (an engine run: checkpoints, ``metrics.jsonl``)."""
        return self.study_dir / SUPERNET_DIR

    @property
    def unclaimed_after_s(self) -> float:
        """How long a RUNNING trial without an owner is given before it is failed (as long as a dead heartbeat)."""
        return 3.0 * self.heartbeat_s

    def baseline_budget(self) -> Budget:
        """The search-stage baselines' budget: they train alone, before any trial starts, so with the final stage's
        threads (``--threads``, else every usable core: a trial's one thread left the other cores idle), and are
        timed at the trials' thread count so that their latencies compare with the trials'."""
        return self.budget.replace(num_threads=self.final.threads or usable_cpus(),
                                   latency_threads=self.budget["num_threads"])

    def baseline_train(self) -> dict[str, Any]:
        """The baselines' recipe: the space's fixed values, else the paper's (lr, batch size, weight decay)."""
        config = self.space.config(self.space.reference_point())
        return {k: config.train[k] for k in LOOP_FIELDS}
