"""A preview is the real pass on a copy of the state: applying the branch does what it said."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from gitops.controller import reconcile_once
from gitops.model import Node, NodeName, PodStatus, Revision
from gitops.preview import preview
from gitops.preview.compute import RevisionInfo
from gitops.preview.state import from_json, to_json
from gitops.schemas.loader import SourceFile
from gitops.schemas.validate import validate_files
from gitops.store import Store
from tests.preview.repos import deployment, service

GiB = 2**30


def files(docs: dict[str, str]) -> list[SourceFile]:
    return [SourceFile(name, text.encode()) for name, text in docs.items()]


def running_cluster(tmp_path: Path, docs: dict[str, str]) -> Store:
    """A store with three nodes running `docs`, every pod reported ready by its agent."""
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    for i, zone in enumerate(("a", "a", "b"), 1):
        node = Node(NodeName(f"n{i}"), f"192.0.2.{i}", 2000, 4 * GiB, labels=(("zone", zone),))
        store.register_node(node, f"t{i}", now=100.0)
    store.apply_revision(Revision("git:x", "a" * 40), validate_files(files(docs)).manifests, [], now=100.0)
    reconcile_once(store, now=101.0)
    for name in ("n1", "n2", "n3"):
        statuses = [PodStatus(p.id, "Running", True, pod_ip="172.17.0.9") for p in store.pods(name)]
        store.heartbeat(name, statuses, now=102.0)
    return store


def test_pass_0_of_the_preview_is_exactly_what_applying_the_branch_does(tmp_path: Path) -> None:
    strategy = "strategy:\n  rollingUpdate: {maxSurge: 2, maxUnavailable: 1}\n"
    base = {
        "web.yaml": deployment(replicas=4, strategy=strategy),
        "api.yaml": deployment("api", replicas=2),
        "svc.yaml": service(),
    }
    head = {
        "web.yaml": deployment(replicas=4, strategy=strategy, image="web:2"),
        "svc.yaml": service(),
        "db.yaml": deployment("db", replicas=2, cpu="500m", extra="nodeSelector: {zone: b}\n"),
    }
    store = running_cluster(tmp_path, base)
    now = 110.0
    # The snapshot travels as the JSON a server or `gitops state export` gives.
    state = from_json(json.loads(json.dumps(to_json(store.snapshot(now)))), "test")
    assert state.version == store.snapshot(now).version
    base_manifests = validate_files(files(base)).manifests
    result = preview(
        files(head), base_manifests, state, head=RevisionInfo("b" * 40), now=now, secret_key=b"one-time"
    )
    assert not result.errors and result.exit_code == 2

    manifests = validate_files(files(head)).manifests
    store.apply_revision(Revision("git:x", "b" * 40), manifests, [], now=now)
    applied = reconcile_once(store, now=now)
    bound = {p.id: p.node for p in store.pods() if p.node}

    predicted = {(a.action, a.pod, a.reason) for a in result.first_pass}
    real = {("create", a.pod.id, a.reason) for a in applied.plan.create}
    real |= {("stop", a.pod.id, a.reason) for a in applied.plan.stop}
    assert predicted == real
    assert len(real) >= 6  # web: new pods and a stop; db: two new pods; api: two stops
    for action in result.first_pass:
        if action.action == "create":
            assert action.node == bound.get(action.pod)  # same node, or both unplaced
    db_nodes = {a.node for a in result.first_pass if a.owner == "Deployment default/db"}
    assert db_nodes == {"n3"}  # the only zone-b node


def test_the_preview_names_the_state_version_and_a_changed_state_has_another(tmp_path: Path) -> None:
    store = running_cluster(tmp_path, {"web.yaml": deployment(replicas=2)})
    before = store.snapshot(120.0)
    assert before.version and before.version == store.snapshot(130.0).version
    result = preview(
        files({"web.yaml": deployment(replicas=3)}),
        list(before.desired),
        before,
        head=RevisionInfo("c" * 40),
        now=120.0,
        secret_key=store.keys.digest_key,
        cluster_key=True,
    )
    assert result.state_version == before.version
    store.register_node(Node(NodeName("n4"), "192.0.2.4", 2000, 4 * GiB), "t4", now=121.0)
    assert store.snapshot(122.0).version != result.state_version


def test_previewing_the_running_revision_changes_nothing(tmp_path: Path) -> None:
    docs = {"web.yaml": deployment(replicas=3), "svc.yaml": service()}
    store = running_cluster(tmp_path, docs)
    state = store.snapshot(120.0)
    result = preview(
        files(docs),
        list(state.desired),
        state,
        head=RevisionInfo("a" * 40),
        now=120.0,
        secret_key=store.keys.digest_key,
        cluster_key=True,
    )
    assert (result.exit_code, result.objects, result.actions) == (0, (), ())


SECRET_ENV = "env:\n  - name: PASSWORD\n    valueFrom: {secretKeyRef: {name: db, key: password}}\n"


def secret_doc(value: str) -> str:
    encoded = base64.b64encode(value.encode()).decode()
    return f"apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\ndata:\n  password: {encoded}\n"


def test_a_preview_without_the_cluster_key_still_knows_which_pods_a_secret_change_replaces(
    tmp_path: Path,
) -> None:
    base = {"web.yaml": deployment(replicas=2, env=SECRET_ENV), "db.yaml": secret_doc("old-password")}
    store = running_cluster(tmp_path, base)
    state = from_json(json.loads(json.dumps(to_json(store.snapshot(110.0)))), "export")
    base_manifests = validate_files(files(base)).manifests

    unchanged = {**base, "web.yaml": deployment(replicas=3, env=SECRET_ENV)}
    result = preview(
        files(unchanged), base_manifests, state, head=RevisionInfo("b" * 40), now=110.0, secret_key=b"once"
    )
    assert {a.action for a in result.actions} == {"create"}  # a scale-up; nothing replaced

    rotated = {**base, "db.yaml": secret_doc("new-password")}
    result = preview(
        files(rotated), base_manifests, state, head=RevisionInfo("c" * 40), now=110.0, secret_key=b"once"
    )
    stops = {a.pod for a in result.first_pass if a.action == "stop"}
    # The snapshot has no Secret values: the preview names the Secret, the server the variable.
    assert all("a Secret value changed (uses Secret default/db)" in a.reason for a in result.actions)
    store.apply_revision(Revision("git:x", "c" * 40), validate_files(files(rotated)).manifests, [], now=110.0)
    applied = reconcile_once(store, now=110.0)
    assert stops == {a.pod.id for a in applied.plan.stop}
    assert all("env PASSWORD changed (uses Secret default/db)" in a.reason for a in applied.plan.stop)
    assert "new-password" not in json.dumps(to_json(store.snapshot(111.0)))
