"""Incremental views: after any sequence of changes to the store (pods reported, scaled,
deleted, a Secret rotated, nodes going quiet, events, the pod cache reading everything
again), a view built from the one before
equals a view built from scratch, and a change to one pod recomputes that pod's row, its
workload and its Services, nothing else."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gitops.api.view import StatusView, ViewBuilder, build_view
from gitops.controller import reconcile_once
from gitops.model import ContainerStatus, Node, NodeName, PodStatus, Revision
from gitops.redact import Redactor
from gitops.store import Store
from tests.planner.factories import deployment, manifest, secret, service

SOURCES = ["git:repo"]
START = 10_000.0
TOKEN = "Churn-Secret-Value-0042"


def _manifests(*, web: int = 3, slow: int = 2, token: str = TOKEN) -> list[Any]:
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}}]
    job = manifest(
        "Job",
        "batch",
        spec={
            "completions": 2,
            "template": {
                "metadata": {"labels": {"app": "batch"}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "batch:1"}]},
            },
        },
    )
    return [
        secret("creds", token=token),
        deployment("web", replicas=web, env=env, resources={"requests": {"cpu": "100m", "memory": "32Mi"}}),
        # Its pods become available 20 s after they are ready: its status moves with the clock.
        dataclasses.replace(
            m := deployment("slow", replicas=slow, labels={"app": "slow", "tier": "back"}),
            body={**m.body, "spec": {**m.spec, "minReadySeconds": 20}},
        ),
        service("web", {"app": "web"}),
        service("back", {"tier": "back"}),
        job,
    ]


def _store(path: Path) -> Store:
    store = Store(f"sqlite:///{path / 'state.db'}")
    store.apply_revision(Revision("git:repo", "a" * 40), _manifests(), [], START)
    for name in ("n1", "n2"):
        store.register_node(Node(NodeName(name), f"192.0.2.{len(name)}", 4000, 8 * 2**30), f"t-{name}", START)
    reconcile_once(store, START)
    return store


_ANY_REDACTOR = Redactor()


def _same(view: StatusView) -> StatusView:
    """`view` without what tells two builds apart (their versions, the redactor object)."""
    return dataclasses.replace(view, generation="", pods_version="", redactor=_ANY_REDACTOR)


def _report(store: Store, change: tuple[Any, ...], now: float) -> None:
    """A pod's agent reports on it: phase, readiness, a reason (the Secret's value in one),
    restarts."""
    _, index, phase, ready, reason, restarts = change
    pods = [p for p in store.pods() if p.node is not None]
    if not pods:
        return
    pod = pods[index % len(pods)]
    said = ("", "Readiness probe failed: 503", f"exited with code 1: token={TOKEN}")[reason]
    containers = (
        (
            ContainerStatus(
                "main", "running" if phase == "Running" else "waiting", ready, restarts, None, said
            ),
        )
        if reason == 2
        else ()
    )
    status = PodStatus(
        pod.id,
        phase,  # type: ignore[arg-type]
        ready,
        said,
        f"172.17.0.{index % 200 + 2}",
        restarts=restarts,
        last_log=f"log {index} token={TOKEN}\n" if reason else "",
        containers=containers,
    )
    assert pod.node is not None
    store.heartbeat(pod.node, [status], now)


CHANGES = st.one_of(
    st.tuples(
        st.just("report"),
        st.integers(0, 50),
        st.sampled_from(["Running", "Pending", "Failed", "Succeeded"]),
        st.booleans(),
        st.integers(0, 2),
        st.integers(0, 3),
    ),
    st.tuples(st.just("scale"), st.integers(0, 6), st.integers(0, 4)),
    st.tuples(st.just("rotate"), st.sampled_from(["Rotated-Value-1111", "Rotated-Value-2222", TOKEN])),
    st.tuples(st.just("delete"), st.integers(0, 50)),
    st.tuples(st.just("event"), st.sampled_from(["plain", f"mentions {TOKEN}"])),
    st.tuples(st.just("beat"), st.sampled_from(["n1", "n2"])),
    st.tuples(st.just("ready")),
    st.tuples(st.just("reread")),
    st.tuples(st.just("wait"), st.integers(1, 45)),
)


def _change(store: Store, change: tuple[Any, ...], now: float, token: list[str]) -> None:
    kind = change[0]
    if kind == "report":
        _report(store, change, now)
    elif kind == "scale":
        store.apply_revision(
            Revision("git:repo", f"{now:040.0f}"),
            _manifests(web=change[1], slow=change[2], token=token[0]),
            [],
            now,
        )
        reconcile_once(store, now)
    elif kind == "rotate":
        token[0] = change[1]
        store.apply_revision(Revision("git:repo", f"{now:040.0f}"), _manifests(token=change[1]), [], now)
        reconcile_once(store, now)
    elif kind == "delete":
        pods = store.pods()
        if pods:
            store.delete_pod(pods[change[1] % len(pods)].id, now)
    elif kind == "event":
        store.add_event("pod default/x", "Said", change[1], now)
    elif kind == "beat":
        store.heartbeat(change[1], [], now)
    elif kind == "reread":  # the pod cache reads every row again: every `Pod` a new object
        store.pod_cache.invalidate()
    elif kind == "ready":  # every pod runs and is ready (and available minReadySeconds later)
        for n, pod in enumerate(p for p in store.pods() if p.node is not None):
            assert pod.node is not None
            store.heartbeat(pod.node, [PodStatus(pod.id, "Running", True, "", f"172.17.1.{n + 2}")], now)


@settings(max_examples=30, deadline=None)
@given(st.lists(CHANGES, min_size=1, max_size=12))
def test_a_view_built_from_the_last_equals_one_built_from_scratch(changes: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = _store(Path(tmp))
        builder = ViewBuilder(store, SOURCES)
        now = START + 1
        last = builder.build(now)
        token = [TOKEN]
        for change in changes:
            if change[0] == "wait":
                now += change[1]
            else:
                now += 1
                _change(store, change, now, token)
            view = builder.build(now)
            full = build_view(store, SOURCES, now)
            assert _same(view) == _same(full), change
            assert view.redactor.values == full.redactor.values
            assert (view.pods is last.pods) == (view.pods_version == last.pods_version), change
            last = view
        store.close()


def test_a_pod_that_flips_its_readiness_recomputes_its_row_its_workload_and_its_services(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path)
    for n, pod in enumerate(p for p in store.pods() if p.node is not None):
        assert pod.node is not None
        store.heartbeat(pod.node, [PodStatus(pod.id, "Running", True, "", f"172.17.0.{n + 2}")], START + 1)
    builder = ViewBuilder(store, SOURCES)
    first = builder.build(START + 2)
    assert builder.rows_built == first.counts.pods

    again = builder.build(START + 3)
    assert builder.rows_built == 0 and again.pods is first.pods and again.pods_version == first.pods_version
    assert builder.recomputed == ("Deployment default/slow",)  # minReadySeconds: moves with the clock

    web = next(p for p in store.pods() if p.owner.name == "web")
    assert web.node is not None
    store.heartbeat(
        web.node, [PodStatus(web.id, "Running", False, "Readiness probe failed", web.pod_ip)], START + 4
    )
    flipped = builder.build(START + 5)
    assert builder.rows_built == 1
    assert set(builder.recomputed) == {
        "Deployment default/web",
        "Deployment default/slow",
        "Service default/web",
    }
    assert flipped.pods_version != first.pods_version
    changed = [new.id for new, old in zip(flipped.pods, first.pods, strict=True) if new is not old]
    assert changed == [web.id]
    assert _same(flipped) == _same(build_view(store, SOURCES, START + 5))


def test_a_rotated_secret_rebuilds_every_row_with_the_new_redactor(tmp_path: Path) -> None:
    store = _store(tmp_path)
    builder = ViewBuilder(store, SOURCES)
    builder.build(START + 1)
    late = "Not-Yet-A-Secret-9182"
    _report_reason = f"exited with code 1: {late}"
    pod = next(p for p in store.pods() if p.node is not None)
    assert pod.node is not None
    store.heartbeat(pod.node, [PodStatus(pod.id, "Running", False, _report_reason, "172.17.0.9")], START + 2)
    before = builder.build(START + 3)
    assert any(late in p.reason for p in before.pods)
    store.apply_revision(
        Revision("git:repo", "b" * 40), [*_manifests(), secret("late", value=late)], [], START + 4
    )
    after = builder.build(START + 5)
    assert builder.rows_built == after.counts.pods
    assert not any(late in p.reason for p in after.pods)
    assert _same(after) == _same(build_view(store, SOURCES, START + 5))


def test_after_the_pod_cache_reads_everything_again_a_secret_no_pod_holds_is_forgotten(
    tmp_path: Path,
) -> None:
    """Pods read again are new objects, equal to the old: their rows are kept, and what the
    view tallies (the specs whose Secret values the redactor knows) follows the new ones."""
    store = _store(tmp_path)
    builder = ViewBuilder(store, SOURCES)
    builder.build(START + 1)
    store.pod_cache.invalidate()
    kept = builder.build(START + 2)
    assert builder.rows_built == 0 and TOKEN in " ".join(kept.redactor.values)
    store.apply_revision(
        Revision("git:repo", "c" * 40), _manifests(token="Rotated-Value-3333"), [], START + 3
    )
    now = START + 3
    for _ in range(8):  # the rolling update, each new pod reported ready, each stopped one gone
        now += 1
        reconcile_once(store, now)
        for node in ("n1", "n2"):
            mine = [p for p in store.pods() if p.node == node]
            ready = [
                PodStatus(p.id, "Running", True, "", "172.17.2.2") for p in mine if p.terminating_at is None
            ]
            store.heartbeat(node, ready, now, stopped=[p.id for p in mine if p.terminating_at is not None])
        builder.build(now)
    assert not any(p.terminating_at is not None for p in store.pods())
    view, full = builder.build(now + 1), build_view(store, SOURCES, now + 1)
    assert TOKEN not in " ".join(full.redactor.values)
    assert view.redactor.values == full.redactor.values
    assert _same(view) == _same(full)
