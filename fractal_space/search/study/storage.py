"""Opening the one Optuna storage every backend, worker and reader of a study shares.

SQLite (the default, under ``runs/<study>/``), a journal file (``journal:<file>``, no server, works on NFS-less
single machines) or any SQLAlchemy URL such as PostgreSQL for workers on several machines.
"""

from __future__ import annotations

import time
from importlib.util import find_spec
from pathlib import Path

from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from sqlalchemy.exc import IntegrityError, OperationalError

from fractal_space.core.errors import first_line


def default_url(study_dir: Path) -> str:
    """The study's own SQLite file."""
    return f"sqlite:///{study_dir.resolve() / 'study.db'}"


def open_storage(url: str | None, study_dir: Path, heartbeat_s: int | None = 30) -> BaseStorage:
    """Open ``url`` (any SQLAlchemy URL, or ``journal:<file>``); the default is SQLite under ``study_dir``.

    RDB storages get a heartbeat (for ``study.optimize`` loops) so trials of a machine that died are failed by the
    others (grace: 3 beats); ``heartbeat_s=None`` for ask/tell users such as Ray's searcher.
    Raises a one-line ValueError if the storage cannot be opened.
    """
    if url is None:
        study_dir.mkdir(parents=True, exist_ok=True)
        url = default_url(study_dir)
    try:
        if url.startswith("journal:"):
            path = Path(url.removeprefix("journal:")).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        return _rdb_storage(url, heartbeat_s)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy/driver errors of every kind become one line
        raise ValueError(f"cannot open storage {url!r}: {first_line(exc)}") from None


def _rdb_storage(url: str, heartbeat_s: int | None, attempts: int = 5) -> RDBStorage:
    """RDBStorage, retried when another process creates the same new database's tables at the same moment.

    Workers (and a monitor reading the study) that start together on a fresh database race to create Optuna's schema;
    the loser fails ("table ... already exists", or a duplicate alembic_version row) although the schema is then
    complete, so it simply opens again.
    """
    engine_kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    attempt = 0
    while True:
        try:
            return RDBStorage(_with_driver(url), engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_s,
                              grace_period=None if heartbeat_s is None else 3 * heartbeat_s)
        except (OperationalError, IntegrityError) as exc:  # table, or alembic_version row, made by the other one
            attempt += 1
            if not ("already exists" in str(exc) or "alembic_version" in str(exc)) or attempt == attempts:
                raise
            time.sleep(0.2 * attempt)


def _with_driver(url: str) -> str:
    """SQLAlchemy 2.1 maps ``postgresql://`` to psycopg 3; use psycopg2 (the project's driver) when only it exists."""
    scheme, _, rest = url.partition("://")
    if scheme in ("postgresql", "postgres") and find_spec("psycopg") is None and find_spec("psycopg2") is not None:
        return f"postgresql+psycopg2://{rest}"
    return url
