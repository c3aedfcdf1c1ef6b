"""Fixtures of the store's tests: a database on SQLite and on PostgreSQL, and two control
planes' stores on one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gitops.store import Store


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    database: str = request.getfixturevalue("postgres_database")
    return database


@pytest.fixture
def two(url: str) -> Iterator[tuple[Store, Store]]:
    """Two control planes' stores on one database (one key: they are one cluster's)."""
    first = Store(url)
    second = Store(url, keys=first.keys)
    yield first, second
    first.close()
    second.close()
