"""Storage, study bookkeeping and the trial procedure that both backends record through.

Every trial, whichever backend runs it, ends up as one Optuna trial in one storage with the same user attributes
(``kind``, ``model``, ``config``, ``record``, ``history``, ``fail_reason``, ``worker``), so results, resume and the
report read one place.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import IntegrityError, OperationalError

from fractal_space.search.trial import FRACTAL_MODEL, OBJECTIVES, Budget, Pruned, objective_values, run_trial
from fractal_space.space import SearchSpace

WORKER = f"{socket.gethostname()}:{os.getpid()}"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def open_storage(url: str | None, study_dir: Path, heartbeat_s: int | None = 30) -> BaseStorage:
    """Open ``url`` (any SQLAlchemy URL, or ``journal:<file>``); the default is SQLite under ``study_dir``.

    RDB storages get a heartbeat (for ``study.optimize`` loops) so trials of a machine that died are failed by the
    others (grace: 3 beats); ``heartbeat_s=None`` for ask/tell users such as Ray's searcher.
    Raises a one-line ValueError if the storage cannot be opened.
    """
    if url is None:
        study_dir.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{study_dir.resolve() / 'study.db'}"
    try:
        if url.startswith("journal:"):
            path = Path(url.removeprefix("journal:")).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        return _rdb_storage(url, heartbeat_s)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy/driver errors of every kind become one line
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot open storage {url!r}: {reason}") from None


def _rdb_storage(url: str, heartbeat_s: int | None, attempts: int = 5) -> RDBStorage:
    """RDBStorage, retried when another process creates the same new database's tables at the same moment.

    Workers (and a monitor reading the study) that start together on a fresh database race to create Optuna's schema;
    the loser fails ("table ... already exists", or a duplicate alembic_version row) although the schema is then
    complete, so it simply opens again.
    """
    engine_kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    attempt = 0
    while True:
        try:
            return RDBStorage(_with_driver(url), engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_s,
                              grace_period=None if heartbeat_s is None else 3 * heartbeat_s)
        except (OperationalError, IntegrityError) as exc:  # table, or alembic_version row, made by the other one
            attempt += 1
            if not ("already exists" in str(exc) or "alembic_version" in str(exc)) or attempt == attempts:
                raise
            time.sleep(0.2 * attempt)


def _with_driver(url: str) -> str:
    """SQLAlchemy 2.1 maps ``postgresql://`` to psycopg 3; use psycopg2 (the project's driver) when only it exists."""
    scheme, _, rest = url.partition("://")
    if scheme in ("postgresql", "postgres") and find_spec("psycopg") is None and find_spec("psycopg2") is not None:
        return f"postgresql+psycopg2://{rest}"
    return url


def directions(objective: str) -> list[str]:
    """Maximise accuracy; minimise the cost of a multi-objective study."""
    return ["maximize"] if OBJECTIVES[objective] is None else ["maximize", "minimize"]


def create_study(name: str, storage: BaseStorage, objective: str, seed: int | None) -> optuna.Study:
    """Create or load the study; TPE sampler and, for single-objective, Hyperband pruning on per-epoch accuracy."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; expected one of {', '.join(OBJECTIVES)}")
    dirs = directions(objective)
    pruner = optuna.pruners.HyperbandPruner(min_resource=1) if len(dirs) == 1 else optuna.pruners.NopPruner()
    study = optuna.create_study(study_name=name, storage=storage, directions=dirs, load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=seed), pruner=pruner)
    if [d.name.lower() for d in study.directions] != dirs:
        raise ValueError(f"study {name!r} exists with directions {[d.name.lower() for d in study.directions]}, "
                         f"not {dirs} (objective {objective!r}); pick another --study")
    study.set_metric_names(["val_acc"] + ([OBJECTIVES[objective]] if len(dirs) == 2 else []))
    return study


def is_search_trial(t: FrozenTrial) -> bool:
    """A FractalNet trial of the search (not a baseline, not a surplus trial another worker made redundant)."""
    return t.user_attrs.get("kind") != "baseline" and not t.user_attrs.get("surplus")


def counts_as_finished(t: FrozenTrial) -> bool:
    """COMPLETE, PRUNED, or FAIL with a real reason; interrupted trials do not count and are re-run."""
    if not is_search_trial(t) or t.state not in FINISHED:
        return False
    return t.state != TrialState.FAIL or ("fail_reason" in t.user_attrs and not t.user_attrs.get("interrupted"))


def tally(study: optuna.Study) -> tuple[int, int]:
    """(finished, running) search trials: what ``--trials N`` counts toward N."""
    trials = study.get_trials(deepcopy=False)
    finished = sum(counts_as_finished(t) for t in trials)
    running = sum(t.state == TrialState.RUNNING and is_search_trial(t) for t in trials)
    return finished, running


def fail_interrupted(study: optuna.Study, reason: str, owned_by: str | None = None) -> int:
    """Mark RUNNING trials FAIL (``interrupted``, so they do not count) whose worker is dead, or is ``owned_by``.

    Without ``owned_by``: trials of worker processes on this host that are gone (SIGKILL, crash); trials of other
    hosts are left to the RDB heartbeat. The finished trials of a killed run are untouched. Returns how many.
    """
    host = socket.gethostname()
    failed = 0
    storage = study._storage  # noqa: SLF001 - Optuna has no public API to fail a trial owned by another process
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = str(t.user_attrs.get("worker", ""))
        owner_host, _, pid = worker.rpartition(":")
        dead = owner_host == host and pid.isdigit() and not _alive(int(pid))
        if not (worker == owned_by if owned_by else dead):
            continue
        try:
            storage.set_trial_user_attr(t._trial_id, "fail_reason", reason)  # noqa: SLF001
            storage.set_trial_user_attr(t._trial_id, "interrupted", True)  # noqa: SLF001
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)  # noqa: SLF001
            failed += 1
        except RuntimeError:  # finished meanwhile, or failed by another worker
            pass
    return failed


def reap_stale(study: optuna.Study) -> int:
    """Fail the RUNNING trials of dead workers: this host's by process id, other hosts' by the RDB heartbeat."""
    reaped = fail_interrupted(study, "interrupted: worker process died")
    optuna.storages.fail_stale_trials(study)
    return reaped


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def trial_dir(study_dir: Path, number: int) -> Path:
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


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


@dataclass
class TrialProcedure:
    """Trains one Optuna trial (search or baseline) and records it; shared by the Optuna workers and baselines."""

    space: SearchSpace
    budget: Budget
    objective: str
    study_dir: Path
    target: int

    def search(self, trial: optuna.Trial) -> list[float]:
        """The Optuna objective of a search trial: sample the space, train, prune on per-epoch accuracy."""
        trial.set_user_attr("worker", WORKER)
        trial.set_user_attr("kind", "fractalnet")
        ahead = [t for t in trial.study.get_trials(deepcopy=False)
                 if t.number < trial.number and (counts_as_finished(t) or
                                                 (t.state == TrialState.RUNNING and is_search_trial(t)))]
        if len(ahead) >= self.target:
            trial.set_user_attr("surplus", True)
            raise SurplusTrial(f"trial {trial.number}: {self.target} trials already finished or running")
        return self._train(trial, FRACTAL_MODEL, lambda: self.space.suggest(trial))

    def baseline(self, model: str, train: dict[str, Any]) -> Callable[[optuna.Trial], list[float]]:
        """The objective of a baseline trial: ``model`` trained with the same budget and the reference recipe."""

        def run(trial: optuna.Trial) -> list[float]:
            trial.set_user_attr("worker", WORKER)
            trial.set_user_attr("kind", "baseline")
            return self._train(trial, model, lambda: {"model_kwargs": {}, "train": train})

        return run

    def _train(self, trial: optuna.Trial, model: str, sample: Callable[[], dict[str, Any]]) -> list[float]:
        """Sample, train and record; every exception leaves a ``fail_reason`` so the trial counts as finished."""
        trial.set_user_attr("model", model)
        prune = len(trial.study.directions) == 1 and trial.user_attrs.get("kind") != "baseline"
        history: list[float] = []

        def on_epoch(record: dict[str, Any]) -> None:
            history.append(record["val_acc"])
            trial.set_user_attr("history", history)
            trial.set_user_attr("record", record)
            if prune and record["epoch"] < record["epochs"]:  # a finished budget is a result, never pruned
                trial.report(record["val_acc"], record["epoch"])
                if trial.should_prune():
                    raise Pruned(f"pruned by Hyperband after epoch {record['epoch']}")

        out = trial_dir(self.study_dir, trial.number)
        try:
            config = sample()
            trial.set_user_attr("config", _jsonable(config))
            record = run_trial(model, config["model_kwargs"], config["train"], self.budget, out, on_epoch)
            return objective_values(record, self.objective)
        except Pruned as exc:
            raise optuna.TrialPruned(str(exc)) from None
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "interrupted: KeyboardInterrupt")
            trial.set_user_attr("interrupted", True)
            raise
        except Exception as exc:
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}"[:2000])
            raise
        finally:
            _release_accelerator_memory()


class SurplusTrial(Exception):
    """A worker asked for a trial after others had already taken the last of the ``--trials`` quota."""


def _release_accelerator_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
