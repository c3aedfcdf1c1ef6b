"""The control loop: read state, plan, schedule, write state; level-triggered.

Each pass reads the state from the store (it never trusts what woke it), runs the pure
`gitops.reconcile.decide` (planner and scheduler), and writes the decision back. The pods,
most of the state, come through a `PodCache` that reads only the rows written since its
last read (every row's stamp every few minutes, every row after an error). Running a pass
twice changes nothing the second time. Passes run on a timer and whenever a sync or an
agent report wakes the loop.
"""

from __future__ import annotations

import dataclasses
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import structlog

from gitops.handover import quick_handover
from gitops.health import Health
from gitops.loop import Backoff, Ended, Loop, Precedence
from gitops.metrics import Metrics
from gitops.model import NodeName, ObjectKey, Pod, PodId
from gitops.planner import Plan
from gitops.planner.settled import Settled
from gitops.reconcile import Decision, decide
from gitops.store import Store
from gitops.store.podcache import PodCache

log = structlog.get_logger(__name__)


MAX_REST = 5.0  # seconds a pass waits at most after the last one
# Pod changes one transaction holds at most (whole workloads at a time, so one may hold
# more). A pass creating 150,000 pods held SQLite's write lock for 65 s in one transaction:
# the leader's lease, renewed by its writes as they commit, lapsed under it.
WRITE_BATCH = 5_000


@dataclass
class QuietPasses:
    """A pass whose inputs (every pod row as written, and the rest of the state) are those
    of the last pass that decided nothing decides nothing again without deciding, for up to
    `resync` seconds since that pass decided: what the clock alone brings about (a progress
    deadline, a CronJob's time, minReadySeconds) waits at most that long."""

    resync: float = 5.0
    inputs: Any = None
    decided_at: float = float("-inf")
    skipped: int = 0

    def quiet(self, inputs: Any, now: float) -> bool:
        if inputs == self.inputs and now - self.decided_at < self.resync:
            self.skipped += 1
            return True
        return False

    def decided(self, inputs: Any, now: float, *, empty: bool) -> None:
        self.inputs, self.decided_at = (inputs, now) if empty else (None, float("-inf"))


@dataclass(frozen=True)
class PassResult:
    plan: Plan
    bound: int
    unschedulable: int


def reconcile_once(
    store: Store,
    now: float,
    *,
    not_ready_toleration: float = 60.0,
    metrics: Metrics | None = None,
    not_ready_before: float = 0.0,
    pods: PodCache | None = None,
    quiet: QuietPasses | None = None,
    settled: Settled | None = None,
    precedence: Precedence | None = None,
) -> PassResult:
    """One pass. A node's NotReady time counts from `not_ready_before` at the earliest (the
    control plane's start): a server that was down does not evict every pod at its first
    pass because it heard nothing while it was down. With `pods`, the pods are read through
    that cache (only the rows written since its last read); a write that fails makes it
    read everything again next time. With `quiet` (and `pods`), a pass whose inputs did not
    change since the last pass that decided nothing does not decide again (`QuietPasses`).
    With `settled` (kept between passes), settled Deployments and DaemonSets are not planned
    again while their pods (and a DaemonSet's nodes) are the same (`gitops.planner.settled`).
    With `precedence`, a write of more than `WRITE_BATCH` pod changes holds it while it goes
    on."""
    state = store.snapshot(now, pods=pods.pods if pods is not None else None, versioned=False)
    if not_ready_before:
        since = {n: max(t, not_ready_before) for n, t in state.not_ready_since.items()}
        state = dataclasses.replace(state, not_ready_since=since)
    inputs = None if pods is None or quiet is None else (pods.generation, dataclasses.replace(state, pods=()))
    if quiet is not None and quiet.quiet(inputs, now):
        return PassResult(Plan((), (), ()), 0, 0)
    decision = decide(state, now, not_ready_toleration=not_ready_toleration, settled=settled)
    result, placements, evicted = decision.plan, decision.placements, decision.evicted
    failed = dict(result.failed)
    changes, written = _changes(decision), set[ObjectKey]()
    # A write of more than one transaction (thousands of pods created and bound) takes
    # precedence over the agents' calls: they wait while it goes on (`Precedence`).
    many = sum(len(c) for c in changes.values()) > WRITE_BATCH
    with precedence.held() if precedence is not None and many else nullcontext():
        try:
            _write(store, changes, decision, now, written=written)
        except Ended:  # the lease passed on: this process writes nothing more
            raise
        except Exception as exc:  # what is not written yet is written again workload by workload
            if pods is not None:
                pods.invalidate()
            log.warning("controller.write_failed", error=str(exc), retry="workload by workload")
            left = {k: c for k, c in changes.items() if k not in written}
            failed |= _write_each(store, left, decision, now)
    for key, error in sorted(failed.items()):
        log.error("controller.workload_failed", workload=str(key), error=error)
    rollouts = {
        key: dataclasses.replace(state, error=failed[key]) if key in failed else state
        for key, state in decision.rollouts.items()
    }
    if metrics is not None and placements.assigned:
        # Pods created in this very pass are not in `state`: they waited no time. Those placed
        # were waiting for a node (the others are not keyed: 150,000 ids a pass).
        created = {p.id: p.created_at for p in state.pods if p.node is None}
        metrics.observe_binds(now - created.get(pod_id, now) for pod_id in placements.assigned)
    if not decision.empty:
        log.info(
            "controller.pass",
            create=len(result.create),
            stop=len(result.stop),
            evicted=len(evicted),
            bound=len(placements.assigned),
            unschedulable=len(placements.unschedulable),
            actions=_first(result.describe(), 20),
        )
    store.save_rollouts(rollouts, now)
    store.save_workload_states(decision.states, now)
    if quiet is not None:
        quiet.decided(inputs, now, empty=decision.empty and not failed)
    stopped = (*evicted, *decision.preempted, *result.stop)
    actions = Plan(result.create, stopped, result.keep, failed=failed, more=result.more)
    return PassResult(actions, len(placements.assigned), len(placements.unschedulable))


@dataclass
class _Changes:
    """The pod changes of a pass of one workload, or of several written together."""

    create: list[tuple[Pod, str]] = field(default_factory=list)
    stop: list[tuple[Pod, str]] = field(default_factory=list)
    delete_now: list[tuple[Pod, str]] = field(default_factory=list)
    bind: dict[PodId, NodeName] = field(default_factory=dict)
    pending_reasons: dict[PodId, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return (
            len(self.create)
            + len(self.stop)
            + len(self.delete_now)
            + len(self.bind)
            + len(self.pending_reasons)
        )

    def add(self, other: _Changes) -> None:
        self.create += other.create
        self.stop += other.stop
        self.delete_now += other.delete_now
        self.bind |= other.bind
        self.pending_reasons |= other.pending_reasons


def _changes(decision: Decision) -> dict[ObjectKey, _Changes]:
    """The pod changes of `decision`, by workload."""
    plan, placements = decision.plan, decision.placements
    changes: defaultdict[ObjectKey, _Changes] = defaultdict(_Changes)
    for action in plan.create:
        changes[action.pod.owner].create.append((action.pod, action.reason))
    for action in (*plan.stop, *decision.preempted):
        changes[action.pod.owner].stop.append((action.pod, action.reason))
    for action in decision.evicted:
        changes[action.pod.owner].delete_now.append((action.pod, action.reason))
    if placements.assigned or placements.unschedulable:
        # Placements are of pending pods only: 150,000 kept pods are not 150,000 ids a pass.
        pods = {a.pod.id: a.pod for a in plan.create} | {p.id: p for p in plan.keep if p.node is None}
        for pod_id, node in placements.assigned.items():
            if pod_id in pods:
                changes[pods[pod_id].owner].bind[pod_id] = node
        # Only reasons that changed: 8,000 pending pods are not 8,000 reads per pass.
        for pod_id, reason in placements.unschedulable.items():
            pod = pods.get(pod_id)
            if pod is not None and pod.reason != reason:
                changes[pod.owner].pending_reasons[pod_id] = reason
    return dict(changes)


def _write(
    store: Store,
    changes: dict[ObjectKey, _Changes],
    decision: Decision,
    now: float,
    *,
    written: set[ObjectKey] | None = None,
) -> None:
    """Write `changes`, whole workloads at a time, in transactions of about `WRITE_BATCH`
    pod changes at most; each transaction adds its workloads to `written` once committed.
    Nothing to write opens no transaction."""

    def flush(batch: _Changes, owners: list[ObjectKey]) -> None:
        if batch:
            store.apply_pod_changes(
                create=batch.create,
                stop=batch.stop,
                delete_now=batch.delete_now,
                bind=batch.bind,
                placed_because=decision.placements.why,
                pending_reasons=batch.pending_reasons,
                now=now,
            )
        if written is not None:
            written.update(owners)

    batch, owners = _Changes(), []
    for owner in sorted(changes):
        batch.add(changes[owner])
        owners.append(owner)
        if len(batch) >= WRITE_BATCH:
            flush(batch, owners)
            batch, owners = _Changes(), []
    flush(batch, owners)


def _write_each(
    store: Store, changes: dict[ObjectKey, _Changes], decision: Decision, now: float
) -> dict[ObjectKey, str]:
    """Write each workload's changes in a transaction of its own; the workloads whose write
    fails, with the error (the others' changes are written)."""
    failed = {}
    for owner in sorted(changes):
        try:
            _write(store, {owner: changes[owner]}, decision, now)
        except Ended:
            raise
        except Exception as exc:  # recorded on the workload; the others go on
            failed[owner] = f"the pass could not write its pods: {type(exc).__name__}: {str(exc)[:300]}"
    return failed


def _first(lines: list[str], n: int) -> list[str]:
    """At most `n` lines, then how many more: a pass creating 5,000 pods logs one short line."""
    return lines if len(lines) <= n else [*lines[:n], f"... and {len(lines) - n} more"]


class Controller:
    """Runs `reconcile_once` on a timer and on demand, in a background thread (`gitops.loop`)."""

    def __init__(
        self,
        store: Store,
        *,
        interval: float = 2.0,
        clock: Callable[[], float] = time.time,
        not_ready_toleration: float = 60.0,
        metrics: Metrics | None = None,
        ready: Callable[[], bool] = lambda: True,
        not_ready_before: Callable[[], float] = lambda: 0.0,
        health: Health | None = None,
        fence: Callable[[], AbstractContextManager[object]] | None = None,
        precedence: Precedence | None = None,
    ) -> None:
        self.store = store
        self.precedence = precedence or Precedence()  # held while a pass writes many pod changes
        self.ready = ready
        self.not_ready_before = not_ready_before
        self._waited = False
        self.metrics = metrics
        self.not_ready_toleration = not_ready_toleration
        self.clock = clock
        self.quiet = QuietPasses()
        self.settled = Settled()
        self._took, self._ended = 0.0, float("-inf")  # how long the last pass took, when it ended
        self._desired: tuple[object, ...] | None = None  # the desired objects the last pass began with
        self._more = False  # the last pass left workloads wanting more new pods
        self.loop = Loop(
            "controller",
            self._pass,
            interval=interval,
            backoff=Backoff(first=interval, cap=60.0),
            health=health,
            component="controller",
            background=True,
            around=fence,  # the leader's lease: a pass of a control plane that lost it writes nothing
        )

    @property
    def interval(self) -> float:
        return self.loop.interval

    def _pass(self) -> None:
        if not self.ready():
            # Just started: the sources are not all read, or the agents have not all reported
            # (their containers are adopted, not recreated). Deciding now could double pods.
            if not self._waited:
                log.info("controller.waiting", reason="sources not synced or agents not heard from yet")
                self._waited = True
            return
        # Woken again right after a long pass (agents' reports wake it): leave the API as
        # long again first, so that passes take at most about half of the process.
        rest = self._took - (time.perf_counter() - self._ended)
        if rest > 0:
            time.sleep(min(rest, MAX_REST))
        started, written = time.perf_counter(), self.store.written()
        # The first pass of a new revision (and one going on with what the last left) may
        # create and bind thousands of pods: it decides before the agents' calls, as it
        # writes (a big write holds the precedence within `reconcile_once` too).
        desired = tuple(self.store.desired())  # the very objects while no revision is applied
        last = self._desired  # those of the last pass that ended: one that failed is tried again first
        new = (
            last is None
            or len(desired) != len(last)
            or any(a is not b for a, b in zip(desired, last, strict=True))
        )
        # The API's event loop gets the interpreter within 0.5 ms while the pass computes
        # (`gitops.handover`).
        with self.precedence.held() if new or self._more else nullcontext(), quick_handover():
            result = reconcile_once(
                self.store,
                self.clock(),
                not_ready_toleration=self.not_ready_toleration,
                metrics=self.metrics,
                not_ready_before=self.not_ready_before(),
                pods=self.store.pod_cache,  # each pass reads only the pods written since the last
                quiet=self.quiet,
                settled=self.settled,
                precedence=self.precedence,
            )
        self._desired, self._more = desired, result.plan.more
        self._ended = time.perf_counter()
        self._took = self._ended - started
        if self.metrics is not None:
            self.metrics.controller_pass.observe(self._took)
            self.metrics.controller_pass_writes.set(self.store.written() - written)
        if result.plan.more:
            self.loop.trigger()  # workloads wanted more new pods than one pass creates

    def wake(self) -> None:
        self.loop.trigger()

    def start(self) -> None:
        self.loop.start()

    def stop(self) -> None:
        self.loop.stop()
