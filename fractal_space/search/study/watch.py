"""What a person watching a search sees: a quiet console with one progress bar, and the Optuna dashboard.

The console: Optuna kept quiet (failed trials are one line with their reason), one bar of finished trials.
The dashboard shows trials, their learning curves, parameters and importances from the study's storage (with the Ray
backend, Ray's dashboard shows jobs, actors, logs and resources beside it). It is its own process, serving a socket
this process bound on 127.0.0.1: whatever it prints (Optuna's importance warnings, request errors) goes to its log
file, never to the search's console, and it answers while the search is busy. It lives until :func:`serve`'s block
ends, or this process dies (it reads its stdin until the end of file). It imports Optuna and the dashboard only, not
this package (torch), so it starts in about a second.
"""

from __future__ import annotations

import errno
import pickle
import shlex
import socket
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import optuna
from tqdm import tqdm

DEFAULT_PORT = 8080
#: What the dashboard process runs: this file by path (``runpy``), so that neither this package nor torch is imported.
_BOOT = "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__')"


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


def study_url(base: str, storage: optuna.storages.BaseStorage, study: str) -> str:
    """The dashboard's page of ``study`` (trials, curves, importances), not its list of studies."""
    return f"{base}/dashboard/studies/{storage.get_study_id_from_name(study)}"


def reopen_command(storage: str) -> str:
    """The command that opens the dashboard of ``storage`` (a URL or ``journal:<file>``) once the run is over: the
    ``optuna-dashboard`` of this Python's environment, so it works without activating it."""
    program = Path(sys.executable).parent / "optuna-dashboard"
    return shlex.join([str(program) if program.exists() else "optuna-dashboard", storage.removeprefix("journal:")])


def _listen(start: int) -> socket.socket:
    """A listening socket on ``start``, or the next port up that is free, taken by binding it: a port found free and
    bound later can be taken in between by another search starting on this machine."""
    for port in range(start, start + 100):
        sock = socket.socket()
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE:
                raise
            continue
        sock.listen(64)
        return sock
    raise ValueError(f"no free port for the Optuna dashboard in {start}..{start + 99}")


@contextmanager
def serve(storage: optuna.storages.BaseStorage, log: Path, port: int | None = None) -> Iterator[str]:
    """Serve the dashboard of ``storage`` while the block runs, its output appended to ``log``; yields its URL.

    The socket is listening before this returns, so the URL answers at once (requests wait the second the dashboard
    process takes to start)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with _listen(port or DEFAULT_PORT) as sock, log.open("ab") as out:
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        proc = subprocess.Popen([sys.executable, "-c", _BOOT, __file__, str(sock.fileno())], stdin=subprocess.PIPE,
                                stdout=out, stderr=subprocess.STDOUT, pass_fds=(sock.fileno(),),
                                start_new_session=True, cwd=log.parent)  # no Ctrl-C from the terminal: ended below
    try:
        try:
            proc.stdin.write(pickle.dumps(storage))
            proc.stdin.flush()
        except BrokenPipeError:
            print(f"the Optuna dashboard did not start; see {log}", file=sys.stderr, flush=True)
        yield url
    finally:
        try:
            proc.stdin.close()  # end of file: the dashboard exits
        except BrokenPipeError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's signature
        """No access log."""


def _dashboard_process(fd: int) -> None:
    """The dashboard process: read the pickled storage from stdin, serve the inherited socket until stdin ends."""
    from optuna_dashboard import wsgi

    storage = pickle.load(sys.stdin.buffer)  # noqa: S301 - written by serve() in the search's own process
    sock = socket.socket(fileno=fd)
    server = WSGIServer(sock.getsockname(), _Quiet, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    server.server_name, server.server_port = sock.getsockname()
    server.setup_environ()
    server.set_app(wsgi(storage))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdin.buffer.read()


if __name__ == "__main__":
    _dashboard_process(int(sys.argv[2]))
