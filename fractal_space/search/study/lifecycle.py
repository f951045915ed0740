"""The study lifecycle both backends share: open the study with its sampler (TPE or random search) and pruner, reap
what dead workers left, train the baselines, queue the paper's reference point; the study's note in the dashboard.
"""

from __future__ import annotations

import logging

import numpy as np
import optuna
from optuna.trial import TrialState
from optuna_dashboard import get_note, save_note

from fractal_space.search.study.accounting import counts_as_finished, reap_stale
from fractal_space.search.study.runner import TrialRunner
from fractal_space.search.study.settings import SearchSettings
from fractal_space.search.study.storage import open_storage
from fractal_space.search.trial.budget import Budget
from fractal_space.search.trial.record import OBJECTIVES, directions
from fractal_space.search.trial.rungs import Rungs

log = logging.getLogger("fractal_space.search")
#: The final stage's study is the search's name with this suffix, in the same storage.
FINAL_SUFFIX = "-final"

#: The samplers ``--sampler`` offers, and what each does with the conditional space (a C=1 trial samples no join
#: dimension). Any other Optuna sampler object works through ``fractal_space.search.optuna_objective``.
SAMPLERS: dict[str, str] = {
    "tpe": "Optuna's TPE; models every dimension, the conditional join dimensions included",
    "random": "random search, the control a model-based sampler must beat",
    "gp": "Optuna's GPSampler; models the dimensions every trial shares, draws the join dimensions at random",
    "cmaes": "CMA-ES; models the numeric dimensions every trial shares, draws categorical and join ones at random",
    "qmc": "quasi-random (Sobol) over the dimensions every trial shares, the join dimensions at random",
}


def trial_seeds(seed: int, number: int) -> tuple[int, int]:
    """Two seeds for trial ``number`` of a study seeded ``seed``: the model-based draw's and the random draw's."""
    model, rand = np.random.SeedSequence([seed, number]).generate_state(2)
    return int(model), int(rand)


class TrialSeededTPE(optuna.samplers.TPESampler):
    """TPE whose random streams restart before each trial from ``(seed, trial number)``.

    One fixed seed per sampler makes every worker, and every re-run of a study, draw the same configurations (the same
    start-up sequence, the same candidates). Trial numbers are unique in a study, so seeding by them makes each trial's
    draw its own, while a study run from scratch with one worker is still reproducible from ``seed``.
    """

    def __init__(self, seed: int | None = None) -> None:
        super().__init__(seed=seed)
        self._base_seed = seed

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if self._base_seed is not None:
            tpe, rand = trial_seeds(self._base_seed, trial.number)
            self._rng.rng.seed(tpe)
            self._random_sampler._rng.rng.seed(rand)  # noqa: SLF001 - its start-up (random) trials
        super().before_trial(study, trial)


class TrialSeededRandom(optuna.samplers.RandomSampler):
    """Random search seeded per trial like :class:`TrialSeededTPE`, from the same stream as TPE's start-up trials: with
    one seed, the random and the TPE study draw the same first configurations and differ once TPE models the results.
    """

    def __init__(self, seed: int | None = None) -> None:
        super().__init__(seed=seed)
        self._base_seed = seed

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if self._base_seed is not None:
            self._rng.rng.seed(trial_seeds(self._base_seed, trial.number)[1])
        super().before_trial(study, trial)


def make_sampler(name: str, seed: int | None) -> optuna.samplers.BaseSampler:
    """The search's sampler (one of :data:`SAMPLERS`), for the Optuna workers and Ray's searcher alike."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {', '.join(SAMPLERS)}")
    if name in ("tpe", "random"):
        return (TrialSeededTPE if name == "tpe" else TrialSeededRandom)(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    return optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False)


def check_sampler(study: optuna.Study, sampler: str) -> None:
    """Record ``sampler`` in a new study (user attribute ``sampler``); refuse to go on with another one.

    A study that predates the attribute was searched with TPE, the only sampler then.
    """
    recorded = study.user_attrs.get("sampler", "tpe" if study.get_trials(deepcopy=False) else None)
    if recorded is None:
        study.set_user_attr("sampler", sampler)
    elif recorded != sampler:
        raise ValueError(f"study {study.study_name!r} was searched with --sampler {recorded}, not {sampler}; resume it "
                         f"with --sampler {recorded} or pick another --study")


def check_strategy(study: optuna.Study, strategy: str) -> None:
    """Record ``strategy`` (multitrial or oneshot) in a new study; refuse to go on with another one.

    A study with search trials and no record was searched multi-trial, the only strategy then.
    """
    searched = any(t.user_attrs.get("kind") == "fractalnet" for t in study.get_trials(deepcopy=False))
    recorded = study.user_attrs.get("strategy", "multitrial" if searched else None)
    if recorded is None:
        study.set_user_attr("strategy", strategy)
    elif recorded != strategy:
        raise ValueError(f"study {study.study_name!r} was searched with --strategy {recorded}, not {strategy}; resume "
                         f"it with --strategy {recorded} or pick another --study")


def create_study(name: str, storage: optuna.storages.BaseStorage, objective: str, seed: int | None,
                 rungs: Rungs | None = None, sampler: str = "tpe") -> optuna.Study:
    """Create or load the study with ``sampler``; single-objective with ``rungs``: successive halving on them."""
    dirs = directions(objective)
    pruner = rungs.optuna_pruner() if rungs is not None and len(dirs) == 1 else optuna.pruners.NopPruner()
    study = optuna.create_study(study_name=name, storage=storage, directions=dirs, load_if_exists=True,
                                sampler=make_sampler(sampler, seed), pruner=pruner)
    if [d.name.lower() for d in study.directions] != dirs:
        raise ValueError(f"study {name!r} exists with directions {[d.name.lower() for d in study.directions]}, "
                         f"not {dirs} (objective {objective!r}); pick another --study")
    check_sampler(study, sampler)
    study.set_metric_names(["val_acc"] + ([OBJECTIVES[objective]] if len(dirs) == 2 else []))
    return study


def load(settings: SearchSettings, heartbeat: bool = True) -> optuna.Study:
    """Open the storage and create or load the study of ``settings`` (``heartbeat=False`` for ask/tell users)."""
    storage = open_storage(settings.storage_url, settings.study_dir, settings.heartbeat_s if heartbeat else None)
    return create_study(settings.study, storage, settings.objective, settings.seed, settings.budget.rungs,
                        settings.sampler)


def study_note(settings: SearchSettings) -> str:
    """The study's note on its dashboard page: what a step of a curve is, where the rungs fall, sampler, objective."""
    rungs, metric = settings.budget.rungs, OBJECTIVES[settings.objective]
    objective = ("validation accuracy, maximised" if metric is None else
                 f"validation accuracy (maximised) against {metric} (minimised): a Pareto front")
    lines = [f"## {settings.study}", "",
             f"**Objective**: {settings.objective}, {objective}. **Sampler**: {settings.sampler}, "
             f"{SAMPLERS[settings.sampler]}.", ""]
    if settings.strategy == "oneshot":
        lines += ["**Strategy**: one-shot. One supernet is trained once; each trial is a sub-fractal scored on its "
                  "weights without training, so its curve is one step.", ""]
    else:
        lines += [f"**A step** of a trial's curve is one epoch of {rungs.min_images:,} training images "
                  f"(`--rung-images`), each epoch a new shuffle of the training split; its value is the validation "
                  f"accuracy on {settings.budget['val_size']:,} held-out images.", ""]
        where = ", ".join(f"rung {k} at step {rungs.factor**k} ({images:,} images)"
                          for k, images in enumerate(rungs.images))
        if metric is None:
            lines += [f"**Rungs** of successive halving: {where}. At each rung the best 1/{rungs.factor} of the trials "
                      "that reached it go on; the others are PRUNED, their reason in the user attribute "
                      "`pruned_reason`. A trial at the top rung has its whole budget.", ""]
        else:
            lines += [f"**No pruning** (Optuna cannot prune multi-objective studies): every trial trains to the top "
                      f"rung, step {rungs.epochs} ({rungs.images[-1]:,} images). Rungs: {where}.", ""]
    if settings.baselines:
        lines += [f"**Baselines** ({', '.join(settings.baselines)}): trained to the top rung with the reference "
                  "recipe; not search trials.", ""]
    if settings.final.top:
        lines += [f"**Final stage**: the retrained models are the study `{settings.study}{FINAL_SUFFIX}`.", ""]
    return "\n".join(lines)


def describe(study: optuna.Study, note: str) -> None:
    """Make ``note`` the study's dashboard note, unless it is already (every save is a new version of the note)."""
    if get_note(study) != note:
        save_note(study, note)


def trial_runner(settings: SearchSettings, budget: Budget | None = None) -> TrialRunner:
    """What runs this study's trials (with ``budget`` in place of the trials' own: the baselines')."""
    return TrialRunner(settings.space, budget or settings.budget, settings.objective, settings.study_dir,
                       settings.trials)


def run_baselines(settings: SearchSettings, study: optuna.Study) -> None:
    """Train each baseline not yet finished in this study, with the search's budget (on every core: see
    ``SearchSettings.baseline_budget``) and the reference recipe."""
    done = {t.user_attrs.get("model") for t in study.get_trials(deepcopy=False)
            if t.user_attrs.get("kind") == "baseline" and t.state in (TrialState.COMPLETE, TrialState.FAIL)
            and not t.user_attrs.get("interrupted")}
    procedure = trial_runner(settings, settings.baseline_budget())
    for model in settings.baselines:
        if model in done:
            continue
        log.info("baseline %s", model)
        try:
            study.optimize(procedure.baseline(model, settings.baseline_train()), n_trials=1)
        except Exception as exc:  # noqa: BLE001 - recorded as FAIL with its reason; the search goes on
            log.warning("baseline %s failed: %s", model, exc)


def enqueue_reference(study: optuna.Study, settings: SearchSettings) -> None:
    """Queue the reference point (the paper's network, projected into the space) as the next search trial unless it
    ran, runs or waits.

    An interrupted reference trial does not count, so it is queued again. Invocations that start together may both
    queue it; the trial runner runs only the first and records the others as surplus.
    """
    live = (TrialState.WAITING, TrialState.RUNNING)
    if not any(t.user_attrs.get("reference") and not t.user_attrs.get("surplus")
               and (t.state in live or counts_as_finished(t)) for t in study.get_trials(deepcopy=False)):
        study.enqueue_trial(settings.space.reference_point(), user_attrs={"reference": True})


def prepare(settings: SearchSettings) -> optuna.Study:
    """Open the study, reap dead workers' trials, train missing baselines and queue the reference point."""
    study = load(settings)
    reap_stale(study, settings.unclaimed_after_s)
    run_baselines(settings, study)
    enqueue_reference(study, settings)
    return study
