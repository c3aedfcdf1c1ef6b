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
from typing import Any, Literal

from gitops.model import (
    ClusterState,
    CronState,
    JobState,
    Manifest,
    Node,
    ObjectKey,
    Placements,
    Pod,
    PodId,
    RolloutState,
    ScaleState,
    content_hash,
)
from gitops.planner import Action, Plan, plan, resolve_template, rollouts
from gitops.planner.actions import Workloads, finished, group_by_owner
from gitops.planner.affinity import namespace_labels
from gitops.planner.autoscale import autoscale
from gitops.planner.budgets import disruption_budgets
from gitops.planner.cron import cron_step, job_manifest
from gitops.planner.evict import evictions
from gitops.planner.plan import configs_of
from gitops.planner.rollout import advance, rollback_template
from gitops.planner.settled import Live, Placed, Settled
from gitops.scheduler import place

# The workload kinds whose template changes roll out (their `RolloutState` is kept).
ROLLED_OUT = ("Deployment", "StatefulSet", "DaemonSet")


@dataclass(frozen=True)
class Decision:
    """What one pass does: buckets of pod actions, placements, and rollout states."""

    plan: Plan  # create / stop / keep from the planner
    evicted: tuple[Action, ...] = ()  # pods deleted at once: their node is gone too long
    preempted: tuple[Action, ...] = ()  # pods stopped to make room for pods of higher priority
    placements: Placements = field(default_factory=Placements)
    rollouts: Mapping[ObjectKey, RolloutState] = field(default_factory=dict)
    jobs: Mapping[ObjectKey, JobState] = field(default_factory=dict)  # every desired Job's state
    crons: Mapping[ObjectKey, CronState] = field(default_factory=dict)  # every CronJob's state
    scales: Mapping[ObjectKey, ScaleState] = field(default_factory=dict)  # every autoscaler's state

    @property
    def states(self) -> dict[ObjectKey, Any]:
        """The Job, CronJob and autoscaler states the store keeps (`gitops.store.states`)."""
        return {**self.jobs, **self.crons, **self.scales}

    @property
    def empty(self) -> bool:
        """True when the pass changes no pod (rollout bookkeeping aside)."""
        return self.plan.empty and not self.evicted and not self.placements.assigned


def decide(
    state: ClusterState, now: float, *, not_ready_toleration: float = 60.0, settled: Settled | None = None
) -> Decision:
    """One pass over `state` at `now`. `settled`, kept by the caller between passes, spares
    recomputing settled Deployments and DaemonSets (`gitops.planner.settled`); the decision
    is the same."""
    pods = state.pods
    # When no node at all is Ready, the fault is likelier ours (the control plane's network,
    # or it was down) than every node's: nothing is evicted (Kubernetes' full disruption mode).
    if any(n.ready for n in state.nodes):
        evicted = evictions(pods, state.not_ready_since, now=now, default_toleration=not_ready_toleration)
    else:
        evicted = []
    working = _live(pods, evicted, settled)
    live, draining, grouped, gone = working.live, working.draining, working.grouped, working.gone
    crons, cron_jobs, ended = _crons(state, now)
    scales = _autoscale(state, live, now)
    effective = [_rolled_back(m, state.rollouts.get(m.key)) for m in state.desired] + cron_jobs
    context = Workloads(
        now=now,
        avoid=draining,
        nodes=state.nodes,
        rollouts=state.rollouts,
        jobs=state.jobs,
        replicas={s.target: s.replicas for s in scales.values()},
        removed=ended,
    )
    result = plan(effective, live, context=context, settled=settled, grouped=grouped)
    # The kept pods are live ones: with none of those unbound (a settled cluster), the
    # 150,000 kept are not looked through.
    unbound = [p for p in result.keep if p.node is None] if working.unbound else []
    pending: list[Pod] = unbound + [a.pod for a in result.create]
    placements = _placements(state, working, pending, settled)
    preempted = _victims(placements, pending, _bound(pods, gone)) if placements.preemptions else ()
    states = _advance(
        state.desired,
        effective,
        state.rollouts,
        _after(grouped, result.stop, result.create),
        now,
        failed=result.failed,
        nodes=state.nodes,
        replicas=context.replicas,
        settled=settled,
    )
    return Decision(result, tuple(evicted), preempted, placements, states, result.jobs, crons, scales)


def _live(pods: tuple[Pod, ...], evicted: Sequence[Action], settled: Settled | None) -> Live:
    """The pods a pass works on (`Live`): the last pass's (`Settled.live`) when it had the
    very same pods and evictions."""
    gone = frozenset(a.pod.id for a in evicted)
    kept = settled.live if settled is not None else None
    if kept is not None and kept.pods is pods and kept.gone == gone:
        return kept
    live = tuple(p for p in pods if p.terminating_at is None and (not gone or p.id not in gone))
    draining = frozenset(
        {p.name for p in pods if p.terminating_at is not None} | {a.pod.name for a in evicted}
    )
    working = Live(pods, gone, live, draining, group_by_owner(live), any(p.node is None for p in live))
    if settled is not None:
        settled.live = working
    return working


def _after(
    grouped: Mapping[ObjectKey, tuple[Pod, ...]], stop: Sequence[Action], create: Sequence[Action]
) -> Mapping[ObjectKey, tuple[Pod, ...]]:
    """The live pods after the pass, by owner: `grouped` without the pods it stops, with
    those it creates (after the others). An owner's tuple neither touches is the one
    `grouped` holds, which the `Settled` memo finds at once; every pod's id looked up and
    all of them grouped again took a tenth of a pass while a rollout went on."""
    if not stop and not create:
        return grouped
    after = dict(grouped)
    stopped: dict[ObjectKey, set[PodId]] = {}
    for action in stop:
        stopped.setdefault(action.pod.owner, set()).add(action.pod.id)
    for owner, ids in stopped.items():
        after[owner] = tuple(p for p in after.get(owner, ()) if p.id not in ids)
    created: dict[ObjectKey, list[Pod]] = {}
    for action in create:
        created.setdefault(action.pod.owner, []).append(action.pod)
    for owner, pods in created.items():
        after[owner] = (*after.get(owner, ()), *pods)
    return after


def _bound(pods: Sequence[Pod], gone: frozenset[PodId]) -> list[Pod]:
    """The pods holding their node's resources: stopping pods do until their agent reports
    them gone; pods that ran to their end (a Job's) hold none, as kube-scheduler counts them."""
    return [p for p in pods if p.node is not None and not (gone and p.id in gone) and not finished(p)]


def _placements(
    state: ClusterState, working: Live, pending: Sequence[Pod], settled: Settled | None
) -> Placements:
    """Where `pending` go: the scheduler's answer, or the last pass's when it was worked out
    from the same inputs (`Placed`). Nothing to place (most passes of a settled cluster):
    the nodes' arrays are not built."""
    if not pending:
        if settled is not None:
            settled.placed = None  # (what it held, an older pod tuple among it, can go)
        return Placements()
    kept = settled.placed if settled is not None else None
    if kept is not None and kept.answers(pending, working, state.nodes, state.claims, state.desired):
        placements = kept.placements
    else:
        placements = place(
            pending,
            state.nodes,
            _bound(state.pods, working.gone),
            state.claims,
            namespaces=namespace_labels(state.desired),
            budgets=disruption_budgets(state.desired, state.pods),
            explain_placements=True,
        )
    if settled is not None:  # (with the inputs as read now: equal ones read again compare at once)
        settled.placed = Placed(tuple(pending), working, state.nodes, state.claims, state.desired, placements)
    return placements


def _victims(placements: Placements, pending: Sequence[Pod], bound: Sequence[Pod]) -> tuple[Action, ...]:
    """The pods preemption stops, each with the pod it makes room for."""
    by_id = {p.id: p for p in bound}
    priority = {p.id: p.spec.priority for p in pending}
    actions = []
    for pod_id, preemption in sorted(placements.preemptions.items()):
        for victim in preemption.victims:
            pod = by_id[victim]
            actions.append(
                Action(
                    pod,
                    f"preempted by {pod_id} on {preemption.node} "
                    f"(priority {priority.get(pod_id, 0)} > {pod.spec.priority})",
                )
            )
    return tuple(actions)


def _crons(
    state: ClusterState, now: float
) -> tuple[dict[ObjectKey, CronState], list[Manifest], dict[ObjectKey, str]]:
    """Each CronJob's pass: its new state, the Jobs of its runs (desired like any Job), and
    why each Job it let go (an old run past its history limit, one Replace ended) goes."""
    crons: dict[ObjectKey, CronState] = {}
    jobs: list[Manifest] = []
    ended: dict[ObjectKey, str] = {}
    for cronjob in sorted((m for m in state.desired if m.key.kind == "CronJob"), key=lambda m: m.key):
        previous = state.crons.get(cronjob.key)
        outcomes: dict[str, Literal["Complete", "Failed"]] = {}
        for run in previous.runs if previous is not None else ():
            job = state.jobs.get(ObjectKey("Job", cronjob.key.namespace, run.name))
            if job is not None and job.condition in ("Complete", "Failed"):
                outcomes[run.name] = "Complete" if job.condition == "Complete" else "Failed"
        step = cron_step(cronjob, previous, outcomes, now)
        crons[cronjob.key] = step.state
        jobs += [job_manifest(cronjob, run) for run in step.state.runs]
        for run, why in step.ended:
            ended[ObjectKey("Job", cronjob.key.namespace, run.name)] = f"{cronjob.key}: {why}"
    return crons, jobs, ended


def _autoscale(state: ClusterState, live: Sequence[Pod], now: float) -> dict[ObjectKey, ScaleState]:
    """Each autoscaler's pass: the replicas it sets its target to, and why."""
    if not any(m.key.kind == "HorizontalPodAutoscaler" for m in state.desired):
        return {}
    desired = {m.key: m for m in state.desired}
    by_owner: dict[ObjectKey, list[Pod]] = {}
    for pod in live:
        by_owner.setdefault(pod.owner, []).append(pod)
    scales: dict[ObjectKey, ScaleState] = {}
    for hpa in sorted(
        (m for m in state.desired if m.key.kind == "HorizontalPodAutoscaler"), key=lambda m: m.key
    ):
        ref = hpa.spec.get("scaleTargetRef") or {}
        target = ObjectKey(str(ref.get("kind", "")), hpa.key.namespace, str(ref.get("name", "")))
        previous = state.scales.get(hpa.key)
        if previous is not None and previous.target != target:
            previous = None  # a new target starts afresh
        workload = desired.get(target)
        if workload is None:
            replicas = previous.replicas if previous is not None else 0
            why = f"{target} is not in the source"
            scales[hpa.key] = ScaleState(hpa.key, target, replicas, reason=why, error=why)
            continue
        current = previous.replicas if previous is not None else int(workload.spec.get("replicas", 1))
        try:
            scales[hpa.key] = autoscale(hpa, current, by_owner.get(target, []), state.usage, previous, now)
        except Exception as exc:  # recorded on the autoscaler; its target keeps its replicas
            base = previous or ScaleState(hpa.key, target, current)
            scales[hpa.key] = dataclasses.replace(base, error=f"{type(exc).__name__}: {exc}")
    return scales


def settle(state: ClusterState, decision: Decision, now: float) -> ClusterState:
    """`state` after the agents carried out `decision`: bound pods run and are ready,
    stopped and evicted pods are gone, and a claim a pod is bound with first has its volume
    on that pod's node, as the store records it (so a StatefulSet's pod that is replaced
    returns to its data)."""
    gone: set[PodId] = {a.pod.id for a in (*decision.plan.stop, *decision.evicted, *decision.preempted)}
    assigned = decision.placements.assigned
    claims = dict(state.claims)
    pods: list[Pod] = []
    for pod in [*state.pods, *(a.pod for a in decision.plan.create)]:
        if pod.id in gone or pod.terminating_at is not None:
            continue
        node = assigned.get(pod.id)
        why = decision.placements.unschedulable.get(pod.id)
        if node is not None:
            for claim in pod.spec.claims:
                claims.setdefault(claim, node)
            pods.append(
                dataclasses.replace(pod, node=node, phase="Running", ready=True, ready_since=now, reason="")
            )
        else:
            pods.append(pod if why is None else dataclasses.replace(pod, reason=why))
    return dataclasses.replace(
        state,
        pods=tuple(pods),
        rollouts=dict(decision.rollouts),
        jobs=dict(decision.jobs),
        crons=dict(decision.crons),
        scales=dict(decision.scales),
        claims=claims,
        version="",
    )


def _rolled_back(manifest: Manifest, state: RolloutState | None) -> Manifest:
    """The manifest to plan with: the source's, or its last good template when rolled back."""
    template = rollback_template(state) if manifest.key.kind in ROLLED_OUT else None
    if template is None:
        return manifest
    body = {**manifest.body, "spec": {**manifest.spec, "template": template}}
    # A new body gets its own hash: resolved templates are memoised by it.
    return dataclasses.replace(manifest, body=body, hash=content_hash(body))


def _advance(
    desired: Sequence[Manifest],
    effective: Sequence[Manifest],
    states: Mapping[ObjectKey, RolloutState],
    grouped: Mapping[ObjectKey, tuple[Pod, ...]],
    now: float,
    *,
    failed: Mapping[ObjectKey, str],
    nodes: Sequence[Node],
    replicas: Mapping[ObjectKey, int],
    settled: Settled | None,
) -> dict[ObjectKey, RolloutState]:
    """Each rolled-out workload's state after the pass, from its pods after it (`grouped`,
    by owner)."""
    configs = configs_of(desired)
    # All of `effective`: the templates resolve against its ConfigMaps and Secrets.
    found = rollouts(effective, (), now=now, nodes=nodes, replicas=replicas, settled=settled, grouped=grouped)
    statuses = {(s.kind, s.deployment): s for s in found}
    result = {}
    for manifest in desired:
        if manifest.key.kind not in ROLLED_OUT:
            continue
        previous = states.get(manifest.key)
        if manifest.key in failed:
            base = previous or RolloutState(manifest.key, "", now, now)
            result[manifest.key] = dataclasses.replace(base, error=failed[manifest.key])
            continue
        target = resolve_template(manifest, configs).hash
        state = advance(previous, manifest, target, statuses[(manifest.key.kind, manifest.key.ref)], now=now)
        result[manifest.key] = dataclasses.replace(state, error="") if state.error else state
    return result
