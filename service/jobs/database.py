"""The job database's engine: SQLite under the data directory, or a shared PostgreSQL.

SQLite runs in WAL mode (readers never wait for the writer) and starts every transaction with
`BEGIN IMMEDIATE`: two workers that both read and then write would otherwise deadlock on the
lock upgrade, which SQLite answers with an immediate "database is locked" instead of waiting.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.exc import DBAPIError

from service.config import Settings
from service.jobs.tables import metadata

_SCHEMA_LOCK_ID = 0x43504531  # pg_advisory_xact_lock key: one worker creates the tables at a time


def database_url(settings: Settings) -> str | None:
    """The configured URL (psycopg 3 for PostgreSQL), SQLite under data_dir, or None."""
    url = settings.jobs_database_url
    if url:
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):  # SQLAlchemy's default driver would be psycopg2
                url = "postgresql+psycopg://" + url[len(prefix):]
        if settings.jobs_database_password_file is not None:
            password = Path(settings.jobs_database_password_file).read_text().strip()
            url = make_url(url).set(password=password).render_as_string(hide_password=False)
        return url
    if settings.data_dir is not None:
        Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{Path(settings.data_dir) / 'jobs.sqlite'}"
    return None


def make_engine(url: str) -> Engine:
    """An engine for the job database; connects lazily (`create_tables` makes the tables)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=4,
                               connect_args={"connect_timeout": 5})
    return engine


def _sqlite_connect(connection: Any, record: Any) -> None:
    connection.isolation_level = None  # SQLAlchemy's "begin" event issues BEGIN IMMEDIATE instead
    cursor = connection.cursor()
    for pragma in ("journal_mode=WAL", "busy_timeout=30000", "foreign_keys=ON", "synchronous=NORMAL"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def create_tables(engine: Engine, attempts: int = 3) -> None:
    """Create the job tables if missing (idempotent).

    Every Gunicorn worker of every replica runs this at start; on PostgreSQL an advisory lock
    serialises them, on SQLite BEGIN IMMEDIATE does, and a lost race is retried.

    Raises:
        DBAPIError: the database cannot be reached (the runner tries again later).
    """
    for attempt in range(attempts):
        try:
            with engine.begin() as connection:
                if engine.dialect.name == "postgresql":
                    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_ID})
                metadata.create_all(connection, checkfirst=True)
            return
        except DBAPIError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
