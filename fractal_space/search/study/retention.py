"""Which finished trials are best (one best, or the Pareto front) and whose checkpoints are kept on disk."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from fractal_space.search.study.accounting import FINISHED, is_search_trial


def trial_dir(study_dir: Path, number: int) -> Path:
    """Where trial ``number`` of a study writes its checkpoints and metrics."""
    return study_dir / "trials" / f"{number:05d}"


def pareto(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated in (maximise first, minimise second)."""
    return [i for i, (a, c) in enumerate(points)
            if not any(a2 >= a and c2 <= c and (a2, c2) != (a, c) for a2, c2 in points)]


def best_search_trials(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The best completed FractalNet trial (single objective) or its Pareto front (multi-objective)."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and is_search_trial(t) and t.values]
    if not done:
        return []
    if len(done[0].values) == 1:
        return [max(done, key=lambda t: t.values[0])]
    return [done[i] for i in pareto([(t.values[0], t.values[1]) for t in done])]


def keep_best_checkpoints(study: optuna.Study, study_dir: Path) -> None:
    """Delete the checkpoints of finished trials that are neither best nor baselines (disk stays bounded)."""
    trials = study.get_trials(deepcopy=False)
    keep = {t.number for t in best_search_trials(trials)} | {t.number for t in trials if not is_search_trial(t)}
    for t in trials:
        if t.state in FINISHED and t.number not in keep:
            shutil.rmtree(trial_dir(study_dir, t.number), ignore_errors=True)
