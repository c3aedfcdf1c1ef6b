"""Objects of the kinds gitops only stores are kept like ConfigMaps: stored with their source,
changed and pruned with it, counted per kind where people read the state, and ignored by the
control loop."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from gitops.api.readmodel import ReadModel
from gitops.controller import reconcile_once
from gitops.model import ObjectKey
from gitops.store import Store
from gitops.sync.service import sync_once
from gitops.sync.sources import FolderSource
from tests.schemas.test_kinds import LEDGER


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        yield Store(f"sqlite:///{tmp_path / 'state.db'}")
        return
    yield Store(request.getfixturevalue("postgres_database"))


def write(folder: Path, files: dict[str, str]) -> FolderSource:
    folder.mkdir(exist_ok=True)
    for old in folder.glob("*.yaml"):
        old.unlink()
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text).lstrip("\n"))
    return FolderSource(folder)


def test_stored_kinds_are_stored_with_their_bodies_and_warnings(store: Store, tmp_path: Path) -> None:
    source = write(tmp_path / "ledger", LEDGER)
    record = sync_once(store, source, now=10.0)
    assert record is not None and record.status == "applied"
    assert "ClusterRole ledger:metrics-viewer" in record.summary["created"]
    assert "NetworkPolicy ledger/ledger-api-in" in record.summary["created"]
    assert len(record.summary["created"]) == 17
    assert len(record.warnings) == 14  # the PodDisruptionBudget and PriorityClass are acted on
    assert (
        "volume.yaml:2:1: PersistentVolume ledger-disk: stored; gitops does not act on PersistentVolume "
        "objects: a claim's volume is a local Docker volume on the node of its first pod (warning)"
        in record.warnings
    )
    desired = {m.key: m for m in store.desired()}
    binding = desired[ObjectKey("ClusterRoleBinding", "", "ledger-metrics")]
    assert binding.api_version == "rbac.authorization.k8s.io/v1"
    assert binding.body["roleRef"]["name"] == "ledger:metrics-viewer"
    claim = desired[ObjectKey("PersistentVolumeClaim", "ledger", "ledger-journal")]
    assert claim.spec["resources"]["requests"]["storage"] == "5Gi"
    assert store.owners()[ObjectKey("Ingress", "ledger", "ledger")] == source.name
    assert sync_once(store, source, now=11.0) is None  # nothing changed: a no-op


def test_removing_stored_objects_from_the_source_prunes_them(store: Store, tmp_path: Path) -> None:
    source = write(tmp_path / "ledger", LEDGER)
    sync_once(store, source, now=10.0)
    kept = {k: v for k, v in LEDGER.items() if k not in ("policies.yaml", "cluster.yaml")}
    record = sync_once(store, write(tmp_path / "ledger", kept), now=20.0)
    assert record is not None and record.status == "applied"
    assert record.summary["deleted"] == [
        "CustomResourceDefinition journals.ledger.example",
        "HorizontalPodAutoscaler ledger/ledger-api",
        "LimitRange ledger/ledger-defaults",
        "NetworkPolicy ledger/ledger-api-in",
        "PodDisruptionBudget ledger/ledger-api",
        "PriorityClass ledger-batch",
        "ResourceQuota ledger/ledger-budget",
        "StorageClass ledger-ssd",
    ]
    kinds = {m.key.kind for m in store.desired()}
    assert kinds == {
        "Namespace",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ClusterRole",
        "ClusterRoleBinding",
        "Ingress",
        "PersistentVolumeClaim",
        "PersistentVolume",
    }


def test_a_changed_stored_object_is_recorded_as_changed(store: Store, tmp_path: Path) -> None:
    source = write(tmp_path / "ledger", LEDGER)
    sync_once(store, source, now=10.0)
    changed = dict(LEDGER, **{"cluster.yaml": LEDGER["cluster.yaml"].replace("value: 1200", "value: 1300")})
    record = sync_once(store, write(tmp_path / "ledger", changed), now=20.0)
    assert record is not None
    assert record.summary == {"created": [], "changed": ["PriorityClass ledger-batch"], "deleted": []}
    [priority] = [m for m in store.desired() if m.key.kind == "PriorityClass"]
    assert priority.body["value"] == 1300


def test_the_control_loop_runs_nothing_for_stored_objects(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    sync_once(store, write(tmp_path / "ledger", LEDGER), now=10.0)
    reconcile_once(store, now=11.0)
    assert store.pods() == []
    assert len(store.desired()) == 17


def test_the_status_answer_counts_desired_objects_per_kind(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    sync_once(store, write(tmp_path / "ledger", LEDGER), now=10.0)
    counts = ReadModel(store, clock=lambda: 12.0, ttl=0).status()["counts"]
    assert counts["objects"] == 17
    assert counts["objects_by_kind"]["RoleBinding"] == 1
    assert counts["objects_by_kind"]["CustomResourceDefinition"] == 1
    assert sum(counts["objects_by_kind"].values()) == 17
    assert list(counts["objects_by_kind"]) == sorted(counts["objects_by_kind"])
