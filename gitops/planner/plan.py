"""Desired vs observed state in, a `Plan` of pod actions out; a pure function.

`plan(desired, pods)` looks at every Deployment in the desired manifests and the pods that
exist for it, and sorts the pods into buckets, Nomad-style: pods to create (pending, not
yet placed), pods to stop, and pods to keep. Every action carries the reason a person would
ask for ("scale up: 3 -> 5 replicas", "template changed: image changed: web:1 -> web:2").

Pod names are deterministic: `<deployment>-<template hash>-<suffix>` where the suffix is
derived from the hash and a slot number, so planning is reproducible and running the same
plan twice creates nothing the second time. Names are unique by construction: a slot whose
suffix is taken (by a pod that exists, or one this plan already named) is skipped.

A workload asks for at most `BURST` new pods per pass (as Kubernetes' ReplicaSet controller
does); `Plan.more` says some wanted more, so the controller runs again at once. A
workload whose planning fails is recorded in `Plan.failed` with the error, and every other
workload is planned as usual.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from gitops.model import Manifest, ObjectKey, Pod, PodName
from gitops.planner.podspec import ConfigIndex, Template, describe_change, resolve_template
from gitops.planner.rollout import RolloutStatus, rolling_step, rollout_status, strategy_of

_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # Kubernetes' safe alphabet: no vowels, no 0/1/3


@dataclass(frozen=True)
class Action:
    pod: Pod
    reason: str


BURST = 500  # new pods one workload asks for in one pass


@dataclass(frozen=True)
class Plan:
    create: tuple[Action, ...] = ()
    stop: tuple[Action, ...] = ()
    keep: tuple[Pod, ...] = ()
    failed: Mapping[ObjectKey, str] = field(default_factory=dict)  # workloads that could not be planned
    more: bool = False  # a workload wanted more than BURST new pods: plan again soon

    @property
    def empty(self) -> bool:
        return not self.create and not self.stop

    def describe(self) -> list[str]:
        lines = [f"create {a.pod.id}: {a.reason}" for a in self.create]
        lines += [f"stop {a.pod.id}: {a.reason}" for a in self.stop]
        return lines


def pod_suffix(template_hash: str, slot: int) -> str:
    digest = hashlib.sha256(f"{template_hash}/{slot}".encode()).digest()
    return "".join(_ALPHABET[b % len(_ALPHABET)] for b in digest[:5])


def pod_name(deployment: str, template_hash: str, slot: int) -> PodName:
    return PodName(f"{deployment}-{template_hash}-{pod_suffix(template_hash, slot)}")


def configs_of(desired: Iterable[Manifest]) -> ConfigIndex:
    return ConfigIndex((m.key, m) for m in desired if m.key.kind in ("ConfigMap", "Secret"))


def _stop_order(pod: Pod) -> tuple[int, int, float, str]:
    """Pods least worth keeping first: unplaced, then not ready, then newest."""
    return (pod.node is not None, pod.ready, -pod.created_at, pod.name)


def _new_pods(
    deployment: Manifest,
    template: Template,
    owned: Sequence[Pod],
    count: int,
    *,
    now: float,
    avoid: AbstractSet[str],
) -> list[Pod]:
    used = {p.name for p in owned} | set(avoid)
    pods: list[Pod] = []
    slot = 0
    while len(pods) < min(count, BURST):
        name = pod_name(deployment.key.name, template.hash, slot)
        slot += 1
        if name in used:
            continue
        used.add(name)
        pods.append(
            Pod(
                namespace=deployment.key.namespace,
                name=name,
                owner=deployment.key,
                template_hash=template.hash,
                spec=template.spec,
                labels=template.labels,
                reason="waiting to be scheduled",
                created_at=now,
            )
        )
    return pods


def _plan_deployment(
    deployment: Manifest, template: Template, owned: Sequence[Pod], now: float, avoid: AbstractSet[str]
) -> Plan:
    replicas = int(deployment.spec.get("replicas", 1))
    strategy = strategy_of(deployment.spec, replicas)
    current = sorted((p for p in owned if p.template_hash == template.hash), key=_stop_order, reverse=True)
    outdated = sorted((p for p in owned if p.template_hash != template.hash), key=_stop_order)
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
    # Oldest ready pods first among those the budget allows.
    for pod in sorted(old_ready, key=lambda p: (p.created_at, p.name))[: step.stop_ready_old]:
        stop.append(Action(pod, f"template changed: {change} ({how}: old pod replaced)"))
    stopped = {a.pod.id for a in stop}
    kept = keep + [p for p in outdated if p.id not in stopped]
    return Plan(
        tuple(create), tuple(stop), tuple(sorted(kept, key=lambda p: p.name)), more=step.create > BURST
    )


def plan(
    desired: Sequence[Manifest],
    pods: Sequence[Pod],
    *,
    now: float = 0.0,
    avoid: AbstractSet[str] = frozenset(),
) -> Plan:
    """Decide which pods to create, stop and keep so that `pods` converge on `desired`.

    New pods never take a name in `avoid` (pods being stopped outside this plan).
    """
    configs = configs_of(desired)
    by_owner: Mapping[ObjectKey, list[Pod]] = defaultdict(list)
    for pod in pods:
        by_owner[pod.owner].append(pod)
    create: list[Action] = []
    stop: list[Action] = []
    keep: list[Pod] = []
    failed: dict[ObjectKey, str] = {}
    more = False
    deployments = sorted((m for m in desired if m.key.kind == "Deployment"), key=lambda m: m.key)
    for deployment in deployments:
        owned = by_owner.get(deployment.key, [])
        try:
            template = resolve_template(deployment, configs)
            part = _plan_deployment(deployment, template, owned, now, avoid)
        except Exception as exc:  # one workload's failure must not stop the others
            failed[deployment.key] = f"{type(exc).__name__}: {exc}"
            keep += owned  # what runs keeps running
            continue
        more |= part.more
        create += part.create
        stop += part.stop
        keep += part.keep
    wanted = {d.key for d in deployments}
    for owner in sorted(set(by_owner) - wanted):
        for pod in sorted(by_owner[owner], key=lambda p: p.name):
            stop.append(Action(pod, f"{owner} was removed from the source"))
    return Plan(create=tuple(create), stop=tuple(stop), keep=tuple(keep), failed=failed, more=more)


def rollouts(desired: Sequence[Manifest], pods: Sequence[Pod], *, now: float) -> list[RolloutStatus]:
    """Rollout status of every Deployment in `desired` (one that cannot be resolved says so
    in its step, and the others are unaffected)."""
    configs = configs_of(desired)
    by_owner: Mapping[ObjectKey, list[Pod]] = defaultdict(list)
    for pod in pods:
        by_owner[pod.owner].append(pod)
    result = []
    for deployment in sorted((m for m in desired if m.key.kind == "Deployment"), key=lambda m: m.key):
        replicas = (
            int(deployment.spec.get("replicas", 1)) if _is_count(deployment.spec.get("replicas", 1)) else 0
        )
        owned = by_owner.get(deployment.key, [])
        try:
            template = resolve_template(deployment, configs)
        except Exception as exc:  # reported on the workload; the others go on
            status = rollout_status(deployment.key.ref, replicas, deployment.spec, "", owned, now=now)
            result.append(
                dataclasses.replace(status, complete=False, step=f"error: {type(exc).__name__}: {exc}")
            )
            continue
        result.append(
            rollout_status(deployment.key.ref, replicas, deployment.spec, template.hash, owned, now=now)
        )
    return result


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
