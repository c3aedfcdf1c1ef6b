"""The scheduler places pods by resources, selectors and taints, spreads replicas, and says
why a pod fits nowhere."""

from __future__ import annotations

import dataclasses
import gc
import sys

import numpy as np
import pytest

from gitops.model import (
    ContainerPort,
    Node,
    NodeName,
    ObjectKey,
    Pod,
    PodName,
    Taint,
    Toleration,
    TopologySpreadConstraint,
)
from gitops.scheduler import Cluster, place, place_on, tolerates
from tests.specs import pod_spec

GiB = 2**30
GPU = Taint("dedicated", "gpu", "NoSchedule")


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
        pod_spec(image="x", cpu_request_milli=cpu, memory_request_bytes=mem, **spec),  # type: ignore[arg-type]
        node=NodeName(node_name) if node_name else None,
    )


# --- resources ----------------------------------------------------------------------


def test_a_pod_that_fits_is_placed() -> None:
    assert place([pod("a", cpu=4000, mem=8 * GiB)], [node("n1")], []).assigned == {"default/a": "n1"}


def test_a_pod_never_overcommits_cpu() -> None:
    result = place([pod("a", cpu=3000), pod("b", cpu=3000)], [node("n1")], [])
    assert result.assigned == {"default/a": "n1"}
    assert result.unschedulable == {"default/b": "0/1 nodes: 1 insufficient cpu"}


def test_a_pod_never_overcommits_memory() -> None:
    result = place([pod("a", mem=5 * GiB), pod("b", mem=5 * GiB)], [node("n1")], [])
    assert result.unschedulable == {"default/b": "0/1 nodes: 1 insufficient memory"}


def test_requests_of_zero_fit_even_on_an_overcommitted_node() -> None:
    full = [pod("x", cpu=5000, mem=9 * GiB, node_name="n1")]
    assert place([pod("a", cpu=0, mem=0)], [node("n1")], full).assigned == {"default/a": "n1"}
    assert place([pod("a", cpu=0, mem=0)], [node("n0", cpu=0, mem=0)], []).assigned == {"default/a": "n0"}


def test_bound_pods_consume_capacity() -> None:
    result = place([pod("a", mem=5 * GiB)], [node("n1"), node("n2")], [pod("x", mem=4 * GiB, node_name="n1")])
    assert result.assigned == {"default/a": "n2"}


def test_bound_pods_on_unknown_nodes_are_ignored() -> None:
    result = place([pod("a", cpu=4000)], [node("n1")], [pod("x", cpu=4000, node_name="gone")])
    assert result.assigned == {"default/a": "n1"}


def test_max_pods_per_node_is_respected() -> None:
    result = place([pod("a"), pod("b")], [node("n1", max_pods=1)], [])
    assert result.unschedulable == {"default/b": "0/1 nodes: 1 too many pods"}


def test_bound_pods_count_against_max_pods() -> None:
    result = place([pod("a")], [node("n1", max_pods=1)], [pod("x", node_name="n1")])
    assert result.unschedulable == {"default/a": "0/1 nodes: 1 too many pods"}


# --- readiness, selectors, taints ---------------------------------------------------


def test_not_ready_nodes_are_never_chosen() -> None:
    result = place([pod("a")], [node("n1", ready=False), node("n2", cpu=200)], [])
    assert result.assigned == {"default/a": "n2"}
    assert place([pod("a")], [node("n1", ready=False)], []).unschedulable == {
        "default/a": "0/1 nodes: 1 not ready"
    }


def test_node_selector_must_match_every_label() -> None:
    nodes = [
        node("n1", labels=(("disk", "hdd"), ("zone", "a"))),
        node("n2", labels=(("disk", "ssd"), ("zone", "b"))),
        node("n3", labels=(("disk", "ssd"), ("zone", "a"))),
        node("n4"),
    ]
    selector = (("disk", "ssd"), ("zone", "a"))
    assert place([pod("a", node_selector=selector)], nodes, []).assigned == {"default/a": "n3"}


def test_node_selector_with_an_unknown_value_or_key_matches_nothing() -> None:
    nodes = [node("n1", labels=(("disk", "hdd"),)), node("n2")]
    for selector in ((("disk", "nvme"),), (("gpu", "yes"),)):
        result = place([pod("a", node_selector=selector)], nodes, [])
        (key, value), *_ = selector
        assert result.unschedulable == {"default/a": f"0/2 nodes: 2 node selector mismatch {{{key}={value}}}"}


def test_the_reason_names_the_first_selector_pair_each_node_lacks() -> None:
    nodes = [
        node("n1", labels=(("kubernetes.io/os", "linux"), ("zone", "a"))),
        node("n2", labels=(("kubernetes.io/os", "linux"),)),
        node("n3"),
    ]
    selector = (("kubernetes.io/os", "linux"), ("zone", "b"))
    result = place([pod("a", node_selector=selector)], nodes, [])
    assert result.unschedulable == {
        "default/a": "0/3 nodes: 2 node selector mismatch {zone=b}, "
        "1 node selector mismatch {kubernetes.io/os=linux}"
    }


def test_an_untolerated_no_schedule_taint_blocks() -> None:
    assert place([pod("a")], [node("gpu", taints=(GPU,))], []).unschedulable == {
        "default/a": "0/1 nodes: 1 untolerated taint {dedicated=gpu:NoSchedule}"
    }


def test_an_untolerated_no_execute_taint_blocks() -> None:
    taint = Taint("node.kubernetes.io/unreachable", "", "NoExecute")
    assert place([pod("a")], [node("n1", taints=(taint,))], []).unschedulable == {
        "default/a": "0/1 nodes: 1 untolerated taint {node.kubernetes.io/unreachable:NoExecute}"
    }


def test_an_equal_toleration_needs_key_and_value() -> None:
    assert tolerates([Toleration("dedicated", "Equal", "gpu")], GPU)
    assert not tolerates([Toleration("dedicated", "Equal", "tpu")], GPU)
    assert not tolerates([Toleration("other", "Equal", "gpu")], GPU)


def test_an_exists_toleration_matches_any_value_of_its_key() -> None:
    assert tolerates([Toleration("dedicated", "Exists")], GPU)
    assert tolerates([Toleration("dedicated", "Exists", "ignored")], GPU)
    assert not tolerates([Toleration("other", "Exists")], GPU)


def test_exists_with_an_empty_key_tolerates_everything() -> None:
    everything = [Toleration("", "Exists")]
    assert tolerates(everything, GPU)
    assert tolerates(everything, Taint("x", "y", "NoExecute"))


def test_a_toleration_effect_must_match_unless_empty() -> None:
    assert tolerates([Toleration("dedicated", "Equal", "gpu", effect="NoSchedule")], GPU)
    assert not tolerates([Toleration("dedicated", "Exists", effect="NoExecute")], GPU)
    assert not tolerates([Toleration("", "Exists", effect="NoExecute")], GPU)
    assert tolerates([Toleration("dedicated", "Exists", effect="")], GPU)


def test_a_tolerating_pod_is_admitted_to_a_tainted_node() -> None:
    ok = place(
        [pod("b", tolerations=(Toleration("dedicated", "Equal", "gpu", "NoSchedule"),))],
        [node("gpu", taints=(GPU,))],
        [],
    )
    assert ok.assigned == {"default/b": "gpu"}


def test_every_hard_taint_must_be_tolerated() -> None:
    nodes = [node("n1", taints=(GPU, Taint("spot", "", "NoExecute")))]
    result = place([pod("a", tolerations=(Toleration("dedicated", "Exists"),))], nodes, [])
    assert result.unschedulable == {"default/a": "0/1 nodes: 1 untolerated taint {spot:NoExecute}"}


def test_prefer_no_schedule_only_steers() -> None:
    nodes = [node("soft", taints=(Taint("spot", "", "PreferNoSchedule"),)), node("plain")]
    assert place([pod("a")], nodes, []).assigned == {"default/a": "plain"}
    assert place([pod("a")], nodes[:1], []).assigned == {"default/a": "soft"}
    tolerant = pod("a", tolerations=(Toleration("spot", "Exists"),))
    assert place([tolerant], nodes, []).assigned == {"default/a": "soft"}


# --- scoring ------------------------------------------------------------------------


# --- host ports ---------------------------------------------------------------------


def host_port(port: int, protocol: str = "TCP") -> tuple[ContainerPort, ...]:
    return (ContainerPort(8080, protocol, "", port),)


def test_a_host_port_is_taken_once_per_node_and_protocol() -> None:
    nodes = [node("n1"), node("n2")]
    pending = [pod(f"p{i}", ports=host_port(80)) for i in range(3)]
    pending.append(pod("udp", ports=host_port(80, "UDP")))
    pending.append(pod("other", ports=host_port(81)))
    result = place(pending, nodes, [])
    assert [result.assigned.get(f"default/p{i}") for i in range(3)] == ["n1", "n2", None]
    assert result.unschedulable == {"default/p2": "0/2 nodes: 2 host port in use"}
    assert {"default/udp", "default/other"} <= set(result.assigned)


def test_a_bound_pod_holds_its_host_port_for_every_owner() -> None:
    bound = [pod("old", owner="db", node_name="n1", ports=host_port(5432))]
    result = place([pod("new", ports=host_port(5432))], [node("n1"), node("n2")], bound)
    assert result.assigned == {"default/new": "n2"}
    cluster = Cluster.build([node("n1")], bound)
    assert place_on(cluster, [pod("new", ports=host_port(5432))]).unschedulable == {
        "default/new": "0/1 nodes: 1 host port in use"
    }
    assert place_on(cluster, [pod("free", ports=host_port(5433))]).assigned == {"default/free": "n1"}


def test_three_replicas_spread_over_three_equal_nodes() -> None:
    result = place([pod("a"), pod("b"), pod("c")], [node("n1"), node("n2"), node("n3")], [])
    assert result.assigned == {"default/a": "n1", "default/b": "n2", "default/c": "n3"}


def test_replicas_avoid_nodes_holding_their_bound_siblings() -> None:
    result = place([pod("a")], [node("n1"), node("n2")], [pod("x", cpu=0, mem=0, node_name="n1")])
    assert result.assigned == {"default/a": "n2"}


def test_the_least_allocated_node_wins() -> None:
    result = place([pod("a", owner="other")], [node("n1"), node("n2")], [pod("x", cpu=2000, node_name="n1")])
    assert result.assigned == {"default/a": "n2"}


def test_placement_is_deterministic_and_ties_go_to_the_first_node() -> None:
    nodes = [node("n2"), node("n1")]
    first = place([pod("a")], nodes, [])
    assert first.assigned == {"default/a": "n2"}
    assert place([pod("a")], nodes, []) == first


# --- reasons ------------------------------------------------------------------------


def test_the_reason_counts_each_node_under_its_first_failing_check() -> None:
    nodes = [
        node("n1", mem=GiB // 16),
        node("n2", mem=GiB // 16),
        node("n3", taints=(GPU,), mem=GiB // 16),
        node("n4", ready=False, taints=(GPU,)),
    ]
    result = place([pod("a", mem=GiB // 8)], nodes, [])
    assert result.unschedulable == {
        "default/a": "0/4 nodes: 2 insufficient memory, 1 not ready, "
        "1 untolerated taint {dedicated=gpu:NoSchedule}"
    }


def test_the_reason_lists_each_blocking_taint_separately() -> None:
    spot = Taint("spot", "", "NoSchedule")
    nodes = [node("n1", taints=(spot,)), node("n2", taints=(GPU,)), node("n3", taints=(GPU,))]
    assert place([pod("a")], nodes, []).unschedulable == {
        "default/a": "0/3 nodes: 2 untolerated taint {dedicated=gpu:NoSchedule}, "
        "1 untolerated taint {spot:NoSchedule}"
    }


def test_the_reason_orders_equal_counts_by_check_order() -> None:
    ssd = (("disk", "ssd"),)
    nodes = [
        node("n1", cpu=50, labels=ssd),
        node("n2", max_pods=0, labels=ssd),
        node("n3", labels=(("disk", "hdd"),)),
        node("n4", ready=False, labels=ssd),
    ]
    result = place([pod("a", node_selector=ssd)], nodes, [])
    assert result.unschedulable == {
        "default/a": "0/4 nodes: 1 not ready, 1 node selector mismatch {disk=ssd}, 1 too many pods, "
        "1 insufficient cpu"
    }


def test_twins_of_a_pod_that_fits_nowhere_get_the_same_reason() -> None:
    result = place([pod("a", cpu=9000), pod("b", cpu=9000)], [node("n1")], [])
    assert result.unschedulable == {
        "default/a": "0/1 nodes: 1 insufficient cpu",
        "default/b": "0/1 nodes: 1 insufficient cpu",
    }


def test_an_empty_cluster_says_so() -> None:
    assert place([pod("a")], [], []).unschedulable == {"default/a": "0/0 nodes: no nodes registered"}


# --- the cluster value --------------------------------------------------------------


def test_a_cluster_is_not_changed_by_placing_on_it() -> None:
    cluster = Cluster.build([node("n1", max_pods=1)], [])
    assert place_on(cluster, [pod("a")]).assigned == {"default/a": "n1"}
    assert place_on(cluster, [pod("b")]).assigned == {"default/b": "n1"}
    assert not cluster.pods_free.flags.writeable
    assert np.array_equal(cluster.pods_free, [1])


# --- the pick is checked for room -----------------------------------------------------


def _short_of_cpu_but_best_scored() -> tuple[list[Node], list[Pod]]:
    """n1 has the most room left by the score (its memory is nearly all free) but 100m of
    cpu left; n2 has 1000m and a fifth of its memory."""
    nodes = [node("n1", cpu=1000, mem=64 * GiB), node("n2", cpu=4000, mem=10 * GiB)]
    bound = [
        pod("x", cpu=900, mem=0, owner="other", node_name="n1"),
        pod("y", cpu=3000, mem=8 * GiB, owner="other", node_name="n2"),
    ]
    return nodes, bound


def test_the_best_scored_node_short_of_room_is_passed_over() -> None:
    nodes, bound = _short_of_cpu_but_best_scored()
    result = place([pod("a", cpu=200), pod("b", cpu=200), pod("c", cpu=700)], nodes, bound)
    assert result.assigned == {"default/a": "n2", "default/b": "n2"}
    assert result.unschedulable == {"default/c": "0/2 nodes: 2 insufficient cpu"}
    # A pod that fits n1 goes there: the score did favour it.
    assert place([pod("a", cpu=100)], nodes, bound).assigned == {"default/a": "n1"}


def test_the_runner_up_named_in_a_placement_has_room_too() -> None:
    nodes, bound = _short_of_cpu_but_best_scored()  # n1 scores second best but lacks cpu
    result = place([pod("a", cpu=200)], [node("n0"), *nodes], bound, explain_placements=True)
    assert result.assigned == {"default/a": "n0"}
    assert " on n2: " in result.why["default/a"]
    assert place([pod("a", cpu=200)], nodes, bound, explain_placements=True).why == {
        "default/a": "the only node that passes every check"
    }


def test_the_best_scored_node_without_a_pod_slot_is_passed_over() -> None:
    nodes = [node("n1", cpu=8000, mem=64 * GiB, max_pods=1), node("n2")]
    result = place([pod("a", owner="other")], nodes, [pod("x", cpu=0, mem=0, node_name="n1")])
    assert result.assigned == {"default/a": "n2"}


def test_placing_leaves_the_garbage_collector_as_it_was() -> None:
    nodes, bound = _short_of_cpu_but_best_scored()
    assert gc.isenabled()
    place([pod("a", cpu=100)], nodes, bound)
    assert gc.isenabled()
    gc.disable()
    try:
        place([pod("a", cpu=100)], nodes, bound)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_explaining_placements_moves_no_pod() -> None:
    """The runner-up is found in the very scores the pick was made from (the pick masked
    and put back): explaining one pod changes nothing for the next."""
    nodes = [node(f"n{i}", cpu=1000 * (1 + i % 3)) for i in range(6)]
    first = pod("p0", cpu=300)
    pending = [dataclasses.replace(first, name=PodName(f"p{i}")) for i in range(20)]
    plain = place(pending, nodes, [])
    explained = place(pending, nodes, [], explain_placements=True)
    assert explained.assigned == plain.assigned
    assert len(explained.why) == len(pending)
    for pod_id, text in explained.why.items():
        runner_up = text.split(" on ", 1)[1].split(":")[0].split(",")[0]
        assert runner_up in {n.name for n in nodes}
        assert runner_up != explained.assigned[pod_id]


def test_pods_that_name_their_nodes_hold_memory_for_a_bounded_number_of_classes() -> None:
    # A DaemonSet's pods each name their node: a class each where the one node is not
    # found at once (`_fits_where_named`: here a spread constraint of its own, which that
    # path leaves to the classes). Every class and its masks kept for the whole run held
    # about 28 KiB a pod at 5,000 nodes (280 MiB for 10,000 pods); here 49 MiB at peak
    # before, 14 MiB after.
    import tracemalloc

    nodes = [node(f"n{i}") for i in range(2000)]
    spread = TopologySpreadConstraint(1, "kubernetes.io/hostname", "ScheduleAnyway")
    spec = pod("p", topology_spread=(spread,)).spec
    pinned = [
        dataclasses.replace(pod(f"ds-{i}"), spec=dataclasses.replace(spec, node_name=f"n{i}"))
        for i in range(2000)
    ]
    tracing = tracemalloc.is_tracing()  # (already, under `-X tracemalloc`: left on)
    if not tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    try:
        result = place(pinned, nodes, [])
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        if not tracing:
            tracemalloc.stop()
    assert result.assigned == {f"default/ds-{i}": f"n{i}" for i in range(2000)}
    assert peak < 24 * 2**20, f"{peak / 2**20:.0f} MiB at peak"


def test_a_pod_that_fits_where_it_names_is_bound_there_without_a_class_of_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A DaemonSet's pod, each a spec of its own: the one node it names is checked alone.
    # Before, each was a class over every node (three times the time at 5,000 nodes).
    placing = sys.modules["gitops.scheduler.place"]  # (the package's `place` is the function)
    made: list[str] = []
    local_class = placing._local_class

    def counted(usage: object, pod: Pod, *keys: object) -> object:
        made.append(pod.name)
        return local_class(usage, pod, *keys)

    monkeypatch.setattr(placing, "_local_class", counted)
    nodes = [
        node("n0"),
        node("n1", taints=(Taint("dedicated", "db", "NoSchedule"),)),
        node("n2", ready=False),
        node("n3", cpu=150, labels=(("disk", "ssd"),)),  # room for one pod of 100m
        node("n4", labels=(("disk", "ssd"),)),
    ]
    logs = pod("logs", tolerations=(Toleration(operator="Exists"),)).spec
    cache = pod("cache", node_selector=(("disk", "ssd"),)).spec
    pinned = [
        dataclasses.replace(pod(f"{what}-{name}"), spec=dataclasses.replace(spec, node_name=name))
        for what, spec, names in (
            ("logs", logs, ["n0", "n1", "n2", "n3", "n4", "gone"]),
            ("cache", cache, ["n0", "n3", "n4"]),
        )
        for name in names
    ]
    result = place(pinned, nodes, [], explain_placements=True)
    assert result.assigned == {
        "default/logs-n0": "n0",
        "default/logs-n1": "n1",  # tolerated
        "default/logs-n3": "n3",
        "default/logs-n4": "n4",
        "default/cache-n4": "n4",
    }
    assert set(result.why.values()) == {"the only node that passes every check"}
    # Those that do not fit go the classes' way, which says why.
    assert result.unschedulable == {
        "default/logs-n2": "0/5 nodes: 4 not the node the pod names, 1 not ready",
        "default/logs-gone": "0/5 nodes: 5 not the node the pod names",
        "default/cache-n0": "0/5 nodes: 4 not the node the pod names, 1 node selector mismatch {disk=ssd}",
        "default/cache-n3": "0/5 nodes: 4 not the node the pod names, 1 insufficient cpu",
    }
    assert sorted(made) == ["cache-n0", "cache-n3", "logs-gone", "logs-n2"]
