"""The cluster as columns: one numpy array per node property, built once, reused.

`Cluster.build(nodes, bound)` turns the nodes and the pods already bound to them into
arrays indexed by node position (capacity, what bound pods use, readiness, label values as
integer codes per key, nodes grouped by identical taint sets, pods per owner per node). It
is a frozen snapshot: arrays are read-only, so a caller may keep one and place several
batches against it. `Usage` is the working copy one placement run mutates as it binds pods.

Node names are the store's keys, hence unique; bound pods on a node not in `nodes` are
ignored (their node is gone, the evictor replaces them).

Pod affinity, anti-affinity and topology spread count pods per *topology domain* (the
nodes sharing a value of a label). `Cluster.domains(key)` gives every node the code of its
value of `key`, with one extra code for "no such label", so that a count per domain is one
`bincount` and a count per node one gather. `Usage` counts, per node, the pods matching
each selector a pod asked about (bound ones once, then every pod placed in the run), so a
domain count never rescans pods.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from gitops.model import LabelSelector, Node, NodeName, ObjectKey, Pod, PodAffinityTerm, PodId, PodSpec, Taint

BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


Column = TypeVar("Column", bound=npt.NDArray[Any])


def _frozen(array: Column) -> Column:
    array.flags.writeable = False
    return array


@dataclass
class _Placed:
    """The bound pods on a cluster's nodes, with their node's index, and as columns: each
    one's node index (`at`), its spec (`spec_of`, into `specs`) and its revision
    (`revision_of`, into `revisions`). Summed by node with numpy from these: at 150,000
    pods, updating the node arrays pod by pod and keying each pod's revision (an owner's
    dataclass hash) took 324 ms a build, which every pass placing a pod made."""

    on_nodes: list[tuple[int, Pod]]
    at: list[int]
    spec_of: list[int]
    specs: list[PodSpec]
    revision_of: list[int]
    revisions: list[Revision]

    @classmethod
    def of(cls, bound: Sequence[Pod], index: Mapping[NodeName, int]) -> _Placed:
        placed = cls([], [], [], [], [], [])
        on_nodes, at, spec_of, revision_of = placed.on_nodes, placed.at, placed.spec_of, placed.revision_of
        specs: dict[int, int] = {}  # id(spec) -> its code (`placed.specs` holds each: no id is reused)
        revisions: dict[Revision, int] = {}
        spec: PodSpec | None = None
        owner: ObjectKey | None = None
        template = ""
        spec_code = revision = -1
        for pod in bound:
            node = pod.node
            i = index.get(node) if node is not None else None
            if i is None:
                continue
            on_nodes.append((i, pod))
            at.append(i)
            # Consecutive pods (a workload's, as the store gives them) mostly share both.
            if pod.spec is not spec:
                spec = pod.spec
                found = specs.get(id(spec))
                if found is None:
                    found = specs[id(spec)] = len(placed.specs)
                    placed.specs.append(spec)
                spec_code = found
            spec_of.append(spec_code)
            if pod.owner is not owner or pod.template_hash != template:
                owner, template = pod.owner, pod.template_hash
                revision = revisions.setdefault((owner, template), len(revisions))
            revision_of.append(revision)
        placed.revisions = list(revisions)
        return placed


class _RevisionCounts(Mapping["Revision", IntArray]):
    """Each revision's bound pods per node (`Cluster.owner_pods`), counted when first asked
    for: a placement run asks only for the revisions of the pods it places, and the array of
    each of 1,650 revisions at 5,000 nodes, 66 MB, took longer to allocate than the rest of
    the build."""

    def __init__(
        self, revisions: Sequence[Revision], revision_of: IntArray, at: IntArray, nodes: int
    ) -> None:
        self._codes = {revision: code for code, revision in enumerate(revisions)}
        order = np.argsort(revision_of, kind="stable")  # the pods by revision (mostly in order already)
        self._at = at[order]
        self._bounds = np.searchsorted(revision_of[order], np.arange(len(revisions) + 1))
        self._nodes = nodes
        self._counted: dict[Revision, IntArray] = {}

    def __getitem__(self, revision: Revision) -> IntArray:
        counted = self._counted.get(revision)
        if counted is None:
            code = self._codes[revision]
            pods = self._at[self._bounds[code] : self._bounds[code + 1]]
            counted = _frozen(np.bincount(pods, minlength=self._nodes).astype(np.int64))
            self._counted[revision] = counted
        return counted

    def __iter__(self) -> Iterator[Revision]:
        return iter(self._codes)

    def __len__(self) -> int:
        return len(self._codes)


@dataclass(frozen=True, eq=False)
class Cluster:
    """Read-only node columns for placement; index `i` is `nodes[i]` everywhere."""

    names: tuple[NodeName, ...]
    ready: BoolArray
    cpu_capacity: IntArray
    memory_capacity: IntArray
    max_pods: IntArray
    cpu_scale: FloatArray  # capacity as float, +inf where 0 so that free/scale is 0 there
    memory_scale: FloatArray
    cpu_free: IntArray  # capacity minus requests of bound pods (may be negative)
    memory_free: IntArray
    pods_free: IntArray
    label_codes: Mapping[str, IntArray]  # key -> per-node code of the value, -1 if unlabelled
    label_vocab: Mapping[str, Mapping[str, int]]  # key -> value -> code
    taint_group: IntArray  # node -> index into taint_sets
    taint_sets: tuple[tuple[Taint, ...], ...]
    owner_pods: Mapping[Revision, IntArray]  # (owner, template hash) -> its pods per node
    host_ports: Mapping[tuple[int, str], BoolArray]  # (hostPort, protocol) -> taken per node
    claim_nodes: Mapping[str, int]  # claim -> the node holding its volume (-1: not a node here)
    index: Mapping[NodeName, int]  # node name -> its index
    pods: tuple[tuple[int, Pod], ...]  # the bound pods on these nodes, with their node's index
    namespace_labels: Mapping[str, Mapping[str, str]]  # namespace -> its labels
    _domains: dict[str, IntArray]  # key -> per-node domain code (cache of `domains`)
    _members: dict[str, list[IntArray]]  # key -> nodes per domain code (cache of `members`)

    @classmethod
    def build(
        cls,
        nodes: Sequence[Node],
        bound: Sequence[Pod],
        claims: Mapping[str, NodeName] | None = None,
        namespaces: Mapping[str, Sequence[tuple[str, str]]] | None = None,
    ) -> Cluster:
        """Columns of `nodes` with `bound` pods' usage; `claims` say which node holds each
        PersistentVolumeClaim's volume (a bound pod's claims are on its node too);
        `namespaces` the labels of each namespace (see `namespace_labels`)."""
        n = len(nodes)
        index = {node.name: i for i, node in enumerate(nodes)}
        claim_nodes = {claim: index.get(node, -1) for claim, node in (claims or {}).items()}
        placed = _Placed.of(bound, index)
        at = np.array(placed.at, dtype=np.int64)
        spec_of = np.array(placed.spec_of, dtype=np.int64)
        # Summed by node from each pod's spec's value: pods share their spec objects.
        cpu_used = np.zeros(n, dtype=np.int64)
        cpu = np.array([s.cpu_request_milli for s in placed.specs], dtype=np.int64)
        np.add.at(cpu_used, at, cpu[spec_of])
        memory_used = np.zeros(n, dtype=np.int64)
        memory = np.array([s.memory_request_bytes for s in placed.specs], dtype=np.int64)
        np.add.at(memory_used, at, memory[spec_of])
        pods_used = np.bincount(at, minlength=n).astype(np.int64)
        host_ports: dict[tuple[int, str], BoolArray] = {}
        for code, spec in enumerate(placed.specs):
            if spec.host_port_claims:
                taken = at[spec_of == code]
                for claim in spec.host_port_claims:
                    host_ports.setdefault(claim, np.zeros(n, dtype=np.bool_))[taken] = True
        if any(spec.claims for spec in placed.specs):
            for i, pod in placed.on_nodes:  # the first pod's node, for a claim not recorded
                for volume_claim in pod.spec.claims:
                    claim_nodes.setdefault(volume_claim, i)
        owner_pods = _RevisionCounts(placed.revisions, np.array(placed.revision_of, dtype=np.int64), at, n)
        on_nodes = placed.on_nodes

        vocab: dict[str, dict[str, int]] = {}
        codes: dict[str, IntArray] = {}
        sets: dict[tuple[Taint, ...], int] = {}
        group = np.zeros(n, dtype=np.int64)
        for i, node in enumerate(nodes):
            for key, value in node.labels:
                if key not in codes:
                    codes[key] = np.full(n, -1, dtype=np.int64)
                    vocab[key] = {}
                codes[key][i] = vocab[key].setdefault(value, len(vocab[key]))
            group[i] = sets.setdefault(tuple(node.taints), len(sets))

        cpu = np.array([node.cpu_milli for node in nodes], dtype=np.int64)
        memory = np.array([node.memory_bytes for node in nodes], dtype=np.int64)
        max_pods = np.array([node.max_pods for node in nodes], dtype=np.int64)
        return cls(
            names=tuple(node.name for node in nodes),
            ready=_frozen(np.array([node.ready for node in nodes], dtype=np.bool_)),
            cpu_capacity=_frozen(cpu),
            memory_capacity=_frozen(memory),
            max_pods=_frozen(max_pods),
            cpu_scale=_frozen(np.where(cpu > 0, cpu.astype(np.float64), np.inf)),
            memory_scale=_frozen(np.where(memory > 0, memory.astype(np.float64), np.inf)),
            cpu_free=_frozen(cpu - cpu_used),
            memory_free=_frozen(memory - memory_used),
            pods_free=_frozen(max_pods - pods_used),
            label_codes={key: _frozen(array) for key, array in codes.items()},
            label_vocab=vocab,
            taint_group=_frozen(group),
            taint_sets=tuple(sets),
            owner_pods=owner_pods,
            host_ports={claim: _frozen(array) for claim, array in host_ports.items()},
            claim_nodes=claim_nodes,
            index=index,
            pods=tuple(on_nodes),
            # A namespace's name is always one of its labels, as Kubernetes sets it.
            namespace_labels={
                name: {**dict(labels), NAMESPACE_NAME: name} for name, labels in (namespaces or {}).items()
            },
            _domains={},
            _members={},
        )

    def __len__(self) -> int:
        return len(self.names)

    def domains(self, key: str) -> IntArray:
        """Per node, the code of its value of label `key` (`label_vocab[key]`), or
        `no_domain(key)` for a node without the label."""
        found = self._domains.get(key)
        if found is None:
            codes = self.label_codes.get(key)
            if codes is None:
                found = np.zeros(len(self), dtype=np.int64)
            else:
                found = np.where(codes >= 0, codes, len(self.label_vocab[key]))
            self._domains[key] = found = _frozen(found)
        return found

    def members(self, key: str) -> list[IntArray]:
        """Per domain code of `key`, the indexes of its nodes (cached)."""
        found = self._members.get(key)
        if found is None:
            domains = self.domains(key)
            order = np.argsort(domains, kind="stable")
            bounds = np.searchsorted(domains[order], np.arange(self.no_domain(key) + 1))
            found = self._members[key] = list(np.split(order, bounds[1:]))
        return found

    def no_domain(self, key: str) -> int:
        """The code `domains(key)` gives nodes without the label (also the number of values)."""
        return len(self.label_vocab.get(key, {}))

    def labels_of_namespace(self, namespace: str) -> Mapping[str, str]:
        """A namespace's labels; one git has no Namespace manifest for has only its name label."""
        found = self.namespace_labels.get(namespace)
        return found if found is not None else {NAMESPACE_NAME: namespace}


ZONE = "topology.kubernetes.io/zone"
NAMESPACE_NAME = "kubernetes.io/metadata.name"
Revision = tuple[ObjectKey, str]  # a workload and a template hash: whose pods spread apart

# What a count of pods is about (`Usage.node_counts`): pods matching one affinity term
# ("term", term); pods matching all of several ("all", terms); or the pods a topology spread
# constraint counts, those of a namespace matching a selector and not terminating
# ("spread", selector, namespace).
Counted = tuple[Any, ...]


def term_matches(cluster: Cluster, term: PodAffinityTerm, pod: Pod) -> bool:
    """Whether `pod` is one the affinity term is about: its labels match the selector and
    its namespace is one of the term's (listed, or with labels its namespace selector matches)."""
    if term.selector is None or not term.selector.matches(pod.label_map):
        return False
    if pod.namespace in term.namespaces:
        return True
    selector = term.namespace_selector
    return selector is not None and selector.matches(cluster.labels_of_namespace(pod.namespace))


def _counts_pod(cluster: Cluster, counted: Counted, pod: Pod) -> bool:
    what = counted[0]
    if what == "term":
        return term_matches(cluster, counted[1], pod)
    if what == "all":
        return all(term_matches(cluster, t, pod) for t in counted[1])
    selector = counted[1]
    return (
        pod.terminating_at is None
        and pod.namespace == counted[2]
        and isinstance(selector, LabelSelector)
        and selector.matches(pod.label_map)
    )


class RevisionPods:
    """One owner and revision's pods in a placement run: their count per node (kept sparse
    while no pod asked to spread from them), how many the run placed, and once asked for,
    their spread column (`Usage.spread`) with its parts, kept up to date by `Usage.bind`."""

    __slots__ = ("bound", "by_node", "column", "counts", "per_zone", "placed", "sparse")

    def __init__(self, bound: IntArray | None) -> None:
        self.bound = bound  # the bound pods per node (the cluster's column, read-only)
        self.placed = 0
        self.sparse: dict[int, int] | None = None  # node -> pods placed there, while `counts` is None
        self.counts: IntArray | None = None  # bound and placed pods per node
        self.column: FloatArray | None = None  # the spread score per node
        self.by_node: FloatArray | None = None  # its `h` part
        self.per_zone: FloatArray | None = None  # pods per zone code


class Usage:
    """What one placement run has used so far: free resources and spread columns per node.

    Starts as a copy of the cluster's bound usage; `bind` updates one node. The spread
    column of an owner, `1 / (1 + pods of the owner on the node)`, is kept as floats and
    updated in place, so scoring never recomputes it for all nodes. Pods matching what
    affinity and spread ask about are counted per node on first request and kept up to
    date by `bind`; so are the domains holding pods with required anti-affinity.
    """

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.cpu_free = cluster.cpu_free.copy()
        self.memory_free = cluster.memory_free.copy()
        self.pods_free = cluster.pods_free.copy()
        self.has_slot: BoolArray = self.pods_free > 0
        # Float twins of the free columns (exact: requests are integers far below 2**53),
        # so scoring divides floats by floats without converting 5,000 integers per pod.
        self.cpu_free_float = cluster.cpu_free.astype(np.float64)
        self.memory_free_float = cluster.memory_free.astype(np.float64)
        self.all_nodes: BoolArray = _frozen(np.ones(len(cluster), dtype=np.bool_))
        self._revisions: dict[Revision, RevisionPods] = {}
        # Each node's zone code as a plain int, and the nodes of each zone (for `spread`).
        self._zones: list[int] | None = (
            cluster.domains(ZONE).tolist() if ZONE in cluster.label_codes else None
        )
        self._zone_members = cluster.members(ZONE) if self._zones is not None else []
        self._no_zone = cluster.no_domain(ZONE)
        self._host_ports: dict[tuple[int, str], BoolArray] = {}  # copied from the cluster on write
        self._claim_nodes: dict[str, int] = {}  # claims first used by a pod placed in this run
        self.placed: list[tuple[int, Pod]] = []  # pods placed in this run, with their node
        self.touched: list[int] = []  # every node whose room changed, in order (may repeat)
        self.reserved: list[tuple[int, Pod]] = []  # preemptors holding room, with their node
        self.disruptions: list[int] = []  # what each disruption budget still allows (set by the run)
        self.static: dict[Hashable, Any] = {}  # what static checks and scorers computed, by key
        self.preempted: set[PodId] = set()  # bound pods chosen as victims: leaving, room held till gone
        self._on_nodes: dict[int, list[Pod]] | None = None
        # What pods are counted for: each `Counted` gets a number (hashing a selector once),
        # each (namespace, labels, terminating) a number, and whether one counts for the
        # other is cached by the two numbers.
        self._counted: dict[Counted, int] = {}
        self._counted_list: list[Counted] = []
        self._kinds: dict[tuple[str, tuple[tuple[str, str], ...], bool], int] = {}
        self._matches: dict[tuple[int, int], bool] = {}
        self._counts: dict[int, IntArray] = {}  # counted -> per node
        # (counted, key, id of the node mask) -> (counted, the mask, per domain, node domains).
        self._domain_counts: dict[Hashable, tuple[int, BoolArray | None, FloatArray, IntArray, int]] = {}
        # Required anti-affinity terms of pods in the cluster -> pods holding each per domain.
        self.repelling: dict[PodAffinityTerm, IntArray] = {}
        self._repelled: dict[tuple[int, int], bool] = {}  # (kind, terms held) -> whether repelled
        for i, pod in cluster.pods:
            self._hold(i, pod)

    def repelled(self, pod: Pod) -> bool:
        """Whether some pod in the cluster has a required anti-affinity term `pod` matches
        (cached per namespace and labels while no new term is held: terms are only added)."""
        if not self.repelling:
            return False
        key = (self._kind(pod), len(self.repelling))
        found = self._repelled.get(key)
        if found is None:
            found = self._repelled[key] = any(self.counts_pod(("term", term), pod) for term in self.repelling)
        return found

    def counts_pod(self, counted: Counted, pod: Pod) -> bool:
        """Whether `pod` is one of those `counted` counts (cached per namespace and labels)."""
        return self._counts_kind(self._counted_number(counted), counted, self._kind(pod), pod)

    def _counted_number(self, counted: Counted) -> int:
        number = self._counted.get(counted)
        if number is None:
            number = self._counted[counted] = len(self._counted)
            self._counted_list.append(counted)
        return number

    def _kind(self, pod: Pod) -> int:
        kind = (pod.namespace, pod.labels, pod.terminating_at is None)
        number = self._kinds.get(kind)
        if number is None:
            number = self._kinds[kind] = len(self._kinds)
        return number

    def _counts_kind(self, number: int, counted: Counted, kind: int, pod: Pod) -> bool:
        found = self._matches.get((number, kind))
        if found is None:
            found = self._matches[(number, kind)] = _counts_pod(self.cluster, counted, pod)
        return found

    def node_counts(self, counted: Counted) -> IntArray:
        """Per node, the pods in the cluster (bound or placed) that `counted` counts."""
        number = self._counted_number(counted)
        counts = self._counts.get(number)
        if counts is None:
            counts = np.zeros(len(self.cluster), dtype=np.int64)
            for i, pod in (*self.cluster.pods, *self.placed):
                if self._counts_kind(number, counted, self._kind(pod), pod):
                    counts[i] += 1
            self._counts[number] = counts
        return counts

    def domain_counts(self, counted: Counted, key: str, nodes: BoolArray | None = None) -> FloatArray:
        """Per domain code of `key` (see `Cluster.domains`), the pods `counted` counts on
        `nodes` (all nodes when None; a mask the caller keeps for the run) of that domain;
        0 at the no-label code. Computed once, then kept up to date by `bind`: read only."""
        cached = (counted, key, None if nodes is None else id(nodes))
        found = self._domain_counts.get(cached)
        if found is not None:
            return found[2]
        cluster = self.cluster
        domains = cluster.domains(key)
        counts = self.node_counts(counted)
        size = cluster.no_domain(key) + 1
        if nodes is None:
            per_domain = np.bincount(domains, weights=counts, minlength=size)
        else:
            per_domain = np.bincount(domains[nodes], weights=counts[nodes], minlength=size)
        result: FloatArray = per_domain.astype(np.float64, copy=False)
        result[cluster.no_domain(key)] = 0.0
        number = self._counted_number(counted)
        self._domain_counts[cached] = (number, nodes, result, domains, cluster.no_domain(key))
        return result

    def _hold(self, i: int, pod: Pod) -> None:
        for term in pod.spec.affinity.anti_required:
            held = self.repelling.get(term)
            if held is None:
                held = self.repelling[term] = np.zeros(
                    self.cluster.no_domain(term.topology_key) + 1, dtype=np.int64
                )
            domain = int(self.cluster.domains(term.topology_key)[i])
            if domain != self.cluster.no_domain(term.topology_key):
                held[domain] += 1

    def claim_node(self, claim: str) -> int | None:
        """The node index holding `claim`'s volume (-1: a node not here), None if no node does yet."""
        found = self._claim_nodes.get(claim)
        return found if found is not None else self.cluster.claim_nodes.get(claim)

    def host_port_taken(self, claim: tuple[int, str]) -> BoolArray | None:
        """Per node, whether a bound or placed pod holds `claim`; None when none does."""
        taken = self._host_ports.get(claim)
        return taken if taken is not None else self.cluster.host_ports.get(claim)

    def revision(self, owner: Revision) -> RevisionPods:
        """The run's record of one owner and revision's pods (`bind` and `spread` take it)."""
        found = self._revisions.get(owner)
        if found is None:
            found = self._revisions[owner] = RevisionPods(self.cluster.owner_pods.get(owner))
        return found

    def owner_pods(self, owner: Revision) -> IntArray:
        """The owner's pods per node (bound and placed)."""
        return self._owner_counts(self.revision(owner))

    def _owner_counts(self, revision: RevisionPods) -> IntArray:
        counts = revision.counts
        if counts is None:
            shared = revision.bound
            counts = np.zeros(len(self.cluster), dtype=np.int64) if shared is None else shared.copy()
            for i, placed in (revision.sparse or {}).items():
                counts[i] += placed
            revision.sparse = None
            revision.counts = counts
        return counts

    def spread(self, owner: Revision | RevisionPods) -> FloatArray | None:
        """Kubernetes' default spreading of the pods of one owner and revision (its template
        hash, as a ReplicaSet's selector has it), per node: `h = 1 / (1 + those pods on the
        node)`, and when nodes have zones `(h + z) / 2` with `z` the same per zone (`z = h`
        on a node without one). None while there is no such pod at all (the score would be 1
        everywhere). Kept up to date by `bind`."""
        revision = owner if isinstance(owner, RevisionPods) else self.revision(owner)
        if revision.column is not None:
            return revision.column
        if revision.bound is None and not revision.placed:
            return None
        counts = self._owner_counts(revision)
        by_node: FloatArray = (1.0 / (1.0 + counts)).astype(np.float64)
        revision.by_node = by_node.copy()
        if self._zones is not None:
            cluster = self.cluster
            zones = cluster.domains(ZONE)
            per_zone = np.bincount(zones, weights=counts, minlength=self._no_zone + 1).astype(np.float64)
            revision.per_zone = per_zone
            by_zone = np.where(zones != self._no_zone, 1.0 / (1.0 + per_zone[zones]), by_node)
            by_node += by_zone
            by_node /= 2.0
        revision.column = by_node
        return by_node

    def _spread_bound(self, i: int, revision: RevisionPods, count: int) -> None:
        """Update the revision's spread column (if asked for) for one more of its pods on node `i`."""
        column = revision.column
        if column is None:
            return
        by_node = 1.0 / (1.0 + float(count))
        zones = self._zones
        if zones is None:
            column[i] = by_node
            return
        h = revision.by_node
        per_zone = revision.per_zone
        assert h is not None and per_zone is not None  # set with the column
        h[i] = by_node
        zone = zones[i]
        if zone == self._no_zone:
            column[i] = (by_node + by_node) / 2.0
            return
        per_zone[zone] += 1.0
        members = self._zone_members[zone]
        column[members] = (h[members] + 1.0 / (1.0 + per_zone[zone])) / 2.0

    def pods_on_nodes(self) -> dict[int, list[Pod]]:
        """The bound pods of each node index, in `bound` order (built once per run)."""
        if self._on_nodes is None:
            self._on_nodes = {}
            for i, pod in self.cluster.pods:
                self._on_nodes.setdefault(i, []).append(pod)
        return self._on_nodes

    def _room(self, i: int, pod: Pod) -> None:
        """Take the pod's cpu, memory, pod slot and host ports on node `i`."""
        self.touched.append(i)
        spec = pod.spec
        if spec.cpu_request_milli:
            self.cpu_free[i] -= spec.cpu_request_milli
            self.cpu_free_float[i] = self.cpu_free[i]
        if spec.memory_request_bytes:
            self.memory_free[i] -= spec.memory_request_bytes
            self.memory_free_float[i] = self.memory_free[i]
        self.pods_free[i] -= 1
        self.has_slot[i] = self.pods_free[i] > 0
        for claim in pod.spec.host_port_claims:
            taken = self._host_ports.get(claim)
            if taken is None:
                shared = self.cluster.host_ports.get(claim)
                taken = np.zeros(len(self.cluster), dtype=np.bool_) if shared is None else shared.copy()
                self._host_ports[claim] = taken
            taken[i] = True

    def reserve(self, i: int, pod: Pod) -> None:
        """Hold the pod's room on node `i` (a preemptor waiting for its victims to go)."""
        self._room(i, pod)
        self.reserved.append((i, pod))

    def bind(self, i: int, pod: Pod, revision: RevisionPods | None = None) -> None:
        """Place `pod` on node `i`; `revision` is `revision()` of its owner and template
        hash, when the caller has it at hand."""
        for volume_claim in pod.spec.claims:
            if self.claim_node(volume_claim) is None:
                self._claim_nodes[volume_claim] = i
        self._room(i, pod)
        if revision is None:
            revision = self.revision((pod.owner, pod.template_hash))
        revision.placed += 1
        if revision.counts is None and revision.bound is None:
            # An owner nobody asked about yet: counted sparsely (10,000 owners of one pod
            # each are not 10,000 columns).
            if revision.sparse is None:
                revision.sparse = {i: 1}
            else:
                revision.sparse[i] = revision.sparse.get(i, 0) + 1
        else:
            counts = self._owner_counts(revision)
            counts[i] += 1
            self._spread_bound(i, revision, int(counts[i]))
        self.placed.append((i, pod))
        if self._counted:
            kind = self._kind(pod)
            matching = [self._counts_kind(n, c, kind, pod) for n, c in enumerate(self._counted_list)]
            for number, node_counts in self._counts.items():
                if matching[number]:
                    node_counts[i] += 1
            for number, nodes, per_domain, domains, none in self._domain_counts.values():
                if matching[number] and (nodes is None or nodes[i]):
                    domain = int(domains[i])
                    if domain != none:
                        per_domain[domain] += 1.0
        if pod.spec.affinity.anti_required:
            self._hold(i, pod)
