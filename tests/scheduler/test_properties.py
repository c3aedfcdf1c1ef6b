"""Property tests: the fast scheduler agrees with its slow twin, and never over-commits.

Random clusters carry every kind of rule docs/scheduler.md has: labels (hostname, zone,
disk, an integer rank), taints, tolerations, capacities including 0, not-ready nodes,
bound pods on known and unknown nodes (some terminating), several templates per owner in
two namespaces, and per template random node affinity (required and preferred), pod
affinity and anti-affinity (required and preferred, by hostname or zone, with namespaces
and namespace selectors), topology spread (hard and soft, with minDomains and inclusion
policies), priorities, preemption policies and disruption budgets. A third of the
clusters are crowded with low-priority batch pods, so that preemption is common.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import NamedTuple, TypeVar
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from gitops.model import (
    Affinity,
    ContainerPort,
    DisruptionBudget,
    LabelSelector,
    Node,
    NodeName,
    NodeSelectorTerm,
    ObjectKey,
    Placements,
    Pod,
    PodAffinityTerm,
    PodId,
    PodName,
    PodSpec,
    PreferredNodeTerm,
    Requirement,
    Taint,
    Toleration,
    TopologySpreadConstraint,
    Volume,
    WeightedPodAffinityTerm,
)
from gitops.scheduler import Cluster, place, place_on
from tests.scheduler.reference import (
    namespace_labels,
    node_term_matches,
    reference_place,
    reference_tolerates,
    term_selects,
)
from tests.specs import pod_spec

HOSTNAME = "kubernetes.io/hostname"
ZONE = "topology.kubernetes.io/zone"
NAMESPACES = ["default", "other"]
CLAIMS = ["default/c0", "default/c1"]
T = TypeVar("T")


class Case(NamedTuple):
    pending: list[Pod]
    nodes: list[Node]
    bound: list[Pod]
    claims: dict[str, NodeName]
    namespaces: dict[str, tuple[tuple[str, str], ...]]
    budgets: list[DisruptionBudget]

    def place(self, *, explain_placements: bool = False) -> Placements:
        return place(
            self.pending,
            self.nodes,
            self.bound,
            self.claims,
            namespaces=self.namespaces,
            budgets=self.budgets,
            explain_placements=explain_placements,
        )

    def reference(self) -> Placements:
        return reference_place(
            self.pending,
            self.nodes,
            self.bound,
            self.claims,
            namespaces=self.namespaces,
            budgets=self.budgets,
        )


# --- nodes ----------------------------------------------------------------------------

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
# Few distinct sizes make ties (and so the tie-break) common; 0 capacity is allowed.
capacities = st.one_of(st.sampled_from([0, 1000, 2000, 4000, 8000]), st.integers(0, 8000))
NODE_VALUES = {ZONE: ["a", "b", "c"], "disk": ["ssd", "hdd"], "rank": ["1", "5", "10", "x"]}


@st.composite
def node_labels(draw: st.DrawFn, name: str) -> tuple[tuple[str, str], ...]:
    """Agents' labels (hostname, most of the time; a zone, often) and a few of our own."""
    labels: dict[str, str] = {}
    if draw(st.integers(0, 9)) > 0:
        labels[HOSTNAME] = name
    for key, values in NODE_VALUES.items():
        if draw(st.booleans()):
            labels[key] = draw(st.sampled_from(values))
    return tuple(sorted(labels.items()))


# --- scheduling constraints ------------------------------------------------------------
#
# Drawn from small vocabularies of whole values (one draw each), which keeps generation
# fast and makes pods, terms and nodes match each other often.

POD_VALUES = {"app": ["a", "b", "c"], "tier": ["x", "y"]}
pod_labels = st.fixed_dictionaries(
    {}, optional={key: st.sampled_from(values) for key, values in POD_VALUES.items()}
).map(lambda d: tuple(sorted(d.items())))

SELECTORS = [
    None,
    LabelSelector(),
    LabelSelector((("app", "a"),)),
    LabelSelector((("app", "b"),)),
    LabelSelector((("tier", "x"),)),
    LabelSelector((("app", "a"), ("tier", "x"))),
    LabelSelector(expressions=(Requirement("app", "In", ("a", "b")),)),
    LabelSelector(expressions=(Requirement("app", "NotIn", ("a",)),)),
    LabelSelector(expressions=(Requirement("tier", "Exists"),)),
    LabelSelector((("app", "c"),), (Requirement("tier", "DoesNotExist"),)),
]
selectors = st.sampled_from(SELECTORS)

NODE_REQUIREMENTS = [
    Requirement(ZONE, "In", ("a",)),
    Requirement(ZONE, "In", ("b", "c")),
    Requirement(ZONE, "NotIn", ("a",)),
    Requirement(ZONE, "Exists"),
    Requirement("disk", "In", ("ssd",)),
    Requirement("disk", "DoesNotExist"),
    Requirement("rank", "Gt", ("1",)),
    Requirement("rank", "Gt", ("x",)),
    Requirement("rank", "Lt", ("10",)),
    Requirement("rank", "Lt", ("5", "10")),  # more than one value: never holds
    Requirement(HOSTNAME, "In", ("n0", "n1")),
    Requirement(HOSTNAME, "NotIn", ("n2",)),
]
FIELD_REQUIREMENTS = [
    Requirement("metadata.name", "In", ("n0", "n2")),
    Requirement("metadata.name", "NotIn", ("n1",)),
    Requirement("metadata.uid", "Exists"),
]
node_terms = st.builds(
    NodeSelectorTerm,
    st.lists(st.sampled_from(NODE_REQUIREMENTS), max_size=2).map(tuple),
    st.sampled_from([(), (), (), *((f,) for f in FIELD_REQUIREMENTS)]),
)
pod_terms = st.builds(
    PodAffinityTerm,
    selectors,
    st.sampled_from([HOSTNAME, ZONE]),
    st.sampled_from([(), (), ("default",), ("other",), ("default", "other")]),
    st.sampled_from(
        [
            None,
            None,
            LabelSelector(),
            LabelSelector((("team", "t1"),)),
            LabelSelector((("kubernetes.io/metadata.name", "other"),)),
        ]
    ),
)
weighted_terms = st.builds(WeightedPodAffinityTerm, st.integers(1, 100), pod_terms)


def resolved(terms: list[PodAffinityTerm], namespace: str) -> tuple[PodAffinityTerm, ...]:
    """As the schemas resolve a term: its pod's namespace when it names none and has no selector."""
    return tuple(
        dataclasses.replace(t, namespaces=(namespace,))
        if not t.namespaces and t.namespace_selector is None
        else t
        for t in terms
    )


def sometimes(strategy: st.SearchStrategy[list[T]], one_in: int) -> st.SearchStrategy[list[T]]:
    """`strategy`'s lists about once in `one_in` draws, else none: each kind of rule is
    common enough to be exercised, rare enough that pods still fit somewhere."""
    return st.integers(1, one_in).flatmap(lambda roll: strategy if roll == 1 else st.just([]))


@st.composite
def affinities(draw: st.DrawFn, namespace: str) -> Affinity:
    if draw(st.booleans()):
        return Affinity()
    required_nodes = draw(sometimes(st.lists(node_terms, min_size=1, max_size=2), 3))

    def weighted(terms: list[WeightedPodAffinityTerm]) -> tuple[WeightedPodAffinityTerm, ...]:
        return tuple(
            WeightedPodAffinityTerm(w.weight, term)
            for w, term in zip(terms, resolved([w.term for w in terms], namespace), strict=True)
        )

    return Affinity(
        node_required=tuple(required_nodes) if required_nodes else None,
        node_preferred=tuple(
            draw(
                sometimes(
                    st.lists(st.builds(PreferredNodeTerm, st.integers(1, 100), node_terms), max_size=2), 2
                )
            )
        ),
        pod_required=resolved(draw(sometimes(st.lists(pod_terms, max_size=1), 3)), namespace),
        pod_preferred=weighted(draw(sometimes(st.lists(weighted_terms, max_size=2), 2))),
        anti_required=resolved(draw(sometimes(st.lists(pod_terms, max_size=2), 3)), namespace),
        anti_preferred=weighted(draw(sometimes(st.lists(weighted_terms, max_size=1), 2))),
    )


spread_constraints = st.builds(
    TopologySpreadConstraint,
    st.integers(1, 2),
    st.sampled_from([HOSTNAME, ZONE]),
    st.sampled_from(["DoNotSchedule", "ScheduleAnyway"]),
    selectors,
    st.integers(1, 3),
    st.sampled_from(["Honor", "Ignore"]),
    st.sampled_from(["Honor", "Ignore"]),
)

# Few hostPorts, so that pods of different owners and protocols compete for them.
host_ports = st.builds(
    ContainerPort,
    st.sampled_from([80, 8080]),
    st.sampled_from(["TCP", "TCP", "UDP"]),
    st.just(""),
    st.sampled_from([0, 0, 80, 53]),
)
requests = st.one_of(st.sampled_from([0, 0, 500, 1000]), st.integers(0, 1500))
node_selectors = st.sampled_from([(), (), (), (), (), ((ZONE, "a"),), ((ZONE, "b"),), (("disk", "ssd"),)])


@st.composite
def clusters(draw: st.DrawFn) -> Case:
    # A third of the clusters are crowded: ready nodes full of low-priority batch pods, and
    # pending pods of higher priority, so that preemption is common there.
    crowded = draw(st.integers(0, 2)) == 0
    nodes = []
    for i in range(draw(st.integers(0, 8))):
        name = NodeName(f"n{i}")
        nodes.append(
            Node(
                name,
                cpu_milli=draw(capacities),
                memory_bytes=draw(capacities),
                labels=draw(node_labels(name)),
                taints=tuple(draw(sometimes(st.lists(taints, max_size=2, unique=True), 3))),
                ready=crowded or draw(st.sampled_from([True, True, True, True, True, False])),
                max_pods=draw(st.sampled_from([0, 1, 2, 4, 6, 110, 110])),
            )
        )
    # Two templates may share an owner: they spread together but are separate classes.
    classes: list[tuple[ObjectKey, str, PodSpec, tuple[tuple[str, str], ...]]] = []
    for c in range(draw(st.integers(1, 4))):
        namespace = (
            draw(st.sampled_from(["default", "default", "other"])) if c % 2 == 0 else classes[-1][0].namespace
        )
        spec = pod_spec(
            image="x",
            cpu_request_milli=draw(requests),
            memory_request_bytes=draw(requests),
            node_selector=draw(node_selectors),
            tolerations=tuple(draw(st.lists(tolerations, max_size=2))),
            ports=tuple(draw(sometimes(st.lists(host_ports, max_size=2), 3))),
            volumes=tuple(
                Volume(f"v{i}", claim=claim)
                for i, claim in enumerate(
                    draw(sometimes(st.lists(st.sampled_from(CLAIMS), max_size=2, unique=True), 4))
                )
            ),
            # A DaemonSet's pod names its node (sometimes one that is not registered).
            node_name=draw(st.sampled_from(["", "", "", "", "", "", "", "", "", "", "n0", "gone"])),
            affinity=draw(affinities(namespace)),
            topology_spread=tuple(draw(sometimes(st.lists(spread_constraints, max_size=2), 2))),
            priority=draw(st.sampled_from([10, 100] if crowded else [0, 0, 10, 100])),
            preemption_policy=draw(
                st.sampled_from(["PreemptLowerPriority", "PreemptLowerPriority", "Never"])
            ),
        )
        owner = ObjectKey("Deployment", namespace, f"d{c // 2}")
        classes.append((owner, f"h{c}", spec, draw(pod_labels)))

    def make(name: str, node: NodeName | None) -> Pod:
        # One draw: the class, and whether the pod gets an equal spec that is not the same object.
        choice = draw(st.integers(0, 2 * len(classes) - 1))
        owner, template, spec, labels = classes[choice // 2]
        if choice % 2:
            spec = pod_spec(**{f: getattr(spec, f) for f in spec.__dataclass_fields__})
        terminating = node is not None and draw(st.integers(0, 3)) == 0
        return Pod(
            owner.namespace,
            PodName(name),
            owner,
            template,
            spec,
            labels=labels,
            node=node,
            terminating_at=100.0 if terminating else None,
        )

    pending = [make(f"p{i}", None) for i in range(draw(st.integers(0, 20)))]
    places = [n.name for n in nodes] + [NodeName("gone")]
    bound = [make(f"b{i}", draw(st.sampled_from(places))) for i in range(draw(st.integers(0, 12)))]
    # Low-priority batch pods filling nodes, which pods of higher priority may preempt.
    for i in range(draw(st.sampled_from([4, 8, 12] if crowded else [0, 0, 2, 4]))):
        namespace = draw(st.sampled_from(NAMESPACES))
        spec = pod_spec(
            image="batch",
            cpu_request_milli=draw(requests),
            memory_request_bytes=draw(requests),
            ports=tuple(draw(sometimes(st.lists(host_ports, max_size=1), 3))),
            priority=draw(st.sampled_from([-10, 0, 5])),
        )
        terminating = draw(st.integers(0, 3)) == 0
        bound.append(
            Pod(
                namespace,
                PodName(f"batch{i}"),
                ObjectKey("Job", namespace, f"batch{i % 3}"),
                f"batch{i}",
                spec,
                labels=draw(pod_labels),
                node=draw(st.sampled_from(places)),
                terminating_at=100.0 if terminating else None,
            )
        )
    claims = draw(st.dictionaries(st.sampled_from(CLAIMS), st.sampled_from(places), max_size=2))
    namespaces = draw(
        st.dictionaries(
            st.sampled_from(NAMESPACES), st.sampled_from([(), (("team", "t1"),), (("team", "t2"),)])
        )
    )
    budgets = [
        DisruptionBudget(
            draw(st.sampled_from(NAMESPACES)), f"pdb{i}", draw(selectors), draw(st.integers(0, 1))
        )
        for i in range(draw(st.integers(0, 2)))
    ]
    return Case(pending, nodes, bound, claims, namespaces, budgets)


# --- the properties --------------------------------------------------------------------


@settings(max_examples=250, deadline=None)
@given(clusters())
def test_fast_placement_equals_the_reference(case: Case) -> None:
    assert case.place() == case.reference()


@settings(max_examples=200, deadline=None)
@given(clusters())
def test_a_pod_naming_its_node_is_placed_as_its_class_would_place_it(case: Case) -> None:
    # The check at the named node alone (`_fits_where_named`) against the class over every
    # node it stands in for, with the reasons for each pick (the reference gives none).
    placing = sys.modules["gitops.scheduler.place"]  # (the package's `place` is the function)
    fast = case.place(explain_placements=True)
    with mock.patch.object(placing, "_fits_where_named", lambda usage, pod: None):
        assert case.place(explain_placements=True) == fast


@settings(max_examples=50, deadline=None)
@given(clusters())
def test_a_cluster_can_be_reused_and_placement_is_deterministic(case: Case) -> None:
    cluster = Cluster.build(case.nodes, case.bound, case.claims)
    first = place_on(cluster, case.pending)
    assert place_on(cluster, case.pending) == first
    assert place(case.pending, case.nodes, case.bound, case.claims) == first


def check_invariants(result: Placements, case: Case) -> None:
    pending, nodes, bound, claims = case.pending, case.nodes, case.bound, case.claims
    by_name = {n.name: n for n in nodes}
    by_id = {p.id: p for p in pending}
    on_nodes = [p for p in bound if p.node in by_name]
    node_of: dict[PodId, Node] = {p.id: by_name[p.node] for p in on_nodes if p.node is not None}

    # Every pod is answered exactly once; a preempting pod is one that fits nowhere yet.
    assert set(result.assigned) | set(result.unschedulable) == set(by_id)
    assert not set(result.assigned) & set(result.unschedulable)
    assert set(result.preemptions) <= set(result.unschedulable)

    # Every pod using a claim is where the claim's volume is: all on one node.
    holders = dict(claims)
    for p in on_nodes:
        for claim in p.spec.claims:
            holders.setdefault(claim, node_of[p.id].name)
    for p in pending:
        if p.id in result.assigned:
            for claim in p.spec.claims:
                assert holders.setdefault(claim, result.assigned[p.id]) == result.assigned[p.id]

    # Preemption takes only running bound pods of lower priority, each at most once.
    victims: set[PodId] = set()
    bound_by_id = {p.id: p for p in on_nodes}
    for pod_id, preemption in result.preemptions.items():
        preemptor = by_id[pod_id]
        assert preemptor.spec.preemption_policy != "Never"
        for victim_id in preemption.victims:
            victim = bound_by_id[victim_id]
            assert victim.node == preemption.node
            assert victim.spec.priority < preemptor.spec.priority
            assert victim.terminating_at is None
            assert victim_id not in victims
            victims.add(victim_id)
        ids = ", ".join(preemption.victims)
        tail = (
            f"; preempting {len(preemption.victims)} pod(s) on {preemption.node}: {ids}"
            if preemption.victims
            else f"; waiting for terminating pods to leave {preemption.node}"
        )
        assert result.unschedulable[pod_id].endswith(tail)

    # No node is over-committed by what was placed or is held for a preempting pod, once
    # the victims (and, where a pod preempts, the terminating pods) are gone.
    for n in nodes:
        mine = [by_id[i] for i, where in result.assigned.items() if where == n.name]
        held = [by_id[i] for i, p in result.preemptions.items() if p.node == n.name]
        if not mine and not held:
            continue
        staying = [p for p in on_nodes if p.node == n.name and p.id not in victims]
        if held:
            staying = [p for p in staying if p.terminating_at is None]
        admitted = mine + held
        pods = admitted + staying
        # Bound pods may over-commit already; a placed pod with a request must still fit.
        if any(p.spec.cpu_request_milli for p in admitted):
            assert sum(p.spec.cpu_request_milli for p in pods) <= n.cpu_milli
        if any(p.spec.memory_request_bytes for p in admitted):
            assert sum(p.spec.memory_request_bytes for p in pods) <= n.memory_bytes
        assert len(pods) <= n.max_pods
        assert n.ready
        # A pod placed in the run fits beside every pod there now: victims and terminating
        # pods hold their room until they are gone.
        present = mine + [p for p in on_nodes if p.node == n.name]
        if any(p.spec.cpu_request_milli for p in mine):
            assert sum(p.spec.cpu_request_milli for p in present) <= n.cpu_milli
        if any(p.spec.memory_request_bytes for p in mine):
            assert sum(p.spec.memory_request_bytes for p in present) <= n.memory_bytes
        assert not mine or len(present) <= n.max_pods
        for p in admitted:  # it shares none of its hostPorts with another pod there
            others = {c for q in pods if q is not p for c in q.spec.host_port_claims}
            assert not set(p.spec.host_port_claims) & others
        for p in admitted:
            assert all(n.label_map.get(k) == v for k, v in p.spec.node_selector)
            assert all(
                reference_tolerates(p.spec.tolerations, t)
                for t in n.taints
                if t.effect in ("NoSchedule", "NoExecute")
            )
            required = p.spec.affinity.node_required
            assert required is None or any(node_term_matches(t, n.name, n.label_map) for t in required)

    # Required pod (anti-)affinity holds among the pods in the cluster at the end: bound
    # ones on registered nodes and placed ones (both ways for anti-affinity).
    for p in pending:
        if p.id in result.assigned:
            node_of[p.id] = by_name[result.assigned[p.id]]
    cluster = on_nodes + [by_id[i] for i in result.assigned]

    def selects(term: PodAffinityTerm, q: Pod) -> bool:
        return term_selects(term, q.namespace, q.label_map, namespace_labels(q.namespace, case.namespaces))

    def together(a: Pod, b: Pod, key: str) -> bool:
        value = node_of[a.id].label_map.get(key)
        return value is not None and value == node_of[b.id].label_map.get(key)

    for p in (by_id[i] for i in result.assigned):
        for term in p.spec.affinity.pod_required:
            assert term.topology_key in node_of[p.id].label_map
        for q in cluster:
            if q is p:
                continue
            for term in p.spec.affinity.anti_required:
                assert not (selects(term, q) and together(p, q, term.topology_key))
            for term in q.spec.affinity.anti_required:
                assert not (selects(term, p) and together(p, q, term.topology_key))


@settings(max_examples=200, deadline=None)
@given(clusters())
def test_the_reference_keeps_the_invariants(case: Case) -> None:
    check_invariants(case.reference(), case)


@settings(max_examples=100, deadline=None)
@given(clusters())
def test_no_node_is_overcommitted_and_every_pod_is_answered(case: Case) -> None:
    check_invariants(case.place(), case)


def test_the_reference_answers_an_empty_call() -> None:
    assert reference_place([], [], []) == Placements()


@settings(max_examples=100, deadline=None)
@given(clusters())
def test_the_clusters_columns_count_each_bound_pod_on_its_node(case: Case) -> None:
    # `Cluster.build` sums the pods' requests by node with numpy; here pod by pod.
    cluster = Cluster.build(case.nodes, case.bound, case.claims)
    index = {n.name: i for i, n in enumerate(case.nodes)}
    cpu = [n.cpu_milli for n in case.nodes]
    memory = [n.memory_bytes for n in case.nodes]
    pods = [n.max_pods for n in case.nodes]
    owners: dict[tuple[ObjectKey, str], list[int]] = {}
    ports: dict[tuple[int, str], list[bool]] = {}
    holders = {claim: index.get(node, -1) for claim, node in case.claims.items()}
    on_nodes = []
    for p in case.bound:
        i = index.get(p.node) if p.node is not None else None
        if i is None:
            continue
        on_nodes.append((i, p))
        cpu[i] -= p.spec.cpu_request_milli
        memory[i] -= p.spec.memory_request_bytes
        pods[i] -= 1
        owners.setdefault((p.owner, p.template_hash), [0] * len(case.nodes))[i] += 1
        for claim in p.spec.host_port_claims:
            ports.setdefault(claim, [False] * len(case.nodes))[i] = True
        for claim in p.spec.claims:
            holders.setdefault(claim, i)
    assert cluster.cpu_free.tolist() == cpu
    assert cluster.memory_free.tolist() == memory
    assert cluster.pods_free.tolist() == pods
    assert {k: v.tolist() for k, v in cluster.owner_pods.items()} == owners
    assert {k: v.tolist() for k, v in cluster.host_ports.items()} == ports
    assert dict(cluster.claim_nodes) == holders
    assert list(cluster.pods) == on_nodes
    assert not any(v.flags.writeable for v in (*cluster.owner_pods.values(), *cluster.host_ports.values()))
