"""The Optuna dashboard, served live from this process while an Optuna-backend search runs.

It shows trials, their learning curves, parameters and importances from the study's storage (the Ray dashboard, with
the Ray backend, shows jobs, actors, logs and resources instead). It runs on 127.0.0.1 in a daemon thread and is shut
down with the search.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna

DEFAULT_PORT = 8080


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's signature
        """No access log on the search's console."""


def _free_port(start: int) -> int:
    """``start``, or the next port up that nothing listens on."""
    for port in range(start, start + 100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return port
    raise ValueError(f"no free port for the Optuna dashboard in {start}..{start + 99}")


@contextmanager
def serve(storage: optuna.storages.BaseStorage, port: int | None = None) -> Iterator[str]:
    """Serve the dashboard for ``storage`` while the block runs; yields its URL."""
    from optuna_dashboard import wsgi

    logging.getLogger("optuna_dashboard").setLevel(logging.WARNING)
    server: WSGIServer = make_server("127.0.0.1", _free_port(port or DEFAULT_PORT), wsgi(storage),
                                     handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, name="optuna-dashboard", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
