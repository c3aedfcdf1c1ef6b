"""A `Settled` kept between passes spares planning settled Deployments and DaemonSets again,
and changes no decision: every pass below is decided twice, with it and without, and must agree."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from gitops import reconcile
from gitops.model import ClusterState, Manifest, Node, NodeName, Taint
from gitops.planner.settled import Settled
from gitops.reconcile import Decision, decide, settle
from tests.planner.factories import deployment, manifest

GiB = 2**30
NODES = tuple(Node(NodeName(f"n{i}"), cpu_milli=4000, memory_bytes=8 * GiB) for i in range(3))


def both(state: ClusterState, now: float, settled: Settled) -> Decision:
    kept = decide(state, now, settled=settled)
    assert kept == decide(state, now)
    return kept


def passes(state: ClusterState, now: float, settled: Settled, count: int = 30) -> tuple[ClusterState, float]:
    """Passes a second apart until one changes nothing, then one more (a no-op)."""
    for _ in range(count):
        decision = both(state, now, settled)
        if decision.empty:
            both(state, now + 1.0, settled)
            return state, now + 2.0
        state = settle(state, decision, now)
        now += 1.0
    raise AssertionError("no fixed point")


def with_desired(state: ClusterState, *desired: Manifest) -> ClusterState:
    return dataclasses.replace(state, desired=desired)


def test_settled_deployments_are_reused_and_every_change_is_decided_as_without() -> None:
    settled = Settled()
    state = ClusterState(
        desired=(deployment("web", replicas=5), deployment("api", replicas=2)), pods=(), nodes=NODES
    )
    state, now = passes(state, 1.0, settled)
    reused = settled.plans.reused
    both(state, now, settled)
    assert settled.plans.reused == reused + 2 and settled.statuses.reused >= 2  # both reused

    # A new template rolls out pass by pass; the untouched Deployment stays reused.
    state, now = passes(
        with_desired(state, deployment("web", replicas=5, image="web:2"), state.desired[1]), now, settled
    )
    assert all(p.spec.containers[0].image == "web:2" for p in state.pods if p.owner.name == "web")
    # Scaling down, a pod going unready (a new object for its row), one removed workload.
    state, now = passes(
        with_desired(state, deployment("web", replicas=3, image="web:2"), state.desired[1]), now, settled
    )
    sick = next(p for p in state.pods if p.owner.name == "api")
    pods = tuple(dataclasses.replace(p, ready=False) if p is sick else p for p in state.pods)
    reused = settled.plans.reused
    decision = both(dataclasses.replace(state, pods=pods), now, settled)
    assert settled.plans.reused == reused + 1  # web's; api's pod is a new object: planned again
    assert decision.rollouts[sick.owner].progress_mark == (2, 1)  # its status was computed again
    state, now = passes(with_desired(state, state.desired[0]), now, settled)
    assert {p.owner.name for p in state.pods} == {"web"}
    assert set(settled.plans.entries) == {state.desired[0].key}


def test_a_pod_equal_but_not_the_same_object_is_planned_again() -> None:
    settled = Settled()
    state, now = passes(
        ClusterState(desired=(deployment("web", replicas=3),), pods=(), nodes=NODES), 1.0, settled
    )
    copies = tuple(dataclasses.replace(p) for p in state.pods)
    reused = settled.plans.reused
    both(dataclasses.replace(state, pods=copies), now, settled)
    assert settled.plans.reused == reused


def test_a_deployment_that_reads_the_clock_is_never_kept() -> None:
    settled = Settled()
    slow = manifest(
        "Deployment",
        "slow",
        spec={
            "replicas": 2,
            "minReadySeconds": 30,
            "selector": {"matchLabels": {"app": "slow"}},
            "template": {
                "metadata": {"labels": {"app": "slow"}},
                "spec": {"containers": [{"name": "m", "image": "s:1"}]},
            },
        },
    )
    state, now = passes(ClusterState(desired=(slow,), pods=(), nodes=NODES), 1.0, settled)
    state, now = passes(with_desired(state, dataclasses.replace(slow)), now + 60.0, settled)
    assert settled.plans.entries == {} and settled.statuses.entries == {}


def test_the_live_pods_are_reused_for_the_same_pods_and_evictions_only() -> None:
    settled = Settled()
    state, now = passes(
        ClusterState(desired=(deployment("web", replicas=4),), pods=(), nodes=NODES), 1.0, settled
    )
    both(state, now, settled)
    kept = settled.live
    assert kept is not None and kept.pods is state.pods and len(kept.live) == 4
    both(state, now + 1.0, settled)
    assert settled.live is kept  # the very pod tuple, nothing evicted: not worked out again

    # The same pods in a new tuple (the cache read a row again): worked out again.
    copies = dataclasses.replace(state, pods=tuple(list(state.pods)))
    assert copies.pods is not state.pods
    both(copies, now + 2.0, settled)
    assert settled.live is not kept and settled.live.pods is copies.pods

    # The same tuple, but a node NotReady past the toleration: its pods are evicted, and the
    # live pods are those of the other nodes (decided as without a `Settled`).
    kept = settled.live
    node = next(p.node for p in copies.pods if p.node is not None)
    gone = dataclasses.replace(copies, not_ready_since={node: now})
    decision = both(gone, now + 100.0, settled)
    assert decision.evicted and {a.pod.node for a in decision.evicted} == {node}
    assert settled.live is not kept and node not in {p.node for p in settled.live.live}
    assert settled.live.draining == {a.pod.name for a in decision.evicted}


def test_a_pending_pod_of_reused_live_pods_is_placed_once_a_node_has_room() -> None:
    settled = Settled()
    small = (Node(NodeName("n0"), cpu_milli=1000, memory_bytes=8 * GiB),)
    big = deployment("big", replicas=2, resources={"requests": {"cpu": "600m"}})
    state, now = passes(ClusterState(desired=(big,), pods=(), nodes=small), 1.0, settled)
    assert sorted(p.node is None for p in state.pods) == [False, True]  # one waits for room
    assert settled.live is not None and settled.live.unbound
    kept = settled.live
    more = Node(NodeName("n1"), cpu_milli=4000, memory_bytes=8 * GiB)
    roomy = dataclasses.replace(state, nodes=(*small, more))
    decision = both(roomy, now, settled)
    assert settled.live is kept  # the very pods: the pending one is found through the kept flag
    assert list(decision.placements.assigned.values()) == ["n1"]
    state, now = passes(settle(roomy, decision, now), now + 1.0, settled)
    assert all(p.node is not None for p in state.pods) and not settled.live.unbound


def test_a_workload_grouped_again_is_kept_with_its_new_tuple() -> None:
    settled = Settled()
    state = ClusterState(
        desired=(deployment("web", replicas=3), deployment("api", replicas=2)), pods=(), nodes=NODES
    )
    state, now = passes(state, 1.0, settled)
    web = state.desired[0].key
    # One of api's pods goes unready: every pod is grouped again, web's in a new tuple of
    # the same objects.
    sick = next(p for p in state.pods if p.owner.name == "api")
    pods = tuple(dataclasses.replace(p, ready=False) if p is sick else p for p in state.pods)
    both(dataclasses.replace(state, pods=pods), now, settled)
    assert settled.live is not None
    grouped = settled.live.grouped[web]
    assert settled.plans.entries[web][1] is grouped and settled.statuses.entries[web][1] is grouped


def daemon(image: str = "agent:1", **spec: object) -> Manifest:
    """A DaemonSet of one container (10m, so that each node has room for it)."""
    labels = {"app": "agent"}
    container = {"name": "agent", "image": image, "resources": {"requests": {"cpu": "10m"}}}
    template = {"metadata": {"labels": labels}, "spec": {"containers": [container]}}
    return manifest(
        "DaemonSet", "agent", spec={"selector": {"matchLabels": labels}, "template": template, **spec}
    )


def test_settled_daemonsets_are_reused_while_their_nodes_are_the_same_and_decided_as_without() -> None:
    settled = Settled()
    state, now = passes(ClusterState(desired=(daemon(),), pods=(), nodes=NODES), 1.0, settled)
    assert sorted(str(p.node) for p in state.pods) == ["n0", "n1", "n2"]
    plans, statuses = settled.plans.reused, settled.statuses.reused
    both(state, now, settled)
    assert (settled.plans.reused, settled.statuses.reused) == (plans + 1, statuses + 1)

    # The same nodes in a new tuple (the store read a row again): still reused.
    both(dataclasses.replace(state, nodes=tuple(list(state.nodes))), now, settled)
    assert (settled.plans.reused, settled.statuses.reused) == (plans + 2, statuses + 2)

    # A node that joins gets its pod at the next pass: planned again, not reused.
    joined = dataclasses.replace(
        state, nodes=(*NODES, Node(NodeName("n3"), cpu_milli=4000, memory_bytes=8 * GiB))
    )
    decision = both(joined, now, settled)
    assert [str(a.pod.spec.node_name) for a in decision.plan.create] == ["n3"]
    assert settled.plans.reused == plans + 2
    state, now = passes(settle(joined, decision, now), now + 1.0, settled)
    assert len(state.pods) == 4

    # A NoExecute taint the pod does not tolerate, on a node equal in all else: its pod goes.
    tainted = Node(
        NodeName("n1"), cpu_milli=4000, memory_bytes=8 * GiB, taints=(Taint("dedicated", "db", "NoExecute"),)
    )
    nodes = tuple(tainted if n.name == "n1" else n for n in state.nodes)
    decision = both(dataclasses.replace(state, nodes=nodes), now, settled)
    assert [str(a.pod.node) for a in decision.plan.stop] == ["n1"]

    # A new template rolls out node by node, decided as without at every pass.
    state, now = passes(dataclasses.replace(state, nodes=nodes, desired=(daemon("agent:2"),)), now, settled)
    assert sorted(p.spec.containers[0].image for p in state.pods) == ["agent:2"] * 3


def test_a_daemonset_that_reads_the_clock_is_never_kept() -> None:
    settled = Settled()
    state, now = passes(
        ClusterState(desired=(daemon(minReadySeconds=30),), pods=(), nodes=NODES), 1.0, settled
    )
    passes(state, now + 60.0, settled)
    assert settled.plans.entries == {} and settled.statuses.entries == {}


def test_a_daemonset_whose_nodes_are_read_again_is_kept_with_the_new_ones() -> None:
    settled = Settled()
    state, now = passes(ClusterState(desired=(daemon(),), pods=(), nodes=NODES), 1.0, settled)
    key = state.desired[0].key
    again = tuple(dataclasses.replace(n) for n in state.nodes)  # equal nodes, new objects
    assert again == NODES and not any(a is b for a, b in zip(again, NODES, strict=True))
    reused = settled.plans.reused
    both(dataclasses.replace(state, nodes=again), now, settled)
    assert settled.plans.reused == reused + 1  # equal: reused
    # Kept with the new nodes, so that later passes over them compare no node's fields.
    assert settled.plans.entries[key][0][2] is again and settled.statuses.entries[key][0][2] is again


def counting_places(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The scheduler's runs in `decide` from now on, counted (one entry a run)."""
    runs: list[int] = []
    place: Callable[..., Any] = reconcile.place

    def counted(*args: Any, **kwargs: Any) -> Any:
        runs.append(1)
        return place(*args, **kwargs)

    monkeypatch.setattr(reconcile, "place", counted)
    return runs


def test_a_pod_that_fits_nowhere_is_not_placed_again_while_what_the_scheduler_reads_is_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Before, every pass that decided placed it again: at 5,000 nodes that built the
    # scheduler's columns of every bound pod, 0.3 s a pass.
    settled = Settled()
    huge = deployment("huge", replicas=1, resources={"requests": {"cpu": "64"}})
    state, now = passes(
        ClusterState(desired=(deployment("web", replicas=3), huge), pods=(), nodes=NODES), 1.0, settled
    )
    waiting = [p for p in state.pods if p.node is None]
    assert len(waiting) == 1
    runs = counting_places(monkeypatch)
    decision = decide(state, now, settled=settled)
    assert runs == []
    assert decision.placements.unschedulable == {waiting[0].id: "0/3 nodes: 3 insufficient cpu"}
    assert decision == decide(state, now) and runs == [1]  # (the pass without the memo places it)

    # Equal nodes, claims and desired objects read again: the same answer, kept with them.
    runs.clear()
    again = dataclasses.replace(
        state, nodes=tuple(dataclasses.replace(n) for n in NODES), desired=tuple(state.desired), claims={}
    )
    assert decide(again, now + 1.0, settled=settled).placements == decision.placements and runs == []
    assert settled.placed is not None and settled.placed.nodes is again.nodes

    # The same pods in a new tuple, and a bound pod's status changed (it restarted, became
    # not ready, got another address): nothing the scheduler reads, the same answer. Before,
    # any pod written made every pass that decided place it again (0.4 s at 5,000 nodes).
    reread = dataclasses.replace(again, pods=tuple(list(again.pods)))
    assert both(reread, now + 2.0, settled).placements == decision.placements
    assert runs == [1]  # (`both`'s pass without the memo)
    runs.clear()
    bound = next(i for i, p in enumerate(reread.pods) if p.node is not None)
    churned = list(reread.pods)
    churned[bound] = dataclasses.replace(churned[bound], restarts=3, ready=False, pod_ip="10.0.0.99")
    churned_state = dataclasses.replace(reread, pods=tuple(churned))
    assert both(churned_state, now + 2.5, settled).placements == decision.placements and runs == [1]

    # Anything the scheduler reads changed, it runs again; then, nothing more changing, not.
    # A bound pod's labels (pod affinity and spread count pods by them):
    runs.clear()
    relabelled = list(churned)
    relabelled[bound] = dataclasses.replace(relabelled[bound], labels=(("app", "other"),))
    reread = dataclasses.replace(churned_state, pods=tuple(relabelled))
    assert decide(reread, now + 2.8, settled=settled) == decide(reread, now + 2.8) and len(runs) == 2
    decide(reread, now + 3.0, settled=settled)
    assert len(runs) == 2
    # The desired objects (a Namespace's labels, which namespace selectors read):
    labelled = dataclasses.replace(
        reread, desired=(*reread.desired, manifest("Namespace", "team", metadata={"name": "team"}))
    )
    decide(labelled, now + 4.0, settled=settled)
    decide(labelled, now + 5.0, settled=settled)
    assert len(runs) == 3
    # A node's room: it fits there now.
    roomy = dataclasses.replace(
        labelled, nodes=(dataclasses.replace(NODES[0], cpu_milli=128_000), *NODES[1:])
    )
    placed = decide(roomy, now + 6.0, settled=settled)
    assert len(runs) == 4 and placed.placements.assigned == {waiting[0].id: "n0"}
    # Nothing waiting any more: nothing is kept (nor the pods it was worked out from).
    decide(settle(roomy, placed, now + 6.0), now + 7.0, settled=settled)
    assert settled.placed is None and len(runs) == 4


@pytest.mark.parametrize(
    ("change", "places"),
    [
        ("status", False),  # restarts, readiness, address, phase: not read by the scheduler
        ("node", True),  # the pod moved: room freed on one node, taken on another
        ("gone", True),  # the pod went: room freed (the pod that fit nowhere may fit now)
        ("stopping", True),  # a stopping pod does not count for spreading
        ("finished", True),  # a pod that ran to its end holds no room
        ("ready with a budget", True),  # a disruption budget counts the healthy pods
    ],
)
def test_placements_are_kept_through_a_bound_pods_change_only_when_the_scheduler_does_not_read_it(
    monkeypatch: pytest.MonkeyPatch, change: str, places: bool
) -> None:
    settled = Settled()
    huge = deployment("huge", replicas=1, resources={"requests": {"cpu": "64"}})
    desired: tuple[Manifest, ...] = (deployment("web", replicas=3), huge)
    if change == "ready with a budget":
        budget = {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}
        desired += (manifest("PodDisruptionBudget", "web", spec=budget),)
    state, now = passes(ClusterState(desired=desired, pods=(), nodes=NODES), 1.0, settled)
    assert sum(p.node is None for p in state.pods) == 1
    runs = counting_places(monkeypatch)
    pods = list(state.pods)
    at = next(i for i, p in enumerate(pods) if p.node is not None and p.owner.name == "web")
    pod = pods[at]
    if change in ("status", "ready with a budget"):
        pods[at] = dataclasses.replace(pod, restarts=2, ready=False, pod_ip="10.9.9.9", reason="probe")
    elif change == "node":
        pods[at] = dataclasses.replace(pod, node=next(n.name for n in NODES if n.name != pod.node))
    elif change == "gone":
        del pods[at]
    elif change == "stopping":
        pods[at] = dataclasses.replace(pod, terminating_at=now)
    else:
        pods[at] = dataclasses.replace(pod, phase="Succeeded")
    changed = dataclasses.replace(state, pods=tuple(pods))
    kept = decide(changed, now, settled=settled)
    assert len(runs) == (1 if places else 0)
    assert kept == decide(changed, now)
