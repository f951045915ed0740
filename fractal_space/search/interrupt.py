"""Ctrl-C that cannot be lost: SIGINT sets a flag before it raises, and the trial loop checks the flag.

Python delivers SIGINT as a KeyboardInterrupt wherever the interpreter happens to be; raised inside a garbage-collector
or SQLAlchemy cleanup callback it is printed as "Exception ignored" and dropped, and a worker would go on starting
trials. With :func:`install`, the flag stays set, and :func:`check` (called at every epoch and before every trial)
raises again.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

_requested = threading.Event()


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
