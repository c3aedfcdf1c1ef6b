"""Placement of pending pods on nodes; a pure function vectorised over nodes.

Nomad's factoring, with each step working on all nodes at once: a `Cluster` holds node
columns (free CPU, free memory, free pod slots, label codes, taint groups); feasibility
checks each return a boolean mask over all nodes; a score array ranks the feasible ones and
one `argmax` picks the node (ties go to the first node in the given order, so placement is
deterministic). Pods of one owner and template share a spec: their static masks (ready,
nodeSelector, taints) are computed once per class; only the resource masks change between
placements.

Checks, in the order used to explain a pod that fits nowhere (each node is counted once,
under the first check it fails): not ready, node selector mismatch, untolerated taint, too
many pods, insufficient cpu, insufficient memory.

Score (higher is better), documented weights:
    least allocated  = mean of free cpu fraction and free memory fraction after placing  (0..1)
    spreading        = 1 / (1 + pods of the same owner already on the node)              (0..1)
    soft taints      = -0.5 per untolerated PreferNoSchedule taint
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from gitops.model import Node, NodeName, ObjectKey, Placements, Pod, PodId, PodSpec, Taint, Toleration

HARD_EFFECTS = ("NoSchedule", "NoExecute")
CHECKS = (
    "not ready",
    "node selector mismatch",
    "untolerated taint",
    "too many pods",
    "insufficient cpu",
    "insufficient memory",
)
SOFT_TAINT_PENALTY = 0.5

BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


def tolerates(tolerations: Sequence[Toleration], taint: Taint) -> bool:
    """Kubernetes' rule: one toleration matching key, value (unless Exists) and effect."""
    for t in tolerations:
        if t.effect and t.effect != taint.effect:
            continue
        if t.operator == "Exists":
            if not t.key or t.key == taint.key:
                return True
        elif t.key == taint.key and t.value == taint.value:
            return True
    return False


@dataclass
class Cluster:
    """Node columns for placement, built once from nodes and the pods bound to them."""

    names: list[NodeName]
    ready: BoolArray
    cpu_capacity: IntArray
    memory_capacity: IntArray
    cpu_free: IntArray
    memory_free: IntArray
    pods_free: IntArray
    label_codes: dict[str, IntArray]
    label_vocab: dict[str, dict[str, int]]
    taint_group: IntArray  # node -> index into taint_sets
    taint_sets: list[tuple[Taint, ...]]
    owner_counts: dict[ObjectKey, IntArray] = field(default_factory=dict)

    @classmethod
    def build(cls, nodes: Sequence[Node], bound: Sequence[Pod]) -> Cluster:
        n = len(nodes)
        index = {node.name: i for i, node in enumerate(nodes)}
        cpu_used = np.zeros(n, dtype=np.int64)
        mem_used = np.zeros(n, dtype=np.int64)
        pods_used = np.zeros(n, dtype=np.int64)
        owner_counts: dict[ObjectKey, IntArray] = {}
        for pod in bound:
            i = index.get(pod.node) if pod.node is not None else None
            if i is None:
                continue
            cpu_used[i] += pod.spec.cpu_request_milli
            mem_used[i] += pod.spec.memory_request_bytes
            pods_used[i] += 1
            owner_counts.setdefault(pod.owner, np.zeros(n, dtype=np.int64))[i] += 1
        vocab: dict[str, dict[str, int]] = {}
        codes: dict[str, IntArray] = {}
        for i, node in enumerate(nodes):
            for key, value in node.labels:
                if key not in codes:
                    codes[key] = np.full(n, -1, dtype=np.int64)
                    vocab[key] = {}
                codes[key][i] = vocab[key].setdefault(value, len(vocab[key]))
        sets: dict[tuple[Taint, ...], int] = {}
        group = np.zeros(n, dtype=np.int64)
        for i, node in enumerate(nodes):
            group[i] = sets.setdefault(tuple(node.taints), len(sets))
        cpu_cap = np.array([node.cpu_milli for node in nodes], dtype=np.int64)
        mem_cap = np.array([node.memory_bytes for node in nodes], dtype=np.int64)
        return cls(
            names=[node.name for node in nodes],
            ready=np.array([node.ready for node in nodes], dtype=np.bool_),
            cpu_capacity=cpu_cap,
            memory_capacity=mem_cap,
            cpu_free=cpu_cap - cpu_used,
            memory_free=mem_cap - mem_used,
            pods_free=np.array([node.max_pods for node in nodes], dtype=np.int64) - pods_used,
            label_codes=codes,
            label_vocab=vocab,
            taint_group=group,
            taint_sets=list(sets),
            owner_counts=owner_counts,
        )

    def __len__(self) -> int:
        return len(self.names)

    # --- static checks: one mask per equivalence class ------------------------------

    def selector_mask(self, spec: PodSpec) -> BoolArray:
        mask = np.ones(len(self), dtype=np.bool_)
        for key, value in spec.node_selector:
            codes = self.label_codes.get(key)
            if codes is None:
                return np.zeros(len(self), dtype=np.bool_)
            mask &= codes == self.label_vocab[key].get(value, -2)
        return mask

    def taint_masks(self, spec: PodSpec) -> tuple[BoolArray, FloatArray]:
        """(hard taints all tolerated, count of untolerated PreferNoSchedule taints)."""
        hard = np.array(
            [
                all(tolerates(spec.tolerations, t) for t in taints if t.effect in HARD_EFFECTS)
                for taints in self.taint_sets
            ],
            dtype=np.bool_,
        )
        soft = np.array(
            [
                sum(
                    1 for t in taints if t.effect == "PreferNoSchedule" and not tolerates(spec.tolerations, t)
                )
                for taints in self.taint_sets
            ],
            dtype=np.float64,
        )
        return hard[self.taint_group], soft[self.taint_group]

    def bind(self, i: int, pod: Pod) -> None:
        self.cpu_free[i] -= pod.spec.cpu_request_milli
        self.memory_free[i] -= pod.spec.memory_request_bytes
        self.pods_free[i] -= 1
        self.owner_counts.setdefault(pod.owner, np.zeros(len(self), dtype=np.int64))[i] += 1


def _fraction(free: IntArray, capacity: IntArray) -> FloatArray:
    out = np.zeros(len(free), dtype=np.float64)
    np.divide(free, capacity, out=out, where=capacity > 0)
    return out


def _explain(n: int, failures: Sequence[BoolArray]) -> str:
    if n == 0:
        return "0/0 nodes: no nodes registered"
    remaining = np.ones(n, dtype=np.bool_)
    counts = []
    for name, failed in zip(CHECKS, failures, strict=True):
        first = failed & remaining
        counts.append((int(first.sum()), name))
        remaining &= ~failed
    parts = [
        f"{count} {name}"
        for count, name in sorted((c for c in counts if c[0]), key=lambda c: (-c[0], CHECKS.index(c[1])))
    ]
    return f"0/{n} nodes: " + ", ".join(parts)


def place_on(cluster: Cluster, pending: Sequence[Pod]) -> Placements:
    """Place `pending` in order on `cluster`, updating its columns as pods are bound."""
    assigned: dict[PodId, NodeName] = {}
    unschedulable: dict[PodId, str] = {}
    n = len(cluster)
    static: dict[tuple[ObjectKey, str], tuple[BoolArray, BoolArray, BoolArray, FloatArray]] = {}
    failed: dict[tuple[ObjectKey, str], tuple[int, str]] = {}
    binds = 0
    for pod in pending:
        key = (pod.owner, pod.template_hash)
        if key in failed and failed[key][0] == binds:
            # Nothing was bound since its twin failed: same nodes, same answer.
            unschedulable[pod.id] = failed[key][1]
            continue
        if key not in static:
            selector = cluster.selector_mask(pod.spec)
            hard, soft = cluster.taint_masks(pod.spec)
            static[key] = (selector, hard, cluster.ready & selector & hard, soft)
        selector, hard, base, soft = static[key]
        spec = pod.spec
        room = cluster.pods_free > 0
        cpu_ok = cluster.cpu_free >= spec.cpu_request_milli
        mem_ok = cluster.memory_free >= spec.memory_request_bytes
        feasible = base & room & cpu_ok & mem_ok
        if not feasible.any():
            reason = _explain(n, [~cluster.ready, ~selector, ~hard, ~room, ~cpu_ok, ~mem_ok])
            failed[key] = (binds, reason)
            unschedulable[pod.id] = reason
            continue
        cpu_after = _fraction(cluster.cpu_free - spec.cpu_request_milli, cluster.cpu_capacity)
        mem_after = _fraction(cluster.memory_free - spec.memory_request_bytes, cluster.memory_capacity)
        owned = cluster.owner_counts.get(pod.owner)
        spread = 1.0 / (1.0 + owned) if owned is not None else np.ones(n, dtype=np.float64)
        score = (cpu_after + mem_after) / 2.0 + spread - SOFT_TAINT_PENALTY * soft
        score = np.where(feasible, score, -np.inf)
        best = int(np.argmax(score))
        cluster.bind(best, pod)
        binds += 1
        assigned[pod.id] = cluster.names[best]
    return Placements(assigned=assigned, unschedulable=unschedulable)


def place(pending: Sequence[Pod], nodes: Sequence[Node], bound: Sequence[Pod]) -> Placements:
    """Place pending pods on nodes, given the pods already bound there."""
    return place_on(Cluster.build(nodes, bound), pending)
