"""Optuna backend: ``--workers N`` processes, each an ask/train/tell loop against one storage.

Each loop iteration is ``study.optimize(n_trials=1)`` so Optuna's own machinery (heartbeat, FAIL on exceptions,
PRUNED on ``TrialPruned``) records the trial; the loop decides when the study has its ``--trials`` and stops at
exactly that count even with several workers (see ``TrialRunner.search``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import optuna

from fractal_space.search.study import lifecycle
from fractal_space.search.study.accounting import reap_stale, tally
from fractal_space.search.study.retention import keep_best_checkpoints
from fractal_space.search.study.runner import SurplusTrial
from fractal_space.search.study.settings import SearchSettings
from fractal_space.search.study.watch import quiet_optuna
from fractal_space.search.trial import stops
from fractal_space.search.trial.stops import fault_point

log = logging.getLogger("fractal_space.search")
POLL_S = 2.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def worker(settings: SearchSettings, on_trial: Callable[[], None] | None = None) -> None:
    """Run search trials until the study has ``settings.trials`` finished ones (counting every worker's)."""
    study = lifecycle.load(settings)
    runner = lifecycle.trial_runner(settings)
    while True:
        stops.check()
        reap_stale(study, settings.unclaimed_after_s)
        finished, running = tally(study)
        if finished >= settings.trials:
            return
        if finished + running >= settings.trials:  # the rest is running elsewhere; take over if it dies
            time.sleep(POLL_S)
            continue
        lifecycle.enqueue_reference(study, settings)  # again if an earlier run's reference trial was interrupted
        try:
            study.optimize(runner.search, n_trials=1, catch=())
        except SurplusTrial:
            continue
        except Exception as exc:  # noqa: BLE001 - the trial is already FAIL with its reason; go on
            log.warning("trial failed: %s", exc)
        fault_point("trial-finished")
        keep_best_checkpoints(study, settings.study_dir)
        if on_trial is not None:
            on_trial()


def _die_with(main: int) -> None:
    """Make this worker die when the search's main process does, so no worker outlives a killed search.

    Linux: PR_SET_PDEATHSIG kills it when its parent exits; that parent is the forkserver, which exits when ``main``
    does. Its RUNNING trial is then failed as interrupted by the next run's reaper (the worker's pid is gone).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the check after every trial still ends it
        pass
    _exit_if_orphaned(main)  # main died before prctl took effect


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return False
    try:  # no /proc (macOS)
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _exit_if_orphaned(main: int) -> None:
    if not _alive(main):
        os.kill(os.getpid(), signal.SIGKILL)


def _worker_process(settings: SearchSettings, main: int) -> None:
    _die_with(main)
    quiet_optuna()
    stops.install()
    try:
        worker(settings, on_trial=lambda: _exit_if_orphaned(main))
    except KeyboardInterrupt:
        pass


def run(settings: SearchSettings, progress: Callable[[int], None]) -> optuna.Study:
    """Run the whole Optuna search; ``progress(finished)`` is called as trials finish (for the progress bar)."""
    previous = stops.install()
    try:
        return _run(settings, progress)
    finally:
        stops.restore(previous)


def _run(settings: SearchSettings, progress: Callable[[int], None]) -> optuna.Study:
    study = lifecycle.prepare(settings)
    progress(tally(study)[0])
    if settings.workers <= 1:
        worker(settings, on_trial=lambda: progress(tally(study)[0]))
        return study
    # Forked from one server process that imported torch, timm and this module once: each spawned worker paid ~6 s of
    # imports (the server forks before any thread pool or CUDA context exists, so forking it is safe).
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    procs = [ctx.Process(target=_worker_process, args=(settings, os.getpid()), daemon=False)
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
