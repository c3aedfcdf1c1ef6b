"""Desired vs observed state in, a `Plan` of pod actions out; a pure function.

`plan(desired, pods)` looks at every Deployment in the desired manifests and the pods that
exist for it, and sorts the pods into buckets, Nomad-style: pods to create (pending, not
yet placed), pods to stop, and pods to keep. Every action carries the reason a person would
ask for ("scale up: 3 -> 5 replicas", "template changed: image changed: web:1 -> web:2").

Pod names are deterministic: `<deployment>-<template hash>-<suffix>` where the suffix is
derived from the hash and a slot number, so planning is reproducible and running the same
plan twice creates nothing the second time.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from gitops.model import Manifest, ObjectKey, Pod, PodName
from gitops.planner.podspec import Template, describe_change, resolve_template

_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # Kubernetes' safe alphabet: no vowels, no 0/1/3


@dataclass(frozen=True)
class Action:
    pod: Pod
    reason: str


@dataclass(frozen=True)
class Plan:
    create: tuple[Action, ...] = ()
    stop: tuple[Action, ...] = ()
    keep: tuple[Pod, ...] = ()

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


def configs_of(desired: Iterable[Manifest]) -> dict[ObjectKey, Manifest]:
    return {m.key: m for m in desired if m.key.kind in ("ConfigMap", "Secret")}


def _stop_order(pod: Pod) -> tuple[int, int, float, str]:
    """Pods least worth keeping first: unplaced, then not ready, then newest."""
    return (pod.node is not None, pod.ready, -pod.created_at, pod.name)


def _plan_deployment(deployment: Manifest, template: Template, owned: Sequence[Pod], now: float) -> Plan:
    replicas = int(deployment.spec.get("replicas", 1))
    current = [p for p in owned if p.template_hash == template.hash]
    outdated = [p for p in owned if p.template_hash != template.hash]
    stop: list[Action] = []
    create: list[Action] = []
    for pod in sorted(outdated, key=lambda p: p.name):
        stop.append(
            Action(pod, "template changed: " + describe_change(pod.spec, template.spec, template.uses))
        )
    keep = sorted(current, key=_stop_order, reverse=True)
    if len(keep) > replicas:
        for pod in keep[replicas:]:
            stop.append(Action(pod, f"scale down: {len(current)} -> {replicas} replicas"))
        keep = keep[:replicas]
    missing = replicas - len(keep)
    if missing > 0:
        used = {p.name for p in owned}
        if outdated:
            why = f"template changed: new template {template.hash} needs {replicas} replicas"
        elif current:
            why = f"scale up: {len(current)} -> {replicas} replicas"
        else:
            why = f"{deployment.key} wants {replicas} replicas"
        slot = 0
        while missing:
            name = pod_name(deployment.key.name, template.hash, slot)
            slot += 1
            if name in used:
                continue
            pod = Pod(
                namespace=deployment.key.namespace,
                name=name,
                owner=deployment.key,
                template_hash=template.hash,
                spec=template.spec,
                labels=template.labels,
                reason="waiting to be scheduled",
                created_at=now,
            )
            create.append(Action(pod, why))
            missing -= 1
    return Plan(create=tuple(create), stop=tuple(stop), keep=tuple(sorted(keep, key=lambda p: p.name)))


def plan(desired: Sequence[Manifest], pods: Sequence[Pod], *, now: float = 0.0) -> Plan:
    """Decide which pods to create, stop and keep so that `pods` converge on `desired`."""
    configs = configs_of(desired)
    by_owner: Mapping[ObjectKey, list[Pod]] = defaultdict(list)
    for pod in pods:
        by_owner[pod.owner].append(pod)
    create: list[Action] = []
    stop: list[Action] = []
    keep: list[Pod] = []
    deployments = sorted((m for m in desired if m.key.kind == "Deployment"), key=lambda m: m.key)
    for deployment in deployments:
        template = resolve_template(deployment, configs)
        part = _plan_deployment(deployment, template, by_owner.get(deployment.key, []), now)
        create += part.create
        stop += part.stop
        keep += part.keep
    wanted = {d.key for d in deployments}
    for owner in sorted(set(by_owner) - wanted):
        for pod in sorted(by_owner[owner], key=lambda p: p.name):
            stop.append(Action(pod, f"{owner} was removed from the source"))
    return Plan(create=tuple(create), stop=tuple(stop), keep=tuple(keep))
