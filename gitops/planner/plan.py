"""Desired vs observed state in, a `Plan` of pod actions out; a pure function.

`plan(desired, pods)` looks at every Deployment in the desired manifests and the pods that
exist for it, and sorts the pods into buckets, Nomad-style: pods to create (pending, not
yet placed), pods to stop, and pods to keep. Every action carries the reason a person would
ask for ("scale up: 3 -> 5 replicas", "template changed: image changed: web:1 -> web:2").

Pod names are deterministic: `<deployment>-<template hash>-<suffix>` where the suffix is
derived from the hash and a slot number, so planning is reproducible and running the same
plan twice creates nothing the second time. Names are unique by construction: a slot whose
suffix is taken (by a pod that exists, or one this plan already named) is skipped.

The other kinds that own pods have planners of their own (`PLANNERS`): StatefulSets,
DaemonSets, Jobs, and ReplicaSets and ReplicationControllers, which keep a number of pods
without ever replacing one for a new template (`replicaset`).

A workload asks for at most `BURST` new pods per pass (as Kubernetes' ReplicaSet controller
does); `Plan.more` says some wanted more, so the controller runs again at once. A
workload whose planning fails is recorded in `Plan.failed` with the error, and every other
workload is planned as usual.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet

from gitops.model import Manifest, Node, ObjectKey, Pod, PodName
from gitops.planner import daemonset, statefulset
from gitops.planner.actions import (
    BURST,
    Action,
    Plan,
    Workloads,
    group_by_owner,
    merge,
    new_pods,
    pod_name,
    stop_order,
)
from gitops.planner.daemonset import daemonset_status, plan_daemonset
from gitops.planner.job import plan_job
from gitops.planner.podspec import ConfigIndex, Template, describe_change, resolve_template
from gitops.planner.replicaset import plan_replicaset
from gitops.planner.rollout import RolloutStatus, rolling_step, rollout_status, strategy_of
from gitops.planner.settled import Settled, clockless, inputs_of
from gitops.planner.statefulset import plan_statefulset, statefulset_status

__all__ = ["BURST", "Action", "Plan", "Workloads", "configs_of", "plan", "pod_name", "rollouts"]


def configs_of(desired: Iterable[Manifest]) -> ConfigIndex:
    return ConfigIndex((m.key, m) for m in desired if m.key.kind in ("ConfigMap", "Secret", "PriorityClass"))


def _new_pods(
    deployment: Manifest,
    template: Template,
    owned: Sequence[Pod],
    count: int,
    *,
    now: float,
    avoid: AbstractSet[str],
) -> list[Pod]:
    def name_of(slot: int) -> PodName:
        return pod_name(deployment.key.name, template.hash, slot)

    return new_pods(deployment, template, owned, count, now=now, avoid=avoid, name_of=name_of)


def _plan_deployment(deployment: Manifest, template: Template, owned: Sequence[Pod], ctx: Workloads) -> Plan:
    now, avoid = ctx.now, ctx.avoid
    replicas = ctx.replicas_of(deployment)
    strategy = strategy_of(deployment.spec, replicas)
    current = sorted((p for p in owned if p.template_hash == template.hash), key=stop_order, reverse=True)
    outdated = sorted((p for p in owned if p.template_hash != template.hash), key=stop_order)
    stop: list[Action] = []
    create: list[Action] = []
    keep = current[:replicas]
    for pod in current[replicas:]:
        stop.append(Action(pod, f"scale down: {len(current)} -> {replicas} replicas"))

    if not outdated:
        missing = replicas - len(keep)
        if current:
            why = f"scale up: {len(current)} -> {replicas} replicas"
        else:
            why = f"{deployment.key} wants {replicas} replicas"
        create = [
            Action(p, why) for p in _new_pods(deployment, template, owned, missing, now=now, avoid=avoid)
        ]
        return Plan(
            tuple(create), tuple(stop), tuple(sorted(keep, key=lambda p: p.name)), more=missing > BURST
        )

    change = describe_change(
        outdated[0].spec, template.spec, template.uses, labels_changed=outdated[0].labels != template.labels
    )
    if strategy.type == "Recreate":
        # Every old pod goes first; the new ones come once none is left.
        for pod in outdated:
            stop.append(Action(pod, f"template changed: {change} (Recreate: old pods stop first)"))
        return Plan((), tuple(stop), tuple(sorted(keep, key=lambda p: p.name)))

    min_ready = int(deployment.spec.get("minReadySeconds", 0))
    old_unready = [p for p in outdated if not p.available(min_ready, now)]
    old_ready = [p for p in outdated if p.available(min_ready, now)]
    step = rolling_step(
        strategy,
        replicas,
        new_total=len(keep),
        new_ready=sum(1 for p in keep if p.available(min_ready, now)),
        old_unready=len(old_unready),
        old_ready=len(old_ready),
    )
    how = strategy.describe()
    create = [
        Action(p, f"template changed: {change} ({how}: new pod)")
        for p in _new_pods(deployment, template, owned, step.create, now=now, avoid=avoid)
    ]
    for pod in old_unready[: step.stop_unready_old]:
        stop.append(Action(pod, f"template changed: {change} ({how}: old pod not ready)"))
    # Among those the budget allows, as Kubernetes' ReplicaSet controller ranks them: pods on
    # the node holding most of the Deployment's pods first (so that a rolling update ends
    # as spread as it began), then the oldest.
    colocated = Counter(p.node for p in owned if p.node is not None)
    ranked = sorted(old_ready, key=lambda p: (-colocated[p.node] if p.node else 0, p.created_at, p.name))
    for pod in ranked[: step.stop_ready_old]:
        stop.append(Action(pod, f"template changed: {change} ({how}: old pod replaced)"))
    stopped = {a.pod.id for a in stop}
    kept = keep + [p for p in outdated if p.id not in stopped]
    return Plan(
        tuple(create), tuple(stop), tuple(sorted(kept, key=lambda p: p.name)), more=step.create > BURST
    )


PlanWorkload = Callable[[Manifest, Template, Sequence[Pod], Workloads], Plan]
PLANNERS: Mapping[str, PlanWorkload] = {
    "Deployment": _plan_deployment,
    "StatefulSet": plan_statefulset,
    "DaemonSet": plan_daemonset,
    "ReplicaSet": plan_replicaset,
    "ReplicationController": plan_replicaset,  # the same controller, with a plain-labels selector
    "Job": plan_job,
}
"""The workload kinds that own pods, and the planner of each."""


def plan(
    desired: Sequence[Manifest],
    pods: Sequence[Pod],
    *,
    now: float = 0.0,
    avoid: AbstractSet[str] = frozenset(),
    context: Workloads | None = None,
    settled: Settled | None = None,
    grouped: Mapping[ObjectKey, tuple[Pod, ...]] | None = None,
) -> Plan:
    """Decide which pods to create, stop and keep so that `pods` converge on `desired`.

    New pods never take a name in `avoid` (pods being stopped outside this plan). `context`
    (nodes, autoscaled replicas, rollout and Job states) replaces `now` and `avoid` when given.
    `settled` keeps the parts of settled Deployments and DaemonSets between calls
    (`gitops.planner.settled`); `grouped` is `group_by_owner(pods)` when the caller has it.
    """
    configs = configs_of(desired)
    ctx = dataclasses.replace(
        context if context is not None else Workloads(now=now, avoid=avoid), configs=configs
    )
    by_owner = grouped if grouped is not None else group_by_owner(pods)
    parts: list[Plan] = []
    workloads = sorted((m for m in desired if m.key.kind in PLANNERS), key=lambda m: m.key)
    for workload in workloads:
        owned = by_owner.get(workload.key, ())
        try:
            template = resolve_template(workload, configs)
            if settled is None or not clockless(workload):
                parts.append(PLANNERS[workload.key.kind](workload, template, owned, ctx))
                continue
            inputs = inputs_of(workload, template.hash, ctx.replicas_of(workload), ctx.nodes)
            part = settled.plans.find(workload.key, inputs, owned)
            if part is None:
                part = PLANNERS[workload.key.kind](workload, template, owned, ctx)
                if part.empty and not part.more:
                    settled.plans.keep(workload.key, inputs, owned, part)
                else:
                    settled.plans.drop(workload.key)
            parts.append(part)
        except Exception as exc:  # one workload's failure must not stop the others
            previous = ctx.jobs.get(workload.key)
            jobs = {workload.key: previous} if previous is not None else {}
            # What runs keeps running.
            parts.append(
                Plan(keep=tuple(owned), failed={workload.key: f"{type(exc).__name__}: {exc}"}, jobs=jobs)
            )
    wanted = {d.key for d in workloads}
    if settled is not None:
        settled.plans.only(wanted)
    stop: list[Action] = []
    for owner in sorted(set(by_owner) - wanted):
        why = ctx.removed.get(owner, f"{owner} was removed from the source")
        for pod in sorted(by_owner[owner], key=lambda p: p.name):
            stop.append(Action(pod, why))
    parts.append(Plan(stop=tuple(stop)))
    return merge(parts)


def adoptable(
    workload: Manifest, template: Template, name: str, *, node: Node, owned: Sequence[Pod], now: float
) -> Pod | None:
    """The pod a running container of `workload` found on `node` is, when the store does not
    know it (a control plane that lost its database adopts what runs rather than starting it
    again), or None when the workload has no place for it. A Job's pods are not adopted: what
    the Job counted went with the database."""
    kind = workload.key.kind
    if kind == "StatefulSet":
        return statefulset.adopted(workload, template, name, owned=owned, now=now)
    if kind == "DaemonSet":
        return daemonset.adopted(workload, template, name, node=node, owned=owned, now=now)
    if kind not in ("Deployment", "ReplicaSet", "ReplicationController"):
        return None
    live = [p for p in owned if p.template_hash == template.hash and p.terminating_at is None]
    if len(live) >= int(workload.spec.get("replicas", 1)):
        return None
    return Pod(
        namespace=workload.key.namespace,
        name=PodName(name),
        owner=workload.key,
        template_hash=template.hash,
        spec=template.spec,
        labels=template.labels,
        created_at=now,
    )


def rollouts(
    desired: Sequence[Manifest],
    pods: Sequence[Pod],
    *,
    now: float,
    nodes: Sequence[Node] = (),
    replicas: Mapping[ObjectKey, int] | None = None,
    settled: Settled | None = None,
    grouped: Mapping[ObjectKey, tuple[Pod, ...]] | None = None,
) -> list[RolloutStatus]:
    """Rollout status of every Deployment, StatefulSet and DaemonSet in `desired` (one that
    cannot be resolved says so in its step, and the others are unaffected). `nodes` are
    the nodes DaemonSets run on; `replicas` the counts autoscalers set; `settled` keeps
    Deployments' and DaemonSets' statuses between calls (`gitops.planner.settled`);
    `grouped` is `group_by_owner(pods)` when the caller has it."""
    configs = configs_of(desired)
    by_owner = grouped if grouped is not None else group_by_owner(pods)
    result = []
    kinds = ("Deployment", "StatefulSet", "DaemonSet")
    for workload in sorted((m for m in desired if m.key.kind in kinds), key=lambda m: m.key):
        written = workload.spec.get("replicas", 1)
        count = (replicas or {}).get(workload.key, int(written) if _is_count(written) else 0)
        owned = by_owner.get(workload.key, ())
        try:
            template = resolve_template(workload, configs)
        except Exception as exc:  # reported on the workload; the others go on
            status = rollout_status(workload.key.ref, count, workload.spec, "", owned, now=now)
            step = f"error: {type(exc).__name__}: {exc}"
            result.append(dataclasses.replace(status, complete=False, step=step, kind=workload.key.kind))
            continue
        if workload.key.kind == "StatefulSet":
            status = statefulset_status(workload, template.hash, owned, count, now=now)
        elif settled is not None and clockless(workload):
            inputs = inputs_of(workload, template.hash, count, nodes)
            found = settled.statuses.find(workload.key, inputs, owned)
            if found is None:
                found = _status(workload, template, owned, count, nodes=nodes, now=now)
                settled.statuses.keep(workload.key, inputs, owned, found)
            status = found
        else:
            status = _status(workload, template, owned, count, nodes=nodes, now=now)
        result.append(
            status
            if status.kind == workload.key.kind
            else dataclasses.replace(status, kind=workload.key.kind)
        )
    if settled is not None:
        settled.statuses.only({m.key for m in desired})
    return result


def _status(
    workload: Manifest,
    template: Template,
    owned: Sequence[Pod],
    count: int,
    *,
    nodes: Sequence[Node],
    now: float,
) -> RolloutStatus:
    """A Deployment's or a DaemonSet's rollout status."""
    if workload.key.kind == "DaemonSet":
        return daemonset_status(workload, template, owned, nodes, now=now)
    return rollout_status(workload.key.ref, count, workload.spec, template.hash, owned, now=now)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
