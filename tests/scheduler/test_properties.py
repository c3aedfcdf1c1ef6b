"""Property tests: the fast scheduler agrees with its slow twin, and never over-commits."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gitops.model import (
    ContainerPort,
    Node,
    NodeName,
    ObjectKey,
    Placements,
    Pod,
    PodName,
    Taint,
    Toleration,
    Volume,
)
from gitops.scheduler import Cluster, place, place_on
from tests.scheduler.reference import reference_place, reference_tolerates
from tests.specs import pod_spec

Case = tuple[list[Pod], list[Node], list[Pod], dict[str, NodeName]]
CLAIMS = ["default/c0", "default/c1"]

KEYS = ["zone", "disk"]
VALUES = ["a", "b"]
taints = st.builds(
    Taint,
    st.sampled_from(["dedicated", "spot"]),
    st.sampled_from(["", "x"]),
    st.sampled_from(["NoSchedule", "PreferNoSchedule", "NoExecute"]),
)
tolerations = st.builds(
    Toleration,
    st.sampled_from(["", "dedicated", "spot"]),
    st.sampled_from(["Equal", "Exists"]),
    st.sampled_from(["", "x"]),
    st.sampled_from(["", "NoSchedule", "PreferNoSchedule", "NoExecute"]),
)
label_sets = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=2).map(
    lambda d: tuple(sorted(d.items()))
)
# Few distinct sizes make ties (and so the tie-break) common; 0 capacity is allowed.
capacities = st.one_of(st.sampled_from([0, 1000, 2000, 4000]), st.integers(0, 4000))
# Few hostPorts, so that pods of different owners and protocols compete for them.
host_ports = st.builds(
    ContainerPort,
    st.sampled_from([80, 8080]),
    st.sampled_from(["TCP", "TCP", "UDP"]),
    st.just(""),
    st.sampled_from([0, 0, 80, 53]),
)
requests = st.one_of(st.sampled_from([0, 0, 500, 1000]), st.integers(0, 1500))


@st.composite
def clusters(draw: st.DrawFn) -> Case:
    nodes = [
        Node(
            NodeName(f"n{i}"),
            cpu_milli=draw(capacities),
            memory_bytes=draw(capacities),
            labels=draw(label_sets),
            taints=tuple(draw(st.lists(taints, max_size=2, unique=True))),
            ready=draw(st.sampled_from([True, True, True, False])),
            max_pods=draw(st.integers(0, 6)),
        )
        for i in range(draw(st.integers(0, 8)))
    ]
    # Two templates may share an owner: they spread together but are separate classes.
    classes = [
        (
            ObjectKey("Deployment", "default", f"d{c // 2}"),
            f"h{c}",
            pod_spec(
                image="x",
                cpu_request_milli=draw(requests),
                memory_request_bytes=draw(requests),
                node_selector=draw(label_sets),
                tolerations=tuple(draw(st.lists(tolerations, max_size=2))),
                ports=tuple(draw(st.lists(host_ports, max_size=2))),
                volumes=tuple(
                    Volume(f"v{i}", claim=claim)
                    for i, claim in enumerate(
                        draw(st.lists(st.sampled_from(CLAIMS), max_size=2, unique=True))
                    )
                ),
                # A DaemonSet's pod names its node (sometimes one that is not registered).
                node_name=draw(st.sampled_from(["", "", "", "n0", "n1", "gone"])),
            ),
        )
        for c in range(draw(st.integers(1, 4)))
    ]

    def make(name: str, node: NodeName | None) -> Pod:
        owner, template, spec = classes[draw(st.integers(0, len(classes) - 1))]
        if draw(st.booleans()):  # an equal spec that is not the same object
            spec = pod_spec(**{f: getattr(spec, f) for f in spec.__dataclass_fields__})
        return Pod("default", PodName(name), owner, template, spec, node=node)

    pending = [make(f"p{i}", None) for i in range(draw(st.integers(0, 25)))]
    places = [n.name for n in nodes] + [NodeName("gone")]
    bound = [make(f"b{i}", draw(st.sampled_from(places))) for i in range(draw(st.integers(0, 12)))]
    claims = draw(st.dictionaries(st.sampled_from(CLAIMS), st.sampled_from(places), max_size=2))
    return pending, nodes, bound, claims


@settings(max_examples=400, deadline=None)
@given(clusters())
def test_fast_placement_equals_the_reference(case: Case) -> None:
    pending, nodes, bound, claims = case
    assert place(pending, nodes, bound, claims) == reference_place(pending, nodes, bound, claims)


@settings(max_examples=100, deadline=None)
@given(clusters())
def test_a_cluster_can_be_reused_and_placement_is_deterministic(case: Case) -> None:
    pending, nodes, bound, claims = case
    cluster = Cluster.build(nodes, bound, claims)
    first = place_on(cluster, pending)
    assert place_on(cluster, pending) == first
    assert place(pending, nodes, bound, claims) == first


def check_invariants(result: Placements, case: Case) -> None:
    pending, nodes, bound, claims = case
    # Every pod using a claim is where the claim's volume is: all on one node.
    known = {n.name for n in nodes}
    holders = dict(claims)
    for p in bound:
        if p.node in known:
            for claim in p.spec.claims:
                holders.setdefault(claim, p.node)
    for p in pending:
        if p.id in result.assigned:
            for claim in p.spec.claims:
                assert holders.setdefault(claim, result.assigned[p.id]) == result.assigned[p.id]
    assert set(result.assigned) | set(result.unschedulable) == {p.id for p in pending}
    assert not set(result.assigned) & set(result.unschedulable)
    by_id = {p.id: p for p in pending}
    for n in nodes:
        mine = [by_id[i] for i, where in result.assigned.items() if where == n.name]
        if not mine:
            continue
        pods = mine + [p for p in bound if p.node == n.name]
        # Bound pods may over-commit already; a placed pod with a request must still fit.
        if any(p.spec.cpu_request_milli for p in mine):
            assert sum(p.spec.cpu_request_milli for p in pods) <= n.cpu_milli
        if any(p.spec.memory_request_bytes for p in mine):
            assert sum(p.spec.memory_request_bytes for p in pods) <= n.memory_bytes
        assert len(pods) <= n.max_pods
        assert n.ready
        for p in mine:  # a placed pod shares none of its hostPorts with another pod there
            others = {c for q in pods if q is not p for c in q.spec.host_port_claims}
            assert not set(p.spec.host_port_claims) & others
        for p in mine:
            assert all(n.label_map.get(k) == v for k, v in p.spec.node_selector)
            assert all(
                reference_tolerates(p.spec.tolerations, t)
                for t in n.taints
                if t.effect in ("NoSchedule", "NoExecute")
            )


@settings(max_examples=300, deadline=None)
@given(clusters())
def test_no_node_is_overcommitted_and_every_pod_is_answered(case: Case) -> None:
    check_invariants(place(*case), case)
