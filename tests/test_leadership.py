"""Two control planes on one database (`gitops.server.ControlPlane` with
`gitops.store.lease`): one leads, the other serves and follows, and takes over when the
leader stops. End to end on PostgreSQL and real Docker: tests/e2e/test_failover.py."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.exc import OperationalError

from gitops.server import ControlPlane
from gitops.store import Store
from gitops.sync.sources import FolderSource
from tests.conftest import free_port, wait_for

CONFIGMAP = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: shared}\ndata: {a: '1'}\n"


def plane(tmp_path: Path, name: str, store: Store, **options: Any) -> ControlPlane:
    return ControlPlane(
        store,
        [FolderSource(str(tmp_path / "manifests"))],
        port=free_port(),
        name=name,
        # The default lease (5 s): a shorter one can lapse on a loaded machine between
        # renewals, and the epochs below would move.
        controller_interval=0.2,
        settle_seconds=0.0,
        **options,
    )


@contextmanager
def lone_leader(tmp_path: Path, store: Store | None = None, **options: Any) -> Iterator[ControlPlane]:
    """A control plane alone on a SQLite file, leading, its sources read; stopped after."""
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "c.yaml").write_text(CONFIGMAP)
    cp = plane(tmp_path, "one", store or Store(f"sqlite:///{tmp_path / 'state.db'}"), **options)
    cp.start()
    try:
        wait_for(cp.settled, what="the sources read")
        yield cp
    finally:
        cp.stop()


def status(cp: ControlPlane) -> dict[str, object]:
    answer: dict[str, object] = httpx.get(cp.url + "/api/v1/status", timeout=5).json()
    return answer


def test_one_of_two_control_planes_leads_and_the_other_takes_over_when_it_stops(tmp_path: Path) -> None:
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "c.yaml").write_text(CONFIGMAP)
    url = f"sqlite:///{tmp_path / 'state.db'}"
    first_store = Store(url)
    first, second = (
        plane(tmp_path, "one", first_store),
        plane(tmp_path, "two", Store(url, keys=first_store.keys)),
    )
    first.start()
    second.start()
    try:
        assert status(first)["leader"] is True
        follower = status(second)
        assert follower["leader"] is False
        assert str(follower["led_by"]).startswith("one#") and follower["epoch"] == 1
        # Only the leader runs syncs and the controller; the follower serves what it applied.
        assert first.controller is not None and len(first.syncs) == 1
        assert second.controller is None and second.syncs == []
        wait_for(
            lambda: status(second)["counts"]["objects"] == 1, what="the follower serving the leader's sync"
        )  # type: ignore[index]
        assert "gitops_leader 1.0" in httpx.get(first.url + "/metrics").text
        assert "gitops_leader 0.0" in httpx.get(second.url + "/metrics").text
        # A follower serves agents as the leader knows the cluster: settled once the leader is.
        wait_for(second.settled, what="the follower settled by the leader's word")

        first.stop()  # a clean stop gives the lease up: the other leads at once
        wait_for(
            lambda: status(second)["leader"] is True, timeout=10, interval=0.05, what="the other leading"
        )
        led = status(second)
        assert str(led["led_by"]).startswith("two#") and led["epoch"] == 2
        assert second.controller is not None and len(second.syncs) == 1
    finally:
        second.stop()
        first.stop()


def test_a_lone_leader_on_sqlite_keeps_its_lease_while_its_own_writes_keep_the_database_busy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 3,000 hollow nodes the lease thread's renewal never got SQLite's write lock between
    the process's own report batches ("database is locked" after the busy timeout), the lease
    lapsed and the only control plane stopped its controller for good. Its writes renew it."""
    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    with lone_leader(tmp_path, store, lease_ttl=3.0) as cp:
        assert cp.lease is not None and cp.controller is not None

        def starved(*_args: object) -> bool:
            raise OperationalError("UPDATE leases", {}, sqlite3.OperationalError("database is locked"))

        monkeypatch.setattr(cp.lease, "_renew", starved)
        deadline = time.monotonic() + 3 * cp.lease.ttl
        while time.monotonic() < deadline:  # agents' reports, written by this process
            store.add_event("node-1", "Report", "a write of this process", time.time())
            time.sleep(0.05)
            assert cp.lease.epoch == 1  # never lost, never taken again
        # The writes stop: the lease thread's own renewals get the lock again (kept failing,
        # the lease would lapse `ttl` after the last write, maybe before a slow poll).
        monkeypatch.undo()
        # Still leading (on a loaded machine a loop may have seen a gap between two writes
        # longer than the lease and been started again: the same lease, epoch 1).
        wait_for(lambda: status(cp)["leader"] is True, timeout=10, what="leading")
        assert status(cp)["epoch"] == 1 and cp.lease.held
        assert cp.controller is not None and not cp.controller.loop.ended


def test_a_leader_whose_renewal_came_late_runs_its_loops_again(tmp_path: Path) -> None:
    """A renewal late behind a long write lets the lease lapse on this process's clock: the
    leader's loops see it and end. Once it is renewed, the control plane, still the only
    holder, leads again (with what it knew: no one else led meanwhile) instead of leading
    with no controller."""
    with lone_leader(tmp_path) as cp:
        before = cp.controller
        assert before is not None and cp.lease is not None
        with cp._leader_lock:  # no renewal meanwhile
            cp.lease.valid_until = float("-inf")  # as if the renewal were late: the next pass ends the loop
            wait_for(lambda: before.loop.ended, timeout=10, what="the controller's loop ending")
        wait_for(
            lambda: (
                cp.controller is not None and cp.controller is not before and not cp.controller.loop.ended
            ),
            timeout=10,
            what="a controller running again",
        )
        assert status(cp)["leader"] is True and status(cp)["epoch"] == 1
        assert cp._settled  # no one else led: what it knew still holds


def test_a_leader_does_not_start_its_loops_again_while_a_step_of_the_old_ones_runs(tmp_path: Path) -> None:
    """Leading again with the same epoch, a step of the old loops still running past the
    stop's wait (a long sync or pass) would pass the fence beside its replacement: the new
    loops start only once it has ended."""
    with lone_leader(tmp_path) as cp:

        class Running:
            alive = True  # as a loop whose step outlived `Loop.stop`'s wait

        with cp._leader_lock:
            cp._follow(to_lead_again=True)
            cp._stopped_loops = [Running()]  # type: ignore[list-item]
            cp._lead()
            assert not cp._leading and cp.controller is None
            Running.alive = False
        wait_for(lambda: cp._leading and cp.controller is not None, timeout=10, what="leading again")
        assert status(cp)["epoch"] == 1
