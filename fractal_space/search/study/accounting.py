"""Study accounting: which trials count toward ``--trials``, what is still running, and reaping dead owners' trials.

Every trial records its owner (``worker``, ``host:pid``) as soon as it starts; a trial whose owner is gone is failed
as ``interrupted`` (it does not count and its configuration is tried again), so a run never waits for a trial that no
live worker owns.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta

import optuna
from optuna.trial import FrozenTrial, TrialState

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


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


def fail_trial(study: optuna.Study, t: FrozenTrial, reason: str, interrupted: bool) -> bool:
    """Mark a trial that another process may own FAIL with ``reason``; False if it finished meanwhile."""
    storage = study._storage  # noqa: SLF001 - Optuna has no public API to fail a trial owned by another process
    try:
        storage.set_trial_user_attr(t._trial_id, "fail_reason", reason)  # noqa: SLF001
        if interrupted:
            storage.set_trial_user_attr(t._trial_id, "interrupted", True)  # noqa: SLF001
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)  # noqa: SLF001
    except RuntimeError:  # finished meanwhile, or failed by another worker
        return False
    return True


def fail_interrupted(study: optuna.Study, reason: str, owned_by: str | None = None) -> int:
    """Mark RUNNING trials FAIL (``interrupted``, so they do not count) whose worker is dead, or is ``owned_by``.

    Without ``owned_by``: trials of worker processes on this host that are gone (SIGKILL, crash); trials of other
    hosts are left to the RDB heartbeat. The finished trials of a killed run are untouched. Returns how many.
    """
    host = socket.gethostname()
    failed = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = str(t.user_attrs.get("worker", ""))
        owner_host, _, pid = worker.rpartition(":")
        dead = owner_host == host and pid.isdigit() and not _alive(int(pid))
        if (worker == owned_by if owned_by else dead) and fail_trial(study, t, reason, interrupted=True):
            failed += 1
    return failed


def fail_unclaimed(study: optuna.Study, grace_s: float) -> int:
    """Fail RUNNING trials that no worker claimed within ``grace_s`` of their start; returns how many.

    A worker tags its trial within milliseconds of Optuna creating it. One killed in between leaves a RUNNING trial
    with no owner and no heartbeat, which neither the owner check nor the heartbeat check would ever fail.
    """
    failed = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if "worker" not in t.user_attrs and started_before(t, grace_s) and fail_trial(
                study, t, "interrupted: no worker claimed it (killed as it started)", interrupted=True):
            failed += 1
    return failed


def reap_stale(study: optuna.Study, unclaimed_after_s: float) -> int:
    """Fail the RUNNING trials no live worker owns: this host's dead workers' by process id, other hosts' by the RDB
    heartbeat, and trials never claimed by a worker after ``unclaimed_after_s``. Returns how many were reaped here.
    """
    reaped = fail_interrupted(study, "interrupted: worker process died") + fail_unclaimed(study, unclaimed_after_s)
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


def started_before(t: FrozenTrial, seconds: float) -> bool:
    """Whether ``t`` started more than ``seconds`` ago (by the storage's clock, which Optuna keeps in local time)."""
    return t.datetime_start is not None and datetime.now() - t.datetime_start > timedelta(seconds=seconds)
