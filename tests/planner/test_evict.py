"""Pods on a NotReady node are replaced once they have waited as long as they tolerate."""

from __future__ import annotations

import dataclasses

from gitops.model import NodeName, ObjectKey, Pod, Toleration
from gitops.planner import plan
from gitops.planner.evict import evictions
from tests.planner.factories import deployment


def on(node: str, **spec: object) -> Pod:
    (action,) = plan([deployment(replicas=1)], []).create
    pod = action.pod
    return dataclasses.replace(pod, node=NodeName(node), spec=dataclasses.replace(pod.spec, **spec))  # type: ignore[arg-type]


def test_pods_wait_the_default_toleration_then_go() -> None:
    pod = on("n1")
    since = {NodeName("n1"): 1000.0}
    assert evictions([pod], since, now=1059.0, default_toleration=60) == []
    (action,) = evictions([pod], since, now=1060.0, default_toleration=60)
    assert action.pod == pod
    assert (
        action.reason == "node n1 has been NotReady for 60s (the pod tolerates 60s): replaced on another node"
    )


def test_pods_on_ready_nodes_are_left_alone() -> None:
    assert evictions([on("n2")], {NodeName("n1"): 0.0}, now=10_000.0, default_toleration=60) == []


def test_toleration_seconds_per_pod_and_for_ever_without_them() -> None:
    quick = on(
        "n1", tolerations=(Toleration("node.kubernetes.io/unreachable", "Exists", "", "NoExecute", 5),)
    )
    forever = on("n1", tolerations=(Toleration("node.kubernetes.io/not-ready", "Exists", "", "NoExecute"),))
    since = {NodeName("n1"): 1000.0}
    assert [a.pod for a in evictions([quick, forever], since, now=1005.0, default_toleration=60)] == [quick]
    assert evictions([forever], since, now=10**9, default_toleration=60) == []


def test_a_statefulsets_pod_stays_bound_to_its_notready_node_however_long() -> None:
    """Two pods of one ordinal must never run: the node may only have lost its network."""
    pod = dataclasses.replace(on("n1"), owner=ObjectKey("StatefulSet", "default", "db"))
    assert evictions([pod], {NodeName("n1"): 0.0}, now=1e9, default_toleration=60) == []
