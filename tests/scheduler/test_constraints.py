"""The scheduler honours node affinity, pod affinity and anti-affinity (with symmetry),
topology spread and priorities, preempts lower-priority pods within disruption budgets,
and says why a pod fits nowhere and why a pod went where it did."""

from __future__ import annotations

from collections import Counter

from gitops.model import (
    Affinity,
    ContainerPort,
    DisruptionBudget,
    LabelSelector,
    Node,
    NodeName,
    NodeSelectorTerm,
    ObjectKey,
    Pod,
    PodAffinityTerm,
    PodName,
    Preemption,
    PreferredNodeTerm,
    Requirement,
    TopologySpreadConstraint,
    WeightedPodAffinityTerm,
)
from gitops.scheduler import place
from tests.scheduler.reference import reference_place
from tests.specs import pod_spec

GiB = 2**30
HOST = "kubernetes.io/hostname"
ZONE = "topology.kubernetes.io/zone"


def node(name: str, zone: str = "", cpu: int = 4000, **labels: str) -> Node:
    all_labels = {HOST: name, **({ZONE: zone} if zone else {}), **labels}
    return Node(NodeName(name), cpu_milli=cpu, memory_bytes=8 * GiB, labels=tuple(sorted(all_labels.items())))


def zoned(count: int, zones: int) -> list[Node]:
    return [node(f"n{i:02d}", zone=f"z{i % zones}") for i in range(count)]


def app(name: str) -> LabelSelector:
    return LabelSelector(match_labels=(("app", name),))


def pod(
    name: str,
    owner: str = "web",
    *,
    on: str | None = None,
    cpu: int = 100,
    priority: int = 0,
    labels: dict[str, str] | None = None,
    namespace: str = "default",
    **spec: object,
) -> Pod:
    return Pod(
        namespace,
        PodName(name),
        ObjectKey("Deployment", namespace, owner),
        "h-" + owner,
        pod_spec(image="x", cpu_request_milli=cpu, memory_request_bytes=GiB // 8, priority=priority, **spec),  # type: ignore[arg-type]
        labels=tuple(sorted((labels if labels is not None else {"app": owner}).items())),
        node=NodeName(on) if on else None,
    )


def replicas(count: int, owner: str = "web", **spec: object) -> list[Pod]:
    return [pod(f"{owner}-{i}", owner, **spec) for i in range(count)]  # type: ignore[arg-type]


def where(result_assigned: dict[str, str] | object, nodes: list[Node], key: str = ZONE) -> Counter[str]:
    labels = {n.name: n.label_map for n in nodes}
    return Counter(labels[n][key] for n in result_assigned.values())  # type: ignore[attr-defined]


def anti(owner: str, key: str = HOST) -> Affinity:
    return Affinity(anti_required=(PodAffinityTerm(app(owner), key, ("default",)),))


# --- node affinity ----------------------------------------------------------------------


def test_required_node_affinity_keeps_pods_in_the_named_zone() -> None:
    nodes = zoned(8, 4)
    terms = (NodeSelectorTerm((Requirement(ZONE, "In", ("z2",)),)),)
    result = place(replicas(4, affinity=Affinity(node_required=terms)), nodes, [])
    assert where(result.assigned, nodes) == {"z2": 4}


def test_terms_are_ored_and_expressions_anded() -> None:
    nodes = [node("a", disk="ssd", gen="3"), node("b", disk="ssd", gen="1"), node("c", disk="hdd")]
    terms = (
        NodeSelectorTerm((Requirement("disk", "In", ("ssd",)), Requirement("gen", "Gt", ("2",)))),
        NodeSelectorTerm(fields=(Requirement("metadata.name", "In", ("c",)),)),
    )
    result = place(replicas(6, affinity=Affinity(node_required=terms)), nodes, [])
    assert set(result.assigned.values()) == {"a", "c"}


def test_a_node_affinity_mismatch_is_explained_with_the_terms() -> None:
    nodes = zoned(4, 2)
    terms = (NodeSelectorTerm((Requirement(ZONE, "In", ("z9",)),)),)
    result = place(replicas(1, affinity=Affinity(node_required=terms)), nodes, [])
    assert result.unschedulable == {
        "default/web-0": "0/4 nodes: 4 node affinity mismatch {topology.kubernetes.io/zone In (z9)}"
    }


def test_preferred_node_affinity_steers_without_blocking() -> None:
    nodes = [node("a", disk="hdd"), node("b", disk="ssd", cpu=1000)]
    preferred = (PreferredNodeTerm(50, NodeSelectorTerm((Requirement("disk", "In", ("ssd",)),))),)
    result = place(replicas(1, affinity=Affinity(node_preferred=preferred)), nodes, [])
    assert result.assigned == {"default/web-0": "b"}  # though a is emptier
    full = place(replicas(1, cpu=2000, affinity=Affinity(node_preferred=preferred)), nodes, [])
    assert full.assigned == {"default/web-0": "a"}


# --- pod anti-affinity and affinity -------------------------------------------------------


def test_hostname_anti_affinity_places_one_per_node_and_names_the_term_for_the_rest() -> None:
    nodes = [node(f"n{i}") for i in range(3)]
    result = place(replicas(5, owner="crowd", affinity=anti("crowd")), nodes, [])
    assert sorted(result.assigned.values()) == ["n0", "n1", "n2"]
    assert set(result.unschedulable.values()) == {
        "0/3 nodes: 3 would violate pod anti-affinity (app=crowd on kubernetes.io/hostname)"
    }


def test_an_existing_pods_required_anti_affinity_repels_a_newcomer() -> None:
    nodes = [node("n0"), node("n1")]
    loner = pod("loner", "loner", on="n0", affinity=anti("web"))
    result = place(replicas(2), nodes, [loner])
    assert list(result.assigned.values()) == ["n1", "n1"]
    crowded = place(replicas(1), [node("n0")], [loner])
    assert crowded.unschedulable == {
        "default/web-0": "0/1 nodes: "
        "1 would violate existing pods' anti-affinity (app=web on kubernetes.io/hostname)"
    }


def test_anti_affinity_only_counts_pods_of_the_terms_namespaces() -> None:
    nodes = [node("n0")]
    other = pod("x", "web", on="n0", namespace="other")
    assert place(replicas(1, affinity=anti("web")), nodes, [other]).assigned == {"default/web-0": "n0"}
    everywhere = Affinity(anti_required=(PodAffinityTerm(app("web"), HOST, (), LabelSelector()),))
    assert place(replicas(1, affinity=everywhere), nodes, [other]).assigned == {}


def test_pods_with_affinity_land_beside_the_pods_they_follow() -> None:
    nodes = zoned(6, 3)
    cache = pod("cache-0", "cache", on="n04")  # zone z1
    beside = Affinity(pod_required=(PodAffinityTerm(app("cache"), ZONE, ("default",)),))
    result = place(replicas(4, affinity=beside), nodes, [cache])
    assert where(result.assigned, nodes) == {"z1": 4}
    alone = place(replicas(1, affinity=beside), nodes, [])
    assert alone.unschedulable == {
        "default/web-0": "0/6 nodes: 6 would violate pod affinity (app=cache on topology.kubernetes.io/zone)"
    }


def test_the_first_pod_of_a_group_with_affinity_to_itself_may_start() -> None:
    nodes = zoned(6, 3)
    together = Affinity(pod_required=(PodAffinityTerm(app("web"), ZONE, ("default",)),))
    result = place(replicas(4, affinity=together), nodes, [])
    assert len(where(result.assigned, nodes)) == 1 and len(result.assigned) == 4


def test_preferred_anti_affinity_spreads_over_zones() -> None:
    nodes = zoned(6, 3)
    apart = Affinity(
        anti_preferred=(WeightedPodAffinityTerm(100, PodAffinityTerm(app("web"), ZONE, ("default",))),)
    )
    result = place(replicas(3, affinity=apart), nodes, [])
    assert where(result.assigned, nodes) == {"z0": 1, "z1": 1, "z2": 1}


# --- topology spread ----------------------------------------------------------------------


def spread(
    key: str = ZONE, skew: int = 1, when: str = "DoNotSchedule", **kw: object
) -> tuple[TopologySpreadConstraint, ...]:
    return (TopologySpreadConstraint(skew, key, when, app("web"), **kw),)  # type: ignore[arg-type]


def test_24_replicas_spread_by_zone_over_48_nodes_land_6_6_6_6() -> None:
    nodes = zoned(48, 4)
    result = place(replicas(24, topology_spread=spread()), nodes, [])
    assert where(result.assigned, nodes) == {"z0": 6, "z1": 6, "z2": 6, "z3": 6}


def test_a_spread_that_cannot_hold_is_explained_with_the_constraint() -> None:
    nodes = [node("a", zone="z0", cpu=4000), node("b", zone="z1", cpu=100)]
    result = place(replicas(4, topology_spread=spread()), nodes, [])
    assert len(result.assigned) == 3
    assert set(result.unschedulable.values()) == {
        "0/2 nodes: 1 insufficient cpu, "
        "1 would violate topology spread (maxSkew 1 on topology.kubernetes.io/zone)"
    }


def test_min_domains_holds_pods_back_when_zones_are_missing() -> None:
    nodes = zoned(2, 2)
    result = place(replicas(4, topology_spread=spread(min_domains=3)), nodes, [])
    assert len(result.assigned) == 2  # skew against a global minimum of 0: one per zone


def test_terminating_pods_do_not_count_for_spread() -> None:
    nodes = zoned(2, 2)
    leaving = [pod(f"old-{i}", on="n00") for i in range(3)]
    leaving = [Pod(**{**p.__dict__, "terminating_at": 1.0}) for p in leaving]
    result = place(replicas(2, topology_spread=spread()), nodes, leaving)
    assert where(result.assigned, nodes) == {"z0": 1, "z1": 1}


def test_default_spreading_balances_replicas_over_zones_and_nodes() -> None:
    nodes = zoned(12, 3)
    result = place(replicas(9), nodes, [])
    assert where(result.assigned, nodes) == {"z0": 3, "z1": 3, "z2": 3}
    assert max(Counter(result.assigned.values()).values()) == 1


# --- priority and preemption ----------------------------------------------------------------


def test_higher_priority_pods_are_placed_first() -> None:
    nodes = [node("n0", cpu=1000)]
    result = place([pod("low", "low", cpu=800), pod("high", "high", cpu=800, priority=100)], nodes, [])
    assert result.assigned == {"default/high": "n0"}


def test_preemption_takes_the_fewest_lowest_priority_victims_and_names_them() -> None:
    nodes = [node("n0", cpu=1000), node("n1", cpu=1000)]
    bound = [
        pod("a", "a", on="n0", cpu=500, priority=10),
        pod("b", "b", on="n0", cpu=500, priority=10),
        pod("c", "c", on="n1", cpu=500, priority=5),
        pod("d", "d", on="n1", cpu=500, priority=50),
    ]
    result = place([pod("vip", "vip", cpu=500, priority=100)], nodes, bound)
    (preemption,) = result.preemptions.values()
    assert (preemption.node, preemption.victims) == ("n1", ("default/c",))
    assert result.unschedulable["default/vip"].endswith("; preempting 1 pod(s) on n1: default/c")


def test_preemption_respects_a_disruption_budget_where_it_can() -> None:
    nodes = [node("n0", cpu=500), node("n1", cpu=500)]
    bound = [
        pod("db-0", "db", on="n0", cpu=500, priority=1),
        pod("cache-0", "cache", on="n1", cpu=500, priority=1),
    ]
    budget = DisruptionBudget("default", "db", app("db"), allowed=0)
    result = place([pod("vip", "vip", cpu=500, priority=100)], nodes, bound, budgets=[budget])
    assert result.preemptions["default/vip"].victims == ("default/cache-0",)


def test_never_preempting_pods_and_equal_priorities_do_not_preempt() -> None:
    nodes = [node("n0", cpu=500)]
    bound = [pod("a", "a", on="n0", cpu=500, priority=100)]
    assert place([pod("b", "b", cpu=500, priority=100)], nodes, bound).preemptions == {}
    never = pod("c", "c", cpu=500, priority=1000, preemption_policy="Never")
    assert place([never], nodes, bound).preemptions == {}


def test_a_preemptor_waits_for_terminating_pods_without_new_victims() -> None:
    nodes = [node("n0", cpu=500)]
    leaving = Pod(**{**pod("a", "a", on="n0", cpu=500).__dict__, "terminating_at": 1.0})
    result = place([pod("vip", "vip", cpu=500, priority=100)], nodes, [leaving])
    assert result.preemptions["default/vip"].victims == ()
    assert result.unschedulable["default/vip"].endswith("; waiting for terminating pods to leave n0")


def test_room_held_for_a_preemptor_is_not_taken_by_later_pods() -> None:
    nodes = [node("n0", cpu=1000)]
    bound = [pod("a", "a", on="n0", cpu=1000)]
    result = place([pod("vip", "vip", cpu=600, priority=100), pod("z", "z", cpu=500)], nodes, bound)
    assert "default/vip" in result.preemptions and "default/z" in result.unschedulable


def test_a_victim_keeps_its_room_until_it_is_gone() -> None:
    """Found previewing a high-priority Deployment: its second pod was bound in the victim's
    room while the victim was still stopping. As in kube-scheduler, a victim holds its room
    until it is gone; the second pod waits for it too instead of taking a second victim."""
    nodes = [node("n0"), node("n1")]
    bound = [pod("a", "a", on="n0", cpu=3000), pod("b", "b", on="n1", cpu=3000)]
    pending = [pod(f"vip{i}", "vip", cpu=2000, priority=100) for i in (1, 2)]
    for result in (place(pending, nodes, bound), reference_place(pending, nodes, bound)):
        assert result.assigned == {}
        assert result.preemptions == {
            "default/vip1": Preemption(NodeName("n0"), ("default/a",)),
            "default/vip2": Preemption(NodeName("n0"), ()),
        }
        assert result.unschedulable["default/vip2"].endswith("; waiting for terminating pods to leave n0")
    # A third needs a victim of its own: the room the first victim leaves is spoken for.
    third = [*pending, pod("vip3", "vip", cpu=2000, priority=100)]
    assert place(third, nodes, bound).preemptions["default/vip3"] == Preemption(
        NodeName("n1"), ("default/b",)
    )


# --- why that node ----------------------------------------------------------------------


def test_each_placement_can_say_why_that_node() -> None:
    nodes = [node("a", disk="hdd"), node("b", disk="ssd")]
    preferred = (PreferredNodeTerm(10, NodeSelectorTerm((Requirement("disk", "In", ("ssd",)),))),)
    result = place(
        replicas(1, affinity=Affinity(node_preferred=preferred)), nodes, [], explain_placements=True
    )
    assert result.why["default/web-0"].startswith(
        "score 2.98 against 0.98 on a: preferred node affinity 2.00 vs 0.00"
    )
    alone = place(replicas(1), [node("a")], [], explain_placements=True)
    assert alone.why == {"default/web-0": "the only node that passes every check"}
    assert place(replicas(1), nodes, []).why == {}


def test_a_host_port_two_bound_pods_share_stays_taken_when_preemption_removes_one() -> None:
    """Found by the property test: preempting one of two pods holding a port freed it."""
    nodes = [Node(NodeName("n0"), cpu_milli=4000, memory_bytes=8 * GiB, max_pods=3)]
    port = (ContainerPort(80, "TCP", "", 80),)
    bound = [
        pod("a", "a", on="n0", ports=port),
        pod("b", "b", on="n0", ports=port),
        pod("c", "c", on="n0", priority=5),  # kept first: the highest priority is reprieved first
    ]
    vip = pod("vip", "vip", priority=10)
    result = place([vip, pod("web", "web", ports=port)], nodes, bound)
    assert result.preemptions["default/vip"].victims == ("default/b",)  # the last of equals walked
    assert result.unschedulable["default/web"] == "0/1 nodes: 1 host port in use"


def test_fewer_victims_of_negative_priority_are_preferred_to_more() -> None:
    """Found by the property test: sums of priorities are counted from the lowest possible
    one (as kube-scheduler does), so two victims at -10 never beat one."""
    nodes = [node("n0", cpu=1000), node("n1", cpu=1000)]
    bound = [
        pod("a", "a", on="n0", cpu=500, priority=-10),
        pod("b", "b", on="n0", cpu=500, priority=-10),
        pod("c", "c", on="n1", cpu=1000, priority=-10),
    ]
    result = place([pod("vip", "vip", cpu=1000, priority=10)], nodes, bound)
    assert result.preemptions["default/vip"] == Preemption(NodeName("n1"), ("default/c",))


def test_a_namespace_selector_on_the_name_label_matches_though_the_labels_given_lack_it() -> None:
    """Found by the property test: a namespace's name is one of its labels whatever
    `namespaces` says, as Kubernetes sets `kubernetes.io/metadata.name` itself."""
    nodes = zoned(2, 1)
    cache = pod("cache", "cache", on="n00", namespace="other")
    by_name = LabelSelector(match_labels=(("kubernetes.io/metadata.name", "other"),))
    beside = Affinity(pod_required=(PodAffinityTerm(app("cache"), ZONE, (), by_name),))
    result = place(replicas(1, affinity=beside), nodes, [cache], namespaces={"other": (), "default": ()})
    assert list(result.assigned) == ["default/web-0"]  # in the cache's zone, z0
    assert place(replicas(1, affinity=beside), nodes, [], namespaces={"other": ()}).assigned == {}
