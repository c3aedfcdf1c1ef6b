"""Control passes place pods the way the scheduler's constraints say, over whole rollouts:
a rolling update ends as spread as it began, and a pod of higher priority preempts."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

from gitops.model import ClusterState, Manifest, Node, NodeName, ObjectKey, SourceLocation, content_hash
from gitops.reconcile import decide, settle
from tests.planner.factories import deployment

GiB = 2**30


def nodes(count: int) -> tuple[Node, ...]:
    return tuple(
        Node(
            NodeName(f"n{i}"),
            cpu_milli=4000,
            memory_bytes=8 * GiB,
            labels=(("kubernetes.io/hostname", f"n{i}"),),
        )
        for i in range(count)
    )


def converge(state: ClusterState, start: float) -> tuple[ClusterState, float]:
    """Passes a second apart, every placed pod ready at once, until one changes nothing."""
    now = start
    for _ in range(50):
        decision = decide(state, now)
        if decision.empty:
            return state, now
        state = settle(state, decision, now)
        now += 1.0
    raise AssertionError("no fixed point in 50 passes")


def per_node(state: ClusterState) -> Counter[str]:
    return Counter(str(p.node) for p in state.pods)


def test_a_rolling_update_of_3_replicas_on_3_nodes_ends_one_per_node() -> None:
    state = ClusterState(desired=(deployment(replicas=3, image="web:1"),), pods=(), nodes=nodes(3))
    state, now = converge(state, 1000.0)
    assert per_node(state) == {"n0": 1, "n1": 1, "n2": 1}
    for image in ("web:2", "web:3"):
        updated: Manifest = deployment(replicas=3, image=image)
        state, now = converge(dataclasses.replace(state, desired=(updated,)), now + 1)
        assert {p.spec.image for p in state.pods} == {image}
        assert per_node(state) == {"n0": 1, "n1": 1, "n2": 1}


def priority_class(name: str, value: int) -> Manifest:
    body = {
        "apiVersion": "scheduling.k8s.io/v1",
        "kind": "PriorityClass",
        "metadata": {"name": name},
        "value": value,
    }
    return Manifest(
        ObjectKey("PriorityClass", "", name),
        body["apiVersion"],
        body,
        SourceLocation(f"{name}.yaml"),
        content_hash(body),
    )


def with_priority(manifest: Manifest, name: str) -> Manifest:
    body = json.loads(json.dumps(manifest.body))
    body["spec"]["template"]["spec"]["priorityClassName"] = name
    return dataclasses.replace(manifest, body=body, hash=content_hash(body))


def test_a_pod_of_higher_priority_preempts_one_lower_and_lands_once_it_is_gone() -> None:
    (node,) = nodes(1)
    small = dataclasses.replace(node, cpu_milli=1000)
    batch = deployment("batch", replicas=2, resources={"requests": {"cpu": "500m"}})
    state = ClusterState(desired=(batch,), pods=(), nodes=(small,))
    state, now = converge(state, 1000.0)
    assert len([p for p in state.pods if p.node]) == 2
    api = with_priority(deployment("api", replicas=1, resources={"requests": {"cpu": "500m"}}), "high")
    state = dataclasses.replace(state, desired=(batch, api, priority_class("high", 1000)))
    decision = decide(state, now)
    (victim,) = decision.preempted
    (pending,) = decision.plan.create
    assert victim.pod.owner.name == "batch"
    assert victim.reason == f"preempted by {pending.pod.id} on n0 (priority 1000 > 0)"
    assert decision.placements.unschedulable[pending.pod.id].endswith(
        f"; preempting 1 pod(s) on n0: {victim.pod.id}"
    )
    state = settle(state, decision, now)
    state, now = converge(state, now + 1)
    running = {p.owner.name: p for p in state.pods if p.node}
    assert running["api"].node == "n0" and running["api"].spec.priority == 1000
    waiting = [p for p in state.pods if not p.node]
    assert [p.owner.name for p in waiting] == ["batch"]  # its replacement has no one lower to preempt
    assert waiting[0].reason == "0/1 nodes: 1 insufficient cpu"
