"""Optuna backend: ``--workers N`` processes, each an ask/train/tell loop against one storage.

Each loop iteration is ``study.optimize(n_trials=1)`` so Optuna's own machinery (heartbeat, FAIL on exceptions,
PRUNED on ``TrialPruned``) records the trial; the loop decides when the study has its ``--trials`` and stops at
exactly that count even with several workers (see ``TrialProcedure.search``).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable

import optuna
from optuna.trial import TrialState

from fractal_space.search.cli import quiet_optuna
from fractal_space.search.settings import SearchSettings
from fractal_space.search.study import (
    SurplusTrial,
    TrialProcedure,
    create_study,
    is_search_trial,
    keep_best_checkpoints,
    open_storage,
    reap_stale,
    tally,
)

log = logging.getLogger("fractal_space.search")
POLL_S = 2.0


def load(settings: SearchSettings) -> optuna.Study:
    """Open the storage and create or load the study of ``settings``."""
    storage = open_storage(settings.storage_url, settings.study_dir, settings.heartbeat_s)
    return create_study(settings.study, storage, settings.objective, settings.seed)


def run_baselines(settings: SearchSettings, study: optuna.Study) -> None:
    """Train each baseline not yet finished in this study, with the search's budget and the reference recipe."""
    procedure = TrialProcedure(settings.space, settings.budget, settings.objective, settings.study_dir,
                               settings.trials)
    done = {t.user_attrs.get("model") for t in study.get_trials(deepcopy=False)
            if t.user_attrs.get("kind") == "baseline" and t.state in (TrialState.COMPLETE, TrialState.FAIL)
            and not t.user_attrs.get("interrupted")}
    for model in settings.baselines:
        if model in done:
            continue
        log.info("baseline %s", model)
        try:
            study.optimize(procedure.baseline(model, settings.baseline_train()), n_trials=1)
        except Exception as exc:  # noqa: BLE001 - recorded as FAIL with its reason; the search goes on
            log.warning("baseline %s failed: %s", model, exc)


def enqueue_reference(study: optuna.Study, settings: SearchSettings) -> None:
    """Make the paper's recipe (projected into the space) the first search trial, once per study."""
    if not any(is_search_trial(t) for t in study.get_trials(deepcopy=False)):
        study.enqueue_trial(settings.space.reference_point(), user_attrs={"reference": True})


def worker(settings: SearchSettings, on_trial: Callable[[], None] | None = None) -> None:
    """Run search trials until the study has ``settings.trials`` finished ones (counting every worker's)."""
    study = load(settings)
    procedure = TrialProcedure(settings.space, settings.budget, settings.objective, settings.study_dir,
                               settings.trials)
    while True:
        reap_stale(study)
        finished, running = tally(study)
        if finished >= settings.trials:
            return
        if finished + running >= settings.trials:  # the rest is running elsewhere; take over if it dies
            time.sleep(POLL_S)
            continue
        try:
            study.optimize(procedure.search, n_trials=1, catch=())
        except SurplusTrial:
            continue
        except Exception as exc:  # noqa: BLE001 - the trial is already FAIL with its reason; go on
            log.warning("trial failed: %s", exc)
        keep_best_checkpoints(study, settings.study_dir)
        if on_trial is not None:
            on_trial()


def _worker_process(settings: SearchSettings) -> None:
    quiet_optuna()
    try:
        worker(settings)
    except KeyboardInterrupt:
        pass


def run(settings: SearchSettings, progress: Callable[[int], None]) -> optuna.Study:
    """Run the whole Optuna search; ``progress(finished)`` is called as trials finish (for the progress bar)."""
    study = load(settings)
    reap_stale(study)
    run_baselines(settings, study)
    enqueue_reference(study, settings)
    progress(tally(study)[0])
    if settings.workers <= 1:
        worker(settings, on_trial=lambda: progress(tally(study)[0]))
        return study
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker_process, args=(settings,), daemon=False)
             for _ in range(settings.workers)]
    for p in procs:
        p.start()
    try:
        while any(p.is_alive() for p in procs):
            time.sleep(POLL_S)
            progress(tally(study)[0])
    except KeyboardInterrupt:
        for p in procs:  # a terminal's Ctrl-C reached them too; a `kill -INT` of this process did not
            p.join(timeout=5)
            if p.is_alive():
                os.kill(p.pid, signal.SIGINT)
        raise
    finally:
        for p in procs:
            p.join()
    progress(tally(study)[0])
    bad = [p.exitcode for p in procs if p.exitcode not in (0, None)]
    if bad:
        raise RuntimeError(f"{len(bad)} worker process(es) exited with code(s) {bad}")
    return study
