"""The space and the engine in a researcher's own Optuna study, Ray Tune run or ConfigSpace optimizer, with no study
folder and no CLI.

:func:`optuna_objective` is an ``objective(trial)`` for ``study.optimize`` with any sampler and pruner;
:func:`ray_trainable` is a Tune function trainable for any Tune searcher and scheduler; :func:`train_config` trains
one config at a chosen fidelity (SMAC3, DEHB and other multi-fidelity optimizers call it). All train one sampled
network with the project's engine (:func:`~fractal_space.search.trial.training.run_trial`) under a
:class:`~fractal_space.search.trial.budget.Budget`, reporting validation accuracy after every epoch (an epoch is the
lowest rung's images), so successive halving stops trials at the rungs.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fractal_space.search.space import MODEL, SearchSpace, TrialConfig
from fractal_space.search.trial.budget import Budget
from fractal_space.search.trial.record import OBJECTIVES, TrialRecord
from fractal_space.search.trial.training import Pruned, run_trial


def optuna_objective(space: SearchSpace, budget: Budget, *, objective: str = "accuracy",
                     out_dir: str | Path | None = None) -> Callable[[Any], float | list[float]]:
    """An Optuna objective: sample ``space`` with the trial, train under ``budget``, return the validation accuracy
    (and, for ``objective`` ``params``, ``flops`` or ``latency``, that cost to minimise beside it).

    Single-objective studies get every epoch's accuracy as an intermediate value and are pruned by the study's
    pruner (``budget.optuna_pruner()`` prunes at the rungs). Each trial records its architecture (user attribute
    ``architecture``) and last epoch (``record``). With ``out_dir``, each trial checkpoints every epoch in
    ``out_dir/<trial number>`` and a re-run trial of the same number resumes there.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective: {objective!r} is not one of {', '.join(OBJECTIVES)}")
    return functools.partial(_optuna_trial, space, budget, objective, None if out_dir is None else Path(out_dir))


def _optuna_trial(space: SearchSpace, budget: Budget, objective: str, out_dir: Path | None,
                  trial: Any) -> float | list[float]:
    import optuna

    config = space.sample(trial)
    trial.set_user_attr("architecture", config.architecture)
    single = len(trial.study.directions) == 1

    def on_epoch(record: TrialRecord) -> None:
        trial.set_user_attr("record", record.to_dict())
        if single:
            trial.report(record.val_acc, record.epoch)
            if not record.finished_budget and trial.should_prune():
                raise Pruned(f"pruned after epoch {record.epoch} of {record.epochs}")

    try:
        record = train_config(config, budget, out_dir=None if out_dir is None else out_dir / f"{trial.number:05d}",
                              on_epoch=on_epoch)
    except Pruned as exc:
        raise optuna.TrialPruned(str(exc)) from None
    values = record.objective_values(objective)
    return values[0] if len(values) == 1 else values


def train_config(config: TrialConfig, budget: Budget, *, epochs: int | None = None, out_dir: str | Path | None = None,
                 on_epoch: Callable[[TrialRecord], None] | None = None) -> TrialRecord:
    """Train one config under ``budget`` with the project's engine and return its last epoch's record.

    ``epochs`` (epochs of the lowest rung's images; default: the top rung's) stops it early at a lower fidelity the
    way successive halving stops a trial: the learning-rate schedule is the top rung's, cut short, so scores at one
    fidelity compare. ``on_epoch`` sees every epoch's record and may raise
    :class:`~fractal_space.search.trial.training.Pruned` to stop (that epoch's record is returned);
    ``out_dir`` checkpoints every epoch there and resumes from it.
    """
    top = budget.rungs.epochs
    if epochs is not None and not 1 <= epochs <= top:
        raise ValueError(f"epochs: {epochs} is outside [1, {top}] (the budget's top rung is {top} epochs)")
    last: list[TrialRecord] = []

    def each(record: TrialRecord) -> None:
        last[:] = [record]
        if on_epoch is not None:
            on_epoch(record)
        if epochs is not None and record.epoch >= epochs and not record.finished_budget:
            raise _Enough

    try:
        return run_trial(model=MODEL, config=config.to_dict(), budget=budget,
                         out_dir=None if out_dir is None else Path(out_dir), on_epoch=each)
    except _Enough:
        return last[0]


class _Enough(Pruned):
    """The fidelity :func:`train_config` was asked for is reached."""


def ray_trainable(space: SearchSpace, budget: Budget) -> Callable[[dict[str, Any]], None]:
    """A Ray Tune function trainable: the trial's config (from ``space.to_ray()``, Tune's ``OptunaSearch`` over
    ``space.suggest``, or a ConfigSpace searcher over ``space.to_configspace()``) trained under ``budget``, reporting
    ``val_acc``, ``epoch``, ``params``, ``flops`` and ``latency_ms`` after every epoch (ASHA on ``budget``'s rungs:
    ``budget.ray_scheduler()``). Keys of the config that are not dimensions of ``space`` are left alone."""
    return functools.partial(_ray_trial, space, budget)


def _ray_trial(space: SearchSpace, budget: Budget, config: dict[str, Any]) -> None:
    from ray import tune

    trial = space.config(flat_params(config, space))
    train_config(trial, budget,
                 on_epoch=lambda record: tune.report(ray_metrics(record, architecture=trial.architecture)))


def ray_metrics(record: TrialRecord, **extra: Any) -> dict[str, Any]:
    """What a Ray trial reports: the scalars schedulers and dashboards use, and the whole record as JSON."""
    return {"val_acc": record.val_acc, "params": record.params, "flops": record.flops,
            "latency_ms": record.latency_ms, "epoch": record.epoch, "record": json.dumps(record.to_dict()), **extra}


def flat_params(config: Mapping[str, Any], space: SearchSpace) -> dict[str, Any]:
    """The values of ``config`` that are dimensions of ``space`` (a Tune config may carry other keys)."""
    return {k: v for k, v in config.items() if k in space.dimensions}
