"""What a person watching a search sees: a quiet console with one progress bar, and the Optuna dashboard.

The console: Optuna kept quiet (failed trials are one line with their reason), one bar of finished trials.
The dashboard shows trials, their learning curves, parameters and importances from the study's storage (the Ray
dashboard, with the Ray backend, shows jobs, actors, logs and resources instead). It runs on 127.0.0.1 in a daemon
thread of this process and is shut down with the search.
"""

from __future__ import annotations

import errno
import logging
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna
from tqdm import tqdm

DEFAULT_PORT = 8080


def quiet_optuna() -> None:
    """Failed trials are logged once, as one line with their reason, not as Optuna's traceback."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


class Progress:
    """A bar of finished trials out of ``total``; ``update(finished)`` may be called from any backend's hook."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total = total
        self.bar = tqdm(total=total, desc="trials", unit="trial", disable=not enabled)

    def update(self, finished: int) -> None:
        self.bar.n = min(finished, self.total)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's signature
        """No access log on the search's console."""


def _bind(start: int, app: object) -> WSGIServer:
    """A server on ``start``, or the next port up that is free, taken by binding it: a port found free and bound
    later can be taken in between by another search starting on this machine."""
    for port in range(start, start + 100):
        try:
            return make_server("127.0.0.1", port, app, handler_class=_Quiet)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
    raise ValueError(f"no free port for the Optuna dashboard in {start}..{start + 99}")


@contextmanager
def serve(storage: optuna.storages.BaseStorage, port: int | None = None) -> Iterator[str]:
    """Serve the dashboard for ``storage`` while the block runs; yields its URL."""
    from optuna_dashboard import wsgi

    logging.getLogger("optuna_dashboard").setLevel(logging.WARNING)
    server = _bind(port or DEFAULT_PORT, wsgi(storage))
    thread = threading.Thread(target=server.serve_forever, name="optuna-dashboard", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
