"""Opening and migrating the store's database: an SQLAlchemy engine for any URL (SQLite files get WAL,
full sync, foreign keys and a busy timeout) and the Alembic upgrade to ``head``, serialised across
processes (a file lock for SQLite; PostgreSQL takes an advisory lock in ``migrations/env.py``)."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, make_url

#: the file name of the embedded store under ``LRBNN_STATE_DIR``
SQLITE_NAME = "predictions.sqlite"


def default_url(state_dir: Path) -> str:
    return f"sqlite:///{(state_dir / SQLITE_NAME).resolve()}"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite files get WAL, full sync, foreign keys and a busy timeout."""
    if url.startswith("sqlite"):
        path = make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 5.0})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=4)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def migrate(engine: Engine) -> None:
    """Upgrade the database to the newest schema (Alembic ``head``); safe for processes starting at once."""
    cfg = Config()
    cfg.set_main_option("script_location", str(files("service.store") / "migrations"))
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    lock = contextlib.nullcontext() if not database else _file_lock(Path(f"{database}.lock"))
    with lock, engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
