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
from tests.conftest import wait_for
from tests.servers import free_port

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
        # A loop that saw such a gap ends, and runs again at the lease thread's next tick.
        wait_for(
            lambda: cp.controller is not None and not cp.controller.loop.ended,
            timeout=10,
            what="the controller running",
        )


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


DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: busybox:1}]
"""


def test_an_api_only_control_plane_serves_agents_and_never_leads(tmp_path: Path) -> None:
    """`gitops serve --api-only`: alone on the database with the lease free, it still does
    not lead (a plain control plane takes a free lease at once); beside a leader it serves
    agents, who get the pods the leader placed; when the leader stops, it goes on serving
    and still does not lead."""
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "web.yaml").write_text(DEPLOYMENT)
    url = f"sqlite:///{tmp_path / 'state.db'}"
    first_store = Store(url)
    api = ControlPlane(
        Store(url, keys=first_store.keys), [], port=free_port(), name="api", lead=False, lease_ttl=0.5
    )
    leader = plane(tmp_path, "one", first_store, join_token=api.join_token)
    api.start()
    try:
        time.sleep(0.5)  # the lease is free: a plain control plane takes it within 0.1 s
        alone = status(api)
        assert alone["leader"] is False and alone["api_only"] is True and alone["led_by"] == ""
        assert api.controller is None and api.syncs == [] and api.lease is not None and api.lease.epoch == 0
        assert not api.settled()  # no leader: agents keep what no one assigned them

        leader.start()
        wait_for(lambda: status(api)["led_by"] != "", what="the api-only one seeing who leads")
        assert str(status(api)["led_by"]).startswith("one#") and status(leader)["api_only"] is False
        token = httpx.post(
            f"{api.url}/agent/v1/register",
            json={"node": {"name": "n1", "address": "192.0.2.10", "cpu_milli": 4000, "memory_bytes": 2**32}},
            headers={"X-Gitops-Join-Token": api.join_token},
        ).json()["token"]

        def assigned() -> list[str]:
            reply = httpx.post(
                f"{api.url}/agent/v1/nodes/n1/sync", json={}, headers={"Authorization": f"Bearer {token}"}
            ).json()
            return [p["name"] for p in reply.get("pods") or ()]

        wait_for(
            lambda: len(assigned()) == 1, timeout=20, what="the leader's pod, served by the api-only one"
        )
        wait_for(api.settled, what="settled by the leader's word (published with its next renewal)")

        leader.stop()  # the lease is released: free again
        time.sleep(0.5)
        after = status(api)
        assert after["leader"] is False and after["led_by"] == "" and api.lease.epoch == 0
        assert len(assigned()) == 1  # still serving its agents what the store holds
        hook = api.following()
        assert "--api-only" in hook
    finally:
        api.stop()
        leader.stop()
