"""ReplicaSets and ReplicationControllers: a number of pods, as Kubernetes' ReplicaSet
controller keeps them.

The controller keeps `replicas` pods of the set (default 1; an autoscaler's count when one
scales the set). It does not roll anything out: a change of the pod template does not
replace the pods that exist. Only pods created afterwards, to scale up or to replace one
that ended, run the new template, so a set may run pods of several templates until the old
ones go for another reason (a Deployment is what rolls a template out). The reasons of the
pods created while older ones run say so.

Scaling up creates pods named `<set>-<5 characters>`, as Kubernetes' `generateName` does
(the set's name cut to 58 characters so that a name stays within 63, then 5 characters of
its alphabet). Here the characters come from the set, its template hash and a slot number
(`pod_suffix`), so a plan is reproducible; a slot whose name is taken, by a pod of the set
or one still draining (`Workloads.avoid`), is skipped. At most `BURST` pods are created per
pass. Scaling down stops the pods least worth keeping first (`stop_order`: unplaced, then
not ready, then newest), whatever their template. A pod that ended (Failed; or Succeeded,
which `restartPolicy: Always` should never let happen) no longer counts: it is stopped, and
a new pod takes its place while the set still wants one.

A ReplicationController (v1) is the older form of the same controller; what sets it apart,
a selector of plain labels, is for validation, so it is planned here alike.
"""

from __future__ import annotations

from collections.abc import Sequence

from gitops.model import Manifest, Pod, PodName
from gitops.planner.actions import BURST, Action, Plan, Workloads, finished, new_pods, pod_suffix, stop_order
from gitops.planner.podspec import Template
from gitops.planner.rollout import RolloutStatus

__all__ = ["NAME_PREFIX_MAX", "new_pod_name", "plan_replicaset", "replicaset_status"]

NAME_PREFIX_MAX = 58
"""Kubernetes cuts a `generateName` prefix to this length, so that with its 5 characters a
pod's name is at most 63 long."""


def new_pod_name(manifest: Manifest, template: Template, slot: int) -> PodName:
    """The name of the set's pod in `slot` of its current template."""
    prefix = f"{manifest.key.name}-"[:NAME_PREFIX_MAX]
    # The kind and name too: a ReplicaSet and a ReplicationController may share a name,
    # and long names a cut prefix.
    seed = f"{manifest.key.kind}/{manifest.key.name}/{template.hash}"
    return PodName(prefix + pod_suffix(seed, slot))


def _new_pods(
    manifest: Manifest, template: Template, owned: Sequence[Pod], count: int, ctx: Workloads
) -> list[Pod]:
    def name_of(slot: int) -> PodName:
        return new_pod_name(manifest, template, slot)

    return new_pods(manifest, template, owned, count, now=ctx.now, avoid=ctx.avoid, name_of=name_of)


def _ended(pod: Pod) -> str:
    return f"pod {pod.phase.lower()}" + (f" ({pod.reason})" if pod.reason else "")


def plan_replicaset(manifest: Manifest, template: Template, owned: Sequence[Pod], ctx: Workloads) -> Plan:
    """Pods to create, stop and keep so that the set runs `replicas` pods (see the module)."""
    replicas = ctx.replicas_of(manifest)
    ended = sorted((p for p in owned if finished(p)), key=lambda p: p.name)
    active = sorted((p for p in owned if not finished(p)), key=stop_order)  # least worth keeping first
    excess = max(0, len(active) - replicas)
    missing = max(0, replicas - len(active))
    replaced = min(len(ended), missing)

    stop = [Action(p, f"{_ended(p)}: replaced") for p in ended[:replaced]]
    stop += [
        Action(p, f"{_ended(p)}: not replaced ({manifest.key} wants {replicas} replicas)")
        for p in ended[replaced:]
    ]
    stop += [Action(p, f"scale down: {len(active)} -> {replicas} replicas") for p in active[:excess]]
    keep = active[excess:]

    older = sum(1 for p in keep if p.template_hash != template.hash)
    note = (
        f" (a {manifest.key.kind} does not replace pods when its template changes: "
        f"{older} pod(s) of an older template keep running; new pods run the current one)"
        if older
        else ""
    )
    create: list[Action] = []
    for index, pod in enumerate(_new_pods(manifest, template, owned, missing, ctx)):
        if index < replaced:
            why = f"replaces {ended[index].name} ({_ended(ended[index])})"
        elif active or replaced:
            why = f"scale up: {len(active) + replaced} -> {replicas} replicas"
        else:
            why = f"{manifest.key} wants {replicas} replicas"
        create.append(Action(pod, why + note))
    return Plan(tuple(create), tuple(stop), tuple(sorted(keep, key=lambda p: p.name)), more=missing > BURST)


def replicaset_status(
    manifest: Manifest, template_hash: str, pods: Sequence[Pod], replicas: int, *, now: float
) -> RolloutStatus:
    """Kubernetes' counters for a ReplicaSet or ReplicationController, in the shape of a
    Deployment's rollout. Its only "rollout" is scaling: it is complete once `replicas` pods
    are available, whatever template they run."""
    live = [p for p in pods if p.terminating_at is None and not finished(p)]
    min_ready = int(manifest.spec.get("minReadySeconds", 0))
    updated = [p for p in live if p.template_hash == template_hash]
    available = sum(1 for p in live if p.available(min_ready, now))
    complete = len(live) == replicas == available
    older = len(live) - len(updated)
    if complete:
        step = f"complete: {available}/{replicas} pods ready"
    elif len(live) < replicas:
        step = f"scaling up: {len(live)} -> {replicas} pods"
    elif len(live) > replicas:
        step = f"scaling down: {len(live)} -> {replicas} pods"
    else:
        step = f"waiting: {available}/{replicas} pods available"
    if older:
        step += f" ({older} on an older template: not replaced)"
    return RolloutStatus(
        deployment=manifest.key.ref,
        strategy="none: a template change applies to new pods only",
        template_hash=template_hash,
        desired=replicas,
        total=len(live),
        updated=len(updated),
        ready=sum(1 for p in live if p.ready),
        available=available,
        updated_available=sum(1 for p in updated if p.available(min_ready, now)),
        complete=complete,
        step=step,
    )
