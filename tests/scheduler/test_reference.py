"""The reference twin follows docs/scheduler.md rule by rule, on hand-computed cases: node
and pod affinity, anti-affinity, namespaces, topology spread, default spreading, preferred
terms, priority order, preemption and the explanation of pods that fit nowhere."""

from __future__ import annotations

from collections import Counter

import pytest

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
    PodId,
    PodName,
    Preemption,
    PreferredNodeTerm,
    Requirement,
    Taint,
    TopologySpreadConstraint,
    WeightedPodAffinityTerm,
)
from tests.scheduler.reference import parse_int64, reference_place, requirement_holds
from tests.specs import pod_spec

GiB = 2**30
HOSTNAME = "kubernetes.io/hostname"
ZONE = "topology.kubernetes.io/zone"
GPU = Taint("dedicated", "gpu", "NoSchedule")


def node(name: str, cpu: int = 4000, mem: int = 8 * GiB, zone: str = "", **kw: object) -> Node:
    """A node labelled as agents label them: its hostname, and its zone when given."""
    labels = ((HOSTNAME, name),) + (((ZONE, zone),) if zone else ()) + tuple(kw.pop("labels", ()))  # type: ignore[arg-type]
    return Node(NodeName(name), cpu_milli=cpu, memory_bytes=mem, labels=labels, **kw)  # type: ignore[arg-type]


def pod(
    name: str,
    owner: str = "web",
    *,
    ns: str = "default",
    labels: tuple[tuple[str, str], ...] | None = None,
    cpu: int = 100,
    mem: int = GiB // 8,
    on: str = "",
    terminating: bool = False,
    **spec: object,
) -> Pod:
    """A pod of Deployment `owner`, labelled `app: <owner>` unless `labels` say otherwise."""
    return Pod(
        ns,
        PodName(name),
        ObjectKey("Deployment", ns, owner),
        "h-" + owner,
        pod_spec(image="x", cpu_request_milli=cpu, memory_request_bytes=mem, **spec),
        labels=(("app", owner),) if labels is None else labels,
        node=NodeName(on) if on else None,
        terminating_at=1.0 if terminating else None,
    )


def preempting(node: str, *victims: str) -> Preemption:
    return Preemption(NodeName(node), tuple(PodId(v) for v in victims))


def app(name: str) -> LabelSelector:
    return LabelSelector(match_labels=(("app", name),))


def term(
    selector: LabelSelector | None,
    key: str = HOSTNAME,
    namespaces: tuple[str, ...] = ("default",),
    namespace_selector: LabelSelector | None = None,
) -> PodAffinityTerm:
    return PodAffinityTerm(selector, key, namespaces, namespace_selector)


def requires(*expressions: Requirement, fields: tuple[Requirement, ...] = ()) -> NodeSelectorTerm:
    return NodeSelectorTerm(expressions, fields)


def spread(
    key: str, selector: LabelSelector | None, max_skew: int = 1, **kw: object
) -> TopologySpreadConstraint:
    return TopologySpreadConstraint(max_skew, key, selector=selector, **kw)  # type: ignore[arg-type]


# --- node affinity ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requirement", "value", "holds"),
    [
        (Requirement("k", "In", ("a", "b")), "b", True),
        (Requirement("k", "In", ("a", "b")), "c", False),
        (Requirement("k", "In", ("a",)), None, False),
        (Requirement("k", "NotIn", ("a",)), "b", True),
        (Requirement("k", "NotIn", ("a",)), "a", False),
        (Requirement("k", "NotIn", ("a",)), None, True),
        (Requirement("k", "Exists"), "", True),
        (Requirement("k", "Exists"), None, False),
        (Requirement("k", "DoesNotExist"), None, True),
        (Requirement("k", "DoesNotExist"), "a", False),
        (Requirement("k", "Gt", ("5",)), "10", True),
        (Requirement("k", "Gt", ("5",)), "5", False),
        (Requirement("k", "Gt", ("-3",)), "+0", True),
        (Requirement("k", "Lt", ("5",)), "004", True),
        (Requirement("k", "Lt", ("5",)), None, False),
        (Requirement("k", "Gt", ("5", "6")), "10", False),  # Gt and Lt hold one value
        (Requirement("k", "Gt", ("x",)), "10", False),
        # Go's strconv.ParseInt(s, 10, 64), as Kubernetes parses: no spaces, underscores,
        # decimals, non-ASCII digits, nor numbers beyond int64.
        (Requirement("k", "Gt", ("5",)), " 10", False),
        (Requirement("k", "Gt", ("5",)), "1_0", False),
        (Requirement("k", "Gt", ("5",)), "10.0", False),
        (Requirement("k", "Gt", ("5",)), "\u0661\u0660", False),
        (Requirement("k", "Gt", ("5",)), str(2**63), False),
        (Requirement("k", "Lt", ("0",)), str(-(2**63)), True),
    ],
)
def test_each_requirement_operator_reads_a_label_as_kubernetes_does(
    requirement: Requirement, value: str | None, holds: bool
) -> None:
    assert requirement_holds(requirement, value) is holds


def test_integers_parse_as_go_parses_them() -> None:
    assert [parse_int64(t) for t in ("42", "-7", "+3", "", "+", "0x10", "9" * 30)] == [
        42,
        -7,
        3,
        None,
        None,
        None,
        None,
    ]


NODES = [
    node("n1", labels=(("disk", "ssd"), ("rank", "3"))),
    node("n2", labels=(("disk", "hdd"), ("rank", "10"))),
    node("n3"),
]


@pytest.mark.parametrize(
    ("expressions", "where"),
    [
        ((Requirement("disk", "In", ("hdd", "nvme")),), "n2"),
        ((Requirement("disk", "NotIn", ("ssd",)), Requirement("rank", "Exists")), "n2"),
        ((Requirement("disk", "DoesNotExist"),), "n3"),
        ((Requirement("rank", "Gt", ("5",)),), "n2"),
        ((Requirement("rank", "Lt", ("5",)),), "n1"),
    ],
)
def test_required_node_affinity_admits_only_matching_nodes(
    expressions: tuple[Requirement, ...], where: str
) -> None:
    p = pod("a", affinity=Affinity(node_required=(requires(*expressions),)))
    assert reference_place([p], NODES, []).assigned == {"default/a": where}


def test_node_affinity_can_name_the_node_by_metadata_name() -> None:
    by_name = requires(fields=(Requirement("metadata.name", "In", ("n3",)),))
    p = pod("a", affinity=Affinity(node_required=(by_name,)))
    assert reference_place([p], NODES, []).assigned == {"default/a": "n3"}
    other_field = requires(fields=(Requirement("metadata.uid", "Exists"),))
    p = pod("a", affinity=Affinity(node_required=(other_field,)))
    assert reference_place([p], NODES, []).unschedulable == {
        "default/a": "0/3 nodes: 3 node affinity mismatch {metadata.uid Exists}"
    }


def test_node_affinity_terms_are_ored_and_an_empty_term_matches_nothing() -> None:
    p = pod(
        "a",
        affinity=Affinity(node_required=(NodeSelectorTerm(), requires(Requirement("rank", "Gt", ("5",))))),
    )
    assert reference_place([p], NODES, []).assigned == {"default/a": "n2"}
    p = pod("a", affinity=Affinity(node_required=(NodeSelectorTerm(),)))
    assert reference_place([p], NODES, []).unschedulable == {
        "default/a": "0/3 nodes: 3 node affinity mismatch {(empty term)}"
    }


def test_the_node_affinity_reason_joins_the_terms_with_or() -> None:
    terms = (
        requires(Requirement("disk", "In", ("nvme",))),
        requires(Requirement("rank", "Gt", ("50",)), Requirement("disk", "Exists")),
    )
    result = reference_place([pod("a", affinity=Affinity(node_required=terms))], NODES, [])
    assert result.unschedulable == {
        "default/a": "0/3 nodes: 3 node affinity mismatch {disk In (nvme) or rank Gt 50, disk Exists}"
    }


def test_node_affinity_is_checked_after_the_node_selector_and_before_taints() -> None:
    nodes = [
        node("n1", taints=(GPU,)),
        node("n2", labels=(("disk", "ssd"),)),
        node("n3", labels=(("zone", "a"),)),
    ]
    p = pod(
        "a",
        node_selector=(("zone", "a"),),
        affinity=Affinity(node_required=(requires(Requirement("disk", "Exists")),)),
    )
    assert reference_place([p], nodes, []).unschedulable == {
        "default/a": "0/3 nodes: 2 node selector mismatch {zone=a}, 1 node affinity mismatch {disk Exists}"
    }


def preferring(*weights_and_disks: tuple[int, str]) -> Affinity:
    return Affinity(
        node_preferred=tuple(
            PreferredNodeTerm(w, requires(Requirement("disk", "In", (disk,))))
            for w, disk in weights_and_disks
        )
    )


def test_preferred_node_affinity_weighs_twice_its_matched_share_of_the_weights() -> None:
    """n1 is empty (least allocated 1.0), n2 half full (0.5): the preference for n2 must be
    worth more than 0.5, i.e. more than a quarter of the weights."""
    nodes = [node("n1"), node("n2", labels=(("disk", "ssd"),))]
    half = [pod("x", "other", cpu=2000, mem=4 * GiB, on="n2")]
    tie = pod("a", cpu=0, mem=0, affinity=preferring((10, "ssd"), (30, "nvme")))  # 2.0 * 10/40 = 0.5
    assert reference_place([tie], nodes, half).assigned == {"default/a": "n1"}  # a tie: the first node
    more = pod("a", cpu=0, mem=0, affinity=preferring((11, "ssd"), (30, "nvme")))  # 2.0 * 11/41
    assert reference_place([more], nodes, half).assigned == {"default/a": "n2"}
    empty_term = Affinity(node_preferred=(PreferredNodeTerm(100, NodeSelectorTerm()),))
    assert reference_place([pod("a", cpu=0, mem=0, affinity=empty_term)], nodes, half).assigned == {
        "default/a": "n1"
    }


# --- pod affinity ----------------------------------------------------------------------


def test_required_pod_affinity_goes_where_a_matching_pod_is() -> None:
    nodes = [node("n1"), node("n2"), node("n3")]
    web = pod("w", affinity=Affinity(pod_required=(term(app("db")),)))
    db = [pod("d", "db", cpu=1000, on="n2")]
    assert reference_place([web], nodes, db).assigned == {"default/w": "n2"}
    assert reference_place([web], nodes, []).unschedulable == {
        "default/w": "0/3 nodes: 3 would violate pod affinity (app=db on kubernetes.io/hostname)"
    }


def test_pod_affinity_by_zone_admits_every_node_of_the_zone() -> None:
    nodes = [node("n1", zone="a"), node("n2", zone="a"), node("n3", zone="b"), node("n4")]
    db = [pod("d", "db", cpu=3000, on="n1")]
    web = pod("w", affinity=Affinity(pod_required=(term(app("db"), ZONE),)))
    assert reference_place([web], nodes, db).assigned == {"default/w": "n2"}


def test_pod_affinity_by_zone_names_nodes_lacking_the_key_like_the_others() -> None:
    nodes = [node("n1", zone="a", ready=False), node("n2", zone="b"), node("n3")]
    db = [pod("d", "db", on="n1")]
    web = pod("w", affinity=Affinity(pod_required=(term(app("db"), ZONE),)))
    assert reference_place([web], nodes, db).unschedulable == {
        "default/w": "0/3 nodes: 2 would violate pod affinity (app=db on topology.kubernetes.io/zone), "
        "1 not ready"
    }


def test_a_pod_counts_for_affinity_only_if_it_matches_all_the_terms() -> None:
    nodes = [node("n1"), node("n2"), node("n3")]
    bound = [
        pod("d1", "db", on="n1"),
        pod("d2", "db", labels=(("app", "db"), ("tier", "gold")), on="n2"),
        pod("g", "gold", labels=(("tier", "gold"),), on="n3"),
    ]
    gold = LabelSelector(match_labels=(("tier", "gold"),))
    web = pod("w", affinity=Affinity(pod_required=(term(app("db")), term(gold))))
    assert reference_place([web], nodes, bound).assigned == {"default/w": "n2"}


def test_the_first_pod_of_a_self_affine_group_starts_and_the_others_follow() -> None:
    nodes = [node("n1"), node("n2"), node("n3")]
    cache = [pod(f"c{i}", "cache", affinity=Affinity(pod_required=(term(app("cache")),))) for i in range(3)]
    assert reference_place(cache, nodes, []).assigned == {f"default/c{i}": "n1" for i in range(3)}


def test_the_first_pod_exception_still_needs_the_topology_key() -> None:
    nodes = [node("n1"), node("n2", zone="a", ready=False), node("n3", zone="b")]
    cache = pod("c", "cache", affinity=Affinity(pod_required=(term(app("cache"), ZONE),)))
    assert reference_place([cache], nodes, []).assigned == {"default/c": "n3"}
    assert reference_place([cache], nodes[:2], []).unschedulable == {
        "default/c": "0/2 nodes: 1 not ready, "
        "1 would violate pod affinity (app=cache on topology.kubernetes.io/zone)"
    }


def test_the_first_pod_exception_needs_the_pod_to_match_its_own_terms() -> None:
    web = pod("w", affinity=Affinity(pod_required=(term(app("cache")),)))
    assert reference_place([web], [node("n1")], []).unschedulable == {
        "default/w": "0/1 nodes: 1 would violate pod affinity (app=cache on kubernetes.io/hostname)"
    }


def test_the_first_pod_exception_ends_once_a_match_is_on_a_node_with_any_of_the_keys() -> None:
    """As kube-scheduler counts topology pairs: a matching pod on a node that has the
    hostname but no zone is counted for the hostname term, so the exception is over, and
    no node has a matching pod in both its host and its zone."""
    terms = (term(app("cache")), term(app("cache"), ZONE))
    nodes = [node("n1", zone="a"), node("n3")]
    bound = [pod("old", "cache", on="n3")]
    cache = pod("c", "cache", affinity=Affinity(pod_required=terms))
    assert reference_place([cache], nodes, bound).unschedulable == {
        "default/c": "0/2 nodes: 1 would violate pod affinity (app=cache on kubernetes.io/hostname), "
        "1 would violate pod affinity (app=cache on topology.kubernetes.io/zone)"
    }


def test_a_matching_pod_on_a_node_that_is_not_ready_still_counts() -> None:
    nodes = [node("n1", zone="a"), node("n2", zone="b"), node("n3", zone="b", ready=False)]
    web = pod("w", affinity=Affinity(pod_required=(term(app("db"), ZONE),)))
    assert reference_place([web], nodes, [pod("d", "db", on="n3")]).assigned == {"default/w": "n2"}


# --- anti-affinity ---------------------------------------------------------------------


def test_required_anti_affinity_keeps_replicas_apart() -> None:
    nodes = [node("n1"), node("n2"), node("n3")]
    crowd = [pod(f"c{i}", "crowd", affinity=Affinity(anti_required=(term(app("crowd")),))) for i in range(4)]
    result = reference_place(crowd, nodes, [])
    assert sorted(result.assigned.values()) == ["n1", "n2", "n3"]
    # The fourth is kept off by its own term, checked before the placed replicas' ones (as
    # Kubernetes checks them).
    assert result.unschedulable == {
        "default/c3": "0/3 nodes: 3 would violate pod anti-affinity (app=crowd on kubernetes.io/hostname)"
    }


def test_a_pod_s_own_anti_affinity_names_its_term() -> None:
    """Older replicas without the term still repel a new one that has it."""
    nodes = [node(f"n{i:02d}") for i in range(60)]
    bound = [pod(f"old{i}", "crowd", on=f"n{i:02d}") for i in range(60)]
    crowd = pod("c", "crowd", affinity=Affinity(anti_required=(term(app("crowd")),)))
    assert reference_place([crowd], nodes, bound).unschedulable == {
        "default/c": "0/60 nodes: 60 would violate pod anti-affinity (app=crowd on kubernetes.io/hostname)"
    }


def test_anti_affinity_by_zone_lets_nodes_without_the_key_pass() -> None:
    nodes = [node("n1", zone="a"), node("n2", zone="a", cpu=8000), node("n3", cpu=1000)]
    crowd = pod("c", "crowd", affinity=Affinity(anti_required=(term(app("crowd"), ZONE),)))
    assert reference_place([crowd], nodes, [pod("old", "crowd", on="n1")]).assigned == {"default/c": "n3"}


def test_anti_affinity_is_checked_term_by_term_and_named_under_the_first_failing() -> None:
    nodes = [node("n1", zone="a"), node("n2", zone="a"), node("n3", zone="b")]
    bound = [pod("d", "db", on="n1"), pod("q", "queue", on="n3")]
    terms = (term(app("db"), ZONE), term(app("queue")))
    result = reference_place([pod("w", affinity=Affinity(anti_required=terms))], nodes, bound)
    assert result.unschedulable == {
        "default/w": "0/3 nodes: 2 would violate pod anti-affinity (app=db on topology.kubernetes.io/zone), "
        "1 would violate pod anti-affinity (app=queue on kubernetes.io/hostname)"
    }


def test_an_existing_pod_s_required_anti_affinity_repels_the_pods_it_matches() -> None:
    nodes = [node("n1"), node("n2", cpu=1000)]
    loner = pod("l", "loner", on="n1", affinity=Affinity(anti_required=(term(app("web")),)))
    assert reference_place([pod("w")], nodes, [loner]).assigned == {"default/w": "n2"}
    assert reference_place([pod("d", "db")], nodes, [loner]).assigned == {"default/d": "n1"}
    loners = [loner, pod("l2", "loner", on="n2", affinity=Affinity(anti_required=(term(app("web")),)))]
    assert reference_place([pod("w")], nodes, loners).unschedulable == {
        "default/w": "0/2 nodes: "
        "2 would violate existing pods' anti-affinity (app=web on kubernetes.io/hostname)"
    }


def test_a_node_repelled_by_several_terms_is_named_under_the_first_by_text() -> None:
    front = LabelSelector(match_labels=(("tier", "front"),))
    bound = [
        pod("l1", "loner", on="n1", affinity=Affinity(anti_required=(term(front),))),
        pod("l2", "loner", on="n1", affinity=Affinity(anti_required=(term(app("web")),))),
    ]
    web = pod("w", labels=(("app", "web"), ("tier", "front")))
    assert reference_place([web], [node("n1")], bound).unschedulable == {
        "default/w": "0/1 nodes: "
        "1 would violate existing pods' anti-affinity (app=web on kubernetes.io/hostname)"
    }


def test_an_existing_pod_s_anti_affinity_by_zone_repels_from_its_whole_zone() -> None:
    nodes = [node("n1", zone="a"), node("n2", zone="a"), node("n3", zone="b", cpu=1000), node("n4")]
    loner = pod("l", "loner", on="n1", affinity=Affinity(anti_required=(term(app("web"), ZONE),)))
    result = reference_place([pod(f"w{i}", cpu=600) for i in range(3)], nodes, [loner])
    # n3 and n4 only: w0 to the emptier n4, w1 to n3 (spreading), w2 to n4 (n3 is full).
    assert result.assigned == {"default/w0": "n4", "default/w1": "n3", "default/w2": "n4"}


def test_an_existing_pod_s_term_reads_its_own_namespaces() -> None:
    loner = pod("l", "loner", on="n1", affinity=Affinity(anti_required=(term(app("web")),)))
    elsewhere = pod("w", ns="other")
    assert reference_place([elsewhere], [node("n1"), node("n2", cpu=1000)], [loner]).assigned == {
        "other/w": "n1"
    }


def test_a_placed_pod_repels_later_ones_in_the_same_run() -> None:
    nodes = [node("n1"), node("n2", cpu=2000)]
    loner = pod("l", "loner", affinity=Affinity(anti_required=(term(app("web")),)))
    assert reference_place([loner, pod("w")], nodes, []).assigned == {"default/l": "n1", "default/w": "n2"}


# --- namespaces ------------------------------------------------------------------------

DB_IN_TWO_NAMESPACES = [
    pod("d1", "db", ns="data-prod", on="n1"),
    pod("d2", "db", on="n2"),
    pod("d3", "db", ns="data-dev", on="n3"),
]
THREE = [node("n1", cpu=1000), node("n2", cpu=2000), node("n3", cpu=3000)]


@pytest.mark.parametrize(
    ("namespaces", "namespace_selector", "feasible"),
    [
        (("default",), None, ["n2"]),
        (("data-prod",), None, ["n1"]),
        ((), None, []),
        ((), LabelSelector(match_labels=(("team", "data"),)), ["n1"]),
        ((), LabelSelector(match_labels=(("kubernetes.io/metadata.name", "data-dev"),)), ["n3"]),
        ((), LabelSelector(), ["n1", "n2", "n3"]),
        (("default",), LabelSelector(match_labels=(("team", "data"),)), ["n1", "n2"]),
    ],
)
def test_a_term_matches_pods_in_its_namespaces_and_those_its_namespace_selector_matches(
    namespaces: tuple[str, ...], namespace_selector: LabelSelector | None, feasible: list[str]
) -> None:
    """data-prod has a Namespace manifest labelled team=data; data-dev has none, so only its
    name label."""
    manifests = {"data-prod": (("team", "data"),), "default": ()}
    required = term(app("db"), HOSTNAME, namespaces, namespace_selector)
    web = pod("w", cpu=500, affinity=Affinity(pod_required=(required,)))
    result = reference_place([web], THREE, DB_IN_TWO_NAMESPACES, namespaces=manifests)
    assert list(result.assigned.values()) == feasible[-1:]  # the emptiest feasible node wins


def test_a_namespace_manifest_cannot_rename_its_name_label() -> None:
    manifests = {"data-dev": (("kubernetes.io/metadata.name", "data-prod"),)}
    by_name = LabelSelector(match_labels=(("kubernetes.io/metadata.name", "data-prod"),))
    web = pod("w", cpu=500, affinity=Affinity(pod_required=(term(app("db"), HOSTNAME, (), by_name),)))
    result = reference_place([web], THREE, DB_IN_TWO_NAMESPACES, namespaces=manifests)
    assert result.assigned == {"default/w": "n1"}


def test_a_term_without_a_selector_matches_no_pod() -> None:
    web = pod("w", affinity=Affinity(pod_required=(term(None),)))
    assert reference_place([web], [node("n1")], [pod("d", "db", on="n1")]).unschedulable == {
        "default/w": "0/1 nodes: 1 would violate pod affinity (no pods on kubernetes.io/hostname)"
    }


# --- topology spread -------------------------------------------------------------------

WEB = app("web")


def web_on(*nodes: str, terminating: bool = False, start: int = 0) -> list[Pod]:
    return [pod(f"old{start + i}", cpu=0, mem=0, on=n, terminating=terminating) for i, n in enumerate(nodes)]


def test_a_hard_spread_constraint_admits_nodes_within_max_skew() -> None:
    """Counts 2, 0, 1 (min 0) with the pod counting itself: only n2 stays within 1."""
    nodes = [node("n1"), node("n2", cpu=1000), node("n3")]
    p = pod("w", topology_spread=(spread(HOSTNAME, WEB),))
    assert reference_place([p], nodes, web_on("n1", "n1", "n3")).assigned == {"default/w": "n2"}
    p = pod("w", topology_spread=(spread(HOSTNAME, WEB, max_skew=2),))
    assert reference_place([p], nodes, web_on("n1", "n1", "n3")).assigned == {"default/w": "n3"}


def test_replicas_with_a_hard_spread_constraint_even_out() -> None:
    nodes = [node("n1", cpu=8000), node("n2"), node("n3")]
    replicas = [pod(f"w{i}", topology_spread=(spread(HOSTNAME, WEB),)) for i in range(6)]
    placed = Counter(reference_place(replicas, nodes, []).assigned.values())
    assert placed == {"n1": 2, "n2": 2, "n3": 2}


def test_min_domains_counts_missing_domains_as_empty() -> None:
    nodes = [node("n1", zone="a"), node("n2", zone="b")]
    bound = web_on("n1", "n2")
    three = pod("w", topology_spread=(spread(ZONE, WEB, min_domains=3),))
    assert reference_place([three], nodes, bound).unschedulable == {
        "default/w": "0/2 nodes: 2 would violate topology spread (maxSkew 1 on topology.kubernetes.io/zone)"
    }
    two = pod("w", topology_spread=(spread(ZONE, WEB, min_domains=2),))
    assert reference_place([two], nodes, bound).assigned == {"default/w": "n1"}


SSD_ZONES = [
    node("n1", zone="a", labels=(("disk", "ssd"),)),
    node("n2", zone="b", labels=(("disk", "ssd"),)),
    node("n3", zone="c", labels=(("disk", "hdd"),)),
]


def test_node_affinity_policy_honor_spreads_over_the_nodes_the_pod_may_use() -> None:
    honor = pod("w", node_selector=(("disk", "ssd"),), topology_spread=(spread(ZONE, WEB),))
    assert reference_place([honor], SSD_ZONES, web_on("n1", "n2")).assigned == {"default/w": "n1"}
    ignore = pod(
        "w",
        node_selector=(("disk", "ssd"),),
        topology_spread=(spread(ZONE, WEB, node_affinity_policy="Ignore"),),
    )
    assert reference_place([ignore], SSD_ZONES, web_on("n1", "n2")).unschedulable == {
        "default/w": "0/3 nodes: 2 would violate topology spread (maxSkew 1 on topology.kubernetes.io/zone), "
        "1 node selector mismatch {disk=ssd}"
    }


def test_node_affinity_policy_honor_reads_required_node_affinity_too() -> None:
    ssd = Affinity(node_required=(requires(Requirement("disk", "In", ("ssd",))),))
    honor = pod("w", affinity=ssd, topology_spread=(spread(ZONE, WEB),))
    assert reference_place([honor], SSD_ZONES, web_on("n1", "n2")).assigned == {"default/w": "n1"}


def test_node_taints_policy_honor_leaves_out_nodes_with_untolerated_taints() -> None:
    nodes = [node("n1", zone="a"), node("n2", zone="b"), node("n3", zone="c", taints=(GPU,))]
    ignore = pod("w", topology_spread=(spread(ZONE, WEB),))
    assert reference_place([ignore], nodes, web_on("n1", "n2")).unschedulable == {
        "default/w": "0/3 nodes: 2 would violate topology spread (maxSkew 1 on topology.kubernetes.io/zone), "
        "1 untolerated taint {dedicated=gpu:NoSchedule}"
    }
    honor = pod("w", topology_spread=(spread(ZONE, WEB, node_taints_policy="Honor"),))
    assert reference_place([honor], nodes, web_on("n1", "n2")).assigned == {"default/w": "n1"}


def test_not_ready_nodes_are_no_spread_domain() -> None:
    nodes = [node("n1", zone="a"), node("n2", zone="b"), node("n3", zone="c", ready=False)]
    p = pod("w", topology_spread=(spread(ZONE, WEB),))
    assert reference_place([p], nodes, web_on("n1", "n2")).assigned == {"default/w": "n1"}


def test_a_node_without_the_key_fails_a_hard_constraint() -> None:
    nodes = [node("n1", cpu=8000), node("n2", zone="a", ready=False)]
    p = pod("w", topology_spread=(spread(ZONE, WEB),))
    assert reference_place([p], nodes, []).unschedulable == {
        "default/w": "0/2 nodes: 1 not ready, "
        "1 would violate topology spread (maxSkew 1 on topology.kubernetes.io/zone)"
    }


def test_terminating_pods_are_not_counted_by_spread() -> None:
    nodes = [node("n1"), node("n2", cpu=1000)]
    bound = web_on("n1") + web_on("n2", "n2", terminating=True, start=1)
    p = pod("w", topology_spread=(spread(HOSTNAME, WEB),))
    assert reference_place([p], nodes, bound).assigned == {"default/w": "n2"}


def test_spread_counts_pods_of_the_pod_s_namespace_only() -> None:
    nodes = [node("n1"), node("n2", cpu=1000)]
    bound = [pod("x", ns="other", cpu=0, mem=0, on="n2")] * 3
    p = pod("w", topology_spread=(spread(HOSTNAME, WEB),))
    assert reference_place([p], nodes, [*web_on("n1"), *bound]).assigned == {"default/w": "n2"}


def test_a_pod_its_selector_does_not_match_does_not_count_itself() -> None:
    """db counts 2 on n1 and 1 on n2, min 1: a pod that is no db may join n1 (2 - 1 <= 1),
    a db may not (2 + 1 - 1 > 1)."""
    nodes = [node("n1"), node("n2", cpu=1000)]
    dbs = [pod(f"d{i}", "db", cpu=0, mem=0, on=n) for i, n in enumerate(["n1", "n1", "n2"])]
    web = pod("w", topology_spread=(spread(HOSTNAME, app("db")),))
    assert reference_place([web], nodes, dbs).assigned == {"default/w": "n1"}
    db = pod("d", "db", topology_spread=(spread(HOSTNAME, app("db")),))
    assert reference_place([db], nodes, dbs).assigned == {"default/d": "n2"}


def test_a_constraint_without_a_selector_counts_no_pods() -> None:
    nodes = [node("n1"), node("n2", cpu=1000)]
    p = pod("w", topology_spread=(spread(HOSTNAME, None),))
    assert reference_place([p], nodes, web_on("n1", "n1", "n1")).assigned == {"default/w": "n1"}


def test_schedule_anyway_steers_but_never_blocks() -> None:
    soft = (spread(HOSTNAME, WEB, when_unsatisfiable="ScheduleAnyway"),)
    nodes = [node("n1"), node("n2")]
    assert reference_place([pod("w", topology_spread=soft)], nodes, web_on("n1")).assigned == {
        "default/w": "n2"
    }
    nodes = [node("n1"), node("n2", ready=False)]
    assert reference_place([pod("w", topology_spread=soft)], nodes, web_on(*["n1"] * 5)).assigned == {
        "default/w": "n1"
    }


def test_schedule_anyway_scores_the_mean_over_its_constraints() -> None:
    """n1 (rack r1, one web pod): (1/2 + 1/2) / 2 = 0.5; n2 (no rack, empty): (1/1 + 0.0) / 2
    = 0.5, a tie the first node wins; with two web pods n1 scores 1/3 and loses."""
    nodes = [node("n1", labels=(("rack", "r1"),)), node("n2")]
    soft = (
        spread(HOSTNAME, WEB, when_unsatisfiable="ScheduleAnyway"),
        spread("rack", WEB, when_unsatisfiable="ScheduleAnyway"),
    )
    p = pod("w", cpu=0, mem=0, topology_spread=soft)
    assert reference_place([p], nodes, web_on("n1")).assigned == {"default/w": "n1"}
    assert reference_place([p], nodes, web_on("n1", "n1")).assigned == {"default/w": "n2"}


def test_a_pod_with_only_hard_constraints_does_not_spread_by_default() -> None:
    """Spread score 0.0 everywhere: the emptier node wins even where its owner already is."""
    nodes = [node("n1", cpu=8000), node("n2")]
    p = pod("w", topology_spread=(spread(HOSTNAME, WEB, max_skew=5),))
    assert reference_place([p], nodes, web_on("n1")).assigned == {"default/w": "n1"}
    assert reference_place([pod("w")], nodes, web_on("n1")).assigned == {"default/w": "n2"}


def test_twenty_four_replicas_spread_six_per_zone_over_four_zones() -> None:
    nodes = [node(f"n{i:02d}", zone=f"zone-{i // 12}") for i in range(48)]
    replicas = [pod(f"w{i}", topology_spread=(spread(ZONE, WEB),)) for i in range(24)]
    result = reference_place(replicas, nodes, [])
    zone_of = {n.name: dict(n.labels)[ZONE] for n in nodes}
    assert Counter(zone_of[n] for n in result.assigned.values()) == {f"zone-{z}": 6 for z in range(4)}
    assert not result.unschedulable


# --- default spreading -----------------------------------------------------------------


def test_replicas_spread_over_hosts_without_zones() -> None:
    nodes = [node("n1"), node("n2"), node("n3")]
    result = reference_place([pod(f"w{i}") for i in range(3)], nodes, [])
    assert sorted(result.assigned.values()) == ["n1", "n2", "n3"]


def test_replicas_spread_over_zones_then_hosts() -> None:
    """With web on n1 (zone a): n1 scores (1/2 + 1/2) / 2, n2 (1 + 1/2) / 2, n3 and n4
    (1 + 1) / 2; then n2 and n4 tie at 0.75; then n4 alone is best."""
    nodes = [node("n1", zone="a"), node("n2", zone="a"), node("n3", zone="b"), node("n4", zone="b")]
    pending = [pod(f"w{i}", cpu=0, mem=0) for i in range(3)]
    assert reference_place(pending, nodes, web_on("n1")).assigned == {
        "default/w0": "n3",
        "default/w1": "n2",
        "default/w2": "n4",
    }


def test_a_node_without_a_zone_spreads_by_host_alone_when_others_have_zones() -> None:
    nodes = [node("n1", zone="a"), node("n3", zone="a"), node("n2")]
    assert reference_place([pod("w", cpu=0, mem=0)], nodes, web_on("n1")).assigned == {"default/w": "n2"}


def test_terminating_pods_of_the_owner_still_count_for_default_spreading() -> None:
    nodes = [node("n1"), node("n2")]
    assert reference_place([pod("w", cpu=0, mem=0)], nodes, web_on("n1", terminating=True)).assigned == {
        "default/w": "n2"
    }


# --- preferred pod affinity ------------------------------------------------------------


def test_preferred_pod_affinity_attracts_and_preferred_anti_affinity_repels() -> None:
    nodes = [node("n1"), node("n2")]
    cache = [pod("c", "cache", cpu=0, mem=0, on="n2")]
    near = Affinity(pod_preferred=(WeightedPodAffinityTerm(50, term(app("cache"))),))
    far = Affinity(anti_preferred=(WeightedPodAffinityTerm(50, term(app("cache"))),))
    assert reference_place([pod("w", affinity=near)], nodes, cache).assigned == {"default/w": "n2"}
    assert reference_place([pod("w", affinity=far)], nodes, cache).assigned == {"default/w": "n1"}


def test_preferred_pod_affinity_weighs_twice_its_share_of_the_weights() -> None:
    """n1 is half full (least allocated 0.5) with a cache and a noisy pod; n2 is empty (1.0).
    Preferences 30 near cache, 10 away from noisy: 2.0 * (30 * 1/2 - 10 * 1/2) / 40 = 0.5,
    a tie the first node wins; with 11 away from noisy it is less, and n2 wins."""
    nodes = [node("n1"), node("n2")]
    bound = [
        pod("x", "other", cpu=2000, mem=4 * GiB, on="n1"),
        pod("c", "cache", cpu=0, mem=0, on="n1"),
        pod("q", "noisy", cpu=0, mem=0, on="n1"),
    ]

    def weights(near: int, away: int) -> Affinity:
        return Affinity(
            pod_preferred=(WeightedPodAffinityTerm(near, term(app("cache"))),),
            anti_preferred=(WeightedPodAffinityTerm(away, term(app("noisy"))),),
        )

    assert reference_place([pod("w", cpu=0, mem=0, affinity=weights(30, 10))], nodes, bound).assigned == {
        "default/w": "n1"
    }
    assert reference_place([pod("w", cpu=0, mem=0, affinity=weights(30, 11))], nodes, bound).assigned == {
        "default/w": "n2"
    }


def test_preferred_pod_affinity_grows_with_the_number_of_matching_pods() -> None:
    """f(c) = c / (1 + c): two caches on n2 (2/3) outweigh one on n1 (1/2)."""
    nodes = [node("n1", zone="a"), node("n2", zone="b"), node("n3", zone="b")]
    bound = [pod("c1", "cache", on="n1"), pod("c2", "cache", on="n2"), pod("c3", "cache", on="n2")]
    near = Affinity(pod_preferred=(WeightedPodAffinityTerm(100, term(app("cache"), ZONE)),))
    assert reference_place([pod("w", affinity=near)], nodes, bound).assigned == {"default/w": "n3"}


# --- priority --------------------------------------------------------------------------


def test_pods_are_placed_by_priority_then_in_the_order_given() -> None:
    nodes = [node("n1", cpu=2000)]
    pending = [
        pod("low", cpu=1000),
        pod("high", cpu=1000, priority=100),
        pod("mid1", cpu=1000, priority=10),
        pod("mid2", cpu=1000, priority=10),
    ]
    result = reference_place(pending, nodes, [])
    assert result.assigned == {"default/high": "n1", "default/mid1": "n1"}
    # Pods placed in this run are never preempted; mid2 and low find no lower bound pods.
    assert result.unschedulable == {
        "default/mid2": "0/1 nodes: 1 insufficient cpu",
        "default/low": "0/1 nodes: 1 insufficient cpu",
    }
    assert not result.preemptions


# --- preemption ------------------------------------------------------------------------


def test_a_pod_preempts_a_lower_priority_pod_that_takes_its_room() -> None:
    result = reference_place(
        [pod("p", cpu=1000, priority=100)], [node("n1", cpu=1000)], [pod("low", "low", cpu=1000, on="n1")]
    )
    assert result.preemptions == {"default/p": preempting("n1", "default/low")}
    assert result.unschedulable == {
        "default/p": "0/1 nodes: 1 insufficient cpu; preempting 1 pod(s) on n1: default/low"
    }
    assert not result.assigned
    assert not result.why


def test_preemption_policy_never_waits() -> None:
    p = pod("p", cpu=1000, priority=100, preemption_policy="Never")
    result = reference_place([p], [node("n1", cpu=1000)], [pod("low", "low", cpu=1000, on="n1")])
    assert result.unschedulable == {"default/p": "0/1 nodes: 1 insufficient cpu"}
    assert not result.preemptions


def test_only_lower_priority_bound_pods_are_preempted() -> None:
    equal = [pod("same", "same", cpu=1000, priority=100, on="n1")]
    result = reference_place([pod("p", cpu=1000, priority=100)], [node("n1", cpu=1000)], equal)
    assert result.unschedulable == {"default/p": "0/1 nodes: 1 insufficient cpu"}
    assert not result.preemptions


def test_preemption_prefers_the_lowest_highest_victim_priority() -> None:
    nodes = [node("n1", cpu=2000), node("n2", cpu=2000)]
    bound = [
        pod("a", "a", cpu=1000, priority=1, on="n1"),
        pod("b", "b", cpu=1000, priority=1, on="n1"),
        pod("c", "c", cpu=2000, priority=5, on="n2"),
    ]
    result = reference_place([pod("p", cpu=2000, priority=10)], nodes, bound)
    assert result.preemptions == {"default/p": preempting("n1", "default/a", "default/b")}
    assert result.unschedulable == {
        "default/p": "0/2 nodes: 2 insufficient cpu; preempting 2 pod(s) on n1: default/a, default/b"
    }


def test_preemption_then_prefers_the_smallest_sum_of_priorities_then_fewest_victims() -> None:
    nodes = [node("n1", cpu=2000), node("n2", cpu=2000)]
    bound = [
        pod("a", "a", cpu=1000, priority=3, on="n1"),
        pod("b", "b", cpu=1000, priority=3, on="n1"),
        pod("c", "c", cpu=1000, priority=3, on="n2"),
        pod("d", "d", cpu=1000, priority=1, on="n2"),
    ]
    result = reference_place([pod("p", cpu=2000, priority=10)], nodes, bound)
    assert result.preemptions == {"default/p": preempting("n2", "default/c", "default/d")}
    bound = [
        pod("a", "a", cpu=1000, priority=2, on="n1"),
        pod("b", "b", cpu=1000, priority=0, on="n1"),
        pod("c", "c", cpu=2000, priority=2, on="n2"),
    ]
    result = reference_place([pod("p", cpu=2000, priority=10)], nodes, bound)
    assert result.preemptions == {"default/p": preempting("n2", "default/c")}


def test_preemption_ties_go_to_the_first_node() -> None:
    nodes = [node("n1", cpu=1000), node("n2", cpu=1000)]
    bound = [pod("a", "a", cpu=1000, on="n2"), pod("b", "b", cpu=1000, on="n1")]
    result = reference_place([pod("p", cpu=1000, priority=10)], nodes, bound)
    assert result.preemptions == {"default/p": preempting("n1", "default/b")}


def test_the_reprieve_keeps_the_highest_priority_pods_that_can_stay() -> None:
    bound = [
        pod("a", "a", cpu=1000, priority=1, on="n1"),
        pod("b", "b", cpu=1000, priority=3, on="n1"),
        pod("c", "c", cpu=1000, priority=2, on="n1"),
    ]
    result = reference_place([pod("p", cpu=1000, priority=10)], [node("n1", cpu=3000)], bound)
    assert result.preemptions == {"default/p": preempting("n1", "default/a")}


def test_victims_are_listed_in_reprieve_order() -> None:
    bound = [
        pod("a", "a", cpu=1000, priority=1, on="n1"),
        pod("b", "b", cpu=1000, priority=3, on="n1"),
        pod("c", "c", cpu=1000, priority=2, on="n1"),
    ]
    result = reference_place([pod("p", cpu=3000, priority=10)], [node("n1", cpu=3000)], bound)
    assert result.preemptions == {"default/p": preempting("n1", "default/b", "default/c", "default/a")}


def test_preemption_avoids_nodes_whose_victims_would_violate_a_budget() -> None:
    nodes = [node("n1", cpu=1000), node("n2", cpu=1000)]
    bound = [pod("d", "db", cpu=1000, on="n1"), pod("w", "web", cpu=1000, on="n2")]
    p = pod("p", "p", cpu=1000, priority=10)
    assert reference_place([p], nodes, bound).preemptions == {"default/p": preempting("n1", "default/d")}
    budget = DisruptionBudget("default", "db", app("db"), allowed=0)
    result = reference_place([p], nodes, bound, budgets=[budget])
    assert result.preemptions == {"default/p": preempting("n2", "default/w")}
    elsewhere = DisruptionBudget("other", "db", app("db"), allowed=0)
    assert reference_place([p], nodes, bound, budgets=[elsewhere]).preemptions == {
        "default/p": preempting("n1", "default/d")
    }


def test_a_budget_is_violated_only_beyond_the_disruptions_it_allows() -> None:
    nodes = [node("n1", cpu=2000), node("n2", cpu=2000)]
    bound = [
        pod("d1", "db", cpu=1000, on="n1"),
        pod("d2", "db", cpu=1000, on="n1"),
        pod("w", "web", cpu=2000, priority=1, on="n2"),
    ]
    p = pod("p", "p", cpu=2000, priority=10)
    one = DisruptionBudget("default", "db", app("db"), allowed=1)
    assert reference_place([p], nodes, bound, budgets=[one]).preemptions == {
        "default/p": preempting("n2", "default/w")
    }
    two = DisruptionBudget("default", "db", app("db"), allowed=2)
    assert reference_place([p], nodes, bound, budgets=[two]).preemptions == {
        "default/p": preempting("n1", "default/d1", "default/d2")
    }


def test_a_budget_violated_anyway_still_allows_preemption() -> None:
    budget = DisruptionBudget("default", "db", app("db"), allowed=0)
    result = reference_place(
        [pod("p", "p", cpu=1000, priority=10)],
        [node("n1", cpu=1000)],
        [pod("d", "db", cpu=1000, on="n1")],
        budgets=[budget],
    )
    assert result.preemptions == {"default/p": preempting("n1", "default/d")}


def test_the_reprieve_puts_pods_protected_by_a_budget_back_first() -> None:
    bound = [pod("w", "web", cpu=1000, on="n1"), pod("d", "db", cpu=1000, on="n1")]
    p = pod("p", "p", cpu=1000, priority=10)
    nodes = [node("n1", cpu=2000)]
    assert reference_place([p], nodes, bound).preemptions == {"default/p": preempting("n1", "default/d")}
    budget = DisruptionBudget("default", "db", app("db"), allowed=0)
    assert reference_place([p], nodes, bound, budgets=[budget]).preemptions == {
        "default/p": preempting("n1", "default/w")
    }


def test_terminating_pods_are_free_room_and_never_victims() -> None:
    nodes = [node("n1", cpu=1000), node("n2", cpu=1000)]
    bound = [pod("v", "v", cpu=1000, on="n1"), pod("t", "t", cpu=1000, on="n2", terminating=True)]
    result = reference_place([pod("p", cpu=1000, priority=10)], nodes, bound)
    assert result.preemptions == {"default/p": preempting("n2")}
    assert result.unschedulable == {
        "default/p": "0/2 nodes: 2 insufficient cpu; waiting for terminating pods to leave n2"
    }


def test_a_terminating_pod_counts_as_removed_but_not_as_a_victim() -> None:
    bound = [pod("t", "t", cpu=1000, on="n1", terminating=True), pod("v", "v", cpu=1000, on="n1")]
    result = reference_place([pod("p", cpu=2000, priority=10)], [node("n1", cpu=2000)], bound)
    assert result.preemptions == {"default/p": preempting("n1", "default/v")}


def test_a_pod_kept_off_by_affinity_or_spread_does_not_preempt() -> None:
    low = [pod("d", "db", cpu=1000, on="n1")]
    away = pod("p", cpu=1000, priority=10, affinity=Affinity(anti_required=(term(app("db")),)))
    result = reference_place([away], [node("n1", cpu=1000)], low)
    assert result.unschedulable == {"default/p": "0/1 nodes: 1 insufficient cpu"}
    assert not result.preemptions
    near = pod("p", cpu=1000, priority=10, affinity=Affinity(pod_required=(term(app("cache")),)))
    assert not reference_place([near], [node("n1", cpu=1000)], low).preemptions


def test_a_preempting_pod_holds_its_room_for_the_rest_of_the_run() -> None:
    """p takes 1000 of the 3000 its victim will free, and the victim keeps its 3000 until it
    is gone: m1 waits for it too (the 2000 left once it is gone), m2 finds no room at all."""
    pending = [
        pod("p", "p", cpu=1000, priority=100),
        pod("m1", "m", cpu=2000, priority=50),
        pod("m2", "m", cpu=1000, priority=50),
    ]
    result = reference_place(pending, [node("n1", cpu=3000)], [pod("low", "low", cpu=3000, on="n1")])
    assert result.assigned == {}
    assert result.preemptions == {
        "default/p": preempting("n1", "default/low"),
        "default/m1": preempting("n1"),
    }
    assert result.unschedulable[PodId("default/m1")].endswith("; waiting for terminating pods to leave n1")
    assert result.unschedulable[PodId("default/m2")] == "0/1 nodes: 1 insufficient cpu"


def test_a_preempting_pod_holds_a_pod_slot_and_its_host_ports() -> None:
    port = (ContainerPort(80, host_port=8080),)
    nodes = [node("n1", max_pods=1)]
    pending = [pod("p", "p", priority=100, ports=port), pod("q", "q", priority=50)]
    result = reference_place(pending, nodes, [pod("low", "low", on="n1")])
    assert result.preemptions == {"default/p": preempting("n1", "default/low")}
    assert result.unschedulable[PodId("default/q")] == "0/1 nodes: 1 too many pods"
    # Without p's port held, q would prefer n1 (3000 of 4000 cpu free) to n2 (100 of 1000).
    nodes = [node("n1"), node("n2", cpu=1000)]
    bound = [pod("low", "low", cpu=4000, on="n1"), pod("x", "other", cpu=900, on="n2")]
    pending = [
        pod("p", "p", cpu=1000, priority=100, ports=port),
        pod("q", "q", cpu=0, priority=50, ports=port),
    ]
    result = reference_place(pending, nodes, bound)
    assert result.preemptions == {"default/p": preempting("n1", "default/low")}
    assert result.assigned == {"default/q": "n2"}
    assert reference_place(pending[1:], nodes, [bound[1]]).assigned == {"default/q": "n1"}


def test_a_victim_is_not_preempted_twice_and_its_budget_stays_spent() -> None:
    """p1 takes d1 (the budget's one disruption); for p2 the budget is spent, so d2 would
    violate it, and the higher-priority c on n3 is preferred; d1 is never taken again."""
    nodes = [node("n1", cpu=1000), node("n2", cpu=1000), node("n3", cpu=1000)]
    bound = [
        pod("d1", "db", cpu=1000, on="n1"),
        pod("d2", "db", cpu=1000, on="n2"),
        pod("c", "c", cpu=1000, priority=5, on="n3"),
    ]
    pending = [pod("p1", "p", cpu=1000, priority=10), pod("p2", "p", cpu=1000, priority=10)]
    budget = DisruptionBudget("default", "db", app("db"), allowed=1)
    result = reference_place(pending, nodes, bound, budgets=[budget])
    assert result.preemptions == {
        "default/p1": preempting("n1", "default/d1"),
        "default/p2": preempting("n3", "default/c"),
    }
