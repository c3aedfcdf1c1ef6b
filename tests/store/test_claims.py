"""A PersistentVolumeClaim's volume lives on the node where a pod first used it: every later
pod of the claim is scheduled there (through rollouts and scaling to zero), and the claim
is forgotten when it leaves git, unless its StorageClass says Retain."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from gitops.controller import reconcile_once
from gitops.model import Node, NodeName, PodStatus
from gitops.store import Store
from gitops.sync.service import sync_once
from gitops.sync.sources import FolderSource

CLAIM = """
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: STORAGE_CLASS
  resources: {requests: {storage: 1Gi}}
"""
KEEP = """
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: keep}
provisioner: gitops.io/local
reclaimPolicy: Retain
"""


def database(image: str = "db:1", replicas: int = 1) -> str:
    return f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: db}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: db}}}}
  template:
    metadata: {{labels: {{app: db}}}}
    spec:
      containers:
        - name: db
          image: {image}
          volumeMounts: [{{name: data, mountPath: /var/lib/db}}]
      volumes:
        - name: data
          persistentVolumeClaim: {{claimName: data}}
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        yield Store(f"sqlite:///{tmp_path / 'state.db'}")
        return
    yield Store(request.getfixturevalue("postgres_database"))


def sync(store: Store, folder: Path, files: dict[str, str], now: float) -> None:
    folder.mkdir(exist_ok=True)
    for old in folder.glob("*.yaml"):
        old.unlink()
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text).lstrip("\n"))
    record = sync_once(store, FolderSource(folder), now=now)
    assert record is None or record.status == "applied", record


def run(store: Store, now: float) -> None:
    """A pass, then every bound pod reported running and ready (as agents would)."""
    reconcile_once(store, now=now)
    for pod in store.pods():
        if pod.node is not None and pod.terminating_at is None:
            store.heartbeat(pod.node, [PodStatus(pod.id, "Running", True)], now=now)
        elif pod.terminating_at is not None and pod.node is not None:
            store.heartbeat(pod.node, [], now=now, stopped=[pod.id])


def nodes(store: Store) -> None:
    store.register_node(Node(NodeName("n1"), "192.0.2.10", 4000, 8 * 2**30), "t1", now=1.0)
    store.register_node(Node(NodeName("n2"), "192.0.2.11", 4000, 8 * 2**30), "t2", now=1.0)


def placed(store: Store) -> set[str]:
    return {str(p.node) for p in store.pods() if p.terminating_at is None}


def test_every_pod_of_a_claim_lands_where_its_volume_is_through_rollouts_and_scaling(
    store: Store, tmp_path: Path
) -> None:
    nodes(store)
    folder = tmp_path / "src"
    sync(
        store, folder, {"claim.yaml": CLAIM.replace("STORAGE_CLASS", "standard"), "db.yaml": database()}, 2.0
    )
    run(store, 3.0)
    (first,) = placed(store)
    assert store.claims() == {"default/data": NodeName(first)}
    for step, files in enumerate(
        [
            {"db.yaml": database(image="db:2")},  # a rollout to a new template
            {"db.yaml": database(image="db:2", replicas=0)},
            {"db.yaml": database(image="db:3", replicas=3)},
        ]
    ):
        sync(
            store,
            folder,
            {"claim.yaml": CLAIM.replace("STORAGE_CLASS", "standard"), **files},
            10.0 + 10 * step,
        )
        for tick in range(6):
            run(store, 11.0 + 10 * step + tick)
        assert placed(store) <= {first}
    assert len([p for p in store.pods() if p.terminating_at is None]) == 3
    # Even when the other node is emptier (3 pods here, none there).
    assert store.claims() == {"default/data": NodeName(first)}


def test_a_claim_that_leaves_git_is_forgotten_unless_its_storage_class_retains_it(
    store: Store, tmp_path: Path
) -> None:
    nodes(store)
    folder = tmp_path / "src"
    sync(
        store,
        folder,
        {"claim.yaml": CLAIM.replace("STORAGE_CLASS", "keep"), "keep.yaml": KEEP, "db.yaml": database()},
        2.0,
    )
    run(store, 3.0)
    (node,) = store.claims().values()
    sync(store, folder, {"keep.yaml": KEEP}, 4.0)  # the claim and its pods leave
    assert store.claims() == {"default/data": node}  # retained: the volume stays where it is
    sync(
        store,
        folder,
        {"claim.yaml": CLAIM.replace("STORAGE_CLASS", "keep"), "keep.yaml": KEEP, "db.yaml": database()},
        5.0,
    )
    run(store, 6.0)
    assert placed(store) == {node}  # back on the node that kept its data
    sync(
        store, folder, {"claim.yaml": CLAIM.replace("STORAGE_CLASS", "standard"), "db.yaml": database()}, 7.0
    )
    sync(store, folder, {"other.yaml": KEEP}, 8.0)  # the claim leaves; its class said Delete
    assert store.claims() == {}  # Delete (the default): its agent removes the volume


def test_the_pod_cache_keeps_each_nodes_claims_as_the_store_writes_them(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Agents' syncs get their node's claims from the pod cache (`PodCache.claims`), read
    with the pods when the claims' serial moved, not at each call: bound, retained and
    deleted by another store (another control plane) all show at the cache's next read."""
    nodes(store)
    other = Store(store.url, keys=store.keys)
    cache = store.pod_cache
    reads: list[int] = []
    real = cache._read_claims

    def counted(s: object) -> None:
        before = cache._claims_kept.reads
        real(s)  # type: ignore[arg-type]
        reads.append(cache._claims_kept.reads - before)

    monkeypatch.setattr(cache, "_read_claims", counted)
    folder = tmp_path / "src"
    files = {"claim.yaml": CLAIM.replace("STORAGE_CLASS", "keep"), "keep.yaml": KEEP, "db.yaml": database()}
    sync(other, folder, files, 2.0)
    cache.refresh()
    assert cache.claims("n1") == cache.claims("n2") == {}
    run(other, 3.0)  # the pod is bound: its claim's volume is on its node
    cache.refresh()
    (node,) = placed(other)
    assert cache.claims(node) == {"default/data": NodeName(node)} == other.claims(node=node)
    assert cache.claims("n2" if node == "n1" else "n1") == {}
    reads.clear()
    for _ in range(3):  # nothing moved: the claims are not read again
        cache.refresh()
    assert reads == [0, 0, 0]
    sync(other, folder, {"keep.yaml": KEEP}, 4.0)  # the claim leaves git: retained, still there
    cache.refresh()
    assert cache.claims(node) == {"default/data": NodeName(node)}
    standard = CLAIM.replace("STORAGE_CLASS", "standard")
    sync(other, folder, {"claim.yaml": standard, "db.yaml": database()}, 5.0)
    sync(other, folder, {"other.yaml": KEEP}, 6.0)  # it leaves again, its class says Delete
    cache.refresh()
    assert cache.claims(node) == {} == other.claims()
    assert reads[-1] == 1
    other.close()
