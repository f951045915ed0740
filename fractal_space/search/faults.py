"""Fault injection for the reliability tests: a process can be armed to SIGKILL itself at a named point.

``FRACTAL_SPACE_KILL_AT="trial-running:2"`` kills the process the 2nd time it passes ``fault_point("trial-running")``.
Points: ``trial-running`` (Optuna has just marked a new trial RUNNING; the objective has not tagged it yet),
``trial-tagged`` (the trial carries its worker), ``epoch-recorded`` (an epoch's record is stored), ``trial-finished``
(the trial is told to the storage). Unarmed (the variable unset), a point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "FRACTAL_SPACE_KILL_AT"
_passed: Counter[str] = Counter()


def fault_point(name: str) -> None:
    """SIGKILL this process if it is armed for the n-th pass of ``name`` and this is it."""
    armed = os.environ.get(ENV)
    if not armed:
        return
    point, _, nth = armed.partition(":")
    if point != name:
        return
    _passed[name] += 1
    if _passed[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
