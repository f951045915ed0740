"""Ray Tune backend: ``tune.Tuner`` + ASHA, searching with ``OptunaSearch`` over the same define-by-run space.

The searcher writes into the same Optuna storage and study as the Optuna backend, with the same user attributes
and the same :class:`~fractal_space.search.trial.record.TrialRecord`, so results, report and resume work identically.
Two things stock ``OptunaSearch`` gets wrong are fixed in :class:`StudySearch`: a trial that ASHA stops is told to
Optuna as PRUNED (not COMPLETE with a partial score), and a failing trial is FAIL with its reason.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from optuna_dashboard import save_note
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from fractal_space.core.errors import first_line
from fractal_space.core.hardware import usable_cpus
from fractal_space.search.space import MODEL, SearchSpace
from fractal_space.search.study import lifecycle
from fractal_space.search.study.accounting import fail_interrupted, tally
from fractal_space.search.study.retention import keep_best_checkpoints, trial_dir
from fractal_space.search.study.runner import record_pruned, trial_note
from fractal_space.search.study.settings import RaySettings, SearchSettings
from fractal_space.search.study.storage import open_storage
from fractal_space.search.trial.adapters import flat_params, ray_metrics
from fractal_space.search.trial.budget import Budget
from fractal_space.search.trial.record import (
    OBJECTIVES,
    TrialRecord,
    fail_reason,
    tag,
    worker_id,
)
from fractal_space.search.trial.training import trial_records

log = logging.getLogger("fractal_space.search")
TOKEN_FILE = Path.home() / ".ray" / "auth_token"  # where Ray keeps the token of clusters it starts
_PROGRESS: list[Callable[[], None]] = []  # the driver's progress hook; module-level so Ray can pickle the callback


def define_by_run(space: SearchSpace, trial: Any) -> dict[str, Any]:
    """The space's own ``suggest`` plus the Optuna trial number (it names the trial's checkpoint folder)."""
    return {**space.suggest(trial), "trial_number": trial.number}


#: The per-trial series a Ray trial exports through ``ray.util.metrics`` (Prometheus names get Ray's ``ray_`` prefix),
#: tagged by study and trial number, for the Ray dashboard's Metrics tab and any Prometheus/Grafana.
TRIAL_METRICS = {"fractal_space_trial_val_acc": "validation accuracy after the trial's latest epoch",
                 "fractal_space_trial_best_val_acc": "the trial's best validation accuracy so far",
                 "fractal_space_trial_epoch": "epochs the trial has trained",
                 "fractal_space_trial_images_per_s": "training images per second in the trial's latest epoch"}


class StudyTrial(tune.Trainable):
    """One Ray trial of a study, one Tune step per epoch, checkpointed in the study's folder under its Optuna trial
    number. Its actor's repr is ``trial <number> <architecture>`` (the Ray dashboard's Actors page), every epoch
    prints one line (the actor's log), and a trial the scheduler stops says so before it exits."""

    def setup(self, config: dict[str, Any], space: SearchSpace, budget: Budget, study_dir: str,  # type: ignore[override]
              study: str) -> None:
        from ray.util.metrics import Gauge

        self._number = int(config["trial_number"])
        trial = space.config(flat_params(config, space))
        self._title = f"trial {self._number} {trial.architecture}"
        self._rungs = budget.rungs
        self._records = trial_records(model=MODEL, config=trial.to_dict(), budget=budget,
                                      out_dir=trial_dir(Path(study_dir), self._number))
        self._last: TrialRecord | None = None
        self._failed = False
        self._tags = {"study": study, "trial": str(self._number)}
        self._gauges = {name: Gauge(name, description=what, tag_keys=("study", "trial"))
                        for name, what in TRIAL_METRICS.items()}

    def step(self) -> dict[str, Any]:
        try:
            record = next(self._records)
        except Exception as exc:  # noqa: BLE001 - reported to the searcher, which records FAIL with this reason
            self._failed = True
            print(f"{self._title} failed: {first_line(exc)}", flush=True)
            scalars = ray_metrics(self._last) if self._last else {"val_acc": 0.0, "params": 0, "flops": 0,
                                                                  "latency_ms": 0.0}
            epoch = self._last.epoch if self._last else 0
            return {**scalars, "epoch": epoch + 1, "fail_reason": fail_reason(exc), "done": True}
        self._last = record
        print(f"{self._title} epoch {record.epoch}/{record.epochs} rung {self._rungs.rung_of(record.epoch)} "
              f"val_acc {record.val_acc:.3f} {record.epoch_seconds:.1f} s", flush=True)
        values = {"fractal_space_trial_val_acc": record.val_acc,
                  "fractal_space_trial_best_val_acc": max(record.val_acc_history),
                  "fractal_space_trial_epoch": record.epoch,
                  "fractal_space_trial_images_per_s": record.train_images_per_s}
        for name, value in values.items():
            self._gauges[name].set(float(value), tags=self._tags)
        return {**ray_metrics(record), "done": record.finished_budget}

    def cleanup(self) -> None:
        last = self._last
        if last is not None and not last.finished_budget and not self._failed:
            print(f"{self._title} stopped by the scheduler (ASHA) at rung {self._rungs.rung_of(last.epoch)} after "
                  f"epoch {last.epoch}/{last.epochs}: not among the best 1/{self._rungs.factor} there", flush=True)
        self._records.close()

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        """Nothing for Tune to keep: the engine checkpoints every epoch in the study's folder, where a resumed study
        finds it."""

    def load_checkpoint(self, checkpoint: Any) -> None:
        """A restored trial resumes from the engine's checkpoint in the study's folder (see :meth:`save_checkpoint`)."""

    def __repr__(self) -> str:
        return getattr(self, "_title", "trial")


class StudySearch(OptunaSearch):
    """OptunaSearch recording trials as the Optuna backend does (ASHA-stopped -> PRUNED, errors -> FAIL)."""

    def __init__(self, settings: SearchSettings, storage: optuna.storages.BaseStorage) -> None:
        metric = OBJECTIVES[settings.objective]
        super().__init__(functools.partial(define_by_run, settings.space),
                         metric=["val_acc", metric] if metric else "val_acc",
                         mode=["max", "min"] if metric else "max",
                         sampler=lifecycle.make_sampler(settings.sampler, settings.seed), study_name=settings.study,
                         storage=storage)
        self._objective = settings.objective
        self._study_dir = settings.study_dir
        self._fractal_space = settings.space
        self._rungs = settings.budget.rungs
        self._reported: dict[str, set[int]] = {}  # epochs told to Optuna as intermediate values, by Tune trial id

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        ot_trial = self._ot_trials[trial_id]
        tag(ot_trial, "fractalnet", MODEL)
        if config is not None:
            trial = self._fractal_space.config(flat_params(config, self._fractal_space))
            ot_trial.set_user_attr("config", trial.to_dict())
            ot_trial.set_user_attr("model", trial.architecture)
            save_note(ot_trial, trial_note(ot_trial.number, ot_trial.user_attrs))
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Each epoch as the Optuna backend stores it: the record, and (single-objective) the curve's point."""
        if trial_id in self._ot_trials and "record" in result:
            self._record_epoch(trial_id, TrialRecord.from_dict(json.loads(result["record"])))

    def _record_epoch(self, trial_id: str, record: TrialRecord) -> None:
        ot_trial = self._ot_trials[trial_id]
        ot_trial.set_user_attr("record", record.to_dict())
        reported = self._reported.setdefault(trial_id, set())
        if len(self._ot_study.directions) == 1 and record.epoch not in reported:
            ot_trial.report(record.val_acc, record.epoch)
            reported.add(record.epoch)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        self._completed_trials.add(trial_id)
        ot_trial = self._ot_trials[trial_id]
        record = TrialRecord.from_dict(json.loads(result["record"])) if result and "record" in result else None
        reason = (result or {}).get("fail_reason") or ("Ray trial errored (see its error.txt)" if error else None)
        try:
            if record is not None:
                self._record_epoch(trial_id, record)  # Tune hands the last epoch here, not to on_trial_result
            if reason:
                ot_trial.set_user_attr("fail_reason", reason)
                self._ot_study.tell(ot_trial, state=TrialState.FAIL)
            elif record is None or not record.finished_budget:  # stopped by ASHA (or never reported)
                record_pruned(ot_trial, "no epoch reported" if record is None else
                              self._rungs.pruned_reason(record.epoch))
                self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
            else:
                self._ot_study.tell(ot_trial, record.objective_values(self._objective))
        except (RuntimeError, ValueError) as exc:  # e.g. the trial was reaped as interrupted meanwhile
            log.warning("could not record Ray trial %s: %s", trial_id, exc)
        keep_best_checkpoints(self._ot_study, self._study_dir)
        for hook in _PROGRESS:
            hook()


def _token_available() -> bool:
    return bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")) or TOKEN_FILE.exists()


def _token_mode_if_token_available() -> None:
    """``RAY_AUTH_MODE=token`` unless the user set a mode, when a token is at hand (Ray's own rule for ``ray start``).

    Ray caches its configuration when ``ray.tune`` is imported, so setting the variable alone comes too late; Ray's
    helper also refreshes the cache.
    """
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def connect(settings: SearchSettings) -> tuple[str, str]:
    """Start Ray (or join the cluster at ``--address``) with the dashboard on unless turned off; returns the dashboard's
    URL ('' without one) and the cluster's address.

    Checks, before anything is written: something listens at the address, the cluster can be joined, and it has the
    CPUs and GPUs one trial asks for (Ray would otherwise wait for them forever; a cluster of our own is checked before
    it is started, so a refusal costs no Ray start-up). Ray >= 2.5x starts clusters (``ray start --head``) with token
    authentication once a token is saved (a local ``ray.init()`` saves one), and a client must then say so: when
    joining, ``RAY_AUTH_MODE=token`` is set if a token is at hand (a token-mode client joins clusters without
    authentication as well). Raises a one-line ValueError.
    """
    import ray

    _quiet_ray()
    opts = settings.ray
    if opts.address:
        _check_listening(opts.address)
        _token_mode_if_token_available()
        try:
            ctx = ray.init(address=opts.address, include_dashboard=settings.dashboard, log_to_driver=False,
                           logging_level=logging.ERROR)
        except (ConnectionError, RuntimeError) as exc:
            hint = ("" if _token_available() else "; if it uses token authentication (Ray's default), put its token "
                    f"in {TOKEN_FILE} or RAY_AUTH_TOKEN and set RAY_AUTH_MODE=token")
            raise ValueError(f"--address {opts.address}: cannot join the Ray cluster ({first_line(exc)}){hint}"
                             ) from None
    else:
        import torch

        import fractal_space

        cpus = usable_cpus()
        _check_resources(opts, {"CPU": float(cpus), "GPU": float(torch.cuda.device_count())})
        # Workers import this package from the same checkout even when it is not pip-installed.
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(Path(fractal_space.__file__).parents[1]),
                                                           os.environ.get("PYTHONPATH")]))}
        # address="local": always a new cluster of our own, never one that another job left running here.
        ctx = ray.init(address="local", num_cpus=cpus, include_dashboard=settings.dashboard,
                       dashboard_host="127.0.0.1", dashboard_port=settings.dashboard_port, log_to_driver=False,
                       logging_level=logging.ERROR, runtime_env={"env_vars": env})
    try:
        _check_resources(opts, ray.cluster_resources())
    except ValueError:
        ray.shutdown()
        raise
    url = ctx.dashboard_url or ""
    return (url if url.startswith("http") or not url else f"http://{url}"), ctx.address_info.get("gcs_address", "")


def _check_listening(address: str) -> None:
    """One-line ValueError when nothing listens at a ``host:port`` address: Ray retries one (a typo, a cluster that is
    down) for about 14 minutes, 20 tries of ~40 s, before it says so; a TCP connect says it at once. Addresses Ray
    resolves itself (``auto``, ``ray://...``) are left to Ray."""
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as exc:
        raise ValueError(f"--address {address}: nothing listens there ({exc.strerror or exc})") from None


def _check_resources(opts: RaySettings, have: dict[str, float]) -> None:
    """One-line ValueError when one trial asks for more CPUs or GPUs than the cluster (``have``) has."""
    for resource, want in (("CPU", opts.cpus_per_trial), ("GPU", opts.gpus_per_trial)):
        if want > have.get(resource, 0.0):
            raise ValueError(f"--{resource.lower()}s-per-trial {want:g}: the Ray cluster has "
                             f"{have.get(resource, 0.0):g} {resource}(s), so no trial could ever start")


def _quiet_ray() -> None:
    """The console shows the search's own lines and progress bar only: no Ray Tune tables, no INFO logs drawn across
    the bar. Ray's own files under ``runs/<study>/ray`` (each trial's ``result.json`` and ``progress.csv``) and its
    dashboard keep everything."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy reporter honours verbose=0
    for name in ("ray", "ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.ERROR)


def shutdown(grace_s: float = 10.0) -> None:
    """``ray.shutdown()``, then end what it leaves: the processes this driver started (raylet, GCS, dashboard and
    the dashboard's own subprocesses, such as ``ray-dashboard-ServeHead-0``) that are still alive ``grace_s`` later.
    A joined cluster's processes are not this driver's children and are never touched."""
    import psutil
    import ray

    started = psutil.Process().children(recursive=True)
    ray.shutdown()
    _, alive = psutil.wait_procs(started, timeout=grace_s)
    for proc in alive:
        proc.kill()
    psutil.wait_procs(alive, timeout=grace_s)


def trial_name(trial: Any) -> str:
    """A Tune trial's name and folder: its Optuna trial number, as ``trials/<number>`` has it (Tune's own ids and
    its numbering from 1 line up with nothing else of the study)."""
    return f"trial_{int(trial.config['trial_number']):05d}"


def trials_at_once(resources: dict[str, float], cpus: float, gpus: float) -> int:
    """How many trials of ``cpus`` CPUs and ``gpus`` GPUs the cluster's ``resources`` fit at once.

    Passed to Tune as ``max_concurrent_trials``: with a searcher of its own (ours), Ray 2.60 otherwise keeps one trial
    pending at a time, so trials start one actor start-up after another and four quarter-GPU trials of a few seconds
    never run together (``TUNE_MAX_PENDING_TRIALS_PG``, ``tune_controller._get_max_pending_trials``).
    """
    fits = [resources.get(name, 0.0) / want for name, want in (("CPU", cpus), ("GPU", gpus)) if want > 0]
    return max(1, math.floor(min(fits) + 1e-9)) if fits else 1


def run(settings: SearchSettings, progress: Callable[[int], None]) -> optuna.Study:
    """Run (or resume) the Ray search until the study has ``settings.trials`` finished search trials."""
    import ray

    if not ray.is_initialized():
        connect(settings)
    study = lifecycle.prepare(settings)
    _PROGRESS[:] = [lambda: progress(tally(study)[0])]
    cpus, gpus = settings.ray.cpus_per_trial, settings.ray.gpus_per_trial
    budget = settings.budget.replace(num_threads=max(1, int(cpus)), device="cuda" if gpus else "cpu")
    fn = tune.with_resources(tune.with_parameters(StudyTrial, space=settings.space, budget=budget,
                                                   study_dir=str(settings.study_dir), study=settings.study),
                             {"cpu": cpus, "gpu": gpus})
    fn.__name__ = fn.__qualname__ = StudyTrial.__name__  # the dashboard's Class column, not Tune's wrapper's name
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
            scheduler = budget.ray_scheduler(metric="val_acc", mode="max") if single else None
            searcher = StudySearch(settings, open_storage(settings.storage_url, settings.study_dir, heartbeat_s=None))
            tuner = tune.Tuner(
                fn,
                tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=remaining,
                                            max_concurrent_trials=trials_at_once(ray.cluster_resources(), cpus, gpus),
                                            trial_name_creator=trial_name, trial_dirname_creator=trial_name),
                run_config=tune.RunConfig(name=f"run-{len(previous):03d}", storage_path=str(root), verbose=0,
                                          log_to_file=True),
            )
            tuner.fit()
        progress(tally(study)[0])
    except KeyboardInterrupt:
        fail_interrupted(study, "interrupted: KeyboardInterrupt", owned_by=worker_id())  # leave nothing RUNNING
        raise
    finally:
        _PROGRESS.clear()
        shutdown()
    return study
