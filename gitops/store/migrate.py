"""Bringing a database to the newest schema: Alembic migrations, run at start under a lock.

`migrate(engine)` upgrades the database to the head revision of `gitops/store/migrations/`.
Several servers may start at the same moment on one database, so the upgrade runs under a
lock that the others wait for: a PostgreSQL advisory lock (held by the connection that
migrates), or for a SQLite file an exclusive `flock` on `<file>-migrate.lock` beside it.
Whoever gets the lock second finds the database at head and does nothing.

A database made by release 0.1 (tables, but no `alembic_version`) is picked up by the
first migration, which keeps its tables and data.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import structlog
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

log = structlog.get_logger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
# Any fixed 64-bit number; it names our lock among the database's advisory locks.
_ADVISORY_LOCK = 0x6769746F7073  # "gitops"


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head() -> str:
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert revision is not None
    return revision


def current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


@contextmanager
def _file_lock(engine: Engine) -> Iterator[None]:
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        yield
        return
    path = Path(f"{database}-migrate.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def migrate(engine: Engine, then: Callable[[], None] = lambda: None) -> None:
    """Upgrade the database behind `engine` to the newest schema (a no-op when it is there),
    then run `then` still holding the lock (one-time data steps that need the app's keys)."""
    config = alembic_config()
    target = head()
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _ADVISORY_LOCK})
            connection.commit()
            try:
                _upgrade(config, connection, target)
                then()
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _ADVISORY_LOCK})
                connection.commit()
        return
    with _file_lock(engine):
        with engine.connect() as connection:
            _upgrade(config, connection, target)
        then()


def _upgrade(config: Config, connection: Connection, target: str) -> None:
    before = current(connection)
    if before == target:
        return
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
    connection.commit()
    log.info("store.migrated", from_revision=before or "(none)", to_revision=target)
