"""One control-loop pass as a pure function: a `ClusterState` in, a `Decision` out.

`decide` is everything the controller decides in a pass (evictions from NotReady nodes,
the planner's pod actions, the scheduler's placements, the new rollout states) with no
store, clock or I/O. The controller feeds it the store's state and writes the decision
back; a pull-request preview feeds it a copy of the state with the branch's manifests as
the desired objects and only records the decision. Both run this same function, so a
preview cannot disagree with what applying the branch does.

`settle` is the preview's model of the agents: it applies a decision to a state as if
every bound pod started and became ready and every stopped pod went away, so a preview can
run pass after pass until a rollout is complete.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from gitops.model import ClusterState, Manifest, ObjectKey, Placements, Pod, PodId, RolloutState, content_hash
from gitops.planner import Action, Plan, plan, resolve_template, rollouts
from gitops.planner.evict import evictions
from gitops.planner.plan import configs_of
from gitops.planner.rollout import advance, rollback_template
from gitops.scheduler import place


@dataclass(frozen=True)
class Decision:
    """What one pass does: buckets of pod actions, placements, and rollout states."""

    plan: Plan  # create / stop / keep from the planner
    evicted: tuple[Action, ...] = ()  # pods deleted at once: their node is gone too long
    placements: Placements = field(default_factory=Placements)
    rollouts: Mapping[ObjectKey, RolloutState] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        """True when the pass changes no pod (rollout bookkeeping aside)."""
        return self.plan.empty and not self.evicted and not self.placements.assigned


def decide(state: ClusterState, now: float, *, not_ready_toleration: float = 60.0) -> Decision:
    pods = state.pods
    # When no node at all is Ready, the fault is likelier ours (the control plane's network,
    # or it was down) than every node's: nothing is evicted (Kubernetes' full disruption mode).
    if any(n.ready for n in state.nodes):
        evicted = evictions(pods, state.not_ready_since, now=now, default_toleration=not_ready_toleration)
    else:
        evicted = []
    gone = {a.pod.id for a in evicted}
    live = [p for p in pods if p.terminating_at is None and p.id not in gone]
    draining = {p.name for p in pods if p.terminating_at is not None} | {a.pod.name for a in evicted}
    effective = [_rolled_back(m, state.rollouts.get(m.key)) for m in state.desired]
    result = plan(effective, live, now=now, avoid=draining)
    # Stopping pods hold their node's resources until their agent reports them gone.
    bound = [p for p in pods if p.node is not None and p.id not in gone]
    pending: list[Pod] = [p for p in result.keep if p.node is None] + [a.pod for a in result.create]
    placements = place(pending, state.nodes, bound, state.claims)
    stopped = {a.pod.id for a in result.stop}
    after = [p for p in live if p.id not in stopped] + [a.pod for a in result.create]
    states = _advance(state.desired, effective, state.rollouts, after, now, failed=result.failed)
    return Decision(result, tuple(evicted), placements, states)


def settle(state: ClusterState, decision: Decision, now: float) -> ClusterState:
    """`state` after the agents carried out `decision`: bound pods run and are ready,
    stopped and evicted pods are gone."""
    gone: set[PodId] = {a.pod.id for a in decision.plan.stop} | {a.pod.id for a in decision.evicted}
    assigned = decision.placements.assigned
    pods: list[Pod] = []
    for pod in [*state.pods, *(a.pod for a in decision.plan.create)]:
        if pod.id in gone or pod.terminating_at is not None:
            continue
        node = assigned.get(pod.id)
        why = decision.placements.unschedulable.get(pod.id)
        if node is not None:
            pods.append(
                dataclasses.replace(pod, node=node, phase="Running", ready=True, ready_since=now, reason="")
            )
        else:
            pods.append(pod if why is None else dataclasses.replace(pod, reason=why))
    return dataclasses.replace(state, pods=tuple(pods), rollouts=dict(decision.rollouts), version="")


def _rolled_back(manifest: Manifest, state: RolloutState | None) -> Manifest:
    """The manifest to plan with: the source's, or its last good template when rolled back."""
    template = rollback_template(state) if manifest.key.kind == "Deployment" else None
    if template is None:
        return manifest
    body = {**manifest.body, "spec": {**manifest.spec, "template": template}}
    # A new body gets its own hash: resolved templates are memoised by it.
    return dataclasses.replace(manifest, body=body, hash=content_hash(body))


def _advance(
    desired: Sequence[Manifest],
    effective: Sequence[Manifest],
    states: Mapping[ObjectKey, RolloutState],
    pods: Sequence[Pod],
    now: float,
    *,
    failed: Mapping[ObjectKey, str],
) -> dict[ObjectKey, RolloutState]:
    configs = configs_of(desired)
    statuses = {s.deployment: s for s in rollouts(effective, pods, now=now)}
    result = {}
    for manifest in desired:
        if manifest.key.kind != "Deployment":
            continue
        previous = states.get(manifest.key)
        if manifest.key in failed:
            base = previous or RolloutState(manifest.key, "", now, now)
            result[manifest.key] = dataclasses.replace(base, error=failed[manifest.key])
            continue
        target = resolve_template(manifest, configs).hash
        state = advance(previous, manifest, target, statuses[manifest.key.ref], now=now)
        result[manifest.key] = dataclasses.replace(state, error="") if state.error else state
    return result
