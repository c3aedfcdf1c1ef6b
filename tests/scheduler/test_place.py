"""The scheduler places pods by resources, selectors and taints, spreads replicas, and says
why a pod fits nowhere."""

from __future__ import annotations

from gitops.model import Node, NodeName, ObjectKey, Pod, PodName, PodSpec, Taint, Toleration
from gitops.scheduler import place, tolerates

GiB = 2**30


def node(name: str, cpu: int = 4000, mem: int = 8 * GiB, **kw: object) -> Node:
    return Node(NodeName(name), cpu_milli=cpu, memory_bytes=mem, **kw)  # type: ignore[arg-type]


def pod(
    name: str,
    cpu: int = 100,
    mem: int = GiB // 8,
    owner: str = "web",
    node_name: str | None = None,
    **spec: object,
) -> Pod:
    return Pod(
        "default",
        PodName(name),
        ObjectKey("Deployment", "default", owner),
        "h-" + owner,
        PodSpec(image="x", cpu_request_milli=cpu, memory_request_bytes=mem, **spec),  # type: ignore[arg-type]
        node=NodeName(node_name) if node_name else None,
    )


def test_replicas_spread_over_equal_nodes() -> None:
    result = place([pod("a"), pod("b"), pod("c")], [node("n1"), node("n2"), node("n3")], [])
    assert sorted(result.assigned.values()) == ["n1", "n2", "n3"]


def test_placement_is_deterministic_and_ties_go_to_the_first_node() -> None:
    nodes = [node("n1"), node("n2")]
    first = place([pod("a")], nodes, [])
    assert first.assigned == {"default/a": "n1"}
    assert place([pod("a")], nodes, []) == first


def test_a_pod_never_overcommits_cpu_or_memory() -> None:
    result = place([pod("a", cpu=3000), pod("b", cpu=3000)], [node("n1")], [])
    assert result.assigned == {"default/a": "n1"}
    assert result.unschedulable == {"default/b": "0/1 nodes: 1 insufficient cpu"}


def test_bound_pods_consume_capacity() -> None:
    result = place([pod("a", mem=5 * GiB)], [node("n1"), node("n2")], [pod("x", mem=4 * GiB, node_name="n1")])
    assert result.assigned == {"default/a": "n2"}


def test_the_least_allocated_node_wins() -> None:
    result = place([pod("a", owner="other")], [node("n1"), node("n2")], [pod("x", cpu=2000, node_name="n1")])
    assert result.assigned == {"default/a": "n2"}


def test_not_ready_nodes_are_never_chosen() -> None:
    result = place([pod("a")], [node("n1", ready=False)], [])
    assert result.unschedulable == {"default/a": "0/1 nodes: 1 not ready"}


def test_node_selector_must_match_labels() -> None:
    nodes = [node("n1", labels=(("disk", "hdd"),)), node("n2", labels=(("disk", "ssd"),)), node("n3")]
    assert place([pod("a", node_selector=(("disk", "ssd"),))], nodes, []).assigned == {"default/a": "n2"}
    result = place([pod("b", node_selector=(("disk", "nvme"),))], nodes, [])
    assert result.unschedulable == {"default/b": "0/3 nodes: 3 node selector mismatch"}


def test_untolerated_taints_block_and_tolerations_admit() -> None:
    nodes = [node("gpu", taints=(Taint("dedicated", "gpu", "NoSchedule"),))]
    assert place([pod("a")], nodes, []).unschedulable == {"default/a": "0/1 nodes: 1 untolerated taint"}
    ok = place([pod("b", tolerations=(Toleration("dedicated", "Equal", "gpu", "NoSchedule"),))], nodes, [])
    assert ok.assigned == {"default/b": "gpu"}


def test_toleration_rules_follow_kubernetes() -> None:
    taint = Taint("k", "v", "NoSchedule")
    assert tolerates([Toleration("", "Exists")], taint)
    assert tolerates([Toleration("k", "Exists")], taint)
    assert tolerates([Toleration("k", "Equal", "v")], taint)
    assert not tolerates([Toleration("k", "Equal", "w")], taint)
    assert not tolerates([Toleration("k", "Exists", effect="NoExecute")], taint)
    assert not tolerates([Toleration("other", "Exists")], taint)


def test_prefer_no_schedule_only_steers() -> None:
    nodes = [node("soft", taints=(Taint("spot", "", "PreferNoSchedule"),)), node("plain")]
    assert place([pod("a")], nodes, []).assigned == {"default/a": "plain"}
    assert place([pod("a")], nodes[:1], []).assigned == {"default/a": "soft"}


def test_the_reason_counts_each_node_under_its_first_failing_check() -> None:
    nodes = [
        node("n1", mem=GiB // 16),
        node("n2", mem=GiB // 16),
        node("n3", taints=(Taint("dedicated", "gpu", "NoSchedule"),)),
        node("n4", ready=False),
    ]
    result = place([pod("a", mem=GiB // 8)], nodes, [])
    assert result.unschedulable == {
        "default/a": "0/4 nodes: 2 insufficient memory, 1 not ready, 1 untolerated taint"
    }


def test_max_pods_per_node_is_respected() -> None:
    result = place([pod("a"), pod("b")], [node("n1", max_pods=1)], [])
    assert result.unschedulable == {"default/b": "0/1 nodes: 1 too many pods"}


def test_an_empty_cluster_says_so() -> None:
    assert place([pod("a")], [], []).unschedulable == {"default/a": "0/0 nodes: no nodes registered"}
