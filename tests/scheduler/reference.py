"""The slow, obviously-correct twin of the scheduler: one node at a time, plain Python.

Written from the specification, not from the fast code: it shares no helper with
`gitops.scheduler` (its own toleration rule, checks, weights and reason text). Same
semantics and tie-breaks: pods in the given order; for each, every node in order, the
first failing check recorded, the score of a feasible node compared with a strict `>` so
the first best node wins. Property tests check the fast one against this one.
"""

from __future__ import annotations

from collections.abc import Sequence

from gitops.model import Node, NodeName, ObjectKey, Placements, Pod, PodId, PodSpec, Taint, Toleration

WEIGHT_LEAST_ALLOCATED = 1.0
WEIGHT_OWNER_SPREAD = 1.0
WEIGHT_SOFT_TAINTS = 0.5
CHECK_ORDER = [
    "not the node the pod names",
    "not ready",
    "volume node affinity conflict",
    "node selector mismatch",
    "untolerated taint",
    "host port in use",
    "too many pods",
    "insufficient cpu",
    "insufficient memory",
]


def reference_tolerates(tolerations: Sequence[Toleration], taint: Taint) -> bool:
    for toleration in tolerations:
        effect_matches = toleration.effect in ("", taint.effect)
        if toleration.operator == "Exists":
            key_matches = toleration.key in ("", taint.key)
            value_matches = True
        else:
            key_matches = toleration.key == taint.key
            value_matches = toleration.value == taint.value
        if effect_matches and key_matches and value_matches:
            return True
    return False


def first_failure(
    node: Node,
    spec: PodSpec,
    cpu_free: int,
    memory_free: int,
    pods: int,
    *,
    ports: set[tuple[int, str]],
    claims: dict[str, NodeName],
) -> tuple[str, str] | None:
    """(check, text) of the first check the node fails, or None if the pod fits."""
    if spec.node_name and spec.node_name != node.name:
        return ("not the node the pod names", "not the node the pod names")
    if not node.ready:
        return ("not ready", "not ready")
    for volume in spec.volumes:
        if volume.claim and volume.claim in claims and claims[volume.claim] != node.name:
            return ("volume node affinity conflict", "volume node affinity conflict")
    labels = dict(node.labels)
    for key, value in spec.node_selector:
        if key not in labels or labels[key] != value:
            return ("node selector mismatch", f"node selector mismatch {{{key}={value}}}")
    for taint in node.taints:
        if taint.effect in ("NoSchedule", "NoExecute") and not reference_tolerates(spec.tolerations, taint):
            return ("untolerated taint", f"untolerated taint {{{taint}}}")
    for port in spec.ports:
        if port.host_port and (port.host_port, port.protocol) in ports:
            return ("host port in use", "host port in use")
    if pods >= node.max_pods:
        return ("too many pods", "too many pods")
    if spec.cpu_request_milli > 0 and spec.cpu_request_milli > cpu_free:
        return ("insufficient cpu", "insufficient cpu")
    if spec.memory_request_bytes > 0 and spec.memory_request_bytes > memory_free:
        return ("insufficient memory", "insufficient memory")
    return None


def reference_place(
    pending: Sequence[Pod],
    nodes: Sequence[Node],
    bound: Sequence[Pod],
    claims: dict[str, NodeName] | None = None,
) -> Placements:
    """`claims`: the node holding each claim's volume; a pod's claims are on its node once
    it is bound or placed, unless they already were somewhere."""
    claims = dict(claims or {})
    cpu_free = {node.name: node.cpu_milli for node in nodes}
    memory_free = {node.name: node.memory_bytes for node in nodes}
    pods = {node.name: 0 for node in nodes}
    ports: dict[NodeName, set[tuple[int, str]]] = {node.name: set() for node in nodes}
    owned: dict[tuple[ObjectKey, NodeName], int] = {}

    def bind(pod: Pod, name: NodeName) -> None:
        cpu_free[name] -= pod.spec.cpu_request_milli
        memory_free[name] -= pod.spec.memory_request_bytes
        pods[name] += 1
        ports[name] |= {(p.host_port, p.protocol) for p in pod.spec.ports if p.host_port}
        owned[(pod.owner, name)] = owned.get((pod.owner, name), 0) + 1
        for volume in pod.spec.volumes:
            if volume.claim and volume.claim not in claims:
                claims[volume.claim] = name

    for pod in bound:
        if pod.node is not None and pod.node in pods:
            bind(pod, pod.node)

    assigned: dict[PodId, NodeName] = {}
    unschedulable: dict[PodId, str] = {}
    for pod in pending:
        spec = pod.spec
        best_score = 0.0
        best_node: NodeName | None = None
        failures: dict[tuple[str, str], int] = {}
        for node in nodes:
            failure = first_failure(
                node,
                spec,
                cpu_free[node.name],
                memory_free[node.name],
                pods[node.name],
                ports=ports[node.name],
                claims=claims,
            )
            if failure is not None:
                failures[failure] = failures.get(failure, 0) + 1
                continue
            cpu_left = cpu_free[node.name] - spec.cpu_request_milli
            memory_left = memory_free[node.name] - spec.memory_request_bytes
            cpu_fraction = cpu_left / node.cpu_milli if node.cpu_milli > 0 else 0.0
            memory_fraction = memory_left / node.memory_bytes if node.memory_bytes > 0 else 0.0
            least_allocated = (cpu_fraction + memory_fraction) / 2.0
            spread = 1.0 / (1.0 + owned.get((pod.owner, node.name), 0))
            soft = 0
            for taint in node.taints:
                if taint.effect == "PreferNoSchedule" and not reference_tolerates(spec.tolerations, taint):
                    soft += 1
            score = (
                WEIGHT_LEAST_ALLOCATED * least_allocated
                + WEIGHT_OWNER_SPREAD * spread
                + WEIGHT_SOFT_TAINTS * -float(soft)
            )
            if best_node is None or score > best_score:
                best_score, best_node = score, node.name
        if best_node is not None:
            bind(pod, best_node)
            assigned[pod.id] = best_node
        elif not nodes:
            unschedulable[pod.id] = "0/0 nodes: no nodes registered"
        else:
            groups = sorted(
                failures.items(), key=lambda item: (-item[1], CHECK_ORDER.index(item[0][0]), item[0][1])
            )
            text = ", ".join(f"{count} {what}" for (_, what), count in groups)
            unschedulable[pod.id] = f"0/{len(nodes)} nodes: {text}"
    return Placements(assigned=assigned, unschedulable=unschedulable)
