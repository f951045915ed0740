"""Optuna backend: ``--workers N`` processes, each an ask/train/tell loop against one storage.

Each loop iteration is ``study.optimize(n_trials=1)`` so Optuna's own machinery (heartbeat, FAIL on exceptions,
PRUNED on ``TrialPruned``) records the trial; the loop decides when the study has its ``--trials`` and stops at
exactly that count even with several workers (see ``Objective.search``).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable

import optuna

from fractal_space.search import lifecycle
from fractal_space.search.accounting import reap_stale, tally
from fractal_space.search.console import quiet_optuna
from fractal_space.search.objective import SurplusTrial
from fractal_space.search.retention import keep_best_checkpoints
from fractal_space.search.settings import SearchSettings

log = logging.getLogger("fractal_space.search")
POLL_S = 2.0


def worker(settings: SearchSettings, on_trial: Callable[[], None] | None = None) -> None:
    """Run search trials until the study has ``settings.trials`` finished ones (counting every worker's)."""
    study = lifecycle.load(settings)
    objective = lifecycle.objective(settings)
    while True:
        reap_stale(study)
        finished, running = tally(study)
        if finished >= settings.trials:
            return
        if finished + running >= settings.trials:  # the rest is running elsewhere; take over if it dies
            time.sleep(POLL_S)
            continue
        try:
            study.optimize(objective.search, n_trials=1, catch=())
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
    study = lifecycle.prepare(settings)
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
