"""Property tests: the fast scheduler agrees with its slow twin, and never over-commits."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gitops.model import Node, NodeName, ObjectKey, Pod, PodName, PodSpec, Taint, Toleration
from gitops.scheduler import place, tolerates
from tests.scheduler.reference import reference_place

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
    st.sampled_from(["", "NoSchedule", "NoExecute"]),
)
label_sets = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=2).map(
    lambda d: tuple(sorted(d.items()))
)


@st.composite
def clusters(draw: st.DrawFn) -> tuple[list[Pod], list[Node], list[Pod]]:
    nodes = [
        Node(
            NodeName(f"n{i}"),
            cpu_milli=draw(st.integers(0, 4000)),
            memory_bytes=draw(st.integers(0, 4096)),
            labels=draw(label_sets),
            taints=tuple(draw(st.lists(taints, max_size=2, unique=True))),
            ready=draw(st.booleans()),
            max_pods=draw(st.integers(0, 6)),
        )
        for i in range(draw(st.integers(0, 6)))
    ]
    classes = [
        (
            ObjectKey("Deployment", "default", f"d{c}"),
            PodSpec(
                image="x",
                cpu_request_milli=draw(st.integers(0, 1500)),
                memory_request_bytes=draw(st.integers(0, 1500)),
                node_selector=draw(label_sets),
                tolerations=tuple(draw(st.lists(tolerations, max_size=2))),
            ),
        )
        for c in range(draw(st.integers(1, 4)))
    ]
    pods = []
    for i in range(draw(st.integers(0, 20))):
        owner, spec = classes[draw(st.integers(0, len(classes) - 1))]
        pods.append(Pod("default", PodName(f"p{i}"), owner, owner.name, spec))
    bound = []
    for i in range(draw(st.integers(0, 6))):
        owner, spec = classes[draw(st.integers(0, len(classes) - 1))]
        where = draw(st.sampled_from([n.name for n in nodes] + [NodeName("gone")]))
        bound.append(Pod("default", PodName(f"b{i}"), owner, owner.name, spec, node=where))
    return pods, nodes, bound


@settings(max_examples=300, deadline=None)
@given(clusters())
def test_fast_placement_equals_the_reference(cluster: tuple[list[Pod], list[Node], list[Pod]]) -> None:
    pending, nodes, bound = cluster
    assert place(pending, nodes, bound) == reference_place(pending, nodes, bound)


@settings(max_examples=300, deadline=None)
@given(clusters())
def test_no_node_is_overcommitted_and_every_pod_is_answered(
    cluster: tuple[list[Pod], list[Node], list[Pod]],
) -> None:
    pending, nodes, bound = cluster
    result = place(pending, nodes, bound)
    assert set(result.assigned) | set(result.unschedulable) == {p.id for p in pending}
    assert not set(result.assigned) & set(result.unschedulable)
    by_id = {p.id: p for p in pending}
    for n in nodes:
        # Capacity already exceeded by bound pods is not our doing; what we add must fit.
        mine = [by_id[i] for i, where in result.assigned.items() if where == n.name]
        already = [p for p in bound if p.node == n.name]
        if not mine:
            continue
        assert sum(p.spec.cpu_request_milli for p in mine + already) <= n.cpu_milli
        assert sum(p.spec.memory_request_bytes for p in mine + already) <= n.memory_bytes
        assert len(mine) + len(already) <= n.max_pods
        assert n.ready
        for p in mine:
            assert all(n.label_map.get(k) == v for k, v in p.spec.node_selector)
            assert all(
                tolerates(p.spec.tolerations, t) for t in n.taints if t.effect in ("NoSchedule", "NoExecute")
            )
