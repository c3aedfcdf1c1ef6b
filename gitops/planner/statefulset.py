"""StatefulSets: pods with a stable identity, as Kubernetes' StatefulSet controller runs them.

Pod `i` is named `<set>-<i>` (ordinals from `spec.ordinals.start`, default 0), has the
hostname `<set>-<i>` and the subdomain `spec.serviceName`, so the headless Service of that
name gives it the DNS name `<set>-<i>.<service>.<ns>.svc.<domain>`. Each
`volumeClaimTemplates` entry gives each pod its own claim, `<template>-<set>-<i>`: the
first pod to use it decides its node, and every later pod of that ordinal returns there
with the same data (`claim_fates` says which claims the set keeps).

`podManagementPolicy: OrderedReady` (the default) creates pod `i+1` only once pods `0..i`
are Running and ready (for `minReadySeconds`), removes pods highest ordinal first, one at a
time (the next once the previous is gone), and only while every pod it keeps is Running and
ready; `Parallel` creates and removes them all at once. A pod of a failed phase is removed
and returns under its name.

`updateStrategy: RollingUpdate` replaces pods whose template is outdated from the highest
ordinal down, `maxUnavailable` (default 1) at a time, and only ordinals at or above
`partition`; a pod below the partition that must be recreated takes the template it ran
before the update (the last one that completed). `OnDelete` replaces a pod only when it is
gone for another reason.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from gitops.model import Manifest, Pod, PodName, PodSpec, RolloutState, Volume, content_hash
from gitops.planner.actions import Action, Plan, Workloads
from gitops.planner.podspec import Template, describe_change, resolve_template
from gitops.planner.rollout import RolloutStatus

POD_NAME_LABEL = "statefulset.kubernetes.io/pod-name"
POD_INDEX_LABEL = "apps.kubernetes.io/pod-index"


def ordinal_of(set_name: str, pod_name: str) -> int | None:
    """The ordinal of a pod named `<set>-<i>`; None for any other name."""
    match = re.fullmatch(re.escape(set_name) + r"-(0|[1-9][0-9]*)", pod_name)
    return int(match.group(1)) if match else None


def claim_templates(manifest: Manifest) -> tuple[str, ...]:
    """The names of a StatefulSet's `volumeClaimTemplates`."""
    templates = manifest.spec.get("volumeClaimTemplates") or []
    return tuple(str((t.get("metadata") or {}).get("name", "")) for t in templates if isinstance(t, Mapping))


def claim_name(template: str, set_name: str, ordinal: int) -> str:
    return f"{template}-{set_name}-{ordinal}"


def ordinals(manifest: Manifest, replicas: int) -> range:
    start = int((manifest.spec.get("ordinals") or {}).get("start", 0))
    return range(start, start + replicas)


def retention(manifest: Manifest) -> tuple[str, str]:
    """(whenDeleted, whenScaled) of `persistentVolumeClaimRetentionPolicy`, default Retain."""
    policy = manifest.spec.get("persistentVolumeClaimRetentionPolicy") or {}
    return str(policy.get("whenDeleted", "Retain")), str(policy.get("whenScaled", "Retain"))


ClaimFate = tuple[Literal["keep", "retain", "delete"], str]


def claim_fates(
    current: Sequence[Manifest], gone: Sequence[Manifest], existing: Sequence[str]
) -> dict[str, ClaimFate]:
    """What happens to each of the `existing` claims (`namespace/name`) that a StatefulSet's
    `volumeClaimTemplates` made: kept for a desired set ("keep"), kept for one of the same
    name that may come back ("retain"), or deleted, each with why.

    A scaled-down ordinal's claim is deleted only with `whenScaled: Delete`, a set's claims
    when the set leaves the source only with `whenDeleted: Delete`; `Retain` is the default
    of both (`persistentVolumeClaimRetentionPolicy`). Claims no set made are not in the result.
    """
    fates: dict[str, ClaimFate] = {}
    for manifest in (*gone, *current):  # a desired set decides over one that left
        desired = manifest in current
        wanted = ordinals(manifest, int(manifest.spec.get("replicas", 1)))
        when_deleted, when_scaled = retention(manifest)
        for template in claim_templates(manifest):
            prefix = f"{manifest.key.namespace}/{template}-{manifest.key.name}-"
            for claim in existing:
                rest = claim[len(prefix) :] if claim.startswith(prefix) else ""
                if not rest or ordinal_of("x", "x-" + rest) is None:
                    continue
                ordinal = int(rest)
                if not desired:
                    fates[claim] = (
                        ("delete", f"{manifest.key} left the source (whenDeleted: Delete)")
                        if when_deleted == "Delete"
                        else ("retain", f"{manifest.key} left the source (whenDeleted: Retain)")
                    )
                elif ordinal in wanted or when_scaled != "Delete":
                    fates[claim] = ("keep", f"{manifest.key} ordinal {ordinal}")
                else:
                    fates[claim] = (
                        "delete",
                        f"{manifest.key} scaled below ordinal {ordinal} (whenScaled: Delete)",
                    )
    return fates


def _pod_spec(manifest: Manifest, spec: PodSpec, name: str, ordinal: int) -> PodSpec:
    """The template's spec as pod `name` runs it: its hostname, subdomain and own claims."""
    templates = set(claim_templates(manifest))
    namespace = manifest.key.namespace
    volumes = tuple(
        Volume(v.name, claim=f"{namespace}/{claim_name(v.name, manifest.key.name, ordinal)}")
        if v.name in templates
        else v
        for v in spec.volumes
    )
    return dataclasses.replace(
        spec, hostname=name, subdomain=str(manifest.spec.get("serviceName") or ""), volumes=volumes
    )


def _labels(template: Template, name: str, ordinal: int) -> tuple[tuple[str, str], ...]:
    return tuple(
        sorted({**dict(template.labels), POD_NAME_LABEL: name, POD_INDEX_LABEL: str(ordinal)}.items())
    )


def adopted(
    manifest: Manifest, template: Template, name: str, *, owned: Sequence[Pod], now: float
) -> Pod | None:
    """The pod `name` is, when a container of it is found running that the store does not
    know (a control plane that lost its database): an ordinal the set wants and has no pod of."""
    ordinal = ordinal_of(manifest.key.name, name)
    wanted = ordinals(manifest, int(manifest.spec.get("replicas", 1)))
    if ordinal is None or ordinal not in wanted or any(p.name == name for p in owned):
        return None
    return Pod(
        namespace=manifest.key.namespace,
        name=PodName(name),
        owner=manifest.key,
        template_hash=template.hash,
        spec=_pod_spec(manifest, template.spec, name, ordinal),
        labels=_labels(template, name, ordinal),
        created_at=now,
    )


def _max_unavailable(spec: Mapping[str, Any], replicas: int) -> int:
    rolling = (spec.get("updateStrategy") or {}).get("rollingUpdate") or {}
    value = rolling.get("maxUnavailable", 1)
    if isinstance(value, str) and value.endswith("%"):
        return max(1, math.ceil(int(value[:-1]) * replicas / 100))
    return max(1, int(value))


def _update_type(spec: Mapping[str, Any]) -> str:
    return str((spec.get("updateStrategy") or {}).get("type", "RollingUpdate"))


def _partition(spec: Mapping[str, Any]) -> int:
    return int(((spec.get("updateStrategy") or {}).get("rollingUpdate") or {}).get("partition", 0))


def previous_template(state: RolloutState | None, target: str) -> Any | None:
    """The pod template of the last revision that completed before `target`, if any."""
    if state is None:
        return None
    for digest, template in reversed(state.history):
        if digest != target:
            return template
    return None


def plan_statefulset(manifest: Manifest, template: Template, owned: Sequence[Pod], ctx: Workloads) -> Plan:
    spec = manifest.spec
    name = manifest.key.name
    replicas = ctx.replicas_of(manifest)
    wanted = ordinals(manifest, replicas)
    ordered = spec.get("podManagementPolicy", "OrderedReady") != "Parallel"
    min_ready = int(spec.get("minReadySeconds", 0))
    now = ctx.now
    stop: list[Action] = []
    create: list[Action] = []
    by_ordinal: dict[int, Pod] = {}
    for pod in sorted(owned, key=lambda p: (p.created_at, p.name)):
        ordinal = ordinal_of(name, pod.name)
        if ordinal is None or ordinal in by_ordinal:
            stop.append(Action(pod, f"not a pod of {manifest.key}'s ordinals"))
            continue
        by_ordinal[ordinal] = pod
    for ordinal, pod in sorted(by_ordinal.items()):
        if pod.phase == "Failed" and ordinal in wanted:
            stop.append(Action(pod, f"pod failed ({pod.reason or 'Failed'}): recreated as {pod.name}"))
    stopping = {a.pod.name for a in stop}

    def healthy(pod: Pod) -> bool:
        return pod.phase == "Running" and pod.available(min_ready, now)

    # Creation, lowest ordinal first.
    waiting = False  # OrderedReady: a lower ordinal is not yet Running and ready
    previous: Template | None = None
    for ordinal in wanted:
        existing = by_ordinal.get(ordinal)
        if existing is not None and existing.name not in stopping:
            waiting = waiting or (ordered and not healthy(existing))
            continue
        pod_name = PodName(f"{name}-{ordinal}")
        if waiting or pod_name in ctx.avoid or pod_name in stopping:
            waiting = waiting or ordered  # the old pod is still stopping, or a lower one not ready
            continue
        use = template
        partition = _partition(spec)
        if ordinal < partition and _update_type(spec) == "RollingUpdate":
            old = previous_template(ctx.rollouts.get(manifest.key), template.hash)
            if old is not None:
                if previous is None:
                    body = {**manifest.body, "spec": {**manifest.spec, "template": old}}
                    previous = resolve_template(
                        dataclasses.replace(manifest, body=body, hash=content_hash(body)), ctx.configs
                    )
                use = previous
        why = f"{manifest.key} wants {replicas} replicas: {pod_name} (ordinal {ordinal})"
        if ordered and ordinal > wanted.start:
            why += f"; {name}-{ordinal - 1} is Running and ready"
        create.append(
            Action(
                Pod(
                    namespace=manifest.key.namespace,
                    name=pod_name,
                    owner=manifest.key,
                    template_hash=use.hash,
                    spec=_pod_spec(manifest, use.spec, pod_name, ordinal),
                    labels=_labels(use, pod_name, ordinal),
                    reason="waiting to be scheduled",
                    created_at=now,
                ),
                why,
            )
        )
        waiting = waiting or ordered

    # Pods stopping are no longer among `owned`: their names are in `avoid` until they are gone.
    draining = {o for n in ctx.avoid if (o := ordinal_of(name, n)) is not None}

    # Scale down, highest ordinal first.
    condemned = sorted((o for o in by_ordinal if o not in wanted), reverse=True)
    if condemned:
        if not ordered:
            for ordinal in condemned:
                pod = by_ordinal[ordinal]
                if pod.name not in stopping:
                    stop.append(
                        Action(pod, f"scale down: {len(by_ordinal)} -> {replicas} replicas (Parallel)")
                    )
        else:
            top = by_ordinal[condemned[0]]
            # As Kubernetes: only once every pod kept is Running and ready and the pod
            # removed before is gone. The other condemned pods' health does not matter, so
            # an unready one below the top never stalls the scale-down.
            settled = all(
                (p := by_ordinal.get(o)) is not None and p.name not in stopping and healthy(p) for o in wanted
            )
            if settled and not draining and top.name not in stopping:
                stop.append(
                    Action(
                        top,
                        f"scale down: {len(by_ordinal)} -> {replicas} replicas "
                        f"(OrderedReady: highest ordinal first, one at a time)",
                    )
                )
        stopping = {a.pod.name for a in stop}

    # Rolling update, highest ordinal first, at or above the partition; under OrderedReady
    # a scale-down finishes first, as in Kubernetes.
    scaling = ordered and (bool(condemned) or any(o not in wanted for o in draining))
    if _update_type(spec) == "RollingUpdate" and not create and not scaling:
        partition = _partition(spec)
        budget = _max_unavailable(spec, replicas)
        current = [by_ordinal.get(o) for o in wanted]
        unavailable = sum(1 for p in current if p is None or p.name in stopping or not healthy(p))
        unavailable += sum(1 for p in owned if p.name in ctx.avoid)
        outdated = sorted(
            (
                o
                for o, p in by_ordinal.items()
                if o in wanted and o >= partition and p.template_hash != template.hash
            ),
            reverse=True,
        )
        for ordinal in outdated:
            pod = by_ordinal[ordinal]
            if pod.name in stopping:
                continue
            if healthy(pod):
                if unavailable >= budget:
                    break
                unavailable += 1
            change = describe_change(
                pod.spec,
                _pod_spec(manifest, template.spec, pod.name, ordinal),
                template.uses,
                labels_changed=dict(pod.labels) != dict(_labels(template, pod.name, ordinal)),
            )
            how = f"rolling update, highest ordinal first, maxUnavailable {budget}"
            if partition:
                how += f", partition {partition}"
            stop.append(Action(pod, f"template changed: {change} ({how})"))
            stopping.add(pod.name)
    stopped = {a.pod.id for a in stop}
    keep = tuple(sorted((p for p in owned if p.id not in stopped), key=lambda p: p.name))
    return Plan(tuple(create), tuple(stop), keep)


def statefulset_status(
    manifest: Manifest, template_hash: str, pods: Sequence[Pod], replicas: int, *, now: float
) -> RolloutStatus:
    """Kubernetes' counters for a StatefulSet, and where its rollout stands."""
    spec = manifest.spec
    name = manifest.key.name
    pods = [p for p in pods if p.terminating_at is None]
    min_ready = int(spec.get("minReadySeconds", 0))
    wanted = ordinals(manifest, replicas)
    partition = _partition(spec) if _update_type(spec) == "RollingUpdate" else 0
    updated = [p for p in pods if p.template_hash == template_hash]
    available = [p for p in pods if p.available(min_ready, now)]
    by_ordinal = {ordinal_of(name, p.name): p for p in pods}
    due = [o for o in wanted if o >= partition]
    outdated = [o for o in due if (p := by_ordinal.get(o)) is not None and p.template_hash != template_hash]
    missing = [o for o in wanted if o not in by_ordinal]
    complete = (
        not missing
        and not outdated
        and len(pods) == replicas
        and all(p.available(min_ready, now) for p in pods)
    )
    how = (
        "OnDelete"
        if _update_type(spec) == "OnDelete"
        else f"rolling update, highest ordinal first, maxUnavailable {_max_unavailable(spec, replicas)}"
        + (f", partition {partition}" if partition else "")
    )
    if complete:
        step = f"complete: {replicas}/{replicas} pods ready"
        if partition and any(p.template_hash != template_hash for p in pods):
            step += f" ({template_hash} on ordinals >= {partition})"
    elif missing:
        step = f"creating {name}-{missing[0]}" + (f" ({len(missing)} missing)" if len(missing) > 1 else "")
    elif outdated:
        step = f"rolling out {template_hash}: next {name}-{max(outdated)} ({len(outdated)} outdated)"
    elif len(pods) > replicas:
        step = f"scaling down: {len(pods)} -> {replicas} pods"
    else:
        waiting = [p.name for p in pods if not p.available(min_ready, now)]
        step = "waiting for " + ", ".join(sorted(waiting)[:3]) + " to become ready"
    return RolloutStatus(
        deployment=manifest.key.ref,
        strategy=how,
        template_hash=template_hash,
        desired=replicas,
        total=len(pods),
        updated=len(updated),
        ready=sum(1 for p in pods if p.ready),
        available=len(available),
        updated_available=sum(1 for p in updated if p.available(min_ready, now)),
        complete=complete,
        step=step,
    )
