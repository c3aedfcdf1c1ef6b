"""The control loop: read state, plan, schedule, write state; level-triggered.

Each pass re-reads everything from the store (it never trusts what woke it), runs the pure
planner and scheduler, and writes their result back in one transaction. Running a pass
twice changes nothing the second time. Passes run on a timer and whenever a sync or an
agent report wakes the loop.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import structlog

from gitops.model import Manifest, Node, ObjectKey, Pod, RolloutState
from gitops.planner import Plan, plan, resolve_template, rollouts
from gitops.planner.evict import evictions
from gitops.planner.plan import configs_of
from gitops.planner.rollout import advance, rollback_template
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
    states = store.rollouts()
    effective = [_rolled_back(m, states.get(m.key)) for m in desired]
    result = plan(effective, live, now=now, avoid=draining)
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
    stopped = {a.pod.id for a in result.stop}
    after = [p for p in live if p.id not in stopped] + [a.pod for a in result.create]
    store.save_rollouts(_advance(desired, effective, states, after, now), now)
    actions = Plan(result.create, (*evicted, *result.stop), result.keep)
    return PassResult(actions, len(placements.assigned), len(placements.unschedulable))


def _rolled_back(manifest: Manifest, state: RolloutState | None) -> Manifest:
    """The manifest to plan with: the source's, or its last good template when rolled back."""
    template = rollback_template(state) if manifest.key.kind == "Deployment" else None
    if template is None:
        return manifest
    return dataclasses.replace(
        manifest, body={**manifest.body, "spec": {**manifest.spec, "template": template}}
    )


def _advance(
    desired: Sequence[Manifest],
    effective: Sequence[Manifest],
    states: Mapping[ObjectKey, RolloutState],
    pods: Sequence[Pod],
    now: float,
) -> dict[ObjectKey, RolloutState]:
    configs = configs_of(desired)
    statuses = {s.deployment: s for s in rollouts(effective, pods, now=now)}
    result = {}
    for manifest in desired:
        if manifest.key.kind != "Deployment":
            continue
        target = resolve_template(manifest, configs).hash
        result[manifest.key] = advance(
            states.get(manifest.key), manifest, target, statuses[manifest.key.ref], now=now
        )
    return result


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
