"""The HorizontalPodAutoscaler: how many replicas a Deployment, StatefulSet, ReplicaSet or
ReplicationController should run.

Kubernetes' autoscaling/v2 algorithm (`pkg/controller/podautoscaler`: horizontal.go and
replica_calculator.go) as one pure function, `autoscale(hpa, current, pods, usage, state,
now) -> ScaleState`. In come the HPA manifest, the replicas its target runs, the target's
pods, their latest CPU and memory samples, and what the previous pass remembered; out
comes the replica count to run, the metric readings and the reason, as `kubectl describe
hpa` would tell them. What Kubernetes keeps in memory between passes (recent
recommendations, recent scale events) travels in the returned `ScaleState`: the caller
stores it and passes it back. No clock, no I/O.

One pass, in Kubernetes' order:

1. Outside [minReplicas, maxReplicas] the target is brought to the nearest bound, metrics
   unread. A target at 0 replicas is not autoscaled at all (gitops does not scale to zero).
2. Each metric proposes a replica count. `cpu` and `memory`, of whole pods (Resource) or
   of one container (ContainerResource), are compared with their target as a share of the
   pods' requests (Utilization) or per pod (AverageValue): `ceil(pods * usage / target)`,
   unless usage is within 10% of the target. Pods without a sample count as using 100% of
   their request when that would scale down and 0% when it would scale up; pods not ready
   yet (Pending, or for cpu, still starting) count at 0% on a scale-up and are left out
   otherwise; pods being deleted and failed pods are ignored. Pods, Object and External
   metrics need a metrics pipeline gitops does not have: they are named in `unsupported`.
3. The largest proposal wins.
4. Stabilization holds the result between the lowest recommendation of the scale-up window
   and the highest of the scale-down window (by default 0 s and 300 s): a dip in load
   removes pods only once it has lasted the whole window.
5. Policies bound the rate: by default at most +100% or +4 pods per 15 s (whichever is
   more) and -100% per 15 s, counted from the replicas at the start of each period.

Arithmetic is exact (fractions), so a usage exactly 10% off its target is within the
tolerance, as documented, where Kubernetes' floating point sometimes says otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any, Literal

from gitops.model import (
    Container,
    ContainerUsage,
    Manifest,
    MetricStatus,
    ObjectKey,
    Pod,
    PodId,
    PodUsage,
    ScaleState,
)
from gitops.schemas.kinds import SCALABLE_KINDS
from gitops.schemas.quantity import QuantityError, parse_cpu, parse_memory
from gitops.schemas.schema import describe_value

__all__ = [
    "ContainerUsage",
    "MetricSpec",
    "MetricStatus",
    "PodUsage",
    "Policy",
    "ScaleSpec",
    "ScaleState",
    "ScalingRules",
    "SpecError",
    "autoscale",
    "read_spec",
]

TOLERANCE = Fraction(1, 10)
# After a pod starts, its CPU samples are trusted only once it is ready and a whole sample
# was taken since: start-up work (JIT, cache warming) is not load.
CPU_INITIALIZATION_PERIOD = 300.0
DEFAULT_CPU_UTILIZATION = 80  # the metric Kubernetes gives an HPA that lists none
TARGET_KINDS = SCALABLE_KINDS


def _kinds() -> str:
    return ", ".join(TARGET_KINDS[:-1]) + f" or {TARGET_KINDS[-1]}"


Resource = Literal["cpu", "memory"]
_RESOURCES: Mapping[str, Resource] = {"cpu": "cpu", "memory": "memory"}
Select = Literal["Max", "Min", "Disabled"]


# --- what comes in and goes out -----------------------------------------------------------


# --- the HPA's spec, resolved with Kubernetes' defaults ---------------------------------------


class SpecError(ValueError):
    """An HPA spec gitops cannot act on: the field, and what would be valid."""


@dataclass(frozen=True)
class MetricSpec:
    """A resource metric and its target. Amounts are in Kubernetes' milli-units: millicores
    for cpu, thousandths of a byte for memory (so averages divide exactly as there)."""

    resource: Resource
    container: str = ""  # ContainerResource: the one container measured ("": the whole pod)
    utilization: int | None = None  # target: percent of the requests
    average_milli: int = 0  # target per pod, when not a utilization

    @property
    def name(self) -> str:
        return f"{self.resource} of container {self.container}" if self.container else self.resource

    @property
    def target(self) -> str:
        if self.utilization is not None:
            return f"{self.utilization}%"
        return _amount(self.resource, self.average_milli)


@dataclass(frozen=True)
class Policy:
    """At most `value` pods, or `value` percent of the replicas at the period's start, per period."""

    type: Literal["Pods", "Percent"]
    value: int
    period_seconds: int

    def __str__(self) -> str:
        return f"{self.type} {self.value} per {self.period_seconds}s"


@dataclass(frozen=True)
class ScalingRules:
    """`spec.behavior.scaleUp` or `scaleDown`."""

    window: int  # stabilizationWindowSeconds
    select: Select
    policies: tuple[Policy, ...]


SCALE_UP = ScalingRules(0, "Max", (Policy("Pods", 4, 15), Policy("Percent", 100, 15)))
SCALE_DOWN = ScalingRules(300, "Max", (Policy("Percent", 100, 15),))


@dataclass(frozen=True)
class ScaleSpec:
    target: ObjectKey
    min_replicas: int
    max_replicas: int
    metrics: tuple[MetricSpec, ...]
    unsupported: tuple[str, ...]  # the metrics gitops cannot read, as people name them
    scale_up: ScalingRules
    scale_down: ScalingRules


def read_spec(hpa: Manifest) -> ScaleSpec:
    """The HPA's spec with Kubernetes' defaults filled in; `SpecError` when gitops cannot act on it."""
    spec = hpa.spec
    target = _target(hpa)
    if target.kind not in TARGET_KINDS:
        raise SpecError(f"spec.scaleTargetRef.kind: expected {_kinds()}, got {describe_value(target.kind)}")
    if not target.name:
        raise SpecError(f"spec.scaleTargetRef.name: expected the name of a {_kinds()}")
    low = _whole(spec.get("minReplicas", 1), "spec.minReplicas", 1, note=" (gitops does not scale to zero)")
    high = _whole(spec.get("maxReplicas"), "spec.maxReplicas", 1)
    if high < low:
        raise SpecError(f"spec.maxReplicas: expected at least minReplicas ({low}), got {high}")
    raw_metrics = spec.get("metrics")
    if raw_metrics is None or raw_metrics == []:
        metrics: tuple[MetricSpec, ...] = (MetricSpec("cpu", utilization=DEFAULT_CPU_UTILIZATION),)
        unsupported: tuple[str, ...] = ()
    elif isinstance(raw_metrics, list):
        read = [_metric(item, f"spec.metrics[{i}]") for i, item in enumerate(raw_metrics)]
        metrics = tuple(m for m in read if isinstance(m, MetricSpec))
        unsupported = tuple(m for m in read if isinstance(m, str))
    else:
        raise SpecError(f"spec.metrics: expected a list, got {describe_value(raw_metrics)}")
    behavior = _mapping(spec.get("behavior"), "spec.behavior")
    return ScaleSpec(
        target,
        low,
        high,
        metrics,
        unsupported,
        _rules(behavior.get("scaleUp"), "spec.behavior.scaleUp", SCALE_UP),
        _rules(behavior.get("scaleDown"), "spec.behavior.scaleDown", SCALE_DOWN),
    )


def autoscaled(desired: Iterable[Manifest]) -> frozenset[ObjectKey]:
    """The workloads the autoscalers in `desired` scale: only their pods' measured use is
    read for a pass (at 150,000 pods, every pod's was a read of 150,000 rows at every pass)."""
    return frozenset(_target(m) for m in desired if m.key.kind == "HorizontalPodAutoscaler")


def _target(hpa: Manifest) -> ObjectKey:
    ref = hpa.spec.get("scaleTargetRef")
    ref = ref if isinstance(ref, Mapping) else {}
    kind, name = ref.get("kind"), ref.get("name")
    return ObjectKey(
        kind if isinstance(kind, str) else "", hpa.key.namespace, name if isinstance(name, str) else ""
    )


def _mapping(value: object, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(f"{path}: expected a mapping, got {describe_value(value)}")
    return value


def _whole(value: object, path: str, low: int, high: int | None = None, note: str = "") -> int:
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and value >= low
        and (high is None or value <= high)
    ):
        return value
    bounds = f">= {low}" if high is None else f"from {low} to {high}"
    raise SpecError(f"{path}: expected an integer {bounds}{note}, got {describe_value(value)}")


def _metric(item: object, path: str) -> MetricSpec | str:
    """A metric gitops computes, or how people name one it does not."""
    item = _mapping(item, path)
    kind = item.get("type")
    if kind in ("Pods", "Object", "External"):
        source = item.get(kind[0].lower() + kind[1:])
        source = source if isinstance(source, Mapping) else {}
        metric = source.get("metric")
        name = metric.get("name", "") if isinstance(metric, Mapping) else ""
        text = f"{kind} metric {name}".rstrip()
        described = source.get("describedObject")
        if kind == "Object" and isinstance(described, Mapping):
            text += f" of {described.get('kind', '')} {described.get('name', '')}".rstrip()
        return text
    if kind not in ("Resource", "ContainerResource"):
        raise SpecError(
            f"{path}.type: expected Resource, ContainerResource, Pods, Object or External, "
            f"got {describe_value(kind)}"
        )
    field = "resource" if kind == "Resource" else "containerResource"
    source = _mapping(item.get(field), f"{path}.{field}")
    resource = source.get("name")
    if not isinstance(resource, str) or not resource:
        raise SpecError(f"{path}.{field}.name: expected cpu or memory, got {describe_value(resource)}")
    container = ""
    if kind == "ContainerResource":
        named = source.get("container")
        if not isinstance(named, str) or not named:
            raise SpecError(
                f"{path}.{field}.container: expected a container name, got {describe_value(named)}"
            )
        container = named
    measured = _RESOURCES.get(resource)
    if measured is None:
        return f"{kind} metric {resource}" + (f" of container {container}" if container else "")
    target = _mapping(source.get("target"), f"{path}.{field}.target")
    where = f"{path}.{field}.target"
    kind_of_target = target.get("type")
    if kind_of_target == "Utilization":
        percent = _whole(target.get("averageUtilization"), f"{where}.averageUtilization", 1)
        return MetricSpec(measured, container, utilization=percent)
    if kind_of_target == "AverageValue":
        raw = target.get("averageValue")
        try:
            amount = parse_cpu(raw) if resource == "cpu" else parse_memory(raw) * 1000
        except QuantityError as error:
            raise SpecError(f"{where}.averageValue: {error}") from None
        if amount <= 0:
            raise SpecError(f"{where}.averageValue: expected more than 0, got {describe_value(raw)}")
        return MetricSpec(measured, container, average_milli=amount)
    raise SpecError(
        f"{where}.type: expected Utilization or AverageValue for a {resource} metric, "
        f"got {describe_value(kind_of_target)}"
    )


def _rules(value: object, path: str, default: ScalingRules) -> ScalingRules:
    rules = _mapping(value, path)
    window = _whole(
        rules.get("stabilizationWindowSeconds", default.window), f"{path}.stabilizationWindowSeconds", 0, 3600
    )
    select = rules.get("selectPolicy", "Max")
    if select not in ("Max", "Min", "Disabled"):
        raise SpecError(f"{path}.selectPolicy: expected Max, Min or Disabled, got {describe_value(select)}")
    raw = rules.get("policies")
    if raw is None:
        return ScalingRules(window, select, default.policies)
    if not isinstance(raw, list) or not raw:
        raise SpecError(f"{path}.policies: expected at least one policy, got {describe_value(raw)}")
    policies = []
    for i, item in enumerate(raw):
        where = f"{path}.policies[{i}]"
        policy = _mapping(item, where)
        kind = policy.get("type")
        if kind not in ("Pods", "Percent"):
            raise SpecError(f"{where}.type: expected Pods or Percent, got {describe_value(kind)}")
        policies.append(
            Policy(
                kind,
                _whole(policy.get("value"), f"{where}.value", 1),
                _whole(policy.get("periodSeconds"), f"{where}.periodSeconds", 1, 1800),
            )
        )
    return ScalingRules(window, select, tuple(policies))


# --- one metric's proposal -------------------------------------------------------------------


@dataclass(frozen=True)
class _Reading:
    """What one metric says this pass: a proposal and why, or why there is none."""

    status: MetricStatus
    proposal: int | None = None
    head: str = ""  # "cpu 83% of requests > target 60%"
    notes: tuple[str, ...] = ()  # how pods without a usable sample were counted, and what followed
    error: str = ""

    def says(self, current: int, replicas: int | None = None) -> str:
        """`head: current -> replicas` (what is done; the proposal by default)."""
        done = self.proposal if replicas is None else replicas
        change = f"stays at {current}" if done == current else f"{current} -> {done}"
        return f"{self.head}: {change}"


def _measure(
    metric: MetricSpec,
    target: ObjectKey,
    current: int,
    *,
    pods: Sequence[Pod],
    usage: Mapping[PodId, PodUsage],
    now: float,
) -> _Reading:
    """Kubernetes' GetResourceReplicas (Utilization) or GetRawResourceReplicas (AverageValue)."""
    live = [p for p in pods if p.terminating_at is None and p.phase != "Failed"]
    if metric.container:
        # Pods of another template (mid-rollout) without the container have nothing to say.
        live = [p for p in live if _measured(p, metric.container)]
    if not live:
        which = f" with a container {metric.container}" if metric.container else ""
        return _failed(metric, f"no pods of {target}{which} to measure {metric.resource} on")
    requests: dict[PodId, int] = {}
    if metric.utilization is not None:
        for pod in live:
            for container in _measured(pod, metric.container):
                if _request(container, metric.resource) <= 0:
                    where = f"in container {container.name} of pod {pod.id}"
                    return _failed(metric, f"missing request for {metric.resource} {where}")
            requests[pod.id] = sum(_request(c, metric.resource) for c in _measured(pod, metric.container))

    samples: dict[PodId, int] = {}
    unready: list[PodId] = []
    missing: list[PodId] = []
    for pod in live:
        sample = usage.get(pod.id)
        value = None if sample is None else _used(sample, metric)
        if pod.phase == "Pending":
            unready.append(pod.id)
        elif sample is None or value is None:
            missing.append(pod.id)
        elif metric.resource == "cpu" and _starting(pod, sample, now):
            unready.append(pod.id)
        else:
            samples[pod.id] = value
    if not samples:
        return _failed(metric, f"no {metric.name} sample from any ready pod of {target}")

    ratio, level = _level(metric, samples, requests)
    utilization = metric.utilization is not None
    shown = f"{level}%" if utilization else _amount(metric.resource, level)
    status = MetricStatus(metric.name, shown, metric.target)
    reading = f"{metric.name} {shown} {'of requests' if utilization else 'per pod'}"
    if abs(1 - ratio) <= TOLERANCE:
        # Counting the unread pods (below) only ever argues for staying, so this is final.
        return _Reading(
            replace(status, proposal=current), current, f"{reading} is within 10% of target {metric.target}"
        )
    head = f"{reading} {'>' if ratio > 1 else '<'} target {metric.target}"
    scale_up_with_unready = bool(unready) and ratio > 1
    if not scale_up_with_unready and not missing:
        proposal = math.ceil(ratio * len(samples))
        return _Reading(replace(status, proposal=proposal), proposal, head)

    # Kubernetes' conservatism: count the pods it could not read in the way that argues
    # against the change, and give the change up if it does not survive that.
    counted = dict(samples)
    zero = "0%" if utilization else "0"
    notes = []
    if missing:
        if ratio > 1:
            counted.update(dict.fromkeys(missing, 0))
            at = zero
        elif metric.utilization is not None:
            fallback = max(100, metric.utilization)
            counted.update({p: requests[p] * fallback // 100 for p in missing})
            at = f"{fallback}% of requests"
        else:
            counted.update(dict.fromkeys(missing, metric.average_milli))
            at = "the target"
        notes.append(f"{_pods(len(missing))} without a sample counted at {at}")
    if scale_up_with_unready:
        counted.update(dict.fromkeys(unready, 0))
        notes.append(f"{_pods(len(unready), 'not-ready pod')} counted at {zero}")
    adjusted, _ = _level(metric, counted, requests)
    proposal = math.ceil(adjusted * len(counted))
    if abs(1 - adjusted) <= TOLERANCE:
        notes.append("then within 10% of target")
    elif (ratio < 1) != (adjusted < 1):
        notes.append(f"then {'above' if adjusted > 1 else 'below'} target")
    elif (adjusted < 1 and proposal > current) or (adjusted > 1 and proposal < current):
        notes.append(f"then {proposal}, the other way")
    else:
        return _Reading(replace(status, proposal=proposal), proposal, head, tuple(notes))
    return _Reading(replace(status, proposal=current), current, head, tuple(notes))


def _failed(metric: MetricSpec, error: str) -> _Reading:
    return _Reading(MetricStatus(metric.name, "unknown", metric.target), error=error)


def _measured(pod: Pod, container: str) -> tuple[Container, ...]:
    """The containers a metric measures: app containers and sidecars, or the one named."""
    every = (*pod.spec.containers, *pod.spec.sidecars)
    return tuple(c for c in every if not container or c.name == container)


def _request(container: Container, resource: Resource) -> int:
    """In milli-units: millicores, or thousandths of a byte."""
    return container.cpu_request_milli if resource == "cpu" else container.memory_request_bytes * 1000


def _used(sample: PodUsage, metric: MetricSpec) -> int | None:
    """What the pod uses, in milli-units (CPU rounded up per container, as Kubernetes'
    `MilliValue`); None without a usable sample, like a pod missing from metrics-server."""
    chosen = [c for c in sample.containers if not metric.container or c.container == metric.container]
    if not chosen:
        return None
    if metric.resource == "memory":
        return sum(max(0, c.memory_bytes) for c in chosen) * 1000
    if not all(math.isfinite(c.cpu_milli) for c in chosen):
        return None
    return sum(math.ceil(max(0.0, c.cpu_milli)) for c in chosen)


def _starting(pod: Pod, sample: PodUsage, now: float) -> bool:
    """Whether a pod's CPU sample says nothing yet about load.

    In its first 5 minutes a pod counts once ready and sampled over a whole window since.
    After that, a pod that is not ready counts if it was ready before (overload can fail a
    readiness probe) and not if it never was. Kubernetes, which only knows when the Ready
    condition last changed, tells the two apart by whether that change came within 30 s
    of the start; gitops knows `ready_since` itself.
    """
    if now < pod.created_at + CPU_INITIALIZATION_PERIOD:
        return not pod.ready or sample.at - sample.window < pod.ready_since
    return not pod.ready and pod.ready_since <= 0.0


def _level(
    metric: MetricSpec, used: Mapping[PodId, int], requests: Mapping[PodId, int]
) -> tuple[Fraction, int]:
    """Usage over target, and the usage as shown: whole percent of requests, or the average
    per pod, truncated as Kubernetes truncates them."""
    total = sum(used.values())
    if metric.utilization is not None:
        percent = total * 100 // sum(requests[p] for p in used)
        return Fraction(percent, metric.utilization), percent
    average = total // len(used)
    return Fraction(average, metric.average_milli), average


def _amount(resource: Resource, milli: int) -> str:
    if resource == "cpu":
        return f"{milli}m"
    size = milli / 1000
    for suffix, unit in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if size >= unit:
            return f"{size / unit:.1f}".removesuffix(".0") + suffix
    return f"{size:.0f}"


def _pods(count: int, what: str = "pod") -> str:
    return f"{count} {what}{'' if count == 1 else 's'}"


# --- the pass ------------------------------------------------------------------------------


def autoscale(  # noqa: PLR0917 - the agreed interface; callers pass all six in order
    hpa: Manifest,
    current: int,
    pods: Sequence[Pod],
    usage: Mapping[PodId, PodUsage],
    state: ScaleState | None,
    now: float,
) -> ScaleState:
    """One autoscaler pass for `hpa` (see the module docstring).

    `current` is what the target runs now (the previous state's replicas, or the replicas
    written in git on first sight); `pods` are the target's pods; `usage` their latest
    samples; `state` what the previous pass returned (None on first sight).
    """
    kept = ScaleState(
        hpa.key,
        _target(hpa),
        current,
        last_scale_at=state.last_scale_at if state else 0.0,
        recommendations=state.recommendations if state else (),
        events=state.events if state else (),
    )
    try:
        spec = read_spec(hpa)
    except SpecError as error:
        return replace(kept, reason=f"cannot autoscale: {error}: stays at {current}", error=str(error))
    kept = replace(kept, unsupported=spec.unsupported)
    target, low, high = spec.target, spec.min_replicas, spec.max_replicas

    if current <= 0:
        return replace(kept, reason=f"scaling is disabled: {target} runs 0 replicas")
    if state is None:
        start = min(max(current, low), high)
        recommendations = ((now, start),)
        if start == current:
            return replace(
                kept,
                recommendations=recommendations,
                reason=f"first sight: starts from the {current} replicas {target} runs",
            )
        return _scaled(
            replace(kept, recommendations=recommendations),
            spec,
            start,
            now,
            f"first sight: {_outside(spec, current)}",
        )
    if not low <= current <= high:
        return _scaled(kept, spec, min(max(current, low), high), now, _outside(spec, current))

    readings = [_measure(m, target, current, pods=pods, usage=usage, now=now) for m in spec.metrics]
    kept = replace(
        kept, metrics=tuple(r.status for r in readings), error="; ".join(r.error for r in readings if r.error)
    )
    computed = [(r.proposal, r) for r in readings if r.proposal is not None]
    failed = [r.status.name for r in readings if r.proposal is None]
    if not computed:
        why = kept.error or "no metric gitops can read: " + ", ".join(spec.unsupported) + " not supported"
        return replace(kept, reason=f"cannot compute a replica count ({why}): stays at {current}")
    desired, best = max(computed, key=lambda proposed: proposed[0])  # the first of equals
    notes = list(best.notes)
    if len(readings) > 1:
        others = [
            f"{r.status.name} wants {r.proposal}" if r.proposal is not None else f"{r.status.name} unknown"
            for r in readings
            if r is not best
        ]
        notes.append("largest proposal; " + ", ".join(others))
    if failed and desired < current:
        # Kubernetes scales down only when every metric agrees.
        notes.insert(0, f"wants {desired}")
        notes.append(f"held at {current}: no scale-down while {', '.join(failed)} cannot be computed")
        return replace(kept, reason=_explain(best.says(current, current), notes))

    up, down = spec.scale_up, spec.scale_down
    recent = [(t, r) for t, r in kept.recommendations if t > now - max(up.window, down.window)]
    floor = min([r for t, r in recent if t > now - up.window], default=desired)
    ceiling = max([r for t, r in recent if t > now - down.window], default=desired)
    stabilized = min(max(current, min(floor, desired)), max(ceiling, desired))
    kept = replace(kept, recommendations=(*recent, (now, desired)))
    if stabilized != desired:
        direction, window = ("up", up.window) if desired > current else ("down", down.window)
        notes.append(f"within the {window}s scale-{direction} stabilization window: held at {stabilized}")

    replicas, limited = _rate_limited(spec, current, stabilized, kept.events, now)
    if limited:
        notes.append(limited)
    if replicas != desired:
        notes.insert(0, f"wants {desired}")  # the arrow says what is done
    return _scaled(kept, spec, replicas, now, _explain(best.says(current, replicas), notes))


def _explain(clause: str, notes: Iterable[str]) -> str:
    notes = list(notes)
    return f"{clause} ({'; '.join(notes)})" if notes else clause


def _outside(spec: ScaleSpec, current: int) -> str:
    if current > spec.max_replicas:
        bound, side = spec.max_replicas, f"above maxReplicas {spec.max_replicas}"
    else:
        bound, side = spec.min_replicas, f"below minReplicas {spec.min_replicas}"
    return f"{spec.target} runs {current} replicas, {side}: {current} -> {bound}"


def _rate_limited(
    spec: ScaleSpec, current: int, wanted: int, events: Sequence[tuple[float, int]], now: float
) -> tuple[int, str]:
    """`wanted` within what the behavior policies and [min, max] allow now, and what limited it."""
    if wanted > current:
        rules, bound, direction = spec.scale_up, spec.max_replicas, "up"
        limit, policy = _policy_limit(rules, current, events, now, up=True)
        limit = max(limit, current)
        if bound <= limit:
            return (wanted, "") if wanted <= bound else (bound, f"at maxReplicas {bound}")
        if wanted <= limit:
            return wanted, ""
    elif wanted < current:
        rules, bound, direction = spec.scale_down, spec.min_replicas, "down"
        limit, policy = _policy_limit(rules, current, events, now, up=False)
        limit = min(limit, current)
        if bound >= limit:
            return (wanted, "") if wanted >= bound else (bound, f"at minReplicas {bound}")
        if wanted >= limit:
            return wanted, ""
    else:
        return current, ""
    if policy is None:
        return limit, f"scale-{direction} is disabled by selectPolicy Disabled: held at {limit}"
    return limit, f"limited to {limit} by the scale-{direction} policy {policy}"


def _policy_limit(
    rules: ScalingRules, current: int, events: Sequence[tuple[float, int]], now: float, *, up: bool
) -> tuple[int, Policy | None]:
    """The furthest the replicas may go now in one direction, and the policy that says so
    (None: scaling that way is disabled). Each policy counts from the replicas at the start
    of its period: the current ones less the changes made since."""
    if rules.select == "Disabled":
        return current, None
    proposals = []
    for policy in rules.policies:
        start = current - sum(change for at, change in events if at > now - policy.period_seconds)
        if policy.type == "Pods":
            proposals.append(start + policy.value if up else start - policy.value)
        elif up:
            proposals.append(math.ceil(Fraction(start * (100 + policy.value), 100)))
        else:
            proposals.append(int(Fraction(start * (100 - policy.value), 100)))
    # "Max" picks the policy allowing the largest change, "Min" the smallest.
    furthest = (rules.select == "Max") == up
    chosen = max(proposals) if furthest else min(proposals)
    return chosen, rules.policies[proposals.index(chosen)]


def _scaled(kept: ScaleState, spec: ScaleSpec, replicas: int, now: float, reason: str) -> ScaleState:
    """`kept` at `replicas`, the change recorded for the policies, events past use dropped."""
    periods = [p.period_seconds for p in (*spec.scale_up.policies, *spec.scale_down.policies)]
    events = [(t, c) for t, c in kept.events if t > now - max(periods)]
    last = kept.last_scale_at
    if replicas != kept.replicas:
        events.append((now, replicas - kept.replicas))
        last = now
    return replace(kept, replicas=replicas, events=tuple(events), last_scale_at=last, reason=reason)
