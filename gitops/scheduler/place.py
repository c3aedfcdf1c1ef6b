"""Placement: pending pods in, a node for each (or the reason there is none) out.

`place(pending, nodes, bound)` builds a `Cluster` of node columns and places the pods, the
highest priority first and otherwise in the given order; `place_on(cluster, pending)` does
the same on a cluster a caller built once. Both are pure: no clock, no randomness, no I/O,
and the cluster is not modified.

For each pod: its class (`_LocalClass`: pods with the same static keys, requests and host
ports) keeps the totals of what only per-node columns decide, brought up to date at the
nodes touched since; the scores that read more (preferred pod affinity, spread) are added
and the checks beyond room (claims, spread, pod affinity) applied; one `argmax` takes the
first best node (ties go to the lowest node index, i.e. the order nodes were given in), and
the pod is bound there in the run's `Usage`. A pod that fits nowhere may preempt
lower-priority pods (`preempt.py`). When a pod only per-node columns decide fits nowhere
and nothing changed since, the next of its class gets the same answer at once.
"""

from __future__ import annotations

import gc
import math
from collections import Counter
from collections.abc import Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gitops.model import (
    DisruptionBudget,
    Node,
    NodeName,
    Placements,
    Pod,
    PodId,
    PodSpec,
    Preemption,
)
from gitops.scheduler.checks import (
    BEYOND_ROOM,
    CHECKS,
    SCORERS,
    LeastAllocated,
    NodeNameMatches,
    Scorer,
    static_mask,
)
from gitops.scheduler.cluster import BoolArray, Cluster, FloatArray, RevisionPods, Usage
from gitops.scheduler.preempt import preempt

NO_NODES = "0/0 nodes: no nodes registered"


def _static_score(usage: Usage, scorer: Scorer, pod: Pod) -> FloatArray | None:
    """A static scorer's weighted score for `pod`, computed once per distinct key in the run."""
    key = ("score", scorer, scorer.key(pod))
    if key not in usage.static:
        score = scorer.score(usage, pod)
        usage.static[key] = (
            None if score is None else (score if scorer.weight == 1.0 else scorer.weight * score)
        )
    found: FloatArray | None = usage.static[key]
    return found


def explain(usage: Usage, pod: Pod, static_masks: Sequence[BoolArray | None] = ()) -> str:
    """Why no node fits: each node counted under the first check it fails.

    `0/3 nodes: 2 insufficient memory, 1 untolerated taint {dedicated=gpu:NoSchedule}`;
    groups by count, most first, then in check order, then by text. Each check names what
    fails where it can: the selector pair, the taint, the affinity term or spread constraint.
    """
    cluster = usage.cluster
    n = len(cluster)
    if n == 0:
        return NO_NODES
    remaining = np.ones(n, dtype=np.bool_)
    groups: Counter[tuple[int, str]] = Counter()
    for order, check in enumerate(CHECKS):
        known = static_masks[order] if order < len(static_masks) else None
        ok = known if known is not None else check.mask(usage, pod)
        first = remaining & ~ok
        remaining &= ok
        if not first.any():
            continue
        for text, count in check.explain(usage, pod, first):
            groups[(order, text)] += count
    parts = sorted(groups.items(), key=lambda item: (-item[1], item[0]))
    return f"0/{n} nodes: " + ", ".join(f"{count} {text}" for (_, text), count in parts)


def _total(parts: Sequence[tuple[str, FloatArray]]) -> FloatArray:
    total: FloatArray = parts[0][1]
    owned = False  # whether `total` is our own array, safe to add to in place
    for _, part in parts[1:]:
        if owned:
            total += part
        else:
            total, owned = total + part, True
    return total


def _why(
    runner_up: str,
    terms: Sequence[tuple[str, float, float]],
    totals: tuple[float, float],
) -> str:
    """Why the node picked: its total against the runner-up's (on the node named
    `runner_up`), and the terms (name, the value at each) that differ most."""
    differing = sorted(
        ((mine - theirs, name, mine, theirs) for name, mine, theirs in terms if mine != theirs),
        key=lambda item: (-abs(item[0]), item[1]),
    )
    shown = ", ".join(f"{name} {mine:.2f} vs {theirs:.2f}" for _, name, mine, theirs in differing[:3])
    return f"score {totals[0]:.2f} against {totals[1]:.2f} on {runner_up}" + (
        f": {shown}" if shown else ", the first of equals in node order"
    )


def _runner_up(scores: FloatArray, best: int) -> int | None:
    """The first best node but `best`, if any fits. `best` is masked in place for the
    `argmax` and put back: a copy of 5,000 totals per pod placed cost more than the argmax."""
    kept = scores[best]
    scores[best] = -np.inf
    try:
        second = int(scores.argmax())
        found = math.isfinite(scores.item(second))
    finally:
        scores[best] = kept
    return second if found else None


ONLY_NODE = "the only node that passes every check"
LEAST_ALLOCATED = LeastAllocated.name  # the first of a placement's terms (`_LocalClass.parts`)
MAX_LOCAL_CLASSES = 256  # kept per run, the oldest first dropped: 256 x 5,000 nodes is 10 MiB
_NONE: BoolArray = np.zeros(0, dtype=np.bool_)


@dataclass
class _LocalClass:
    """Pods whose checks and scores read only per-node columns (room, static masks and
    scores: no claims, pod affinity or spread constraints): the same for every pod with the
    same requests, host ports and static keys, whatever its owner. Their totals are kept
    between pods and recomputed only at the nodes whose room changed since (`touched`);
    the owner's default spread is added at the end.

    `masked` is -inf where a static check fails; where the room is short it may still hold
    a total until `exact` makes it -inf there too. A total computed everywhere skips the
    room checks (a third of its cost), since the node it picks nearly always has the room:
    it is the one with the most room left. The node picked is checked (`has_room`); only
    when it lacks room is the array made exact and the pick made again. Either way the pick
    is the first best node that fits: every node that fits has its true total in `masked`,
    and no node before the pick has a higher one."""

    static_feasible: BoolArray
    static_parts: tuple[tuple[str, FloatArray], ...]  # weighted static scores
    static_masks: tuple[BoolArray | None, ...]
    static_blocking: tuple[FloatArray, ...]  # the static scores, -inf where a static check fails
    masked: FloatArray | None = None  # per node: the total, -inf where the pod does not fit (see above)
    exact: bool = False  # whether `masked` is -inf at every node whose room is short too
    seen: int = 0  # `len(usage.touched)` when `masked` was last brought up to date
    failed_at: int = -1  # `len(usage.touched)` when a pod of the class last fit nowhere
    reason: str = ""
    dropped: bool = False  # no longer kept by the run (its arrays freed: `drop`)

    def drop(self) -> None:
        """No longer kept by the run: its arrays go (a spec's record may still name it)."""
        self.dropped, self.masked = True, None
        self.static_feasible, self.static_parts, self.static_masks, self.static_blocking = _NONE, (), (), ()

    def parts(
        self, usage: Usage, pod: Pod, at: npt.NDArray[np.int64]
    ) -> tuple[BoolArray, list[tuple[str, FloatArray]]]:
        """Feasibility and the weighted score parts at nodes `at`."""
        spec = pod.spec
        cpu, memory = spec.cpu_request_milli, spec.memory_request_bytes
        feasible = self.static_feasible[at] & usage.has_slot[at]
        if cpu:
            feasible &= usage.cpu_free[at] >= cpu
        if memory:
            feasible &= usage.memory_free[at] >= memory
        for claim in spec.host_port_claims:
            taken = usage.host_port_taken(claim)
            if taken is not None:
                feasible &= ~taken[at]
        cluster = usage.cluster
        least = usage.cpu_free_float[at] - float(cpu)
        least /= cluster.cpu_scale[at]
        memory_part = usage.memory_free_float[at] - float(memory)
        memory_part /= cluster.memory_scale[at]
        least += memory_part
        least /= 2.0
        parts = [(LEAST_ALLOCATED, least)]
        parts += [(name, part[at]) for name, part in self.static_parts]
        return feasible, parts

    def at_node(self, usage: Usage, pod: Pod, i: int) -> float:
        """`parts` for one node, summed, in plain floats (the same operations, the same result)."""
        if not self.static_feasible[i] or not self.has_room(usage, pod, i):
            return -math.inf
        total = _least_allocated(usage, pod.spec, i)
        for _, part in self.static_parts:
            total += part.item(i)
        return total

    def terms_at(self, usage: Usage, pod: Pod, i: int) -> list[float]:
        """The weighted score parts at node `i` (`parts`' values there), in plain floats."""
        return [_least_allocated(usage, pod.spec, i), *(part.item(i) for _, part in self.static_parts)]

    @staticmethod
    def has_room(usage: Usage, pod: Pod, i: int) -> bool:
        """Whether node `i` has a pod slot, the cpu, memory and host ports `pod` asks for."""
        spec = pod.spec
        cpu, memory = spec.cpu_request_milli, spec.memory_request_bytes
        if usage.pods_free[i] <= 0:
            return False
        if (cpu and usage.cpu_free[i] < cpu) or (memory and usage.memory_free[i] < memory):
            return False
        for claim in spec.host_port_claims:
            taken = usage.host_port_taken(claim)
            if taken is not None and taken[i]:
                return False
        return True

    def everywhere(self, usage: Usage, pod: Pod) -> FloatArray:
        """The totals at every node, -inf where a static check fails (room left unchecked)."""
        spec = pod.spec
        cluster = usage.cluster
        total = usage.cpu_free_float - float(spec.cpu_request_milli)
        total /= cluster.cpu_scale
        memory_part = usage.memory_free_float - float(spec.memory_request_bytes)
        memory_part /= cluster.memory_scale
        total += memory_part
        total *= 0.5  # `/ 2.0`, exactly (both round the same real number)
        for part in self.static_blocking:  # the static scores in order, adding 0.0 where none
            total += part
        return total

    def make_exact(self, usage: Usage, pod: Pod) -> FloatArray:
        """`masked`, with -inf also at every node whose room is short."""
        assert self.masked is not None
        spec = pod.spec
        cpu, memory = spec.cpu_request_milli, spec.memory_request_bytes
        short = ~usage.has_slot
        if cpu:
            short |= usage.cpu_free < cpu
        if memory:
            short |= usage.memory_free < memory
        for claim in spec.host_port_claims:
            taken = usage.host_port_taken(claim)
            if taken is not None:
                short |= taken
        np.putmask(self.masked, short, -np.inf)
        self.exact = True
        return self.masked

    def update(self, usage: Usage, pod: Pod) -> FloatArray:
        """`masked`, brought up to date with what changed since it was computed."""
        touched = usage.touched
        n = len(usage.cluster)
        if self.masked is None or len(touched) - self.seen > n // 8:
            self.masked, self.exact = self.everywhere(usage, pod), False
        elif len(touched) - self.seen <= 2:  # a pod of the class just before: one node or two
            for i in touched[self.seen :]:
                self.masked[i] = self.at_node(usage, pod, i)
        elif len(touched) > self.seen:
            at = np.array(touched[self.seen :], dtype=np.int64)  # repeats just recompute twice
            feasible, parts = self.parts(usage, pod, at)
            self.masked[at] = np.where(feasible, _total(parts), -np.inf)
        self.seen = len(touched)
        return self.masked


def _least_allocated(usage: Usage, spec: PodSpec, i: int) -> float:
    """The least-allocated score at node `i`, as `_LocalClass.parts` computes it there."""
    cluster = usage.cluster
    least = (usage.cpu_free_float.item(i) - float(spec.cpu_request_milli)) / cluster.cpu_scale.item(i)
    memory = usage.memory_free_float.item(i) - float(spec.memory_request_bytes)
    memory_part = memory / cluster.memory_scale.item(i)
    return (least + memory_part) / 2.0


_STATIC_CHECKS = tuple(check for check in CHECKS if check.static)
_STATIC_BUT_NAME = tuple(check for check in _STATIC_CHECKS if not isinstance(check, NodeNameMatches))
_STATIC_SCORERS = tuple(scorer for scorer in SCORERS if scorer.static)
_STATIC_CHECK_KEYS = tuple(check.key for check in _STATIC_CHECKS)
_STATIC_SCORER_KEYS = tuple(scorer.key for scorer in _STATIC_SCORERS)


_Revision = tuple[Hashable, str, RevisionPods]  # (owner, template hash, its record in the run)


def _revision(usage: Usage, pod: Pod, last: _Revision | None) -> _Revision:
    """The record of `pod`'s revision: `last`, the previous pod's, when it is the same one
    (pods come workload by workload), else the run's."""
    if last is not None and last[0] is pod.owner and last[1] == pod.template_hash:
        return last
    return (pod.owner, pod.template_hash, usage.revision((pod.owner, pod.template_hash)))


def _fits_where_named(usage: Usage, pod: Pod) -> int | None:
    """The index of the node a pod of a `_LocalClass` names (`spec.nodeName`: a DaemonSet's
    pod), when the pod fits there; None when that node is gone or the pod does not fit.

    Where it fits, that node is the only one that does, and so the one the class's path
    would pick, whatever the scores: this finds it by the static checks' masks at that
    node (kept for the run: the DaemonSet's pods share them) and its room, not by a class
    of its own over every node (four times the time at 5,000 nodes, `bench/scheduler.py`'s
    daemonset case). Where it does not fit, the class's path says why, and whether
    preempting frees room."""
    i = usage.cluster.index.get(NodeName(pod.spec.node_name))
    if i is None:
        return None
    for check in _STATIC_BUT_NAME:
        if not static_mask(usage, check, pod)[i]:
            return None
    return i if _LocalClass.has_room(usage, pod, i) else None


def _local_class(usage: Usage, pod: Pod, checks: Hashable, scorers: Hashable) -> _LocalClass:
    """A new class; `checks` and `scorers` are the pod's static checks' and scorers' keys
    (what they share with other classes is computed once per run). A class of pods that
    name their node (a DaemonSet's: one class per node) is not kept for the run beside the
    others: kept, 10,000 of them held 280 MiB of arrays at 5,000 nodes."""
    shared_key = ("class", checks, scorers)
    shared: (
        tuple[
            BoolArray,
            tuple[tuple[str, FloatArray], ...],
            tuple[BoolArray | None, ...],
            tuple[FloatArray, ...],
        ]
        | None
    )
    shared = usage.static.get(shared_key)
    if shared is None:
        masks = tuple(static_mask(usage, check, pod) if check.static else None for check in CHECKS)
        feasible = np.ones(len(usage.cluster), dtype=np.bool_)
        for mask in masks:
            if mask is not None:
                feasible &= mask
        parts = []
        for scorer in _STATIC_SCORERS:
            part = _static_score(usage, scorer, pod)
            if part is not None:
                parts.append((scorer.name, part))
        blocking: tuple[FloatArray, ...] = ()
        if parts or not feasible.all():
            first = parts[0][1] if parts else np.zeros(len(usage.cluster), dtype=np.float64)
            blocking = (np.where(feasible, first, -np.inf), *(part for _, part in parts[1:]))
        shared = (feasible, tuple(parts), masks, blocking)
        if not pod.spec.node_name:
            usage.static[shared_key] = shared
    return _LocalClass(*shared)


def _signature(pod: Pod) -> tuple[Hashable, Hashable, Hashable]:
    """What decides where a pod of a `_LocalClass` goes (its owner's spread aside), and
    the parts of it that are the static checks' and scorers' keys."""
    spec = pod.spec
    checks = tuple([key(pod) for key in _STATIC_CHECK_KEYS])
    scorers = tuple([key(pod) for key in _STATIC_SCORER_KEYS])
    return (
        (checks, scorers, spec.cpu_request_milli, spec.memory_request_bytes, spec.host_port_claims),
        checks,
        scorers,
    )


def _spec_is_local(spec: PodSpec) -> bool:
    """Whether, by its spec, only per-node columns decide where a pod goes (`_LocalClass`):
    no claims, topology spread constraints or pod affinity of its own."""
    affinity = spec.affinity
    if spec.claims or spec.topology_spread or affinity.pod_required or affinity.anti_required:
        return False
    return not (affinity.pod_preferred or affinity.anti_preferred)


@dataclass
class _Spec:
    """What a run works out once per pod spec object: its class's signature and keys,
    whether the spec alone leaves it to per-node columns, and its class while kept."""

    spec: PodSpec  # held, so that the `id` this is filed under stays its own
    signature: Hashable
    checks: Hashable
    scorers: Hashable
    local: bool
    klass: _LocalClass | None = None


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cycle collector held off for one run. A run allocates many small objects
    (its per-spec records, counts, results) and makes no reference cycles, so collecting
    during it frees nothing, while each full collection the allocations trigger walks every
    object of the process (a control plane holding 150,000 pods has millions). Measured on
    `bench/scheduler.py`'s distinct case: a quarter of the run. Reference counting still
    frees what the run drops; the collector runs again after it."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def place_on(
    cluster: Cluster,
    pending: Sequence[Pod],
    *,
    budgets: Sequence[DisruptionBudget] = (),
    explain_placements: bool = False,
) -> Placements:
    """Place `pending` on `cluster`, the highest priority first (stably); `cluster` itself
    is left as it was. With `explain_placements`, say why each pod went where it did."""
    with _collector_paused():
        return _place_on(cluster, pending, budgets=budgets, explain_placements=explain_placements)


def _place_on(
    cluster: Cluster,
    pending: Sequence[Pod],
    *,
    budgets: Sequence[DisruptionBudget],
    explain_placements: bool,
) -> Placements:
    usage = Usage(cluster)
    usage.disruptions = [budget.allowed for budget in budgets]
    assigned: dict[PodId, NodeName] = {}
    unschedulable: dict[PodId, str] = {}
    preemptions: dict[PodId, Preemption] = {}
    why: dict[PodId, str] = {}
    if any(pod.spec.priority != pending[0].spec.priority for pod in pending):
        pending = sorted(pending, key=lambda pod: -pod.spec.priority)
    local: dict[Hashable, _LocalClass] = {}
    specs: dict[int, _Spec] = {}  # id(spec) ->
    revision: _Revision | None = None
    for pod in pending:
        spec = pod.spec
        named = (
            _fits_where_named(usage, pod)
            if spec.node_name and _spec_is_local(spec) and not usage.repelled(pod)
            else None
        )
        if named is not None:  # (each such pod a spec of its own: no record is made for it)
            revision = _revision(usage, pod, revision)
            usage.bind(named, pod, revision[2])
            assigned[pod.id] = cluster.names[named]
            if explain_placements:
                why[pod.id] = ONLY_NODE
            continue
        known = specs.get(id(spec))
        if known is None or known.spec is not spec:
            signature, checks, scorers = _signature(pod)
            known = specs[id(spec)] = _Spec(spec, signature, checks, scorers, _spec_is_local(spec))
        same = known.klass
        if same is None or same.dropped:
            same = local.get(known.signature)
            if same is None:
                same = local[known.signature] = _local_class(usage, pod, known.checks, known.scorers)
                if len(local) > MAX_LOCAL_CLASSES:  # all-distinct specs: keep memory bounded
                    local.pop(next(iter(local))).drop()
            known.klass = same
        only_local = known.local and not usage.repelled(pod)
        if only_local and same.failed_at == len(usage.touched):
            unschedulable[pod.id] = same.reason
            continue
        masked = same.update(usage, pod)
        if explain_placements and not same.exact:  # the runner-up must fit too
            masked = same.make_exact(usage, pod)
        revision = _revision(usage, pod, revision)
        while True:
            scores, extra = _scores(usage, pod, masked, revision[2], only_local=only_local)
            top = int(scores.argmax()) if len(scores) else -1
            found = top >= 0 and scores[top] != -math.inf
            if not found or same.exact or same.has_room(usage, pod, top):
                break
            masked = same.make_exact(usage, pod)  # the pick lacks room: pick again among those with it
        if found:
            if explain_placements:
                why[pod.id] = _why_node(usage, pod, same, extra=extra, scores=scores, best=top)
            usage.bind(top, pod, revision[2])
            assigned[pod.id] = cluster.names[top]
            continue
        reason = explain(usage, pod, same.static_masks)
        chosen = preempt(usage, pod, same.static_feasible, budgets)
        if chosen is not None:
            preemptions[pod.id] = chosen
            unschedulable[pod.id] = reason + chosen_text(chosen)
            continue
        if only_local:
            same.failed_at, same.reason = len(usage.touched), reason
        unschedulable[pod.id] = reason
    return Placements(assigned=assigned, unschedulable=unschedulable, preemptions=preemptions, why=why)


def chosen_text(chosen: Preemption) -> str:
    if not chosen.victims:
        return f"; waiting for terminating pods to leave {chosen.node}"
    return f"; preempting {len(chosen.victims)} pod(s) on {chosen.node}: {', '.join(chosen.victims)}"


def place(
    pending: Sequence[Pod],
    nodes: Sequence[Node],
    bound: Sequence[Pod],
    claims: Mapping[str, NodeName] | None = None,
    *,
    namespaces: Mapping[str, Sequence[tuple[str, str]]] | None = None,
    budgets: Sequence[DisruptionBudget] = (),
    explain_placements: bool = False,
) -> Placements:
    """Place pending pods on nodes, given the pods already bound to them, the nodes holding
    PersistentVolumeClaims' volumes, the labels of namespaces (for namespace selectors) and
    the disruption budgets preemption respects."""
    with _collector_paused():
        return _place_on(
            Cluster.build(nodes, bound, claims, namespaces),
            pending,
            budgets=budgets,
            explain_placements=explain_placements,
        )


_EXTRA_SCORERS = tuple(scorer for scorer in SCORERS if scorer.name in ("preferred pod affinity", "spread"))


def _extra_scores(usage: Usage, pod: Pod) -> list[tuple[str, FloatArray]]:
    """The weighted scores that read more than the node's own columns (preferred pod
    affinity, spread), those that have something to say, in `SCORERS` order."""
    parts = []
    for scorer in _EXTRA_SCORERS:
        part = scorer.score(usage, pod)
        if part is not None:
            parts.append((scorer.name, part if scorer.weight == 1.0 else scorer.weight * part))
    return parts


def _scores(
    usage: Usage, pod: Pod, masked: FloatArray, revision: RevisionPods, *, only_local: bool
) -> tuple[FloatArray, list[tuple[str, FloatArray]]]:
    """The pod's total per node (-inf where it does not fit) from its class's `masked`, and
    the scores added to it."""
    if only_local:  # of the extra scores, only the owner's default spread has something to say
        spread = usage.spread(revision)
        if spread is None:
            return masked, []
        return masked + spread, [("spread", spread)]
    extra = _extra_scores(usage, pod)
    scores = masked
    for _, part in extra:
        scores = scores + part
    fits = _beyond_room(usage, pod)
    if fits is not None:
        scores = np.where(fits, scores, -np.inf)
    return scores, extra


def _beyond_room(usage: Usage, pod: Pod) -> BoolArray | None:
    """Where the checks beyond room (claims, spread, pod affinity, anti-affinity) let the
    pod go; None when none of them has anything to say."""
    fits: BoolArray | None = None
    for check in BEYOND_ROOM:  # room itself is `_LocalClass`'s
        mask = check.mask(usage, pod)
        if mask is not usage.all_nodes:
            fits = mask if fits is None else fits & mask
    return fits


def _why_node(
    usage: Usage,
    pod: Pod,
    klass: _LocalClass,
    *,
    extra: Sequence[tuple[str, FloatArray]],
    scores: FloatArray,
    best: int,
) -> str:
    second = _runner_up(scores, best)
    if second is None:
        return ONLY_NODE
    names = [LEAST_ALLOCATED, *(name for name, _ in klass.static_parts), *(name for name, _ in extra)]
    mine = klass.terms_at(usage, pod, best) + [part.item(best) for _, part in extra]
    theirs = klass.terms_at(usage, pod, second) + [part.item(second) for _, part in extra]
    totals = (scores.item(best), scores.item(second))
    return _why(usage.cluster.names[second], list(zip(names, mine, theirs, strict=True)), totals)
