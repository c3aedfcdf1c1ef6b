"""Preemption: room for a pod that fits nowhere, taken from pods of lower priority.

kube-scheduler's way, on the run's `Usage` (docs/scheduler.md, "Preemption"): on each node
that passes every check but those of room (host ports, pod slots, cpu, memory), remove
every bound pod of lower priority; if the pod then fits, put back as many as it can
(those whose removal would break a PodDisruptionBudget first, then the others, highest
priority first); the rest are the victims. Of the candidate nodes, the one with the fewest
budget violations, then the lowest highest victim priority, the smallest sum of
priorities, the fewest victims, then the first in node order. Terminating pods are room
that is coming anyway: they are removed at no cost and never victims (their room stays
taken until they are gone).

Only room is freed: a pod kept off a node by affinity or spread does not preempt. The pod
itself is not placed in this run; its room on the chosen node is held for it so that later
pods of the run do not take it. Its victims keep their room until they are gone, as
terminating pods do (kube-scheduler counts them until they are deleted): a later pod of
the run does not land beside a pod still stopping, and a later preemptor may count them
as leaving, as the next pass will.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gitops.model import DisruptionBudget, Pod, Preemption
from gitops.scheduler.checks import BEYOND_ROOM
from gitops.scheduler.cluster import BoolArray, Usage

_OFFSET = 2**31  # priorities made positive before they are summed, as kube-scheduler does


def _fits(pod: Pod, usage: Usage, i: int, freed: Sequence[Pod]) -> bool:
    """Whether `pod` has room on node `i` once `freed` are gone."""
    spec = pod.spec
    cpu = spec.cpu_request_milli
    if cpu and int(usage.cpu_free[i]) + sum(p.spec.cpu_request_milli for p in freed) < cpu:
        return False
    memory = spec.memory_request_bytes
    if memory and int(usage.memory_free[i]) + sum(p.spec.memory_request_bytes for p in freed) < memory:
        return False
    if int(usage.pods_free[i]) + len(freed) <= 0:
        return False
    if not spec.host_port_claims:
        return True
    gone = {p.id for p in freed}
    staying = [p for p in usage.pods_on_nodes().get(i, []) if p.id not in gone]
    staying += [p for j, p in (*usage.placed, *usage.reserved) if j == i]
    held = {claim for p in staying for claim in p.spec.host_port_claims}
    return not set(spec.host_port_claims) & held


def _selects(budget: DisruptionBudget, pod: Pod) -> bool:
    return (
        budget.namespace == pod.namespace
        and budget.selector is not None
        and budget.selector.matches(pod.label_map)
    )


def _violating(
    victims: Sequence[Pod], budgets: Sequence[DisruptionBudget], allowed: Sequence[int]
) -> set[int]:
    """Indexes of the pods whose removal, in order, takes a matching budget below 0
    (`allowed`: the disruptions each budget still allows in this run)."""
    left = list(allowed)
    found = set()
    for k, pod in enumerate(victims):
        for b, budget in enumerate(budgets):
            if _selects(budget, pod):
                left[b] -= 1
                if left[b] < 0:
                    found.add(k)
    return found


def preempt(
    usage: Usage, pod: Pod, static_feasible: BoolArray, budgets: Sequence[DisruptionBudget]
) -> Preemption | None:
    """The node and victims that make room for `pod`, or None; on success the run's usage
    holds the pod's room there and counts the victims as leaving."""
    if pod.spec.preemption_policy == "Never":
        return None
    priority = pod.spec.priority
    cluster = usage.cluster
    on_node = usage.pods_on_nodes()
    candidates = static_feasible.copy()
    for check in BEYOND_ROOM:
        candidates &= check.mask(usage, pod)
    best: tuple[tuple[int, int, int, int, int], int, list[Pod]] | None = None
    for i in np.flatnonzero(candidates):
        node = int(i)
        pods = on_node.get(node, [])
        removable = [p for p in pods if p.spec.priority < priority]
        if not removable or not _fits(pod, usage, node, removable):
            continue
        leaving = [p for p in removable if p.terminating_at is not None or p.id in usage.preempted]
        ranked = sorted(
            (p for p in removable if p.terminating_at is None and p.id not in usage.preempted),
            key=lambda p: -p.spec.priority,
        )
        violating = _violating(ranked, budgets, usage.disruptions)
        order = [p for k, p in enumerate(ranked) if k in violating] + [
            p for k, p in enumerate(ranked) if k not in violating
        ]
        victims = list(order)
        for candidate in order:
            rest = [p for p in victims if p is not candidate]
            if _fits(pod, usage, node, [*leaving, *rest]):
                victims = rest
        chosen = {id(p) for p in victims}
        rank = (
            sum(1 for k, p in enumerate(ranked) if k in violating and id(p) in chosen),
            max((p.spec.priority for p in victims), default=-(2**62)),
            sum(p.spec.priority + _OFFSET for p in victims),
            len(victims),
            node,
        )
        if best is None or rank < best[0]:
            best = (rank, node, [p for p in order if id(p) in chosen])
    if best is None:
        return None
    _, node, victims = best
    for victim in victims:
        usage.preempted.add(victim.id)
        for b, budget in enumerate(budgets):
            if _selects(budget, victim):
                usage.disruptions[b] -= 1
    usage.reserve(node, pod)
    return Preemption(cluster.names[node], tuple(p.id for p in victims))
