"""Deployment strategies: how far one planning pass may move a rollout.

RollingUpdate follows Kubernetes' Deployment controller: `maxSurge` (rounded up) bounds how
many pods may exist above `replicas`, `maxUnavailable` (rounded down) how many of the
desired pods may be unavailable; both default to 25%. Each pass creates new-template pods
up to the surge, removes old pods that are not ready (they serve nothing), then removes
ready old pods only as far as availability stays at `replicas - maxUnavailable`. Recreate
stops every old pod first and creates new ones once none is left.

Availability here is readiness: a pod counts once its agent reports it Running and ready.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from gitops.model import Manifest, Pod, RolloutState

DEFAULT_SURGE = "25%"
DEFAULT_UNAVAILABLE = "25%"


@dataclass(frozen=True)
class Strategy:
    type: Literal["RollingUpdate", "Recreate"]
    max_surge: int = 0
    max_unavailable: int = 0

    def describe(self) -> str:
        if self.type == "Recreate":
            return "Recreate"
        return f"rolling update, surge {self.max_surge}, unavailable {self.max_unavailable}"


def resolve(value: int | str, replicas: int, *, round_up: bool) -> int:
    """An absolute number or a percentage of `replicas` (Kubernetes' rounding)."""
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if text.endswith("%"):
        exact = int(text[:-1]) * replicas / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return int(text)


def strategy_of(spec: Mapping[str, Any], replicas: int) -> Strategy:
    strategy = spec.get("strategy") or {}
    if strategy.get("type") == "Recreate":
        return Strategy("Recreate")
    rolling = strategy.get("rollingUpdate") or {}
    surge = resolve(rolling.get("maxSurge", DEFAULT_SURGE), replicas, round_up=True)
    unavailable = resolve(rolling.get("maxUnavailable", DEFAULT_UNAVAILABLE), replicas, round_up=False)
    if surge == 0 and unavailable == 0:
        # Validation refuses this; should it slip through, Kubernetes' fallback keeps progress possible.
        unavailable = 1
    return Strategy("RollingUpdate", surge, unavailable)


@dataclass(frozen=True)
class Step:
    """How many pods one pass creates and stops."""

    create: int
    stop_unready_old: int
    stop_ready_old: int


def rolling_step(
    strategy: Strategy, replicas: int, *, new_total: int, new_ready: int, old_unready: int, old_ready: int
) -> Step:
    """One pass of a rolling update, from the counts at the start of the pass."""
    total = new_total + old_unready + old_ready
    room = max(0, replicas + strategy.max_surge - total)
    create = max(0, min(replicas - new_total, room))
    min_available = replicas - strategy.max_unavailable
    new_unavailable = new_total - new_ready
    # Kubernetes' bound: never scale down below what keeps min_available, counting the
    # new pods that are not available yet as if they were.
    budget = max(0, total - min_available - new_unavailable)
    stop_unready = min(old_unready, budget)
    budget -= stop_unready
    available = new_ready + old_ready
    stop_ready = max(0, min(old_ready, budget, available - min_available))
    return Step(create, stop_unready, stop_ready)


@dataclass(frozen=True)
class RolloutStatus:
    """Where a Deployment's rollout stands, Kubernetes' counters plus the current step
    (a StatefulSet's and a DaemonSet's too: `kind` says which)."""

    deployment: str  # the workload's ref, `namespace/name`
    strategy: str
    template_hash: str
    desired: int
    total: int
    updated: int
    ready: int
    available: int
    updated_available: int
    complete: bool
    step: str
    kind: str = "Deployment"


def rollout_status(
    name: str, replicas: int, spec: Mapping[str, Any], template_hash: str, pods: Sequence[Pod], *, now: float
) -> RolloutStatus:
    """Counters for one Deployment from its (non-terminating) pods."""
    pods = [p for p in pods if p.terminating_at is None]
    min_ready = int(spec.get("minReadySeconds", 0))
    strategy = strategy_of(spec, replicas)
    updated = [p for p in pods if p.template_hash == template_hash]
    old = [p for p in pods if p.template_hash != template_hash]
    ready = sum(1 for p in pods if p.ready)
    available = sum(1 for p in pods if p.available(min_ready, now))
    updated_ready = sum(1 for p in updated if p.available(min_ready, now))
    complete = not old and len(updated) == replicas and updated_ready == replicas
    if complete:
        step = f"complete: {replicas}/{replicas} pods on {template_hash}"
    elif old:
        step = (
            f"rolling out {template_hash} ({strategy.describe()}): "
            f"{updated_ready}/{replicas} new pods available, {len(old)} old pod(s) left"
        )
    elif len(updated) != replicas:
        step = f"scaling: {len(updated)} -> {replicas} pods"
    else:
        step = f"waiting for {replicas - updated_ready} pod(s) to become available"
    return RolloutStatus(
        deployment=name,
        strategy=strategy.describe(),
        template_hash=template_hash,
        desired=replicas,
        total=len(pods),
        updated=len(updated),
        ready=ready,
        available=available,
        updated_available=updated_ready,
        complete=complete,
        step=step,
    )


ROLLBACK_ANNOTATION = "gitops.dev/rollback-on-failure"
DEFAULT_PROGRESS_DEADLINE = 600
DEFAULT_HISTORY_LIMIT = 10


def rollback_template(state: RolloutState | None) -> Mapping[str, Any] | None:
    """The pod template to run instead of the source's while a rollout is rolled back."""
    if state is None or state.status != "rolled back":
        return None
    for digest, template in reversed(state.history):
        if digest != state.target:
            return dict(template)
    return None


def advance(
    state: RolloutState | None,
    deployment: Manifest,
    target: str,
    status: RolloutStatus,
    *,
    now: float,
) -> RolloutState:
    """The rollout state after one controller pass.

    Progress is any change of (updated, updated and available) pods; a rollout without progress for
    `progressDeadlineSeconds` (default 600) is marked failed. With the annotation
    `gitops.dev/rollback-on-failure: "true"` a failed rollout is rolled back to the last
    template that completed (Kubernetes has no automatic rollback). A new template from the
    source always starts a new rollout.
    """
    spec = deployment.spec
    deadline = int(spec.get("progressDeadlineSeconds", DEFAULT_PROGRESS_DEADLINE))
    limit = int(spec.get("revisionHistoryLimit", DEFAULT_HISTORY_LIMIT))
    meta = deployment.body.get("metadata") or {}
    rollback = str((meta.get("annotations") or {}).get(ROLLBACK_ANNOTATION, "")).lower() == "true"
    # Progress is the new template gaining pods or available pods; old pods coming and
    # going (say, a flapping readiness probe) is not progress.
    mark = (status.updated, status.updated_available)
    if state is None or state.target != target:
        history = state.history if state is not None else ()
        return RolloutState(deployment.key, target, now, now, mark, "progressing", "", history)
    if state.status in ("failed", "rolled back"):
        return state
    if status.complete and state.status == "complete" and mark == state.progress_mark:
        return state  # complete already and nothing moved: a pass has nothing to write
    if status.complete:
        template = spec.get("template") or {}
        history = (*(h for h in state.history if h[0] != target), (target, template))
        keep = max(limit, 1)
        return replace(
            state, status="complete", reason="", progress_at=now, progress_mark=mark, history=history[-keep:]
        )
    if state.status == "complete":
        # Completed templates stay complete; later pod trouble shows in the counters.
        return state if mark == state.progress_mark else replace(state, progress_mark=mark)
    if mark != state.progress_mark:
        return replace(state, progress_at=now, progress_mark=mark)
    if now - state.progress_at < deadline:
        return state
    reason = f"progress deadline exceeded: no progress for {deadline}s ({status.step})"
    failed = replace(state, status="failed", reason=reason)
    if rollback and rollback_template(replace(failed, status="rolled back")) is not None:
        previous = next(h for h, _ in reversed(state.history) if h != target)
        return replace(failed, status="rolled back", reason=f"{reason}; rolled back to {previous}")
    return failed
