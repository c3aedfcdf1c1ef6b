"""Shared fixtures: real PostgreSQL, real Docker, and the CI rule for missing parts.

Under CI=true a test that needs Docker, iptables, PostgreSQL or git and cannot have it
fails; elsewhere it is skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.servers import PostgresServer, pg_bin

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, what: str) -> None:
    """Fail under CI, skip elsewhere, when a real part is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{what} is required under CI=true but is missing")
    pytest.skip(f"{what} is not available here")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server of our own on a loopback port, for the session."""
    require(pg_bin("initdb") is not None and pg_bin("pg_ctl") is not None, "PostgreSQL (initdb, pg_ctl)")
    require(_has_psycopg(), "the psycopg2 driver")
    server = PostgresServer()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def postgres_database(postgres_url: str) -> str:
    """The URL of a new, empty database on the session's PostgreSQL server."""
    import uuid

    from sqlalchemy import create_engine, text

    name = "t_" + uuid.uuid4().hex[:12]
    admin = create_engine(postgres_url)
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return postgres_url.rsplit("/", 1)[0] + "/" + name


def _has_psycopg() -> bool:
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return False
    return True


def docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return (
            subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False).returncode == 0
        )
    except subprocess.TimeoutExpired:
        return False


def iptables_available() -> bool:
    if os.geteuid() != 0 or shutil.which("iptables-restore") is None:
        return False
    return (
        subprocess.run(["iptables", "-t", "nat", "-S", "OUTPUT"], capture_output=True, check=False).returncode
        == 0
    )


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.25, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll `predicate` until it returns a truthy value; fail with `what` on timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """`gitops.cli.main` configures structlog for the process; undo it after each test."""
    yield
    import structlog

    structlog.reset_defaults()
