"""What earlier passes worked out for settled workloads, reused while nothing they read changed.

A settled cluster's control pass plans every workload and computes every rollout's status
over every pod, and finds nothing to do: at 150,000 pods that is a third of a second of
the two functions' time, every pass; a DaemonSet on 5,000 nodes alone takes 36 ms.
`Settled` keeps, per Deployment and DaemonSet, the plan part and the rollout status of the
last call, with what they were computed from (`inputs_of`): the manifest's and the
resolved template's hashes, a Deployment's replica count or the nodes a DaemonSet runs on,
and the very pod objects in order (the controller's `PodCache` keeps a pod's object until
its row changes, so an unchanged pod is the same object). A later call whose inputs are
those gets the kept answer without computing it; any other computes as before. The answers
are the same with or without one: only what does not depend on the clock is kept
(workloads without `minReadySeconds`, whose counts read each pod's readiness, not how long
it has been ready), and only plan parts that change nothing (a part that creates or stops
pods is computed again next time). StatefulSets and Jobs are planned at every pass.
It also keeps the last pass's placements with what the scheduler read for them (`Placed`):
pods that fit nowhere are not placed again while none of that changed. A bound pod's
status (its phase while it runs, its readiness, restarts, address) is not among it, so
that the churn of a large cluster's reports does not make each pass place them again.

The controller keeps one between passes; a preview, which runs each pass on new pod
objects, does not need one.
"""

from __future__ import annotations

import operator
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from gitops.model import Manifest, Node, NodeName, ObjectKey, Placements, Pod, PodId, PodName, pod_changes
from gitops.planner.actions import Plan, finished
from gitops.planner.rollout import RolloutStatus

Answer = TypeVar("Answer")


def clockless(workload: Manifest) -> bool:
    """Whether a Deployment's or a DaemonSet's plan and status read no clock: no
    `minReadySeconds`."""
    return workload.key.kind in ("Deployment", "DaemonSet") and not workload.spec.get("minReadySeconds")


def inputs_of(workload: Manifest, template_hash: str, replicas: int, nodes: Sequence[Node]) -> Hashable:
    """What a clockless workload's plan part and status are computed from besides its pods:
    the manifest's and the template's hashes, and a Deployment's replica count or the nodes
    a DaemonSet picks its own from (compared by value, each node at once when it is the same
    object: the controller's store gives the same nodes while no row changed)."""
    if workload.key.kind == "DaemonSet":
        return (workload.hash, template_hash, tuple(nodes))
    return (workload.hash, template_hash, replicas)


@dataclass
class _Table(Generic[Answer]):
    """Answers per workload, each with the inputs it was computed from."""

    entries: dict[ObjectKey, tuple[Hashable, tuple[Pod, ...], Answer]] = field(default_factory=dict)
    reused: int = 0

    def find(self, key: ObjectKey, inputs: Hashable, pods: Sequence[Pod]) -> Answer | None:
        entry = self.entries.get(key)
        if entry is None or entry[0] != inputs:
            return None
        # The very tuple (the pass's pods grouped again only when one changed: `Live`), or
        # the very pod objects in order.
        if entry[1] is not pods and (
            len(entry[1]) != len(pods) or not all(map(operator.is_, entry[1], pods))
        ):
            return None
        # Kept with what it was found with (the pods grouped again since, another workload's
        # pod having changed; a DaemonSet's nodes read again, equal), so that the passes over
        # them find it at once. Kept with the first, every later pass compared 150,000 pods
        # one by one, twice (a quarter of a quiet server's pass), or 5,000 nodes field by
        # field. (Each call's inputs are a new tuple: every entry found is stored again.)
        self.entries[key] = (inputs, tuple(pods), entry[2])
        self.reused += 1
        return entry[2]

    def keep(self, key: ObjectKey, inputs: Hashable, pods: Sequence[Pod], answer: Answer) -> None:
        # The pods are held, so that no other object takes one's identity while kept.
        self.entries[key] = (inputs, tuple(pods), answer)  # a tuple is kept as itself

    def drop(self, key: ObjectKey) -> None:
        self.entries.pop(key, None)

    def only(self, keys: set[ObjectKey]) -> None:
        """Forget the workloads not in `keys` (gone from the source)."""
        for key in self.entries.keys() - keys:
            del self.entries[key]


@dataclass(frozen=True)
class Live:
    """The pods a pass works on, worked out from every pod and the pods evicted at once:
    those not terminating nor evicted (`live`, and grouped by owner, and whether any of them
    waits for a node), and the names of the pods going away (`draining`). Kept with the
    very pod tuple they came from, and shared between passes: every part is immutable."""

    pods: tuple[Pod, ...]
    gone: frozenset[PodId]  # the pods evicted at once
    live: tuple[Pod, ...]
    draining: frozenset[PodName]
    grouped: Mapping[ObjectKey, tuple[Pod, ...]]
    unbound: bool


@dataclass(frozen=True)
class Placed:
    """A pass's placements, with everything the scheduler worked them out from: the pods
    waiting for a node (the very objects, in order), the `Live` the bound pods came from
    (the very pod tuple, the same pods evicted), the nodes, the claims' nodes and the
    desired objects (namespaces' labels, disruption budgets). The scheduler is a pure
    function of those, so a pass with the same inputs gets the same placements: kept, a
    pod that fits nowhere (a DaemonSet's on a node not ready, a pod asking more than any
    node has) costs a pass over a settled cluster nothing, where placing it again built
    the scheduler's columns of 150,000 bound pods (0.3 s at 5,000 nodes) every pass that
    decided, the resync's every few seconds among them.

    Of the pods, the same means what the scheduler reads of each (`_scheduled`): a pod
    whose status changed and nothing else (it became ready, restarted, got its address)
    leaves the placements as they were. Kubernetes' scheduler too keeps a pod that fit
    nowhere aside until an event that could make it fit; here the test is the scheduler's
    inputs themselves, so the answer is the one it would give."""

    pending: tuple[Pod, ...]
    live: Live
    nodes: tuple[Node, ...]
    claims: Mapping[str, NodeName]
    desired: tuple[Manifest, ...]
    placements: Placements

    def answers(
        self,
        pending: Sequence[Pod],
        live: Live,
        nodes: tuple[Node, ...],
        claims: Mapping[str, NodeName],
        desired: tuple[Manifest, ...],
    ) -> bool:
        """Whether these are the inputs the placements were worked out from: the same
        objects, or (nodes, claims, desired objects) equal ones."""
        return (
            len(pending) == len(self.pending)
            and all(map(operator.is_, pending, self.pending))
            and (nodes is self.nodes or nodes == self.nodes)
            and (claims is self.claims or claims == self.claims)
            and (desired is self.desired or desired == self.desired)
            and (live is self.live or self._scheduled_alike(live))
        )

    def _scheduled_alike(self, live: Live) -> bool:
        """Whether `live`'s pods are the kept ones as the scheduler reads them: the same
        pods evicted, none come or gone, and each pod written since the same in every field
        the scheduler, its count of a node's pods and the disruption budgets (with the
        desired objects, the same) read (`_scheduled`). A walk comparing identities, and
        the fields of the few pods written since."""
        if live.gone != self.live.gone:
            return False
        changed, where, _ = pod_changes(self.live.pods, live.pods)
        if where is None:
            return False
        budgets = any(m.key.kind == "PodDisruptionBudget" for m in self.desired)
        return all(
            a is not None and b is not None and _scheduled(a, budgets) == _scheduled(b, budgets)
            for a, b in changed
        )


def _scheduled(pod: Pod, budgets: bool) -> tuple[object, ...]:
    """What the scheduler reads of a pod (`gitops.scheduler`: its node, spec, owner and
    revision, labels, whether it is stopping; `reconcile._bound`: whether it ran to its
    end), and, where disruption budgets are (`disruption_budgets`: which pods are healthy),
    its readiness."""
    return (
        pod.namespace,
        pod.name,
        pod.node,
        pod.spec,
        pod.owner,
        pod.template_hash,
        pod.labels,
        pod.terminating_at,
        finished(pod),
        pod.ready if budgets else None,
    )


@dataclass
class Settled:
    """Plan parts and rollout statuses of settled Deployments and DaemonSets (see the
    module), and the last pass's `Live`: a pass over the very pod tuple of the last one,
    with the same pods evicted, works on the same live pods (the controller's `PodCache`
    gives the same tuple while no row changed; sorting 150,000 pods out and grouping them
    was a third of a settled cluster's pass), and the last pass's placements (`Placed`)."""

    plans: _Table[Plan] = field(default_factory=_Table)
    statuses: _Table[RolloutStatus] = field(default_factory=_Table)
    live: Live | None = None
    placed: Placed | None = None
