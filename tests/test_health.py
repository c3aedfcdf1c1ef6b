"""A control plane that cannot read or write its database says so (page, API, gitops status,
/metrics) instead of showing the last state it read as current; a corrupted database at
start is one line saying what to do."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlalchemy.exc import OperationalError

from gitops.cli import main
from gitops.server import ControlPlane
from gitops.store import Store
from tests.conftest import wait_for
from tests.servers import free_port


def test_a_failing_database_is_shown_everywhere_until_it_works_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    plane = ControlPlane(store, [], port=free_port(), controller_interval=0.2, settle_seconds=0)
    plane.start()
    try:
        assert httpx.get(f"{plane.url}/api/v1/status").json()["problems"] == []
        working = store.snapshot

        def broken(*args: object, **kwargs: object) -> object:
            raise OperationalError("SELECT", {}, Exception("database disk image is malformed"))

        monkeypatch.setattr(store, "snapshot", broken)
        problems = wait_for(
            lambda: httpx.get(f"{plane.url}/api/v1/status").json()["problems"], timeout=10, what="the problem"
        )
        assert problems[0]["component"] == "controller"
        assert "database disk image is malformed" in problems[0]["error"]
        page = httpx.get(f"{plane.url}/").text
        assert "The control plane has problems" in page and "may be out of date" in page
        assert 'gitops_problem_seconds{component="controller"}' in httpx.get(f"{plane.url}/metrics").text
        capsys.readouterr()
        assert main(["status", "--server", plane.url]) == 0
        assert "PROBLEM: controller failing for" in capsys.readouterr().out

        monkeypatch.setattr(store, "snapshot", working)
        wait_for(
            lambda: not httpx.get(f"{plane.url}/api/v1/status").json()["problems"],
            timeout=10,
            what="the recovery",
        )
        assert "The control plane has problems" not in httpx.get(f"{plane.url}/").text
    finally:
        plane.stop()


def test_a_corrupted_database_at_start_is_one_line_saying_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "gitops.db").write_bytes(b"this is not a database, it was overwritten " * 100)
    (tmp_path / "m").mkdir()
    with pytest.raises(SystemExit) as stopped:
        main(["serve", "--dir", str(tmp_path / "m"), "--state-dir", str(state), "--port", str(free_port())])
    message = str(stopped.value)
    assert "\n" not in message and "Traceback" not in message
    assert "cannot be used: file is not a database" in message
    assert "gitops restore" in message
