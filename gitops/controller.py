"""The control loop: read state, plan, schedule, write state; level-triggered.

Each pass re-reads everything from the store (it never trusts what woke it), runs the pure
planner and scheduler, and writes their result back in one transaction. Running a pass
twice changes nothing the second time. Passes run on a timer and whenever a sync or an
agent report wakes the loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from gitops.model import Node, Pod
from gitops.planner import Plan, plan
from gitops.planner.evict import evictions
from gitops.scheduler import place
from gitops.store import Store

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class PassResult:
    plan: Plan
    bound: int
    unschedulable: int


def reconcile_once(store: Store, now: float, *, not_ready_toleration: float = 60.0) -> PassResult:
    desired = store.desired()
    pods = store.pods()
    records = store.nodes(now)
    nodes: list[Node] = [r.node for r in records]
    not_ready_since = {
        r.node.name: r.heartbeat_at + store.heartbeat_grace for r in records if not r.node.ready
    }
    evicted = evictions(pods, not_ready_since, now=now, default_toleration=not_ready_toleration)
    gone = {a.pod.id for a in evicted}
    live = [p for p in pods if p.terminating_at is None and p.id not in gone]
    draining = {p.name for p in pods if p.terminating_at is not None} | {a.pod.name for a in evicted}
    result = plan(desired, live, now=now, avoid=draining)
    # Stopping pods hold their node's resources until their agent reports them gone.
    bound = [p for p in pods if p.node is not None and p.id not in gone]
    pending: list[Pod] = [p for p in result.keep if p.node is None] + [a.pod for a in result.create]
    placements = place(pending, nodes, bound)
    store.apply_pod_changes(
        create=[(a.pod, a.reason) for a in result.create],
        stop=[(a.pod, a.reason) for a in result.stop],
        delete_now=[(a.pod, a.reason) for a in evicted],
        bind=placements.assigned,
        pending_reasons=placements.unschedulable,
        now=now,
    )
    if not result.empty or placements.assigned or evicted:
        log.info(
            "controller.pass",
            create=len(result.create),
            stop=len(result.stop),
            evicted=len(evicted),
            bound=len(placements.assigned),
            unschedulable=len(placements.unschedulable),
            actions=result.describe(),
        )
    actions = Plan(result.create, (*evicted, *result.stop), result.keep)
    return PassResult(actions, len(placements.assigned), len(placements.unschedulable))


class Controller:
    """Runs `reconcile_once` on a timer and on demand, in a background thread."""

    def __init__(
        self,
        store: Store,
        *,
        interval: float = 2.0,
        clock: Callable[[], float] = time.time,
        not_ready_toleration: float = 60.0,
    ) -> None:
        self.store = store
        self.not_ready_toleration = not_ready_toleration
        self.interval = interval
        self.clock = clock
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="controller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            self._wake.clear()
            try:
                reconcile_once(self.store, self.clock(), not_ready_toleration=self.not_ready_toleration)
                failures = 0
            except Exception:
                failures += 1
                log.exception("controller.pass_failed", failures=failures)
            delay = self.interval if not failures else min(self.interval * 2**failures, 60.0)
            self._wake.wait(delay)
