"""Feasibility checks and scorers, each working on all nodes at once.

A check answers "can this pod go there?" for every node with one boolean array; a scorer
answers "how good is it there?" with one float array. Checks marked `static` depend only
on the pod's spec and the nodes (readiness, labels, taints), so the scheduler evaluates
them once per equivalence class of pods (same owner and template); the others depend on
what is already used and are re-evaluated for every pod.

`CHECKS` is also the order in which a pod that fits nowhere is explained: each node is
counted under the first check it fails.

Scoring, higher is better, `total = sum(weight * score)` in `SCORERS` order:

    least allocated  weight 1.0  mean of free cpu fraction and free memory fraction
                                 left on the node after placing the pod       (0..1)
    owner spread     weight 1.0  1 / (1 + pods of the same owner on the node)  (0..1]
    soft taints      weight 0.5  minus the number of untolerated PreferNoSchedule taints

Spreading and least-allocated weigh the same, so a second replica goes to an empty node
even if the node with the first one is a little emptier; one untolerated
PreferNoSchedule taint outweighs half of either, so it steers without ever blocking.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from gitops.model import NodeName, Pod, PodSpec, Taint, Toleration
from gitops.scheduler.cluster import BoolArray, Cluster, FloatArray, Usage

HARD_EFFECTS = frozenset({"NoSchedule", "NoExecute"})
SOFT_EFFECT = "PreferNoSchedule"


def tolerates(tolerations: Sequence[Toleration], taint: Taint) -> bool:
    """Kubernetes' rule: some toleration matches the taint's effect, key and value.

    An empty effect matches every effect; `Exists` with an empty key matches every key;
    `Exists` matches any value of its key; `Equal` needs key and value to match.
    """
    for toleration in tolerations:
        if toleration.effect and toleration.effect != taint.effect:
            continue
        if toleration.operator == "Exists":
            if not toleration.key or toleration.key == taint.key:
                return True
        elif toleration.key == taint.key and toleration.value == taint.value:
            return True
    return False


def first_untolerated(tolerations: Sequence[Toleration], taints: Sequence[Taint]) -> Taint | None:
    """The first NoSchedule/NoExecute taint not tolerated, in the node's order."""
    for taint in taints:
        if taint.effect in HARD_EFFECTS and not tolerates(tolerations, taint):
            return taint
    return None


class Check(Protocol):
    @property
    def reason(self) -> str:
        """How the explanation names nodes failing this check."""
        ...

    @property
    def static(self) -> bool:
        """Depends only on the pod's spec and the nodes, not on what is used."""
        ...

    def mask(self, usage: Usage, spec: PodSpec) -> BoolArray:
        """True for every node this check lets the pod go to."""
        ...


class Scorer(Protocol):
    @property
    def weight(self) -> float: ...

    @property
    def static(self) -> bool: ...

    def score(self, usage: Usage, pod: Pod) -> FloatArray:
        """A score for every node (only feasible nodes' scores are looked at)."""
        ...


@dataclass(frozen=True)
class NodeNameMatches:
    """A pod that names its node (`spec.nodeName`; a DaemonSet's pods do) goes there only."""

    reason: str = "not the node the pod names"
    static: bool = True

    def mask(self, usage: Usage, spec: PodSpec) -> BoolArray:
        if not spec.node_name:
            return usage.all_nodes
        mask = np.zeros(len(usage.cluster), dtype=np.bool_)
        i = usage.cluster.index.get(NodeName(spec.node_name))
        if i is not None:
            mask[i] = True
        return mask


@dataclass(frozen=True)
class NodeReady:
    reason: str = "not ready"
    static: bool = True

    def mask(self, usage: Usage, spec: PodSpec) -> BoolArray:
        return usage.cluster.ready


@dataclass(frozen=True)
class NodeSelectorMatches:
    """Every `key: value` of the pod's nodeSelector is a label of the node."""

    reason: str = "node selector mismatch"
    static: bool = True

    def mask(self, usage: Usage, spec: PodSpec) -> BoolArray:
        cluster = usage.cluster
        mask = np.ones(len(cluster), dtype=np.bool_)
        for key, value in spec.node_selector:
            codes = cluster.label_codes.get(key)
            code = cluster.label_vocab[key].get(value) if codes is not None else None
            if codes is None or code is None:
                return np.zeros(len(cluster), dtype=np.bool_)
            mask &= codes == code
        return mask

    @staticmethod
    def mismatches(cluster: Cluster, spec: PodSpec, failing: BoolArray) -> list[tuple[tuple[str, str], int]]:
        """For the nodes in `failing`, each counted under the first pair of the selector it
        lacks: (pair, count) in the selector's order."""
        left = failing.copy()
        found = []
        for key, value in spec.node_selector:
            codes = cluster.label_codes.get(key)
            code = cluster.label_vocab[key].get(value) if codes is not None else None
            lacking = left.copy() if codes is None or code is None else left & (codes != code)
            count = int(lacking.sum())
            if count:
                found.append(((key, value), count))
                left &= ~lacking
        return found


@dataclass(frozen=True)
class TaintsTolerated:
    """Every NoSchedule and NoExecute taint of the node is tolerated by the pod.

    Tolerations are matched once per distinct taint set, not once per node.
    """

    reason: str = "untolerated taint"
    static: bool = True

    def mask(self, usage: Usage, spec: PodSpec) -> BoolArray:
        cluster = usage.cluster
        per_set = np.array(
            [first_untolerated(spec.tolerations, taints) is None for taints in cluster.taint_sets],
            dtype=np.bool_,
        )
        return per_set[cluster.taint_group]

    @staticmethod
    def blocking(cluster: Cluster, spec: PodSpec, i: int) -> Taint | None:
        """The taint that keeps the pod off node `i`, for the explanation."""
        return first_untolerated(spec.tolerations, cluster.taint_sets[int(cluster.taint_group[i])])


@dataclass(frozen=True)
class ClaimsOnNode:
    """Every PersistentVolumeClaim the pod uses has its volume on the node, or nowhere yet
    (then the node the pod lands on will hold it): local volumes pin their pods."""

    reason: str = "volume node affinity conflict"
    static: bool = False

    def mask(self, usage: Usage, spec: PodSpec) -> BoolArray:
        mask = usage.all_nodes
        for claim in spec.claims:
            node = usage.claim_node(claim)
            if node is None:
                continue
            pinned = np.zeros(len(usage.cluster), dtype=np.bool_)
            if node >= 0:
                pinned[node] = True
            mask = mask & pinned
        return mask


@dataclass(frozen=True)
class HostPortsFree:
    """No pod bound or placed on the node holds one of the pod's hostPorts (per protocol)."""

    reason: str = "host port in use"
    static: bool = False

    def mask(self, usage: Usage, spec: PodSpec) -> BoolArray:
        claims = spec.host_port_claims
        if not claims:
            return usage.all_nodes
        mask = usage.all_nodes
        for claim in claims:
            taken = usage.host_port_taken(claim)
            if taken is not None:
                mask = mask & ~taken
        return mask


@dataclass(frozen=True)
class PodSlotFree:
    """Fewer pods on the node than its `max_pods`."""

    reason: str = "too many pods"
    static: bool = False

    def mask(self, usage: Usage, spec: PodSpec) -> BoolArray:
        return usage.pods_free > 0


@dataclass(frozen=True)
class CpuFits:
    """The cpu request fits in what bound and placed pods leave; a request of 0 always fits."""

    reason: str = "insufficient cpu"
    static: bool = False

    def mask(self, usage: Usage, spec: PodSpec) -> BoolArray:
        if spec.cpu_request_milli == 0:
            return usage.all_nodes
        return usage.cpu_free >= spec.cpu_request_milli


@dataclass(frozen=True)
class MemoryFits:
    """The memory request fits in what is left; a request of 0 always fits."""

    reason: str = "insufficient memory"
    static: bool = False

    def mask(self, usage: Usage, spec: PodSpec) -> BoolArray:
        if spec.memory_request_bytes == 0:
            return usage.all_nodes
        return usage.memory_free >= spec.memory_request_bytes


@dataclass(frozen=True)
class LeastAllocated:
    """Mean of the free cpu and free memory fractions after placing; 0 for a 0 capacity."""

    weight: float = 1.0
    static: bool = False

    def score(self, usage: Usage, pod: Pod) -> FloatArray:
        cluster = usage.cluster
        cpu = usage.cpu_free_float - float(pod.spec.cpu_request_milli)
        cpu /= cluster.cpu_scale
        memory = usage.memory_free_float - float(pod.spec.memory_request_bytes)
        memory /= cluster.memory_scale
        cpu += memory
        cpu /= 2.0
        return cpu


@dataclass(frozen=True)
class OwnerSpread:
    """`1 / (1 + pods of the same owner on the node)`: replicas go to different nodes."""

    weight: float = 1.0
    static: bool = False

    def score(self, usage: Usage, pod: Pod) -> FloatArray:
        return usage.spread(pod.owner)


@dataclass(frozen=True)
class SoftTaints:
    """Minus the number of PreferNoSchedule taints the pod does not tolerate."""

    weight: float = 0.5
    static: bool = True

    def score(self, usage: Usage, pod: Pod) -> FloatArray:
        cluster = usage.cluster
        tolerations = pod.spec.tolerations
        per_set = np.array(
            [
                -float(sum(1 for t in taints if t.effect == SOFT_EFFECT and not tolerates(tolerations, t)))
                for taints in cluster.taint_sets
            ],
            dtype=np.float64,
        )
        return per_set[cluster.taint_group]


CHECKS: tuple[Check, ...] = (
    NodeNameMatches(),
    NodeReady(),
    ClaimsOnNode(),
    NodeSelectorMatches(),
    TaintsTolerated(),
    HostPortsFree(),
    PodSlotFree(),
    CpuFits(),
    MemoryFits(),
)
SCORERS: tuple[Scorer, ...] = (LeastAllocated(), OwnerSpread(), SoftTaints())
