"""Placement: pending pods in, a node for each (or the reason there is none) out.

`place(pending, nodes, bound)` builds a `Cluster` of node columns and places the pods in
the given order; `place_on(cluster, pending)` does the same on a cluster a caller built
once. Both are pure: no clock, no randomness, no I/O, and the cluster is not modified.

For each pod: AND the masks of all checks (see `checks.py`), weigh the scores of the
feasible nodes, take the first best with one `argmax` (ties go to the lowest node index,
i.e. the order nodes were given in), and bind the pod there in the run's `Usage`.

Pods with the same owner and template hash share a spec, an equivalence class: the static
masks (ready, node selector, taints) and static scores (soft taints) are computed once per
class. When a pod of a class fits nowhere and nothing was bound since, its twins get the
same answer at once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from gitops.model import Node, NodeName, ObjectKey, Placements, Pod, PodId, PodSpec
from gitops.scheduler.checks import CHECKS, SCORERS, NodeSelectorMatches, TaintsTolerated
from gitops.scheduler.cluster import BoolArray, Cluster, FloatArray, Usage

NO_NODES = "0/0 nodes: no nodes registered"


@dataclass
class _EquivalenceClass:
    """What the pods of one owner and template share, computed on the first of them."""

    spec: PodSpec
    static_masks: tuple[BoolArray | None, ...]  # per check; None for a dynamic check
    static_feasible: BoolArray
    static_scores: tuple[FloatArray | None, ...]  # weighted, per scorer; None if dynamic
    failed_after_binds: int = -1  # binds done when a pod of the class last fit nowhere
    reason: str = ""

    @classmethod
    def of(cls, usage: Usage, pod: Pod) -> _EquivalenceClass:
        masks = tuple(check.mask(usage, pod.spec) if check.static else None for check in CHECKS)
        feasible = np.ones(len(usage.cluster), dtype=np.bool_)
        for mask in masks:
            if mask is not None:
                feasible &= mask
        scores = tuple(
            scorer.weight * scorer.score(usage, pod) if scorer.static else None for scorer in SCORERS
        )
        return cls(pod.spec, masks, feasible, scores)


def explain(usage: Usage, spec: PodSpec, static_masks: Sequence[BoolArray | None] = ()) -> str:
    """Why no node fits: each node counted under the first check it fails.

    `0/3 nodes: 2 insufficient memory, 1 untolerated taint {dedicated=gpu:NoSchedule}`;
    groups by count, most first, then in check order. Taints and node selectors are named:
    each node under its first untolerated taint, or the first `key=value` of the pod's
    nodeSelector it lacks (`3 node selector mismatch {kubernetes.io/os=windows}`).
    """
    cluster = usage.cluster
    n = len(cluster)
    if n == 0:
        return NO_NODES
    remaining = np.ones(n, dtype=np.bool_)
    groups: Counter[tuple[int, str]] = Counter()
    for order, check in enumerate(CHECKS):
        known = static_masks[order] if order < len(static_masks) else None
        ok = known if known is not None else check.mask(usage, spec)
        first = remaining & ~ok
        remaining &= ok
        if not first.any():
            continue
        if isinstance(check, NodeSelectorMatches):
            for pair, count in check.mismatches(cluster, spec, first):
                groups[(order, f"{check.reason} {{{pair[0]}={pair[1]}}}")] += count
        elif isinstance(check, TaintsTolerated):
            per_set = np.bincount(cluster.taint_group[first], minlength=len(cluster.taint_sets))
            for taint_set in np.flatnonzero(per_set):
                node = int(np.flatnonzero(first & (cluster.taint_group == taint_set))[0])
                groups[(order, f"{check.reason} {{{check.blocking(cluster, spec, node)}}}")] += int(
                    per_set[taint_set]
                )
        else:
            groups[(order, check.reason)] += int(first.sum())
    parts = sorted(groups.items(), key=lambda item: (-item[1], item[0]))
    return f"0/{n} nodes: " + ", ".join(f"{count} {text}" for (_, text), count in parts)


def _best(usage: Usage, pod: Pod, klass: _EquivalenceClass, feasible: BoolArray) -> int | None:
    """Index of the first feasible node with the highest total score, None if none is."""
    if len(feasible) == 0:
        return None
    total: FloatArray | None = None
    owned = False  # whether `total` is our own array, safe to add to in place
    for scorer, static_score in zip(SCORERS, klass.static_scores, strict=True):
        if static_score is not None:
            part = static_score
        else:
            part = scorer.score(usage, pod)
            if scorer.weight != 1.0:  # x * 1.0 == x: skip a pass over all nodes
                part = scorer.weight * part
        if total is None:
            total = part
        elif owned:
            total += part
        else:
            total, owned = total + part, True
    assert total is not None  # SCORERS is not empty
    best = int(np.argmax(np.where(feasible, total, -np.inf)))
    return best if feasible[best] else None


def place_on(cluster: Cluster, pending: Sequence[Pod]) -> Placements:
    """Place `pending` in order on `cluster`; `cluster` itself is left as it was."""
    usage = Usage(cluster)
    dynamic = [check for check in CHECKS if not check.static]
    assigned: dict[PodId, NodeName] = {}
    unschedulable: dict[PodId, str] = {}
    classes: dict[tuple[ObjectKey, str], _EquivalenceClass] = {}
    binds = 0
    for pod in pending:
        key = (pod.owner, pod.template_hash)
        klass = classes.get(key)
        if klass is None or (klass.spec is not pod.spec and klass.spec != pod.spec):
            # A template hash names one spec; a differing spec still gets a correct answer.
            klass = classes[key] = _EquivalenceClass.of(usage, pod)
        elif klass.failed_after_binds == binds:
            unschedulable[pod.id] = klass.reason
            continue
        feasible = klass.static_feasible
        for check in dynamic:
            mask = check.mask(usage, pod.spec)
            if mask is not usage.all_nodes:  # a check with nothing to say (no request, no hostPort)
                feasible = feasible & mask
        best = _best(usage, pod, klass, feasible)
        if best is None:
            klass.failed_after_binds = binds
            klass.reason = explain(usage, pod.spec, klass.static_masks)
            unschedulable[pod.id] = klass.reason
            continue
        usage.bind(best, pod)
        binds += 1
        assigned[pod.id] = cluster.names[best]
    return Placements(assigned=assigned, unschedulable=unschedulable)


def place(
    pending: Sequence[Pod],
    nodes: Sequence[Node],
    bound: Sequence[Pod],
    claims: Mapping[str, NodeName] | None = None,
) -> Placements:
    """Place pending pods on nodes, given the pods already bound to them and the nodes
    holding PersistentVolumeClaims' volumes."""
    return place_on(Cluster.build(nodes, bound, claims), pending)
