"""What stops a trial from outside the training loop: Ctrl-C, and the reliability tests' injected kills.

**Ctrl-C that cannot be lost.** Python delivers SIGINT as a KeyboardInterrupt wherever the interpreter happens to be;
raised inside a garbage-collector or SQLAlchemy cleanup callback it is printed as "Exception ignored" and dropped, and
a worker would go on starting trials. With :func:`install`, SIGINT sets a flag before it raises, and :func:`check`
(called at every epoch and before every trial) raises again while the flag is set.

**Fault injection.** ``FRACTAL_SPACE_KILL_AT="trial-running:2"`` makes a process SIGKILL itself the 2nd time it passes
``fault_point("trial-running")``. Points: ``trial-running`` (Optuna has just marked a new trial RUNNING; the runner
has not tagged it yet), ``trial-tagged`` (the trial carries its worker), ``epoch-recorded`` (an epoch's record is
stored), ``trial-finished`` (the trial is told to the storage). Unarmed (the variable unset), a point costs one
dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from typing import Any

_requested = threading.Event()
ENV = "FRACTAL_SPACE_KILL_AT"
_passed: Counter[str] = Counter()


def _handler(signum: int, frame: Any) -> None:
    _requested.set()
    raise KeyboardInterrupt


def install() -> Any:
    """Install the SIGINT handler in this (main) thread; returns the previous one for :func:`restore`."""
    _requested.clear()
    return signal.signal(signal.SIGINT, _handler)


def restore(previous: Any) -> None:
    signal.signal(signal.SIGINT, previous)


def check() -> None:
    """Raise KeyboardInterrupt if Ctrl-C was pressed, even if its first KeyboardInterrupt was swallowed."""
    if _requested.is_set():
        raise KeyboardInterrupt


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
