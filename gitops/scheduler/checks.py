"""Feasibility checks and scorers, each working on all nodes at once.

A check answers "can this pod go there?" for every node with one boolean array; a scorer
answers "how good is it there?" with one float array. Checks and scorers marked `static`
depend only on the pod's spec and the nodes (readiness, labels, taints, node affinity): the
scheduler evaluates them once per distinct value of what they read (`key`) and shares the
result between pods; the others depend on what is already used or placed and are
re-evaluated for every pod.

`CHECKS` is also the order in which a pod that fits nowhere is explained: each node is
counted under the first check it fails (`explain` groups them, naming the selector pair,
taint or term at fault).

Scoring, higher is better, `total = sum(weight * score)` in `SCORERS` order (docs/scheduler.md
has the formulas):

    least allocated          1.0  mean of free cpu and memory fractions after placing  (0..1)
    soft taints              0.5  minus the number of untolerated PreferNoSchedule taints
    preferred node affinity  2.0  share of the preferred terms' weight the node matches  (0..1)
    preferred pod affinity   2.0  weighted c / (1 + c) of matching pods in the domain   (-1..1)
    spread                   1.0  default: 1 / (1 + owner's pods on the node), averaged with
                                  the same per zone; or the pod's ScheduleAnyway constraints

A scorer with nothing to say about a pod (no terms; the default spread of an owner with no
pod yet, 1 everywhere) is left out of its total.

Spreading and least-allocated weigh the same, so a second replica goes to an empty node
even if the node with the first one is a little emptier; one untolerated
PreferNoSchedule taint outweighs half of either, so it steers without ever blocking; what
a manifest says it prefers weighs twice as much.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from gitops.model import (
    NodeName,
    NodeSelectorTerm,
    Pod,
    Taint,
    Toleration,
    TopologySpreadConstraint,
)
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

    def key(self, pod: Pod) -> Hashable:
        """What of the pod a static check reads: pods with equal keys get the same mask."""
        ...

    def mask(self, usage: Usage, pod: Pod) -> BoolArray:
        """True for every node this check lets the pod go to."""
        ...

    def explain(self, usage: Usage, pod: Pod, failing: BoolArray) -> list[tuple[str, int]]:
        """The nodes of `failing` grouped by what fails: (text, count), in order."""
        ...


class Scorer(Protocol):
    @property
    def weight(self) -> float: ...

    @property
    def name(self) -> str: ...

    @property
    def static(self) -> bool: ...

    def key(self, pod: Pod) -> Hashable: ...

    def score(self, usage: Usage, pod: Pod) -> FloatArray | None:
        """A score for every node (only feasible nodes' scores are looked at); None when it
        is 0 everywhere (the scorer has nothing to say about this pod)."""
        ...


class _Plain:
    """What most checks share: the reason names all failing nodes alike."""

    reason: str

    def key(self, pod: Pod) -> Hashable:
        return pod.spec

    def explain(self, usage: Usage, pod: Pod, failing: BoolArray) -> list[tuple[str, int]]:
        return [(self.reason, int(failing.sum()))]


@dataclass(frozen=True)
class NodeNameMatches(_Plain):
    """A pod that names its node (`spec.nodeName`; a DaemonSet's pods do) goes there only."""

    reason: str = "not the node the pod names"
    static: bool = True

    def key(self, pod: Pod) -> Hashable:
        return pod.spec.node_name

    def mask(self, usage: Usage, pod: Pod) -> BoolArray:
        if not pod.spec.node_name:
            return usage.all_nodes
        mask = np.zeros(len(usage.cluster), dtype=np.bool_)
        i = usage.cluster.index.get(NodeName(pod.spec.node_name))
        if i is not None:
            mask[i] = True
        return mask


@dataclass(frozen=True)
class NodeReady(_Plain):
    reason: str = "not ready"
    static: bool = True

    def key(self, pod: Pod) -> Hashable:
        return None

    def mask(self, usage: Usage, pod: Pod) -> BoolArray:
        return usage.cluster.ready


@dataclass(frozen=True)
class NodeSelectorMatches:
    """Every `key: value` of the pod's nodeSelector is a label of the node."""

    reason: str = "node selector mismatch"
    static: bool = True

    def key(self, pod: Pod) -> Hashable:
        return pod.spec.node_selector

    def mask(self, usage: Usage, pod: Pod) -> BoolArray:
        cluster = usage.cluster
        mask = np.ones(len(cluster), dtype=np.bool_)
        for key, value in pod.spec.node_selector:
            codes = cluster.label_codes.get(key)
            code = cluster.label_vocab[key].get(value) if codes is not None else None
            if codes is None or code is None:
                return np.zeros(len(cluster), dtype=np.bool_)
            mask &= codes == code
        return mask

    def explain(self, usage: Usage, pod: Pod, failing: BoolArray) -> list[tuple[str, int]]:
        """Each failing node under the first pair of the selector it lacks."""
        cluster = usage.cluster
        left = failing.copy()
        found = []
        for key, value in pod.spec.node_selector:
            codes = cluster.label_codes.get(key)
            code = cluster.label_vocab[key].get(value) if codes is not None else None
            lacking = left.copy() if codes is None or code is None else left & (codes != code)
            count = int(lacking.sum())
            if count:
                found.append((f"{self.reason} {{{key}={value}}}", count))
                left &= ~lacking
        return found


def term_mask(cluster: Cluster, term: NodeSelectorTerm) -> BoolArray:
    """The nodes a node selector term matches: its label and field expressions all hold."""
    n = len(cluster)
    if not term.expressions and not term.fields:
        return np.zeros(n, dtype=np.bool_)
    mask = np.ones(n, dtype=np.bool_)
    for expression in term.expressions:
        codes = cluster.label_codes.get(expression.key)
        vocab = cluster.label_vocab.get(expression.key, {})
        # The requirement once per distinct value (and once for "no such label").
        per_value = np.array(
            [expression.matches(value) for value in vocab] + [expression.matches(None)], dtype=np.bool_
        )
        mask &= per_value[cluster.domains(expression.key)] if codes is not None else per_value[-1]
    for field in term.fields:
        mask &= np.array(
            [field.matches(name if field.key == "metadata.name" else None) for name in cluster.names],
            dtype=np.bool_,
        )
    return mask


@dataclass(frozen=True)
class NodeAffinityMatches:
    """Required node affinity: the node matches one of the terms (none required: any node)."""

    reason: str = "node affinity mismatch"
    static: bool = True

    def key(self, pod: Pod) -> Hashable:
        return pod.spec.affinity.node_required

    def mask(self, usage: Usage, pod: Pod) -> BoolArray:
        terms = pod.spec.affinity.node_required
        if terms is None:
            return usage.all_nodes
        mask = np.zeros(len(usage.cluster), dtype=np.bool_)
        for term in terms:
            mask |= term_mask(usage.cluster, term)
        return mask

    def explain(self, usage: Usage, pod: Pod, failing: BoolArray) -> list[tuple[str, int]]:
        terms = pod.spec.affinity.node_required or ()
        return [(f"{self.reason} {{{' or '.join(str(t) for t in terms)}}}", int(failing.sum()))]


@dataclass(frozen=True)
class TaintsTolerated:
    """Every NoSchedule and NoExecute taint of the node is tolerated by the pod.

    Tolerations are matched once per distinct taint set, not once per node.
    """

    reason: str = "untolerated taint"
    static: bool = True

    def key(self, pod: Pod) -> Hashable:
        return pod.spec.tolerations

    def mask(self, usage: Usage, pod: Pod) -> BoolArray:
        cluster = usage.cluster
        per_set = np.array(
            [first_untolerated(pod.spec.tolerations, taints) is None for taints in cluster.taint_sets],
            dtype=np.bool_,
        )
        return per_set[cluster.taint_group]

    def explain(self, usage: Usage, pod: Pod, failing: BoolArray) -> list[tuple[str, int]]:
        """Each failing node under its first untolerated taint."""
        cluster = usage.cluster
        per_set = np.bincount(cluster.taint_group[failing], minlength=len(cluster.taint_sets))
        found: dict[str, int] = {}
        for taint_set in np.flatnonzero(per_set):
            taint = first_untolerated(pod.spec.tolerations, cluster.taint_sets[int(taint_set)])
            text = f"{self.reason} {{{taint}}}"
            found[text] = found.get(text, 0) + int(per_set[taint_set])
        return list(found.items())


@dataclass(frozen=True)
class ClaimsOnNode(_Plain):
    """Every PersistentVolumeClaim the pod uses has its volume on the node, or nowhere yet
    (then the node the pod lands on will hold it): local volumes pin their pods."""

    reason: str = "volume node affinity conflict"
    static: bool = False

    def mask(self, usage: Usage, pod: Pod) -> BoolArray:
        mask = usage.all_nodes
        for claim in pod.spec.claims:
            node = usage.claim_node(claim)
            if node is None:
                continue
            pinned = np.zeros(len(usage.cluster), dtype=np.bool_)
            if node >= 0:
                pinned[node] = True
            mask = mask & pinned
        return mask


@dataclass(frozen=True)
class HostPortsFree(_Plain):
    """No pod bound or placed on the node holds one of the pod's hostPorts (per protocol)."""

    reason: str = "host port in use"
    static: bool = False

    def mask(self, usage: Usage, pod: Pod) -> BoolArray:
        claims = pod.spec.host_port_claims
        if not claims:
            return usage.all_nodes
        mask = usage.all_nodes
        for claim in claims:
            taken = usage.host_port_taken(claim)
            if taken is not None:
                mask = mask & ~taken
        return mask


@dataclass(frozen=True)
class PodSlotFree(_Plain):
    """Fewer pods on the node than its `max_pods`."""

    reason: str = "too many pods"
    static: bool = False

    def mask(self, usage: Usage, pod: Pod) -> BoolArray:
        return usage.pods_free > 0


@dataclass(frozen=True)
class CpuFits(_Plain):
    """The cpu request fits in what bound and placed pods leave; a request of 0 always fits."""

    reason: str = "insufficient cpu"
    static: bool = False

    def mask(self, usage: Usage, pod: Pod) -> BoolArray:
        request = pod.spec.cpu_request_milli
        if request == 0:
            return usage.all_nodes
        return usage.cpu_free >= request


@dataclass(frozen=True)
class MemoryFits(_Plain):
    """The memory request fits in what is left; a request of 0 always fits."""

    reason: str = "insufficient memory"
    static: bool = False

    def mask(self, usage: Usage, pod: Pod) -> BoolArray:
        request = pod.spec.memory_request_bytes
        if request == 0:
            return usage.all_nodes
        return usage.memory_free >= request


def _first_failing(failing: BoolArray, parts: Sequence[tuple[str, BoolArray]]) -> list[tuple[str, int]]:
    """Each failing node under the first part whose mask it fails: (text, count) in order."""
    left = failing.copy()
    found: dict[str, int] = {}
    for text, ok in parts:
        here = left & ~ok
        count = int(here.sum())
        if count:
            found[text] = found.get(text, 0) + count
            left &= ok
    return list(found.items())


class _ByParts(_Plain, ABC):
    """A check made of parts (a term, a constraint): a node passes when it passes every
    part, and a failing node is named under the first part it fails."""

    reason: str

    @abstractmethod
    def _parts(self, usage: Usage, pod: Pod) -> list[tuple[str, BoolArray]]:
        """(text naming the part, the nodes passing it) for each part, in order."""

    def mask(self, usage: Usage, pod: Pod) -> BoolArray:
        mask = usage.all_nodes
        for _, ok in self._parts(usage, pod):
            mask = mask & ok
        return mask

    def explain(self, usage: Usage, pod: Pod, failing: BoolArray) -> list[tuple[str, int]]:
        return _first_failing(failing, self._parts(usage, pod))


@dataclass(frozen=True)
class ExistingAntiAffinity(_ByParts):
    """Symmetry: no pod in the cluster has required anti-affinity to this pod in the node's
    domain (an existing pod's "not beside pods like you" repels the newcomer too)."""

    reason: str = "would violate existing pods' anti-affinity"
    static: bool = False

    def _parts(self, usage: Usage, pod: Pod) -> list[tuple[str, BoolArray]]:
        parts = []
        for term in sorted(usage.repelling, key=str):
            if not usage.counts_pod(("term", term), pod):
                continue
            held = usage.repelling[term]
            parts.append((f"{self.reason} ({term})", (held == 0)[usage.cluster.domains(term.topology_key)]))
        return parts


@dataclass(frozen=True)
class PodAntiAffinity(_ByParts):
    """The pod's own required anti-affinity: no matching pod in the node's domain of each
    term's key (a node without the key passes)."""

    reason: str = "would violate pod anti-affinity"
    static: bool = False

    def _parts(self, usage: Usage, pod: Pod) -> list[tuple[str, BoolArray]]:
        parts = []
        for term in pod.spec.affinity.anti_required:
            per_domain = usage.domain_counts(("term", term), term.topology_key)
            parts.append(
                (f"{self.reason} ({term})", (per_domain == 0)[usage.cluster.domains(term.topology_key)])
            )
        return parts


@dataclass(frozen=True)
class PodAffinity(_ByParts):
    """The pod's own required affinity: for every term, a pod matching all the terms in the
    node's domain of the term's key; the node must have every key. Kubernetes' exception:
    when no such pod exists anywhere and the pod matches all its own terms, any node with
    all the keys will do (the first of a group with affinity to itself)."""

    reason: str = "would violate pod affinity"
    static: bool = False

    def _parts(self, usage: Usage, pod: Pod) -> list[tuple[str, BoolArray]]:
        terms = pod.spec.affinity.pod_required
        if not terms:
            return []
        cluster = usage.cluster
        counted = ("all", terms)
        has_keys = [cluster.domains(t.topology_key) != cluster.no_domain(t.topology_key) for t in terms]
        per_domain = [usage.domain_counts(counted, t.topology_key) for t in terms]
        if not any(counts.any() for counts in per_domain) and usage.counts_pod(counted, pod):
            return [(f"{self.reason} ({t})", has) for t, has in zip(terms, has_keys, strict=True)]
        return [
            (f"{self.reason} ({term})", has & (counts > 0)[cluster.domains(term.topology_key)])
            for term, has, counts in zip(terms, has_keys, per_domain, strict=True)
        ]


def static_mask(usage: Usage, check: Check, pod: Pod) -> BoolArray:
    """A static check's mask for `pod`, computed once per distinct key in the run; the mask
    of the one node a pod names is not kept (each DaemonSet pod's would stay for the whole
    run)."""
    key = (check, check.key(pod))
    found: BoolArray | None = usage.static.get(key)
    if found is None:
        found = check.mask(usage, pod)
        if not (isinstance(check, NodeNameMatches) and pod.spec.node_name):
            usage.static[key] = found
    return found


def _eligible(usage: Usage, pod: Pod, constraint: TopologySpreadConstraint) -> BoolArray:
    """The nodes whose pods a spread constraint counts: ready, with the key, and matching
    the pod's node selector and affinity (policy Honor) and tolerated (policy Honor). One
    array per distinct answer in the run (its identity keys the counts kept on it)."""
    affinity = constraint.node_affinity_policy == "Honor"
    taints = constraint.node_taints_policy == "Honor"
    key = (
        "eligible",
        constraint.topology_key,
        NodeSelectorMatches().key(pod) if affinity else None,
        NodeAffinityMatches().key(pod) if affinity else None,
        TaintsTolerated().key(pod) if taints else None,
    )
    found: BoolArray | None = usage.static.get(key)
    if found is not None:
        return found
    cluster = usage.cluster
    mask: BoolArray = cluster.ready & (
        cluster.domains(constraint.topology_key) != cluster.no_domain(constraint.topology_key)
    )
    if affinity:
        mask &= static_mask(usage, NodeSelectorMatches(), pod)
        mask &= static_mask(usage, NodeAffinityMatches(), pod)
    if taints:
        mask &= static_mask(usage, TaintsTolerated(), pod)
    usage.static[key] = mask
    return mask


def spread_counts(usage: Usage, pod: Pod, constraint: TopologySpreadConstraint) -> FloatArray:
    """Per domain of the constraint's key, the pods it counts on eligible nodes."""
    counted = ("spread", constraint.selector, pod.namespace)
    return usage.domain_counts(counted, constraint.topology_key, _eligible(usage, pod, constraint))


def _present(usage: Usage, key: str, eligible: BoolArray) -> BoolArray:
    """Per domain code of `key`, whether an eligible node has it (cached per mask)."""
    cached = ("present", key, id(eligible))
    found: BoolArray | None = usage.static.get(cached)
    if found is None:
        found = (
            np.bincount(usage.cluster.domains(key)[eligible], minlength=usage.cluster.no_domain(key) + 1) > 0
        )
        found[usage.cluster.no_domain(key)] = False
        usage.static[cached] = found
    return found


@dataclass(frozen=True)
class TopologySpread(_ByParts):
    """Each DoNotSchedule topology spread constraint: placing the pod in the node's domain
    keeps the skew against the emptiest domain within `maxSkew` (docs/scheduler.md)."""

    reason: str = "would violate topology spread"
    static: bool = False

    def _parts(self, usage: Usage, pod: Pod) -> list[tuple[str, BoolArray]]:
        cluster = usage.cluster
        parts = []
        for constraint in pod.spec.topology_spread:
            if constraint.when_unsatisfiable != "DoNotSchedule":
                continue
            key = constraint.topology_key
            eligible = _eligible(usage, pod, constraint)
            counts = usage.domain_counts(("spread", constraint.selector, pod.namespace), key, eligible)
            present = _present(usage, key, eligible)
            domains = int(np.count_nonzero(present))
            lowest = 0.0
            if domains and domains >= constraint.min_domains:
                lowest = float(counts[present].min())
            own = (
                1.0 if constraint.selector is not None and constraint.selector.matches(pod.label_map) else 0.0
            )
            allowed = counts + own - lowest <= constraint.max_skew  # per domain
            allowed[cluster.no_domain(key)] = False  # a node without the key never passes
            ok = allowed[cluster.domains(key)]
            parts.append((f"{self.reason} ({constraint})", ok))
        return parts


# --- scorers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class LeastAllocated:
    """Mean of the free cpu and free memory fractions after placing; 0 for a 0 capacity."""

    weight: float = 1.0
    name: str = "least allocated"
    static: bool = False

    def key(self, pod: Pod) -> Hashable:
        return None

    def score(self, usage: Usage, pod: Pod) -> FloatArray | None:
        cluster = usage.cluster
        cpu = usage.cpu_free_float - float(pod.spec.cpu_request_milli)
        cpu /= cluster.cpu_scale
        memory = usage.memory_free_float - float(pod.spec.memory_request_bytes)
        memory /= cluster.memory_scale
        cpu += memory
        cpu /= 2.0
        return cpu


@dataclass(frozen=True)
class Spread:
    """Without constraints of its own, a pod spreads from its owner's other pods: by node,
    and by zone when nodes have zones. With constraints, by its ScheduleAnyway ones."""

    weight: float = 1.0
    name: str = "spread"
    static: bool = False

    def key(self, pod: Pod) -> Hashable:
        return None

    def score(self, usage: Usage, pod: Pod) -> FloatArray | None:
        cluster = usage.cluster
        if pod.spec.topology_spread:
            soft = [c for c in pod.spec.topology_spread if c.when_unsatisfiable == "ScheduleAnyway"]
            if not soft:
                return None
            total = np.zeros(len(cluster), dtype=np.float64)
            for constraint in soft:
                key = constraint.topology_key
                counts = spread_counts(usage, pod, constraint)[cluster.domains(key)]
                total += np.where(cluster.domains(key) != cluster.no_domain(key), 1.0 / (1.0 + counts), 0.0)
            total /= float(len(soft))
            return total
        return usage.spread((pod.owner, pod.template_hash))


@dataclass(frozen=True)
class SoftTaints:
    """Minus the number of PreferNoSchedule taints the pod does not tolerate."""

    weight: float = 0.5
    name: str = "soft taints"
    static: bool = True

    def key(self, pod: Pod) -> Hashable:
        return pod.spec.tolerations

    def score(self, usage: Usage, pod: Pod) -> FloatArray | None:
        cluster = usage.cluster
        tolerations = pod.spec.tolerations
        per_set = np.array(
            [
                -float(sum(1 for t in taints if t.effect == SOFT_EFFECT and not tolerates(tolerations, t)))
                for taints in cluster.taint_sets
            ],
            dtype=np.float64,
        )
        if not per_set.any():
            return None
        return per_set[cluster.taint_group]


@dataclass(frozen=True)
class PreferredNodeAffinity:
    """The share of the preferred node-affinity weight the node matches."""

    weight: float = 2.0
    name: str = "preferred node affinity"
    static: bool = True

    def key(self, pod: Pod) -> Hashable:
        return pod.spec.affinity.node_preferred

    def score(self, usage: Usage, pod: Pod) -> FloatArray | None:
        terms = pod.spec.affinity.node_preferred
        if not terms:
            return None
        total = np.zeros(len(usage.cluster), dtype=np.float64)
        for preferred in terms:
            total += np.where(term_mask(usage.cluster, preferred.term), float(preferred.weight), 0.0)
        total /= float(sum(p.weight for p in terms))
        return total


@dataclass(frozen=True)
class PreferredPodAffinity:
    """Weighted pull of matching pods in the node's domain (affinity) and push (anti-affinity):
    `w * c / (1 + c)` per term, over the sum of the weights."""

    weight: float = 2.0
    name: str = "preferred pod affinity"
    static: bool = False

    def key(self, pod: Pod) -> Hashable:
        return None

    def score(self, usage: Usage, pod: Pod) -> FloatArray | None:
        affinity = pod.spec.affinity
        if not affinity.pod_preferred and not affinity.anti_preferred:
            return None
        cluster = usage.cluster
        total = np.zeros(len(cluster), dtype=np.float64)
        for sign, weighted in [(1.0, t) for t in affinity.pod_preferred] + [
            (-1.0, t) for t in affinity.anti_preferred
        ]:
            term = weighted.term
            counts = usage.domain_counts(("term", term), term.topology_key)[
                cluster.domains(term.topology_key)
            ]
            part = float(weighted.weight) * (counts / (1.0 + counts))
            if sign > 0:
                total += part
            else:
                total -= part
        total /= float(sum(t.weight for t in (*affinity.pod_preferred, *affinity.anti_preferred)))
        return total


CHECKS: tuple[Check, ...] = (
    NodeNameMatches(),
    NodeReady(),
    ClaimsOnNode(),
    NodeSelectorMatches(),
    NodeAffinityMatches(),
    TaintsTolerated(),
    HostPortsFree(),
    PodSlotFree(),
    CpuFits(),
    MemoryFits(),
    TopologySpread(),
    PodAffinity(),
    PodAntiAffinity(),
    ExistingAntiAffinity(),
)
# The checks of room on a node: what preemption can free.
ROOM_CHECKS: tuple[Check, ...] = tuple(
    check for check in CHECKS if isinstance(check, HostPortsFree | PodSlotFree | CpuFits | MemoryFits)
)
# The checks that depend on what is placed but not on room: claims, spread, pod affinity.
BEYOND_ROOM: tuple[Check, ...] = tuple(
    check for check in CHECKS if not check.static and check not in ROOM_CHECKS
)
SCORERS: tuple[Scorer, ...] = (
    LeastAllocated(),
    SoftTaints(),
    PreferredNodeAffinity(),
    PreferredPodAffinity(),
    Spread(),
)
