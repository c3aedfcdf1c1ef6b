"""A revision is validated whole: applied atomically, or rejected with every error."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gitops.store import Store
from gitops.sync.service import SyncService, sync_once
from gitops.sync.sources import FolderSource
from tests.conftest import wait_for

GOOD = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
        - name: web
          image: web:1
"""


def test_a_valid_folder_is_applied_and_a_second_sync_is_a_no_op(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "web.yaml").write_text(GOOD.format(replicas=2))
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    source = FolderSource(tmp_path / "m")
    record = sync_once(store, source)
    assert record is not None and record.status == "applied"
    assert record.summary["created"] == ["Deployment default/web"]
    assert sync_once(store, source) is None


def test_an_invalid_revision_is_rejected_and_the_desired_state_kept(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    web = tmp_path / "m" / "web.yaml"
    web.write_text(GOOD.format(replicas=2))
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    source = FolderSource(tmp_path / "m")
    sync_once(store, source)
    web.write_text(GOOD.format(replicas='"three"'))
    (tmp_path / "m" / "other.yaml").write_text(
        GOOD.format(replicas=1).replace("name: web\n", "name: other\n", 1)
    )
    record = sync_once(store, source)
    assert record is not None and record.status == "rejected"
    assert record.errors[0].startswith("web.yaml:6:13: Deployment default/web: spec.replicas: ")
    assert [(m.key.name, m.spec["replicas"]) for m in store.desired()] == [("web", 2)]


def test_removing_a_file_prunes_its_objects(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "web.yaml").write_text(GOOD.format(replicas=2))
    (tmp_path / "m" / "other.yaml").write_text(
        GOOD.format(replicas=1).replace("name: web\n", "name: other\n", 1)
    )
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    source = FolderSource(tmp_path / "m")
    sync_once(store, source)
    (tmp_path / "m" / "other.yaml").unlink()
    record = sync_once(store, source)
    assert record is not None and record.summary["deleted"] == ["Deployment default/other"]
    assert [m.key.name for m in store.desired()] == ["web"]


def test_a_watched_folder_syncs_on_change_once_per_burst(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    web = tmp_path / "m" / "web.yaml"
    web.write_text(GOOD.format(replicas=1))
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    applied: list[float] = []
    service = SyncService(
        store,
        FolderSource(tmp_path / "m"),
        interval=3600,
        on_applied=lambda: applied.append(time.time()),
        debounce=0.3,
    )
    service.start()
    try:
        wait_for(lambda: len(applied) == 1, timeout=10, what="the initial sync")
        for n in range(2, 7):
            web.write_text(GOOD.format(replicas=n))
            time.sleep(0.02)
        wait_for(lambda: len(applied) == 2, timeout=10, what="a sync after the burst")
        time.sleep(1.0)
        assert len(applied) == 2
        assert [m.spec["replicas"] for m in store.desired()] == [6]
    finally:
        service.stop()


def test_a_source_that_disappears_is_shown_with_its_error_and_since_when_until_it_returns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Removing the watched folder once logged nothing and showed nothing."""
    import shutil

    import httpx

    from gitops.cli import main
    from gitops.server import ControlPlane
    from tests.servers import free_port

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "web.yaml").write_text(GOOD.format(replicas=1))
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    source = FolderSource(folder)
    plane = ControlPlane(store, [source], port=free_port(), poll_interval=0.3)
    plane.start()
    try:
        wait_for(store.desired, timeout=10, what="the first sync")
        shutil.rmtree(folder)
        health = wait_for(
            lambda: store.source_health().get(source.name), timeout=10, what="the failure recorded"
        )
        assert "does not exist" in health[0]
        row = httpx.get(f"{plane.url}/api/v1/status").json()["per_source"][0]
        assert "does not exist" in row["error"] and row["error_since"] == health[1]
        capsys.readouterr()
        assert main(["status", "--server", plane.url]) == 0
        assert f"CANNOT READ {source.name}" in capsys.readouterr().out
        assert "cannot be read since" in httpx.get(f"{plane.url}/").text
        assert [m.key.name for m in store.desired()] == ["web"]  # nothing deleted meanwhile

        folder.mkdir()
        (folder / "web.yaml").write_text(GOOD.format(replicas=2))
        wait_for(lambda: not store.source_health(), timeout=10, what="the source read again")
        (folder / "web.yaml").write_text(GOOD.format(replicas=3))  # watched again, not only polled
        wait_for(lambda: [m.spec["replicas"] for m in store.desired()] == [3], timeout=10, what="the edit")
        assert {e.reason for e in store.events(limit=100)} >= {"SourceUnreadable", "SourceReadable"}
    finally:
        plane.stop()
