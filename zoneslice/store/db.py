"""Opening slice databases: engine factory, schema creation, SQLite pragmas, write transactions."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, create_engine, event

from zoneslice.errors import StoreError
from zoneslice.store import models


def _pragmas(dbapi_conn: sqlite3.Connection, _record: object) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def open_engine(path: str | os.PathLike[str], *, create: bool = False) -> Engine:
    """A SQLAlchemy engine on a slice file, WAL with synchronous=FULL (durable commits)."""
    p = Path(path)
    if not create and not p.exists():
        raise StoreError(f"{p}: no such slice database")
    engine = create_engine(f"sqlite:///{p}", future=True)
    event.listen(engine, "connect", _pragmas)
    if create:
        models.metadata.create_all(engine)
    return engine


def connect_readonly(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """A raw read-only sqlite3 connection, for the engine's hot lookups."""
    p = Path(path)
    if not p.exists():
        raise StoreError(f"{p}: no such slice database")
    try:
        conn = sqlite3.connect(f"file:{p}?mode=ro", uri=True, check_same_thread=False)
        conn.execute("PRAGMA query_only=ON")
        version = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"{p}: not a slice database ({exc})") from exc
    if version is None or int(version[0]) != models.SCHEMA_VERSION:
        raise StoreError(f"{p}: schema version {version and version[0]} is not {models.SCHEMA_VERSION}")
    return conn


def read_meta(conn: sqlite3.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT key, value FROM meta").fetchall())


@contextlib.contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` on an autocommit connection; on any exception
    (a failed COMMIT included) ``ROLLBACK`` and re-raise, so nothing is half-applied."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
