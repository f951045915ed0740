"""Ray Tune backend: ``tune.Tuner`` + ASHA, searching with ``OptunaSearch`` over the same define-by-run space.

The searcher writes into the same Optuna storage and study as the Optuna backend, with the same user attributes
and the same :class:`~fractal_space.search.record.TrialRecord`, so results, report and resume work identically.
Two things stock ``OptunaSearch`` gets wrong are fixed in :class:`StudySearch`: a trial that ASHA stops is told to
Optuna as PRUNED (not COMPLETE with a partial score), and a failing trial is FAIL with its reason.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from fractal_space.hardware import usable_cpus
from fractal_space.search import lifecycle
from fractal_space.search.accounting import fail_interrupted, tally
from fractal_space.search.budget import Budget
from fractal_space.search.procedure import run_trial
from fractal_space.search.record import FRACTAL_MODEL, OBJECTIVES, WORKER, TrialRecord, fail_reason, tag
from fractal_space.search.retention import keep_best_checkpoints, trial_dir
from fractal_space.search.settings import SearchSettings
from fractal_space.search.storage import open_storage
from fractal_space.space import SearchSpace

log = logging.getLogger("fractal_space.search")
_PROGRESS: list[Callable[[], None]] = []  # the driver's progress hook; module-level so Ray can pickle the callback


def define_by_run(space: SearchSpace, trial: Any) -> dict[str, Any]:
    """The space's own ``suggest`` plus the Optuna trial number (it names the trial's checkpoint folder)."""
    return {**space.suggest(trial), "trial_number": trial.number}


def _metrics(record: TrialRecord, **extra: Any) -> dict[str, Any]:
    """What a Ray trial reports: the scalars ASHA and the dashboard use, and the whole record for the searcher."""
    return {"val_acc": record.val_acc, "params": record.params, "flops": record.flops,
            "latency_ms": record.latency_ms, "epoch": record.epoch, "record": json.dumps(record.to_dict()), **extra}


def trainable(config: dict[str, Any], budget: Budget, study_dir: str) -> None:
    """One Ray trial: the shared trial procedure, reporting each epoch to Tune (ASHA decides on ``val_acc``)."""
    from ray import tune

    last: list[TrialRecord] = []

    def on_epoch(record: TrialRecord) -> None:
        last[:] = [record]
        tune.report(_metrics(record))

    trial_config = {"model_kwargs": config["model_kwargs"], "train": config["train"]}
    out = trial_dir(Path(study_dir), int(config["trial_number"]))
    try:
        run_trial(model=FRACTAL_MODEL, config=trial_config, budget=budget, out_dir=out, on_epoch=on_epoch)
    except Exception as exc:  # noqa: BLE001 - reported to the searcher, which records FAIL with this reason
        scalars = _metrics(last[0]) if last else {"val_acc": 0.0, "params": 0, "flops": 0, "latency_ms": 0.0}
        epoch = last[0].epoch if last else 0
        tune.report({**scalars, "epoch": epoch + 1, "fail_reason": fail_reason(exc)})


class StudySearch(OptunaSearch):
    """OptunaSearch recording trials as the Optuna backend does (ASHA-stopped -> PRUNED, errors -> FAIL)."""

    def __init__(self, settings: SearchSettings, storage: optuna.storages.BaseStorage) -> None:
        metric = OBJECTIVES[settings.objective]
        super().__init__(functools.partial(define_by_run, settings.space),
                         metric=["val_acc", metric] if metric else "val_acc",
                         mode=["max", "min"] if metric else "max",
                         sampler=lifecycle.make_sampler(settings.seed), study_name=settings.study, storage=storage)
        self._objective = settings.objective
        self._study_dir = settings.study_dir

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        ot_trial = self._ot_trials[trial_id]
        tag(ot_trial, "fractalnet", FRACTAL_MODEL)
        if config is not None:
            ot_trial.set_user_attr("config", {k: config[k] for k in ("model_kwargs", "train")})
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        self._completed_trials.add(trial_id)
        ot_trial = self._ot_trials[trial_id]
        record = TrialRecord.from_dict(json.loads(result["record"])) if result and "record" in result else None
        reason = (result or {}).get("fail_reason") or ("Ray trial errored (see its error.txt)" if error else None)
        try:
            if record is not None:
                ot_trial.set_user_attr("record", record.to_dict())
            if reason:
                ot_trial.set_user_attr("fail_reason", reason)
                self._ot_study.tell(ot_trial, state=TrialState.FAIL)
            elif record is None or not record.finished_budget:
                self._ot_study.tell(ot_trial, state=TrialState.PRUNED)  # stopped by ASHA (or never reported)
            else:
                self._ot_study.tell(ot_trial, record.objective_values(self._objective))
        except (RuntimeError, ValueError) as exc:  # e.g. the trial was reaped as interrupted meanwhile
            log.warning("could not record Ray trial %s: %s", trial_id, exc)
        keep_best_checkpoints(self._ot_study, self._study_dir)
        for hook in _PROGRESS:
            hook()


def _init_ray(settings: SearchSettings) -> str:
    """Start (or join, with ``--address``) Ray with the dashboard on; returns the dashboard URL."""
    import ray

    opts = settings.ray
    if opts.address:
        ctx = ray.init(address=opts.address, include_dashboard=True, log_to_driver=False)
    else:
        import fractal_space

        # Workers import this package from the same checkout even when it is not pip-installed.
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(Path(fractal_space.__file__).parents[1]),
                                                           os.environ.get("PYTHONPATH")]))}
        ctx = ray.init(num_cpus=usable_cpus(), include_dashboard=True, dashboard_host="127.0.0.1",
                       dashboard_port=opts.dashboard_port, log_to_driver=False, runtime_env={"env_vars": env})
    url = ctx.dashboard_url or ""
    return url if url.startswith("http") else f"http://{url}"


def run(settings: SearchSettings, progress: Callable[[int], None]) -> optuna.Study:
    """Run (or resume) the Ray search until the study has ``settings.trials`` finished search trials."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    study = lifecycle.prepare(settings)
    dashboard = _init_ray(settings)
    token = Path.home() / ".ray" / "auth_token"  # Ray >= 2.5x turns token authentication on by default
    print(f"Ray dashboard: {dashboard}" + (f" (its API wants the token in {token})" if token.exists() else ""),
          flush=True)
    _PROGRESS[:] = [lambda: progress(tally(study)[0])]
    cpus, gpus = settings.ray.cpus_per_trial, settings.ray.gpus_per_trial
    budget = settings.budget.replace(num_threads=max(1, int(cpus)), device="cuda" if gpus else "cpu")
    fn = tune.with_resources(tune.with_parameters(trainable, budget=budget, study_dir=str(settings.study_dir)),
                             {"cpu": cpus, "gpu": gpus})
    root = settings.study_dir / "ray"
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Ctrl-C raises here, as in the Optuna backend
    try:
        previous = sorted(root.glob("run-*")) if root.exists() else []
        if previous and tune.Tuner.can_restore(previous[-1]):
            log.info("restoring Ray experiment %s", previous[-1])
            tune.Tuner.restore(str(previous[-1]), fn, resume_unfinished=False).fit()
        progress(tally(study)[0])
        remaining = settings.trials - tally(study)[0]
        if remaining > 0:
            single = OBJECTIVES[settings.objective] is None
            scheduler = (ASHAScheduler(metric="val_acc", mode="max", max_t=budget["epochs"], grace_period=1,
                                       reduction_factor=3) if single else None)
            searcher = StudySearch(settings, open_storage(settings.storage_url, settings.study_dir, heartbeat_s=None))
            tuner = tune.Tuner(
                fn,
                tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=remaining),
                run_config=tune.RunConfig(name=f"run-{len(previous):03d}", storage_path=str(root), verbose=0,
                                          log_to_file=True),
            )
            tuner.fit()
        progress(tally(study)[0])
    except KeyboardInterrupt:
        fail_interrupted(study, "interrupted: KeyboardInterrupt", owned_by=WORKER)  # leave nothing RUNNING
        raise
    finally:
        _PROGRESS.clear()
        ray.shutdown()
    return study
