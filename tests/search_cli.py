"""Helpers shared by the search tests: a tiny real search (real CIFAR-10 subset, real storages) and its results."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import optuna
import pandas as pd
from small_data import tiny_dataset

from fractal_space.search.cli import main
from fractal_space.search.study.accounting import counts_as_finished
from fractal_space.search.study.storage import open_storage

REPO = Path(__file__).resolve().parents[1]
# Small, fast corner of the space: B <= 3, C <= 3, 4-8 channels; trials take seconds on 2 cores.
TINY_SPACE = ("num_blocks: {low: 2, high: 3}\nnum_columns: {low: 1, high: 3}\nbase_width: 4\n"
              "width_growth: {choices: [1.0, 2.0]}\nbatch_size: 50\n")


def free_port() -> int:
    """A loopback port the OS says is free now (for a server a test starts: PostgreSQL, a Ray head)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tiny_args(runs: Path, study: str, *extra: str, rungs: int = 1) -> list[str]:
    """Command-line arguments of a tiny CPU search writing under ``runs``: one rung is one epoch of 100 images, two
    rungs are 1 and 3 epochs of 50; the final stage tests on the first 500 test images (small_data)."""
    space = runs / "tiny_space.yaml"
    if not space.exists():
        runs.mkdir(parents=True, exist_ok=True)
        space.write_text(TINY_SPACE)
    return ["--runs-dir", str(runs), "--study", study, "--device", "cpu", "--dataset", tiny_dataset(),
            "--rungs", str(rungs),
            "--rung-images", "100" if rungs == 1 else "50",
            "--train-subset", "100", "--val-size", "100", "--baselines", "", "--space", str(space),
            "--no-progress", "--heartbeat", "2", "--workers", "1", "--threads", "1",
            "--final-top", "0", "--final-baselines", "", *extra]


def run_search(runs: Path, study: str, *extra: str, rungs: int = 1) -> int:
    """Run the CLI in-process (what ``python search/run.py`` does)."""
    return main(tiny_args(runs, study, *extra, rungs=rungs))


def spawn_search(runs: Path, study: str, *extra: str, rungs: int = 1) -> subprocess.Popen:
    """Run ``python search/run.py`` as a child process (for signals), stdout+stderr piped together."""
    return subprocess.Popen([sys.executable, str(REPO / "search" / "run.py"), *tiny_args(runs, study, *extra,
                                                                                        rungs=rungs)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def load_study(runs: Path, study: str, storage: str | None = None) -> optuna.Study:
    """Load ``study`` from ``storage`` (any URL the CLI takes; default: the study's SQLite under ``runs``)."""
    return optuna.load_study(study_name=study, storage=open_storage(storage, runs / study, heartbeat_s=None))


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials ``--trials N`` counts."""
    return [t for t in study.get_trials() if counts_as_finished(t)]


def trials_table(runs: Path, study: str) -> pd.DataFrame:
    return pd.read_parquet(runs / study / "trials.parquet")


def dashboard_json(runs: Path, study: str, path: str) -> dict:
    """What the Optuna dashboard's API answers at ``path`` for the storage of ``study`` (its pages show this), from
    the dashboard's WSGI app in this process; ``{id}`` in ``path`` is the study's id."""
    from optuna_dashboard import wsgi

    storage = open_storage(None, runs / study, heartbeat_s=None)
    environ = {"PATH_INFO": path.format(id=storage.get_study_id_from_name(study))}
    setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(wsgi(storage)(environ, lambda code, headers, *exc: status.append(code)))
    assert status == ["200 OK"], (status, body[:500])
    return json.loads(body)
