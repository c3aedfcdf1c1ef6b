"""The cluster as columns: one numpy array per node property, built once, reused.

`Cluster.build(nodes, bound)` turns the nodes and the pods already bound to them into
arrays indexed by node position (capacity, what bound pods use, readiness, label values as
integer codes per key, nodes grouped by identical taint sets, pods per owner per node). It
is a frozen snapshot: arrays are read-only, so a caller may keep one and place several
batches against it. `Usage` is the working copy one placement run mutates as it binds pods.

Node names are the store's keys, hence unique; bound pods on a node not in `nodes` are
ignored (their node is gone, the evictor replaces them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from gitops.model import Node, NodeName, ObjectKey, Pod, Taint

BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


Column = TypeVar("Column", bound=npt.NDArray[Any])


def _frozen(array: Column) -> Column:
    array.flags.writeable = False
    return array


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
    owner_pods: Mapping[ObjectKey, IntArray]  # owner -> pods of that owner per node
    host_ports: Mapping[tuple[int, str], BoolArray]  # (hostPort, protocol) -> taken per node
    claim_nodes: Mapping[str, int]  # claim -> the node holding its volume (-1: not a node here)
    index: Mapping[NodeName, int]  # node name -> its index

    @classmethod
    def build(
        cls, nodes: Sequence[Node], bound: Sequence[Pod], claims: Mapping[str, NodeName] | None = None
    ) -> Cluster:
        """Columns of `nodes` with `bound` pods' usage; `claims` say which node holds each
        PersistentVolumeClaim's volume (a bound pod's claims are on its node too)."""
        n = len(nodes)
        index = {node.name: i for i, node in enumerate(nodes)}
        claim_nodes = {claim: index.get(node, -1) for claim, node in (claims or {}).items()}
        cpu_used = np.zeros(n, dtype=np.int64)
        memory_used = np.zeros(n, dtype=np.int64)
        pods_used = np.zeros(n, dtype=np.int64)
        owner_pods: dict[ObjectKey, IntArray] = {}
        host_ports: dict[tuple[int, str], BoolArray] = {}
        for pod in bound:
            i = index.get(pod.node) if pod.node is not None else None
            if i is None:
                continue
            for claim in pod.spec.host_port_claims:
                if claim not in host_ports:
                    host_ports[claim] = np.zeros(n, dtype=np.bool_)
                host_ports[claim][i] = True
            for volume_claim in pod.spec.claims:
                claim_nodes.setdefault(volume_claim, i)
            cpu_used[i] += pod.spec.cpu_request_milli
            memory_used[i] += pod.spec.memory_request_bytes
            pods_used[i] += 1
            if pod.owner not in owner_pods:
                owner_pods[pod.owner] = np.zeros(n, dtype=np.int64)
            owner_pods[pod.owner][i] += 1

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
            owner_pods={owner: _frozen(array) for owner, array in owner_pods.items()},
            host_ports={claim: _frozen(array) for claim, array in host_ports.items()},
            claim_nodes=claim_nodes,
            index=index,
        )

    def __len__(self) -> int:
        return len(self.names)


class Usage:
    """What one placement run has used so far: free resources and owner spread per node.

    Starts as a copy of the cluster's bound usage; `bind` updates one node. The spread
    column of an owner, `1 / (1 + pods of the owner on the node)`, is kept as floats and
    updated in place, so scoring never recomputes it for all nodes.
    """

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.cpu_free = cluster.cpu_free.copy()
        self.memory_free = cluster.memory_free.copy()
        self.pods_free = cluster.pods_free.copy()
        # Float twins of the free columns (exact: requests are integers far below 2**53),
        # so scoring divides floats by floats without converting 5,000 integers per pod.
        self.cpu_free_float = cluster.cpu_free.astype(np.float64)
        self.memory_free_float = cluster.memory_free.astype(np.float64)
        self.all_nodes: BoolArray = _frozen(np.ones(len(cluster), dtype=np.bool_))
        self._no_pods: FloatArray = _frozen(np.ones(len(cluster), dtype=np.float64))
        self._owner_pods: dict[ObjectKey, IntArray] = {}
        self._spread: dict[ObjectKey, FloatArray] = {}
        self._host_ports: dict[tuple[int, str], BoolArray] = {}  # copied from the cluster on write
        self._claim_nodes: dict[str, int] = {}  # claims first used by a pod placed in this run

    def claim_node(self, claim: str) -> int | None:
        """The node index holding `claim`'s volume (-1: a node not here), None if no node does yet."""
        found = self._claim_nodes.get(claim)
        return found if found is not None else self.cluster.claim_nodes.get(claim)

    def host_port_taken(self, claim: tuple[int, str]) -> BoolArray | None:
        """Per node, whether a bound or placed pod holds `claim`; None when none does."""
        taken = self._host_ports.get(claim)
        return taken if taken is not None else self.cluster.host_ports.get(claim)

    def owner_pods(self, owner: ObjectKey) -> IntArray:
        counts = self._owner_pods.get(owner)
        if counts is None:
            shared = self.cluster.owner_pods.get(owner)
            counts = np.zeros(len(self.cluster), dtype=np.int64) if shared is None else shared.copy()
            self._owner_pods[owner] = counts
        return counts

    def spread(self, owner: ObjectKey) -> FloatArray:
        """`1 / (1 + pods of owner)` per node; read-only view for owners never seen."""
        known = self._spread.get(owner)
        if known is not None:
            return known
        if owner not in self.cluster.owner_pods and owner not in self._owner_pods:
            return self._no_pods
        column: FloatArray = (1.0 / (1.0 + self.owner_pods(owner))).astype(np.float64)
        self._spread[owner] = column
        return column

    def bind(self, i: int, pod: Pod) -> None:
        for volume_claim in pod.spec.claims:
            if self.claim_node(volume_claim) is None:
                self._claim_nodes[volume_claim] = i
        self.cpu_free[i] -= pod.spec.cpu_request_milli
        self.memory_free[i] -= pod.spec.memory_request_bytes
        self.cpu_free_float[i] = self.cpu_free[i]
        self.memory_free_float[i] = self.memory_free[i]
        self.pods_free[i] -= 1
        counts = self.owner_pods(pod.owner)
        counts[i] += 1
        column = self._spread.get(pod.owner)
        if column is not None:
            column[i] = 1.0 / (1.0 + float(counts[i]))
        for claim in pod.spec.host_port_claims:
            taken = self._host_ports.get(claim)
            if taken is None:
                shared = self.cluster.host_ports.get(claim)
                taken = np.zeros(len(self.cluster), dtype=np.bool_) if shared is None else shared.copy()
                self._host_ports[claim] = taken
            taken[i] = True
