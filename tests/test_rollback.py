"""Progress deadlines and opt-in rollback, through real controller passes on a fake clock."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from gitops.controller import reconcile_once
from gitops.model import Manifest, Node, NodeName, ObjectKey, PodStatus, Revision
from gitops.store import Store
from tests.planner.factories import deployment

KEY = ObjectKey("Deployment", "default", "web")


def web(image: str, rollback: bool) -> Manifest:
    dep = deployment(replicas=2, image=image)
    spec = {
        **dep.body["spec"],
        "progressDeadlineSeconds": 30,
        "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
    }
    meta = {**dep.body["metadata"]}
    if rollback:
        meta["annotations"] = {"gitops.dev/rollback-on-failure": "true"}
    return dataclasses.replace(dep, body={**dep.body, "metadata": meta, "spec": spec})


def report_ready(store: Store, image: str, now: float) -> None:
    """The agent's part: pods running `image` are ready; others run but never get ready."""
    statuses = [
        PodStatus(p.id, "Running", p.spec.image == image, pod_ip="172.17.0.2")
        for p in store.pods(node="n1")
        if p.terminating_at is None
    ]
    gone = [p.id for p in store.pods(node="n1") if p.terminating_at is not None]
    store.heartbeat("n1", statuses, now, stopped=gone)


def run(store: Store, start: float, seconds: int, ready_image: str) -> None:
    for t in range(int(start), int(start) + seconds):
        reconcile_once(store, now=float(t))
        report_ready(store, ready_image, float(t))


def setup(tmp_path: Path, rollback: bool) -> Store:
    store = Store(f"sqlite:///{tmp_path / 's.db'}", heartbeat_grace=1e9)
    store.register_node(Node(NodeName("n1"), "192.0.2.10", 8000, 2**32), "t", now=0.0)
    store.apply_revision(Revision("git:x", "1" * 40), [web("web:1", rollback)], [], now=0.0)
    run(store, 0, 5, "web:1")
    assert store.rollouts()[KEY].status == "complete"
    store.apply_revision(Revision("git:x", "2" * 40), [web("web:2", rollback)], [], now=5.0)
    return store


def test_a_rollout_without_progress_is_marked_failed_at_its_deadline(tmp_path: Path) -> None:
    store = setup(tmp_path, rollback=False)
    run(store, 5, 20, "web:1")
    assert store.rollouts()[KEY].status == "progressing"
    run(store, 25, 20, "web:1")
    state = store.rollouts()[KEY]
    assert state.status == "failed"
    assert state.reason.startswith("progress deadline exceeded: no progress for 30s (rolling out ")
    images = sorted(p.spec.image for p in store.pods() if p.terminating_at is None)
    assert images == ["web:1", "web:1", "web:2"]  # old pods keep serving; one surge pod waits


def test_with_rollback_opted_in_a_failed_rollout_returns_to_the_last_good_template(tmp_path: Path) -> None:
    store = setup(tmp_path, rollback=True)
    run(store, 5, 60, "web:1")
    state = store.rollouts()[KEY]
    assert state.status == "rolled back"
    assert state.reason.endswith(f"; rolled back to {state.history[-1][0]}")
    live = [p for p in store.pods() if p.terminating_at is None]
    assert sorted(p.spec.image for p in live) == ["web:1", "web:1"]
    assert all(p.ready for p in live)
    events = [e.message for e in store.events(limit=500) if e.reason == "Rollout"]
    assert any(m.startswith("rolled back ") for m in events)
    # A new template from the source starts a new rollout.
    store.apply_revision(Revision("git:x", "3" * 40), [web("web:3", True)], [], now=100.0)
    run(store, 100, 10, "web:3")
    assert store.rollouts()[KEY].status == "complete"
    assert sorted(p.spec.image for p in store.pods() if p.terminating_at is None) == ["web:3", "web:3"]
