"""The resume record every experiment keeps in its run folder: one JSON file, ``ledger.json``.

It holds three things, and every change rewrites the file atomically (a reader, or a run killed while writing, sees
the old ledger or the new one, never a part):

- ``invocations``: each invocation that did work (when it started, its wall seconds, what it ran), so that a result
  page adds up a run that took several invocations;
- ``units``: the units of work finished so far (a training run, a study, a score), each with what it recorded; a
  re-run skips them and reuses the record;
- ``pauses``: when the run was stopped and continued, so that its wall time leaves them out. Record them beside the
  signals: ``python -m experiments.ledger FOLDER stop`` with ``kill -STOP``, ``... cont`` with ``kill -CONT``.

Threads of one process may share a ``Ledger``; two processes writing one folder's ledger at once may lose a change.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fractal_space.core.files import write_atomic

LEDGER = "ledger.json"
PAUSE_EVENTS = ("stop", "cont")


class Ledger:
    """The ledger of the run folder ``folder`` (created on the first change)."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / LEDGER
        self._lock = threading.Lock()

    def read(self) -> dict[str, Any]:
        """The whole record; empty where nothing was recorded yet."""
        recorded = json.loads(self.path.read_text()) if self.path.exists() else {}
        return {"invocations": [], "units": {}, "pauses": [], **recorded}

    def _update(self, change: Callable[[dict[str, Any]], None]) -> None:
        with self._lock:
            record = self.read()
            change(record)
            write_atomic(self.path, json.dumps(record, indent=1) + "\n")

    def invocations(self) -> list[dict[str, Any]]:
        """The recorded invocations, oldest first."""
        return self.read()["invocations"]

    def add_invocation(self, **fields: Any) -> None:
        """Record one invocation (JSON-serialisable fields of the experiment's choosing)."""
        self._update(lambda record: record["invocations"].append(fields))

    def units(self) -> dict[str, Any]:
        """Every finished unit's record, by unit name."""
        return self.read()["units"]

    def unit(self, name: str) -> Any | None:
        """The record of the finished unit ``name``, or None while it is not finished."""
        return self.units().get(name)

    def complete(self, name: str, record: Any) -> None:
        """Record that unit ``name`` finished with ``record`` (replacing an earlier record of it)."""
        self._update(lambda ledger: ledger["units"].__setitem__(name, record))

    def pause(self, event: str, at: float | None = None) -> None:
        """Record that the run was stopped (``stop``) or continued (``cont``) at ``at`` (default: now, Unix seconds)."""
        if event not in PAUSE_EVENTS:
            raise ValueError(f"pause event {event!r} is not one of {', '.join(PAUSE_EVENTS)}")
        stamp = time.time() if at is None else at
        self._update(lambda record: record["pauses"].append({"at": stamp, "event": event}))

    def paused_seconds(self, start: float, end: float) -> float:
        """Seconds of [start, end] during which the run was stopped (a pause across either end counts up to it)."""
        total, stopped_at = 0.0, None
        for pause in self.read()["pauses"]:
            if pause["event"] == "stop":
                stopped_at = pause["at"]
            elif stopped_at is not None:
                total += max(0.0, min(pause["at"], end) - max(stopped_at, start))
                stopped_at = None
        return total


def main(argv: Sequence[str] | None = None) -> int:
    """Record that the run in a folder was stopped or continued, now (beside kill -STOP / kill -CONT)."""
    parser = argparse.ArgumentParser(prog="python -m experiments.ledger", description=main.__doc__)
    parser.add_argument("folder", type=Path, help="the run folder whose ledger records the pause")
    parser.add_argument("event", choices=PAUSE_EVENTS, help="stop: the run was stopped now; cont: it continues now")
    args = parser.parse_args(argv)
    Ledger(args.folder).pause(args.event)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
