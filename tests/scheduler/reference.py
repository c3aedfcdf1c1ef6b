"""The slow, obviously-correct twin of the scheduler: one node at a time, plain Python.

Written from docs/scheduler.md, not from the fast code: it shares no helper with
`gitops.scheduler`, and matches selectors, terms and tolerations itself (the model's
`matches()` methods are not used; only the `__str__` of requirements, terms and
constraints, which defines the reason text). Same semantics and tie-breaks: pods by
priority, highest first, in the given order among equals; for each, every node in order,
the first failing check recorded, the score of a feasible node compared with a strict `>`
so that the first best node wins. Scores are computed with the operations of the
document's formulas, in their order, so equal placements come out bit for bit.

It doubles as the fair per-node baseline of bench/scheduler.py, so it is shaped as
kube-scheduler is: what a call never changes (node labels, taints, capacities) is prepared
once (`_Node`); what binding a pod changes (free room, pods per owner, pods per label set
per node, existing pods' anti-affinity terms) is kept up to date pod by pod (`_Cluster`);
what all nodes share for one pod (matching pods per topology domain, spread counts, ...)
is computed once before its node loop (`_PreFilter`, kube-scheduler's PreFilter), so each
node's Filter and Score is a few lookups.

Where the document is silent, this twin reads it as Kubernetes does:

- Gt and Lt parse both sides as Go's `strconv.ParseInt(s, 10, 64)` does (an optional
  sign and ASCII digits, within int64), else the requirement does not hold.
- Pod affinity's first-pod exception applies when no pod matching all the terms is on a
  node that has *any* of the terms' keys (kube-scheduler: no topology pair counted).
- A namespace's `kubernetes.io/metadata.name` label is its name even if its manifest says
  otherwise.
- The preferred pod affinity score is one running sum from 0.0: `+ w * f(c)` for each
  affinity term, then `- w * f(c)` for each anti-affinity term, divided by the weights.
- Preemption: a preempting pod holds its host ports, a pod slot, cpu and memory on its
  node for the rest of the run (not its claims), and is not a pod in the cluster (no
  affinity, spread or owner counts); its victims stay pods in the cluster and keep their
  room until they are gone, as terminating pods do (a later preemptor of the run removes
  them at no cost, as the next pass will), are never chosen again, and each takes one
  disruption from every budget that selects it for the rest of the run. Victims are
  listed in the order of the reprieve walk (violating ones first, each group by priority,
  highest first), as kube-scheduler lists them. Terminating pods on the chosen node keep
  their room until they are gone, as in kube-scheduler. A budget's empty selector selects
  every pod of its namespace (policy/v1), None selects none.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from gitops.model import (
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
    PodSpec,
    Preemption,
    Requirement,
    Taint,
    Toleration,
    TopologySpreadConstraint,
)

ZONE = "topology.kubernetes.io/zone"
NAMESPACE_NAME = "kubernetes.io/metadata.name"
HARD_EFFECTS = ("NoSchedule", "NoExecute")
SOFT_EFFECT = "PreferNoSchedule"
NO_NODES = "0/0 nodes: no nodes registered"

# Least allocated and spread weigh 1.0, which is not multiplied.
WEIGHT_SOFT_TAINTS = 0.5
WEIGHT_NODE_PREFERENCE = 2.0
WEIGHT_POD_PREFERENCE = 2.0

# The checks by their number in the document, which is also the order of the explanation.
NODE_NAME, READY, VOLUMES, NODE_SELECTOR, NODE_AFFINITY, TAINTS = 1, 2, 3, 4, 5, 6
HOST_PORTS, POD_SLOTS, CPU, MEMORY = 7, 8, 9, 10
TOPOLOGY_SPREAD, AFFINITY, ANTI_AFFINITY, EXISTING_ANTI_AFFINITY = 11, 12, 13, 14

Failure = tuple[int, str]
"""(check number, reason text) of the first check a node fails."""


# --- matching -------------------------------------------------------------------------

_DECIMAL = re.compile(r"[+-]?[0-9]+")


def parse_int64(text: str) -> int | None:
    """Go's `strconv.ParseInt(text, 10, 64)`, which Kubernetes uses for Gt and Lt."""
    if _DECIMAL.fullmatch(text) is None:
        return None
    number = int(text)
    return number if -(2**63) <= number < 2**63 else None


def requirement_holds(requirement: Requirement, value: str | None) -> bool:
    """Whether a label of the requirement's key with `value` (None: no such label) satisfies it."""
    operator = requirement.operator
    if operator == "In":
        return value is not None and value in requirement.values
    if operator == "NotIn":
        return value is None or value not in requirement.values
    if operator == "Exists":
        return value is not None
    if operator == "DoesNotExist":
        return value is None
    if value is None or len(requirement.values) != 1:
        return False
    number, bound = parse_int64(value), parse_int64(requirement.values[0])
    if number is None or bound is None:
        return False
    if operator == "Gt":
        return number > bound
    if operator == "Lt":
        return number < bound
    raise ValueError(f"unknown operator {operator!r}")


def selector_matches(selector: LabelSelector | None, labels: Mapping[str, str]) -> bool:
    """Every pair and every requirement holds; None matches nothing, the empty selector all."""
    if selector is None:
        return False
    if any(labels.get(key) != value for key, value in selector.match_labels):
        return False
    return all(requirement_holds(r, labels.get(r.key)) for r in selector.expressions)


def node_term_matches(term: NodeSelectorTerm, name: str, labels: Mapping[str, str]) -> bool:
    """All label expressions and all field expressions (`metadata.name` is the only field)
    hold; a term with neither matches no node."""
    if not term.expressions and not term.fields:
        return False
    if not all(requirement_holds(r, labels.get(r.key)) for r in term.expressions):
        return False
    return all(requirement_holds(r, name if r.key == "metadata.name" else None) for r in term.fields)


def namespace_labels(
    namespace: str, namespaces: Mapping[str, tuple[tuple[str, str], ...]] | None
) -> dict[str, str]:
    """The labels of a namespace's manifest (none without one) plus its name label."""
    labels = dict((namespaces or {}).get(namespace, ()))
    labels[NAMESPACE_NAME] = namespace
    return labels


def term_selects(
    term: PodAffinityTerm, namespace: str, labels: Mapping[str, str], ns_labels: Mapping[str, str]
) -> bool:
    """Whether a pod of `namespace` (whose labels are `ns_labels`) with `labels` matches the term."""
    if not selector_matches(term.selector, labels):
        return False
    return namespace in term.namespaces or selector_matches(term.namespace_selector, ns_labels)


def budget_selects(budget: DisruptionBudget, namespace: str, labels: Mapping[str, str]) -> bool:
    return budget.namespace == namespace and selector_matches(budget.selector, labels)


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


# --- the cluster as one run sees it ------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Node:
    """What a call never changes about a node, prepared once."""

    index: int
    name: NodeName
    labels: dict[str, str]
    ready: bool
    max_pods: int
    cpu: int
    memory: int
    hard_taints: tuple[Taint, ...]
    soft_taints: tuple[Taint, ...]


@dataclass(frozen=True, slots=True)
class _Need:
    """The room a pod takes on its node (PodSpec computes these on each access)."""

    cpu: int
    memory: int
    ports: tuple[tuple[int, str], ...]  # (hostPort, protocol)

    @classmethod
    def of(cls, spec: PodSpec) -> _Need:
        return cls(spec.cpu_request_milli, spec.memory_request_bytes, spec.host_port_claims)


@dataclass(slots=True, eq=False)
class _Resident:
    """A pod taking room on a node: bound (it may be preempted), placed in this run, or
    held for a pod that preempted."""

    pod: Pod
    labels: dict[str, str]
    bound: bool
    need: _Need
    victim: bool = False  # chosen by a preemptor in this run: leaving, its room held till gone

    @property
    def priority(self) -> int:
        return self.pod.spec.priority

    @property
    def leaving(self) -> bool:
        return self.victim or self.pod.terminating_at is not None


@dataclass(slots=True, eq=False)
class _LabelSet:
    """The pods in the cluster of one namespace with one set of labels, per node: a
    selector cannot tell them apart, so it is matched once for all of them."""

    namespace: str
    labels: dict[str, str]
    pods: Counter[int] = field(default_factory=Counter)  # node index -> pods
    live: Counter[int] = field(default_factory=Counter)  # node index -> pods not terminating


class _Cluster:
    """Nodes, and the state one run changes as it binds pods."""

    def __init__(
        self,
        nodes: Sequence[Node],
        claims: Mapping[str, NodeName] | None,
        namespaces: Mapping[str, tuple[tuple[str, str], ...]] | None,
        budgets: Sequence[DisruptionBudget],
    ) -> None:
        self.nodes = [
            _Node(
                i,
                node.name,
                dict(node.labels),
                node.ready,
                node.max_pods,
                node.cpu_milli,
                node.memory_bytes,
                tuple(t for t in node.taints if t.effect in HARD_EFFECTS),
                tuple(t for t in node.taints if t.effect == SOFT_EFFECT),
            )
            for i, node in enumerate(nodes)
        ]
        self.by_name = {node.name: node for node in self.nodes}
        self.zoned = any(ZONE in node.labels for node in self.nodes)
        # Room on each node: what checks 7-10 read, and what preemption frees.
        self.cpu_free = [node.cpu for node in self.nodes]
        self.memory_free = [node.memory for node in self.nodes]
        self.residents: list[list[_Resident]] = [[] for _ in self.nodes]
        self.ports: list[Counter[tuple[int, str]]] = [Counter() for _ in self.nodes]
        # The pods in the cluster: what selectors, affinity, spread and owners count.
        self.label_sets: dict[tuple[str, tuple[tuple[str, str], ...]], _LabelSet] = {}
        # (owner, template hash) -> node index -> pods, and -> zone -> pods.
        self.owner_on_node: dict[tuple[ObjectKey, str], Counter[int]] = {}
        self.owner_in_zone: dict[tuple[ObjectKey, str], Counter[str]] = {}
        self.existing_anti: dict[PodAffinityTerm, set[str]] = {}  # term -> domains of pods having it
        self.claims = dict(claims or {})
        self.namespaces = namespaces
        self._namespace_labels: dict[str, dict[str, str]] = {}
        self.budgets = list(budgets)
        self.allowed = [budget.allowed for budget in budgets]

    def namespace_labels(self, namespace: str) -> dict[str, str]:
        labels = self._namespace_labels.get(namespace)
        if labels is None:
            labels = self._namespace_labels[namespace] = namespace_labels(namespace, self.namespaces)
        return labels

    def selects(self, term: PodAffinityTerm, pods: _LabelSet) -> bool:
        return term_selects(term, pods.namespace, pods.labels, self.namespace_labels(pods.namespace))

    def join(self, pod: Pod, node: _Node, need: _Need, *, bound: bool) -> None:
        """`pod` is in the cluster on `node` from now on, and takes room there."""
        labels = dict(pod.labels)
        key = (pod.namespace, tuple(sorted(labels.items())))
        pods = self.label_sets.get(key)
        if pods is None:
            pods = self.label_sets[key] = _LabelSet(pod.namespace, labels)
        pods.pods[node.index] += 1
        if pod.terminating_at is None:
            pods.live[node.index] += 1
        revision = (pod.owner, pod.template_hash)
        self.owner_on_node.setdefault(revision, Counter())[node.index] += 1
        zone = node.labels.get(ZONE)
        if zone is not None:
            self.owner_in_zone.setdefault(revision, Counter())[zone] += 1
        for term in pod.spec.affinity.anti_required:
            domain = node.labels.get(term.topology_key)
            if domain is not None:
                self.existing_anti.setdefault(term, set()).add(domain)
        for claim in pod.spec.claims:
            self.claims.setdefault(claim, node.name)
        self.take_room(_Resident(pod, labels, bound, need), node)

    def take_room(self, resident: _Resident, node: _Node) -> None:
        need = resident.need
        self.residents[node.index].append(resident)
        self.cpu_free[node.index] -= need.cpu
        self.memory_free[node.index] -= need.memory
        self.ports[node.index].update(need.ports)


def room_failure(
    need: _Need, node: _Node, *, pods: int, ports: Counter[tuple[int, str]], cpu_free: int, memory_free: int
) -> Failure | None:
    """Checks 7-10 against the room described: pods there, hostPorts they hold (a count per
    port: bound pods may share one), free cpu and memory."""
    if need.ports and any(ports[port] > 0 for port in need.ports):
        return (HOST_PORTS, "host port in use")
    if pods >= node.max_pods:
        return (POD_SLOTS, "too many pods")
    if need.cpu > 0 and need.cpu > cpu_free:
        return (CPU, "insufficient cpu")
    if need.memory > 0 and need.memory > memory_free:
        return (MEMORY, "insufficient memory")
    return None


# --- one pod --------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Spread:
    """One topology spread constraint of the pod, prepared: its eligible nodes, the
    matching pods per domain, the smallest count and whether the pod counts itself."""

    constraint: TopologySpreadConstraint
    text: str
    eligible: list[bool]
    counts: Counter[str]
    minimum: int
    own: int

    def count(self, node: _Node) -> int | None:
        """`count` of the node's domain; None for a node without the key."""
        domain = node.labels.get(self.constraint.topology_key)
        if domain is None:
            return None
        return self.counts[domain] if self.eligible[node.index] else 0


@dataclass(slots=True, eq=False)
class _Preference:
    """One weighted pod (anti-)affinity term: matching pods per domain of its key."""

    weight: int
    key: str
    counts: Counter[str]

    def value(self, node: _Node) -> float:
        domain = node.labels.get(self.key)
        c = self.counts[domain] if domain is not None else 0
        return self.weight * (c / (1.0 + c))


class _PreFilter:
    """What the Filter and Score of one pod share over all nodes, computed once per pod."""

    def __init__(self, cluster: _Cluster, pod: Pod) -> None:
        self.cluster = cluster
        self.pod = pod
        self.spec = spec = pod.spec
        self.labels = dict(pod.labels)
        self.need = _Need.of(spec)
        self.claims = spec.claims
        # Default spreading: the pods of the pod's owner and template hash per node and zone.
        self.owner_on_node = cluster.owner_on_node.get((pod.owner, pod.template_hash), Counter())
        self.owner_in_zone = cluster.owner_in_zone.get((pod.owner, pod.template_hash), Counter())
        affinity = spec.affinity
        self.node_required = affinity.node_required
        self.node_affinity_text = ""
        if self.node_required is not None:
            self.node_affinity_text = (
                "node affinity mismatch {" + " or ".join(str(t) for t in self.node_required) + "}"
            )
        self.node_preferred = affinity.node_preferred
        self.node_preferred_weight = sum(p.weight for p in affinity.node_preferred)
        own_namespace = cluster.namespace_labels(pod.namespace)

        # 11: existing pods' anti-affinity. Per topology key, the domains the pod may not
        # join, each with the text of the first term (by text) that keeps it out.
        self.repelled: dict[str, dict[str, str]] = {}
        for term, domains in cluster.existing_anti.items():
            if not term_selects(term, pod.namespace, self.labels, own_namespace):
                continue
            text = str(term)
            by_domain = self.repelled.setdefault(term.topology_key, {})
            for domain in domains:
                if domain not in by_domain or text < by_domain[domain]:
                    by_domain[domain] = text

        # 12: its own anti-affinity. Per term, the domains holding a pod that matches it.
        self.anti = [
            (term, f"would violate pod anti-affinity ({term})", self._domains(term, [term]))
            for term in affinity.anti_required
        ]

        # 13: its affinity. Per term, the domains holding a pod that matches all the terms.
        self.affinity = [
            (term, f"would violate pod affinity ({term})", self._domains(term, affinity.pod_required))
            for term in affinity.pod_required
        ]
        self.first_of_its_group = not any(domains for _, _, domains in self.affinity) and all(
            term_selects(term, pod.namespace, self.labels, own_namespace) for term in affinity.pod_required
        )

        # 14 and the spread score.
        self._fits_affinity: list[bool] | None = None
        self._fits_taints: list[bool] | None = None
        spreads = [self._spread(c) for c in spec.topology_spread]
        self.hard_spreads = [s for s in spreads if s.constraint.when_unsatisfiable == "DoNotSchedule"]
        self.soft_spreads = [s for s in spreads if s.constraint.when_unsatisfiable == "ScheduleAnyway"]
        # Left out while the revision has no pod: it would be 1.0 on every node.
        self.default_spread = not spreads and bool(self.owner_on_node)

        self.judges_pods = bool(self.repelled or self.anti or self.affinity or self.hard_spreads)

        # The preferred pod (anti-)affinity score.
        self.attraction = [self._preference(w.weight, w.term) for w in affinity.pod_preferred]
        self.repulsion = [self._preference(w.weight, w.term) for w in affinity.anti_preferred]
        self.pod_preferred_weight = sum(w.weight for w in (*affinity.pod_preferred, *affinity.anti_preferred))

    # --- preparation

    def _domains(self, term: PodAffinityTerm, match_all: Sequence[PodAffinityTerm]) -> set[str]:
        """The domains of `term`'s key holding a pod in the cluster that matches every term
        of `match_all`."""
        nodes = self.cluster.nodes
        domains: set[str] = set()
        for pods in self.cluster.label_sets.values():
            if all(self.cluster.selects(t, pods) for t in match_all):
                for i in pods.pods:
                    domain = nodes[i].labels.get(term.topology_key)
                    if domain is not None:
                        domains.add(domain)
        return domains

    def _preference(self, weight: int, term: PodAffinityTerm) -> _Preference:
        nodes = self.cluster.nodes
        counts: Counter[str] = Counter()
        for pods in self.cluster.label_sets.values():
            if self.cluster.selects(term, pods):
                for i, n in pods.pods.items():
                    domain = nodes[i].labels.get(term.topology_key)
                    if domain is not None:
                        counts[domain] += n
        return _Preference(weight, term.topology_key, counts)

    def _eligible(self, node: _Node, c: TopologySpreadConstraint) -> bool:
        if not node.ready or c.topology_key not in node.labels:
            return False
        if c.node_affinity_policy == "Honor":
            if self._fits_affinity is None:
                self._fits_affinity = [
                    self.selector_mismatch(n) is None and self.node_affinity_holds(n)
                    for n in self.cluster.nodes
                ]
            if not self._fits_affinity[node.index]:
                return False
        if c.node_taints_policy == "Honor":
            if self._fits_taints is None:
                self._fits_taints = [self.untolerated(n) is None for n in self.cluster.nodes]
            if not self._fits_taints[node.index]:
                return False
        return True

    def _spread(self, c: TopologySpreadConstraint) -> _Spread:
        nodes = self.cluster.nodes
        eligible = [self._eligible(node, c) for node in nodes]
        domains = {node.labels[c.topology_key] for node in nodes if eligible[node.index]}
        counts: Counter[str] = Counter()
        for pods in self.cluster.label_sets.values():
            if pods.namespace == self.pod.namespace and selector_matches(c.selector, pods.labels):
                for i, n in pods.live.items():
                    if eligible[i]:
                        counts[nodes[i].labels[c.topology_key]] += n
        if not domains or (c.when_unsatisfiable == "DoNotSchedule" and len(domains) < c.min_domains):
            minimum = 0
        else:
            minimum = min(counts[d] for d in domains)
        own = 1 if selector_matches(c.selector, self.labels) else 0
        return _Spread(c, f"would violate topology spread ({c})", eligible, counts, minimum, own)

    # --- Filter

    def selector_mismatch(self, node: _Node) -> str | None:
        for key, value in self.spec.node_selector:
            if node.labels.get(key) != value:
                return f"node selector mismatch {{{key}={value}}}"
        return None

    def node_affinity_holds(self, node: _Node) -> bool:
        if self.node_required is None:
            return True
        return any(node_term_matches(term, node.name, node.labels) for term in self.node_required)

    def untolerated(self, node: _Node) -> Taint | None:
        for taint in node.hard_taints:
            if not reference_tolerates(self.spec.tolerations, taint):
                return taint
        return None

    def before_room(self, node: _Node) -> Failure | None:
        """Checks 1-6."""
        spec = self.spec
        if spec.node_name and spec.node_name != node.name:
            return (NODE_NAME, "not the node the pod names")
        if not node.ready:
            return (READY, "not ready")
        for claim in self.claims:
            holder = self.cluster.claims.get(claim)
            if holder is not None and holder != node.name:
                return (VOLUMES, "volume node affinity conflict")
        if spec.node_selector:
            mismatch = self.selector_mismatch(node)
            if mismatch is not None:
                return (NODE_SELECTOR, mismatch)
        if self.node_required is not None and not self.node_affinity_holds(node):
            return (NODE_AFFINITY, self.node_affinity_text)
        if node.hard_taints:
            taint = self.untolerated(node)
            if taint is not None:
                return (TAINTS, f"untolerated taint {{{taint}}}")
        return None

    def room(self, node: _Node) -> Failure | None:
        """Checks 7-10 on the node as it is."""
        cluster, i = self.cluster, node.index
        return room_failure(
            self.need,
            node,
            pods=len(cluster.residents[i]),
            ports=cluster.ports[i],
            cpu_free=cluster.cpu_free[i],
            memory_free=cluster.memory_free[i],
        )

    def after_room(self, node: _Node) -> Failure | None:
        """Checks 11-14."""
        if not self.judges_pods:
            return None
        for spread in self.hard_spreads:
            count = spread.count(node)
            if count is None or count + spread.own - spread.minimum > spread.constraint.max_skew:
                return (TOPOLOGY_SPREAD, spread.text)
        for term, text, domains in self.affinity:
            domain = node.labels.get(term.topology_key)
            if domain is None or (not self.first_of_its_group and domain not in domains):
                return (AFFINITY, text)
        for term, text, domains in self.anti:
            domain = node.labels.get(term.topology_key)
            if domain is not None and domain in domains:
                return (ANTI_AFFINITY, text)
        if self.repelled:
            texts = [
                by_domain[domain]
                for key, by_domain in self.repelled.items()
                if (domain := node.labels.get(key)) is not None and domain in by_domain
            ]
            if texts:
                return (EXISTING_ANTI_AFFINITY, f"would violate existing pods' anti-affinity ({min(texts)})")
        return None

    # --- Score

    def score(self, node: _Node) -> float:
        cluster, need, i = self.cluster, self.need, node.index
        cpu_left = cluster.cpu_free[i] - need.cpu
        memory_left = cluster.memory_free[i] - need.memory
        cpu_fraction = cpu_left / node.cpu if node.cpu > 0 else 0.0
        memory_fraction = memory_left / node.memory if node.memory > 0 else 0.0
        total = (cpu_fraction + memory_fraction) / 2.0  # weight 1.0
        # The scores below are 0.0 where skipped, and x + 0.0 == x.
        if node.soft_taints:
            total += WEIGHT_SOFT_TAINTS * self.soft_taint_score(node)
        if self.node_preferred:
            total += WEIGHT_NODE_PREFERENCE * self.node_preference_score(node)
        if self.attraction or self.repulsion:
            total += WEIGHT_POD_PREFERENCE * self.pod_preference_score(node)
        if self.default_spread or self.soft_spreads:
            total += self.spread_score(node)  # weight 1.0
        return total

    def spread_score(self, node: _Node) -> float:
        if self.default_spread:
            h = 1.0 / (1.0 + self.owner_on_node[node.index])
            if not self.cluster.zoned:
                return h
            zone = node.labels.get(ZONE)
            z = 1.0 / (1.0 + self.owner_in_zone[zone]) if zone is not None else h
            return (h + z) / 2.0
        if not self.soft_spreads:
            return 0.0
        total = 0.0
        for spread in self.soft_spreads:
            count = spread.count(node)
            total += 1.0 / (1.0 + count) if count is not None else 0.0
        return total / len(self.soft_spreads)

    def soft_taint_score(self, node: _Node) -> float:
        tolerations = self.spec.tolerations
        return -float(sum(1 for t in node.soft_taints if not reference_tolerates(tolerations, t)))

    def node_preference_score(self, node: _Node) -> float:
        if not self.node_preferred:
            return 0.0
        matched = sum(
            p.weight for p in self.node_preferred if node_term_matches(p.term, node.name, node.labels)
        )
        return matched / self.node_preferred_weight

    def pod_preference_score(self, node: _Node) -> float:
        if not self.attraction and not self.repulsion:
            return 0.0
        total = 0.0
        for preference in self.attraction:
            total += preference.value(node)
        for preference in self.repulsion:
            total -= preference.value(node)
        return total / self.pod_preferred_weight


# --- preemption -------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Candidate:
    node: _Node
    victims: list[_Resident]
    violations: int

    def rank(self) -> tuple[int, float, int, int, int]:
        """Smaller is better: fewest violating victims, lowest highest victim priority (none
        is lowest of all), smallest sum of priorities, fewest victims, first node."""
        priorities = [v.priority for v in self.victims]
        highest = max(priorities) if priorities else -math.inf
        # Priorities counted from the lowest possible one, as kube-scheduler sums them: more
        # victims never sum to less.
        offset = sum(priority + 2**31 for priority in priorities)
        return (self.violations, highest, offset, len(priorities), self.node.index)


def _room_without(state: _PreFilter, node: _Node, removed: set[_Resident]) -> Failure | None:
    """Checks 7-10 with the `removed` residents of `node` gone."""
    cluster, i = state.cluster, node.index
    ports = Counter(cluster.ports[i])
    for resident in removed:
        ports.subtract(resident.need.ports)
    return room_failure(
        state.need,
        node,
        pods=len(cluster.residents[i]) - len(removed),
        ports=ports,
        cpu_free=cluster.cpu_free[i] + sum(r.need.cpu for r in removed),
        memory_free=cluster.memory_free[i] + sum(r.need.memory for r in removed),
    )


def _candidate(state: _PreFilter, node: _Node) -> _Candidate | None:
    """The victims the pod needs on `node`, None if even removing every removable pod
    leaves no room."""
    cluster, priority = state.cluster, state.spec.priority
    removable = [r for r in cluster.residents[node.index] if r.bound and r.priority < priority]
    removed = set(removable)
    if _room_without(state, node, removed) is not None:
        return None
    # Reprieve: highest priority first (a stable sort keeps `bound` order among equals).
    running = sorted((r for r in removable if not r.leaving), key=lambda r: -r.priority)
    allowed = list(cluster.allowed)
    violating: list[_Resident] = []
    others: list[_Resident] = []
    for resident in running:
        violates = False
        for b, budget in enumerate(cluster.budgets):
            if budget_selects(budget, resident.pod.namespace, resident.labels):
                allowed[b] -= 1
                if allowed[b] < 0:
                    violates = True
        (violating if violates else others).append(resident)
    victims: list[_Resident] = []
    for resident in violating + others:
        removed.discard(resident)
        if _room_without(state, node, removed) is not None:
            removed.add(resident)
            victims.append(resident)
    return _Candidate(node, victims, sum(1 for v in victims if v in violating))


def _preempt(state: _PreFilter) -> _Candidate | None:
    """The best node to preempt on for the pod, None if it may not or no node would do."""
    if state.spec.preemption_policy == "Never":
        return None
    best: _Candidate | None = None
    for node in state.cluster.nodes:
        if state.before_room(node) is not None or state.after_room(node) is not None:
            continue
        candidate = _candidate(state, node)
        if candidate is not None and (best is None or candidate.rank() < best.rank()):
            best = candidate
    return best


# --- placement --------------------------------------------------------------------------


def explain(failures: Counter[Failure], nodes: int) -> str:
    """`0/3 nodes: 2 insufficient memory, 1 untolerated taint {...}`: each node counted under
    its first failing check; by count, most first, then check order, then text."""
    if nodes == 0:
        return NO_NODES
    groups = sorted(failures.items(), key=lambda item: (-item[1], item[0][0], item[0][1]))
    return f"0/{nodes} nodes: " + ", ".join(f"{count} {text}" for (_, text), count in groups)


def reference_place(
    pending: Sequence[Pod],
    nodes: Sequence[Node],
    bound: Sequence[Pod],
    claims: Mapping[str, NodeName] | None = None,
    *,
    namespaces: Mapping[str, tuple[tuple[str, str], ...]] | None = None,
    budgets: Sequence[DisruptionBudget] = (),
    explain_placements: bool = False,  # accepted for the same signature: the twin does not say why
) -> Placements:
    """Place `pending` by docs/scheduler.md. `claims`: the node holding each claim's volume
    (a pod's claims are on its node once it is bound or placed, unless they already were
    somewhere); `namespaces`: each namespace's manifest labels; `budgets`: the
    PodDisruptionBudgets preemption respects. `why` is left empty."""
    cluster = _Cluster(nodes, claims, namespaces, budgets)
    for pod in bound:
        node = cluster.by_name.get(pod.node) if pod.node is not None else None
        if node is not None:
            cluster.join(pod, node, _Need.of(pod.spec), bound=True)

    assigned: dict[PodId, NodeName] = {}
    unschedulable: dict[PodId, str] = {}
    preemptions: dict[PodId, Preemption] = {}
    for pod in sorted(pending, key=lambda p: -p.spec.priority):
        state = _PreFilter(cluster, pod)
        best: _Node | None = None
        best_score = 0.0
        failures: Counter[Failure] = Counter()
        for node in cluster.nodes:
            failure = state.before_room(node) or state.room(node) or state.after_room(node)
            if failure is not None:
                failures[failure] += 1
                continue
            score = state.score(node)
            if best is None or score > best_score:
                best, best_score = node, score
        if best is not None:
            cluster.join(pod, best, state.need, bound=False)
            assigned[pod.id] = best.name
            continue
        reason = explain(failures, len(cluster.nodes))
        candidate = _preempt(state)
        if candidate is not None:
            node, victims = candidate.node, candidate.victims
            for victim in victims:
                victim.victim = True
                for b, budget in enumerate(cluster.budgets):
                    if budget_selects(budget, victim.pod.namespace, victim.labels):
                        cluster.allowed[b] -= 1
            cluster.take_room(_Resident(pod, state.labels, False, state.need), node)
            preemptions[pod.id] = Preemption(node.name, tuple(v.pod.id for v in victims))
            if victims:
                ids = ", ".join(v.pod.id for v in victims)
                reason += f"; preempting {len(victims)} pod(s) on {node.name}: {ids}"
            else:
                reason += f"; waiting for terminating pods to leave {node.name}"
        unschedulable[pod.id] = reason
    return Placements(assigned=assigned, unschedulable=unschedulable, preemptions=preemptions)
