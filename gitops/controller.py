"""The control loop: read state, plan, schedule, write state; level-triggered.

Each pass re-reads everything from the store (it never trusts what woke it), runs the pure
`gitops.reconcile.decide` (planner and scheduler), and writes the decision back. Running a pass
twice changes nothing the second time. Passes run on a timer and whenever a sync or an
agent report wakes the loop.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from gitops.loop import Backoff, Loop
from gitops.metrics import Metrics
from gitops.planner import Plan
from gitops.reconcile import decide
from gitops.store import Store

log = structlog.get_logger(__name__)


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
) -> PassResult:
    """One pass. A node's NotReady time counts from `not_ready_before` at the earliest (the
    control plane's start): a server that was down does not evict every pod at its first
    pass because it heard nothing while it was down."""
    state = store.snapshot(now)
    if not_ready_before:
        since = {n: max(t, not_ready_before) for n, t in state.not_ready_since.items()}
        state = dataclasses.replace(state, not_ready_since=since)
    decision = decide(state, now, not_ready_toleration=not_ready_toleration)
    result, placements, evicted = decision.plan, decision.placements, decision.evicted
    store.apply_pod_changes(
        create=[(a.pod, a.reason) for a in result.create],
        stop=[(a.pod, a.reason) for a in result.stop],
        delete_now=[(a.pod, a.reason) for a in evicted],
        bind=placements.assigned,
        pending_reasons=placements.unschedulable,
        now=now,
    )
    if metrics is not None and placements.assigned:
        # Pods created in this very pass are not in `state`: they waited no time.
        created = {p.id: p.created_at for p in state.pods}
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
    store.save_rollouts(decision.rollouts, now)
    actions = Plan(result.create, (*evicted, *result.stop), result.keep)
    return PassResult(actions, len(placements.assigned), len(placements.unschedulable))


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
    ) -> None:
        self.store = store
        self.ready = ready
        self.not_ready_before = not_ready_before
        self._waited = False
        self.metrics = metrics
        self.not_ready_toleration = not_ready_toleration
        self.clock = clock
        self.loop = Loop(
            "controller", self._pass, interval=interval, backoff=Backoff(first=interval, cap=60.0)
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
        reconcile_once(
            self.store,
            self.clock(),
            not_ready_toleration=self.not_ready_toleration,
            metrics=self.metrics,
            not_ready_before=self.not_ready_before(),
        )

    def wake(self) -> None:
        self.loop.trigger()

    def start(self) -> None:
        self.loop.start()

    def stop(self) -> None:
        self.loop.stop()
