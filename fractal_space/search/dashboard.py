"""The Optuna dashboard, served live from this process while an Optuna-backend search runs.

It shows trials, their learning curves, parameters and importances from the study's storage (the Ray dashboard, with
the Ray backend, shows jobs, actors, logs and resources instead). It runs on 127.0.0.1 in a daemon thread and is shut
down with the search.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna

DEFAULT_PORT = 8080


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
