"""Two control planes on one database (`gitops.server.ControlPlane` with
`gitops.store.lease`): one leads, the other serves and follows, and takes over when the
leader stops. End to end on PostgreSQL and real Docker: tests/e2e/test_failover.py."""

from __future__ import annotations

from pathlib import Path

import httpx

from gitops.server import ControlPlane
from gitops.store import Store
from gitops.sync.sources import FolderSource
from tests.conftest import free_port, wait_for

CONFIGMAP = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: shared}\ndata: {a: '1'}\n"


def plane(tmp_path: Path, name: str, store: Store) -> ControlPlane:
    return ControlPlane(
        store,
        [FolderSource(str(tmp_path / "manifests"))],
        port=free_port(),
        name=name,
        # The default lease (5 s): a shorter one can lapse on a loaded machine between
        # renewals, and the epochs below would move.
        controller_interval=0.2,
        settle_seconds=0.0,
    )


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
