"""DaemonSets run as Kubernetes' DaemonSet controller runs them: one pod on every eligible
node (node selector, required node affinity, taints against tolerations and the default
tolerations), pods following nodes that join and leave, and rolling updates node by node
with maxUnavailable or maxSurge."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from typing import Any

import pytest

from gitops.model import Manifest, Node, NodeName, Pod, PodName, Taint
from gitops.planner import Plan, plan
from gitops.planner.actions import Workloads
from gitops.planner.daemonset import DEFAULT_TOLERATIONS, daemonset_counts, daemonset_status, node_of
from gitops.planner.podspec import resolve_template
from gitops.schemas import SourceFile, validate_files

NOW = 10_000.0
LONG_AGO = NOW - 3600


def load(body: dict[str, Any], path: str = "apps/workload.yaml") -> Manifest:
    """A manifest as the source would give it: validated, with its hash."""
    result = validate_files([SourceFile(path, json.dumps(body).encode())])
    assert not result.errors, [str(e) for e in result.errors]
    return next(m for m in result.manifests if m.key.kind == body["kind"])


def daemonset(
    image: str = "agent:1",
    *,
    name: str = "agent",
    update: dict[str, Any] | None = None,
    pod: dict[str, Any] | None = None,
    **spec: Any,
) -> Manifest:
    labels = {"app": name}
    template_spec = {"containers": [{"name": "agent", "image": image}], **(pod or {})}
    body_spec: dict[str, Any] = {
        "selector": {"matchLabels": labels},
        "template": {"metadata": {"labels": labels}, "spec": template_spec},
        **spec,
    }
    if update is not None:
        body_spec["updateStrategy"] = update
    body = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": "default"},
        "spec": body_spec,
    }
    return load(body)


def rolling(**rolling_update: Any) -> dict[str, Any]:
    return {"type": "RollingUpdate", "rollingUpdate": rolling_update}


def node(name: str, *taints: Taint, **labels: str) -> Node:
    return Node(NodeName(name), labels=tuple(sorted(labels.items())), taints=taints)


def cluster(count: int) -> tuple[Node, ...]:
    return tuple(node(f"n{i}") for i in range(1, count + 1))


def step(
    manifest: Manifest,
    pods: Iterable[Pod],
    nodes: Sequence[Node],
    *,
    now: float = NOW,
    avoid: Iterable[str] = (),
) -> Plan:
    return plan([manifest], list(pods), context=Workloads(now=now, avoid=frozenset(avoid), nodes=nodes))


def running(pod: Pod, *, ready: bool = True, since: float = LONG_AGO) -> Pod:
    """The pod as its agent reports it once started on its node (and ready since `since`)."""
    return dataclasses.replace(
        pod, node=NodeName(pod.spec.node_name), phase="Running", ready=ready, ready_since=since
    )


def converge(manifest: Manifest, nodes: Sequence[Node], pods: Iterable[Pod] = ()) -> list[Pod]:
    """Passes until the plan is empty; new pods start ready at once, stopped ones vanish."""
    current = list(pods)
    for _ in range(100):
        result = step(manifest, current, nodes)
        if result.empty:
            return current
        stopped = {a.pod.id for a in result.stop}
        current = [p for p in current if p.id not in stopped] + [running(a.pod) for a in result.create]
    raise AssertionError("no convergence")


def placed(actions: Iterable[Any]) -> list[str]:
    """The nodes the actions' pods name, in order."""
    return [node_of(a.pod) for a in actions]


def eligible(manifest: Manifest, nodes: Sequence[Node]) -> list[str]:
    return sorted(placed(step(manifest, [], nodes).create))


# --- where pods run ---------------------------------------------------------------------------


def test_every_node_gets_one_pod_that_names_its_node() -> None:
    result = step(daemonset(), [], cluster(3))
    assert placed(result.create) == ["n1", "n2", "n3"]
    assert len({a.pod.name for a in result.create}) == 3
    for action in result.create:
        assert action.pod.node is None  # the scheduler binds it to the node it names
        assert action.pod.name.startswith("agent-")
        assert action.reason == (
            f"DaemonSet default/agent runs a pod on every eligible node: none on {action.pod.spec.node_name}"
        )
        assert set(DEFAULT_TOLERATIONS) <= set(action.pod.spec.tolerations)
    assert not result.stop


def test_pod_names_are_deterministic() -> None:
    first = step(daemonset(), [], cluster(3))
    second = step(daemonset(), [], cluster(3))
    assert [a.pod.name for a in first.create] == [a.pod.name for a in second.create]


def test_planning_a_converged_daemonset_again_changes_nothing() -> None:
    nodes = cluster(3)
    pods = converge(daemonset(), nodes)
    result = step(daemonset(), pods, nodes)
    assert result.empty
    assert len(result.keep) == 3


def test_node_selector_picks_the_nodes_with_its_labels() -> None:
    nodes = (node("n1", disk="ssd"), node("n2", disk="hdd"), node("n3"))
    assert eligible(daemonset(pod={"nodeSelector": {"disk": "ssd"}}), nodes) == ["n1"]


AFFINITY_NODES = (node("n1", zone="a", cores="4"), node("n2", zone="b", cores="16"), node("n3"))


def _required(*terms: dict[str, Any]) -> dict[str, Any]:
    return {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": list(terms)}
            }
        }
    }


def _expr(key: str, operator: str, *values: str) -> dict[str, Any]:
    expression: dict[str, Any] = {"key": key, "operator": operator}
    if values:
        expression["values"] = list(values)
    return expression


@pytest.mark.parametrize(
    ("terms", "expected"),
    [
        ([{"matchExpressions": [_expr("zone", "In", "a")]}], ["n1"]),
        ([{"matchExpressions": [_expr("zone", "NotIn", "a")]}], ["n2", "n3"]),
        ([{"matchExpressions": [_expr("zone", "Exists")]}], ["n1", "n2"]),
        ([{"matchExpressions": [_expr("zone", "DoesNotExist")]}], ["n3"]),
        ([{"matchExpressions": [_expr("cores", "Gt", "8")]}], ["n2"]),
        ([{"matchExpressions": [_expr("cores", "Lt", "8")]}], ["n1"]),
        ([{"matchFields": [_expr("metadata.name", "In", "n3")]}], ["n3"]),
        ([{"matchFields": [_expr("metadata.name", "NotIn", "n3")]}], ["n1", "n2"]),
        # Expressions of one term all hold; any one term will do.
        ([{"matchExpressions": [_expr("zone", "Exists"), _expr("cores", "Lt", "8")]}], ["n1"]),
        (
            [
                {"matchExpressions": [_expr("zone", "In", "b")]},
                {"matchFields": [_expr("metadata.name", "In", "n3")]},
            ],
            ["n2", "n3"],
        ),
    ],
)
def test_required_node_affinity_picks_the_matching_nodes(
    terms: list[dict[str, Any]], expected: list[str]
) -> None:
    assert eligible(daemonset(pod=_required(*terms)), AFFINITY_NODES) == expected


TAINTED = (
    node("n1"),
    node("n2", Taint("dedicated", "infra", "NoSchedule")),
    node("n3", Taint("dedicated", "infra", "NoExecute")),
    node("n4", Taint("soft", "", "PreferNoSchedule")),
)


@pytest.mark.parametrize(
    ("tolerations", "expected"),
    [
        ([], ["n1", "n4"]),
        ([{"key": "dedicated", "operator": "Equal", "value": "infra"}], ["n1", "n2", "n3", "n4"]),
        ([{"key": "dedicated", "operator": "Equal", "value": "other"}], ["n1", "n4"]),
        ([{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}], ["n1", "n2", "n4"]),
        ([{"operator": "Exists"}], ["n1", "n2", "n3", "n4"]),
    ],
)
def test_taints_keep_pods_off_nodes_unless_tolerated(
    tolerations: list[dict[str, Any]], expected: list[str]
) -> None:
    assert eligible(daemonset(pod={"tolerations": tolerations} if tolerations else None), TAINTED) == expected


def test_the_default_tolerations_let_pods_onto_unready_cordoned_and_pressured_nodes() -> None:
    nodes = (
        node("cordoned", Taint("node.kubernetes.io/unschedulable", "", "NoSchedule")),
        node("not-ready", Taint("node.kubernetes.io/not-ready", "", "NoExecute")),
        node("unreachable", Taint("node.kubernetes.io/unreachable", "", "NoExecute")),
        node("disk", Taint("node.kubernetes.io/disk-pressure", "", "NoSchedule")),
        node("memory", Taint("node.kubernetes.io/memory-pressure", "", "NoSchedule")),
        node("pid", Taint("node.kubernetes.io/pid-pressure", "", "NoSchedule")),
        node("network", Taint("node.kubernetes.io/network-unavailable", "", "NoSchedule")),
    )
    assert eligible(daemonset(), nodes) == ["cordoned", "disk", "memory", "not-ready", "pid", "unreachable"]


# --- nodes coming and going -------------------------------------------------------------------


def test_a_node_that_joins_gets_its_pod() -> None:
    pods = converge(daemonset(), cluster(2))
    result = step(daemonset(), pods, cluster(3))
    assert placed(result.create) == ["n3"]
    assert not result.stop


def test_the_pod_of_a_node_that_left_is_stopped() -> None:
    pods = converge(daemonset(), cluster(3))
    result = step(daemonset(), pods, cluster(2))
    assert [(node_of(a.pod), a.reason) for a in result.stop] == [("n3", "node n3 left the cluster")]
    assert not result.create


def test_the_pod_of_a_node_that_is_no_longer_eligible_is_stopped() -> None:
    manifest = daemonset(pod={"nodeSelector": {"disk": "ssd"}})
    pods = converge(manifest, (node("n1", disk="ssd"), node("n2", disk="ssd")))
    result = step(manifest, pods, (node("n1", disk="ssd"), node("n2", disk="hdd")))
    assert [(node_of(a.pod), a.reason) for a in result.stop] == [
        ("n2", "node n2 is no longer eligible: node selector disk=ssd does not match")
    ]
    tainted = (node("n1", Taint("gpu", "", "NoExecute"), disk="ssd"), node("n2", disk="ssd"))
    result = step(manifest, pods, tainted)
    assert [(node_of(a.pod), a.reason) for a in result.stop] == [
        ("n1", "node n1 is no longer eligible: taint gpu:NoExecute is not tolerated")
    ]


def test_a_new_noschedule_taint_keeps_the_running_pod_and_makes_no_new_one() -> None:
    """As Kubernetes: NoSchedule keeps new pods off; only NoExecute makes a running pod go."""
    pods = converge(daemonset(), cluster(2))
    tainted = (node("n1", Taint("maintenance", "", "NoSchedule")), node("n2"))
    result = step(daemonset(), pods, tainted)
    assert not result.stop and not result.create
    assert sorted(node_of(p) for p in result.keep) == ["n1", "n2"]
    # A pod that is gone from such a node is not made again.
    result = step(daemonset(), [p for p in pods if node_of(p) == "n2"], tainted)
    assert not result.create


def test_a_failed_pod_is_replaced_on_its_node() -> None:
    nodes = cluster(2)
    pods = converge(daemonset(), nodes)
    failed = dataclasses.replace(pods[0], phase="Failed", ready=False, reason="Error")
    result = step(daemonset(), [failed, pods[1]], nodes)
    assert [(a.pod.name, a.reason) for a in result.stop] == [
        (failed.name, "pod failed (Error): replaced on n1")
    ]
    assert placed(result.create) == ["n1"]
    assert result.create[0].pod.name != failed.name


def test_a_second_pod_of_the_template_on_one_node_is_stopped_and_the_ready_one_kept() -> None:
    nodes = cluster(1)
    (pod,) = converge(daemonset(), nodes)
    twin = dataclasses.replace(pod, name=PodName("agent-twin"), ready=False)
    result = step(daemonset(), [pod, twin], nodes)
    assert [(a.pod.name, a.reason) for a in result.stop] == [("agent-twin", "more than one pod on node n1")]


# --- rolling updates --------------------------------------------------------------------------


def test_rolling_update_stops_one_old_pod_at_a_time_and_replaces_it_on_its_node() -> None:
    nodes = cluster(3)
    pods = converge(daemonset("agent:1"), nodes)
    manifest = daemonset("agent:2")
    first = step(manifest, pods, nodes)
    assert [(node_of(a.pod), a.reason) for a in first.stop] == [
        (
            "n1",
            "template changed: image changed: agent:1 -> agent:2 "
            "(rolling update, maxUnavailable 1, maxSurge 0: old pod replaced)",
        )
    ]
    assert not first.create
    gone = first.stop[0].pod
    pods = [p for p in pods if p.id != gone.id]
    # The old pod is still terminating: the new one starts on its node beside nothing else.
    second = step(manifest, pods, nodes, avoid={gone.name})
    assert placed(second.create) == ["n1"]
    assert second.create[0].pod.spec.image == "agent:2"
    assert not second.stop  # one node is without a serving pod: no other old pod goes
    pods.append(running(second.create[0].pod, ready=False))
    assert step(manifest, pods, nodes).empty
    pods = [running(p) for p in pods]
    assert placed(step(manifest, pods, nodes).stop) == ["n2"]
    final = converge(manifest, nodes, pods)
    assert sorted((node_of(p), p.spec.image) for p in final) == [
        ("n1", "agent:2"),
        ("n2", "agent:2"),
        ("n3", "agent:2"),
    ]


@pytest.mark.parametrize(
    ("max_unavailable", "nodes", "stopped"),
    [(2, 4, 2), ("50%", 3, 2), ("34%", 3, 2), ("10%", 3, 1), ("100%", 3, 3)],
)
def test_max_unavailable_bounds_the_old_pods_stopped_at_once(
    max_unavailable: int | str, nodes: int, stopped: int
) -> None:
    """Percentages are of the eligible nodes, rounded up."""
    update = rolling(maxUnavailable=max_unavailable)
    pods = converge(daemonset("agent:1", update=update), cluster(nodes))
    result = step(daemonset("agent:2", update=update), pods, cluster(nodes))
    assert len(result.stop) == stopped
    assert not result.create


def test_old_pods_that_are_not_ready_are_replaced_at_once_and_use_up_the_budget() -> None:
    nodes = cluster(4)
    pods = converge(daemonset("agent:1"), nodes)
    pods = [running(p, ready=False) if node_of(p) in ("n2", "n3") else p for p in pods]
    result = step(daemonset("agent:2"), pods, nodes)
    assert placed(result.stop) == ["n2", "n3"]
    assert {a.reason.rsplit(": ", 1)[-1] for a in result.stop} == {"old pod not ready)"}


def test_max_surge_starts_the_new_pod_beside_the_old_and_stops_the_old_once_available() -> None:
    nodes = cluster(2)
    update = rolling(maxSurge=1, maxUnavailable=0)
    pods = converge(daemonset("agent:1", update=update), nodes)
    manifest = daemonset("agent:2", update=update, minReadySeconds=30)
    first = step(manifest, pods, nodes)
    assert not first.stop
    assert [(node_of(a.pod), a.reason) for a in first.create] == [
        (
            "n1",
            "template changed: image changed: agent:1 -> agent:2 "
            "(rolling update, maxUnavailable 0, maxSurge 1: new pod beside the old on n1)",
        )
    ]
    new = first.create[0].pod
    assert step(manifest, [*pods, running(new, ready=False)], nodes).empty
    assert step(manifest, [*pods, running(new, since=NOW - 10)], nodes).empty  # ready, not yet available
    result = step(manifest, [*pods, running(new, since=NOW - 30)], nodes)
    assert [(node_of(a.pod), a.pod.spec.image) for a in result.stop] == [("n1", "agent:1")]
    assert result.stop[0].reason.endswith("(rolling update, maxUnavailable 0, maxSurge 1: replaced)")
    final = converge(manifest, nodes, pods)
    assert sorted((node_of(p), p.spec.image) for p in final) == [("n1", "agent:2"), ("n2", "agent:2")]


def test_max_surge_percentages_round_up() -> None:
    nodes = cluster(3)
    update = rolling(maxSurge="50%", maxUnavailable=0)
    pods = converge(daemonset("agent:1", update=update), nodes)
    result = step(daemonset("agent:2", update=update), pods, nodes)
    assert placed(result.create) == ["n1", "n2"]
    assert not result.stop


def test_max_surge_replaces_an_old_pod_that_is_not_available_at_once() -> None:
    nodes = cluster(2)
    update = rolling(maxSurge=1, maxUnavailable=0)
    pods = converge(daemonset("agent:1", update=update), nodes)
    pods = [running(p, ready=False) if node_of(p) == "n2" else p for p in pods]
    result = step(daemonset("agent:2", update=update), pods, nodes)
    assert placed(result.stop) == ["n2"]
    assert placed(result.create) == ["n1"]


def test_a_template_changed_during_a_surge_keeps_one_old_pod_per_node_the_serving_one() -> None:
    nodes = cluster(1)
    update = rolling(maxSurge=1, maxUnavailable=0)
    (first,) = converge(daemonset("agent:1", update=update), nodes)
    surge = step(daemonset("agent:2", update=update), [first], nodes).create[0].pod
    pods = [first, running(surge, ready=False)]
    result = step(daemonset("agent:3", update=update), pods, nodes)
    assert [(a.pod.spec.image, a.reason) for a in result.stop] == [
        ("agent:2", "more than one pod on node n1")
    ]
    assert [a.pod.spec.image for a in result.create] == ["agent:3"]  # beside agent:1, which serves


def test_on_delete_replaces_a_pod_only_once_it_is_gone() -> None:
    nodes = cluster(2)
    update = {"type": "OnDelete"}
    pods = converge(daemonset("agent:1", update=update), nodes)
    manifest = daemonset("agent:2", update=update)
    assert step(manifest, pods, nodes).empty
    remaining = [p for p in pods if node_of(p) != "n1"]
    result = step(manifest, remaining, nodes)
    assert placed(result.create) == ["n1"]
    assert result.create[0].pod.spec.image == "agent:2"
    assert not result.stop


def test_status_counts_nodes_and_says_how_far_the_rollout_is() -> None:
    nodes = cluster(3)
    pods = converge(daemonset("agent:1"), nodes)
    manifest = daemonset("agent:1")
    template = resolve_template(manifest, {})
    template_hash = pods[0].template_hash
    assert template.hash == template_hash
    assert daemonset_counts(manifest, template, pods, nodes, now=NOW) == {
        "desired": 3,
        "current": 3,
        "ready": 3,
        "updated": 3,
        "available": 3,
    }
    status = daemonset_status(manifest, template, pods, nodes, now=NOW)
    assert status.complete
    assert status.step == f"complete: 3/3 nodes run {template_hash}"
