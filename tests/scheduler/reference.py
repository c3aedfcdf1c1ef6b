"""The slow, obviously-correct twin of the scheduler: one node at a time, plain Python.

Same semantics and tie-breaks as `gitops.scheduler.place` (see its docstring); property
tests check the fast one against this one.
"""

from __future__ import annotations

from collections.abc import Sequence

from gitops.model import Node, NodeName, Placements, Pod, PodId
from gitops.scheduler.place import CHECKS, HARD_EFFECTS, SOFT_TAINT_PENALTY, tolerates


def reference_place(pending: Sequence[Pod], nodes: Sequence[Node], bound: Sequence[Pod]) -> Placements:
    names = {n.name for n in nodes}
    cpu = {n.name: n.cpu_milli for n in nodes}
    mem = {n.name: n.memory_bytes for n in nodes}
    slots = {n.name: n.max_pods for n in nodes}
    owned: dict[tuple[object, NodeName], int] = {}
    for pod in bound:
        if pod.node in names:
            cpu[pod.node] -= pod.spec.cpu_request_milli
            mem[pod.node] -= pod.spec.memory_request_bytes
            slots[pod.node] -= 1
            owned[(pod.owner, pod.node)] = owned.get((pod.owner, pod.node), 0) + 1
    assigned: dict[PodId, NodeName] = {}
    unschedulable: dict[PodId, str] = {}
    for pod in pending:
        spec = pod.spec
        best: tuple[float, NodeName] | None = None
        first_failure: dict[str, int] = {}
        for node in nodes:
            labels = node.label_map
            checks = [
                node.ready,
                all(labels.get(k) == v for k, v in spec.node_selector),
                all(tolerates(spec.tolerations, t) for t in node.taints if t.effect in HARD_EFFECTS),
                slots[node.name] > 0,
                cpu[node.name] >= spec.cpu_request_milli,
                mem[node.name] >= spec.memory_request_bytes,
            ]
            if not all(checks):
                name = CHECKS[checks.index(False)]
                first_failure[name] = first_failure.get(name, 0) + 1
                continue
            cpu_after = (
                (cpu[node.name] - spec.cpu_request_milli) / node.cpu_milli if node.cpu_milli > 0 else 0.0
            )
            mem_after = (
                (mem[node.name] - spec.memory_request_bytes) / node.memory_bytes
                if node.memory_bytes > 0
                else 0.0
            )
            soft = sum(
                1
                for t in node.taints
                if t.effect == "PreferNoSchedule" and not tolerates(spec.tolerations, t)
            )
            spread = 1.0 / (1.0 + owned.get((pod.owner, node.name), 0))
            score = (cpu_after + mem_after) / 2.0 + spread - SOFT_TAINT_PENALTY * soft
            if best is None or score > best[0]:
                best = (score, node.name)
        if best is None:
            if not nodes:
                unschedulable[pod.id] = "0/0 nodes: no nodes registered"
                continue
            parts = sorted(first_failure.items(), key=lambda kv: (-kv[1], CHECKS.index(kv[0])))
            unschedulable[pod.id] = f"0/{len(nodes)} nodes: " + ", ".join(f"{c} {n}" for n, c in parts)
            continue
        chosen = best[1]
        cpu[chosen] -= spec.cpu_request_milli
        mem[chosen] -= spec.memory_request_bytes
        slots[chosen] -= 1
        owned[(pod.owner, chosen)] = owned.get((pod.owner, chosen), 0) + 1
        assigned[pod.id] = chosen
    return Placements(assigned=assigned, unschedulable=unschedulable)
