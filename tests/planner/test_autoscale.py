"""The HorizontalPodAutoscaler decides replicas as Kubernetes' autoscaling/v2 does, and says why."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gitops.model import Container, Manifest, ObjectKey, Phase, Pod, PodId, PodName, PodSpec, SourceLocation
from gitops.planner.autoscale import (
    ContainerUsage,
    MetricStatus,
    PodUsage,
    ScaleState,
    autoscale,
)

NOW = 100_000.0
MI = 2**20
WEB = ObjectKey("Deployment", "default", "web")
HPA = ObjectKey("HorizontalPodAutoscaler", "default", "web")


def hpa(
    *metrics: dict[str, Any], min_replicas: int = 1, max_replicas: int = 10, behavior: Any = None, **spec: Any
) -> Manifest:
    written: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
        "minReplicas": min_replicas,
        "maxReplicas": max_replicas,
        **spec,
    }
    if metrics:
        written["metrics"] = list(metrics)
    if behavior is not None:
        written["behavior"] = behavior
    body = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": written,
    }
    return Manifest(
        key=HPA, api_version="autoscaling/v2", body=body, location=SourceLocation("hpa.yaml"), hash=""
    )


def utilization(resource: str, percent: int, container: str = "") -> dict[str, Any]:
    return _metric(resource, {"type": "Utilization", "averageUtilization": percent}, container)


def average(resource: str, value: str, container: str = "") -> dict[str, Any]:
    return _metric(resource, {"type": "AverageValue", "averageValue": value}, container)


def _metric(resource: str, target: dict[str, Any], container: str) -> dict[str, Any]:
    if container:
        return {
            "type": "ContainerResource",
            "containerResource": {"name": resource, "container": container, "target": target},
        }
    return {"type": "Resource", "resource": {"name": resource, "target": target}}


def pod(
    index: int,
    *,
    cpu: int = 100,
    memory: int = 256 * MI,
    phase: Phase = "Running",
    ready: bool = True,
    ready_since: float = NOW - 3000,
    created_at: float = NOW - 3600,
    terminating_at: float | None = None,
    sidecar: bool = False,
) -> Pod:
    containers = [Container(name="app", image="x", cpu_request_milli=cpu, memory_request_bytes=memory)]
    if sidecar:
        containers.append(
            Container(name="log", image="y", cpu_request_milli=100, memory_request_bytes=memory)
        )
    return Pod(
        "default",
        PodName(f"web-{index}"),
        owner=WEB,
        template_hash="h",
        spec=PodSpec(containers=tuple(containers)),
        phase=phase,
        ready=ready,
        ready_since=ready_since,
        created_at=created_at,
        terminating_at=terminating_at,
    )


def sample(of: Pod, cpu: float = 0.0, memory: int = 0, at: float = NOW, **others: float) -> PodUsage:
    """`of`'s app container used `cpu` millicores and `memory` bytes; `others` are more
    containers' CPU."""
    extra = tuple(ContainerUsage(name, milli, 0) for name, milli in others.items())
    return PodUsage(of.id, at, (ContainerUsage("app", cpu, memory), *extra), window=15.0)


def fleet(*cpu: float | None, **shape: Any) -> tuple[list[Pod], dict[PodId, PodUsage]]:
    """Pods requesting 100m each, using `cpu` millicores (that is, percent); None: no sample."""
    pods = [pod(i, **shape) for i in range(len(cpu))]
    return pods, {p.id: sample(p, used) for p, used in zip(pods, cpu, strict=True) if used is not None}


def seen(autoscaler: Manifest, replicas: int, at: float = NOW - 15) -> ScaleState:
    """The state after the autoscaler's first pass, with `replicas` running."""
    return autoscale(autoscaler, replicas, [], {}, None, at)


def again(
    autoscaler: Manifest,
    pods: Sequence[Pod],
    usage: dict[PodId, PodUsage],
    state: ScaleState,
    now: float = NOW,
) -> ScaleState:
    return autoscale(autoscaler, state.replicas, pods, usage, state, now)


NO_DOWN_WINDOW = {"scaleDown": {"stabilizationWindowSeconds": 0}}


# --- one metric's proposal -------------------------------------------------------------------


def test_cpu_above_target_scales_by_the_usage_ratio() -> None:
    """Kubernetes' own example: 2 pods at 90% of their cpu request, target 50% -> 4."""
    autoscaler = hpa(utilization("cpu", 50))
    pods, usage = fleet(90, 90)
    state = again(autoscaler, pods, usage, seen(autoscaler, 2))
    assert state.replicas == 4
    assert state.reason == "cpu 90% of requests > target 50%: 2 -> 4"
    assert state.metrics == (MetricStatus("cpu", "90%", "50%", 4),)
    assert (state.last_scale_at, state.events, state.error) == (NOW, ((NOW, 2),), "")


def test_usage_within_ten_percent_of_the_target_changes_nothing() -> None:
    """55% against 50% is exactly 10% off: within the tolerance, exactly as documented."""
    autoscaler = hpa(utilization("cpu", 50))
    state = seen(autoscaler, 3)
    within = again(autoscaler, *fleet(55, 55, 55), state)
    assert (within.replicas, within.events) == (3, ())
    assert within.reason == "cpu 55% of requests is within 10% of target 50%: stays at 3"
    beyond = again(autoscaler, *fleet(56, 56, 56), state)
    assert beyond.replicas == 4
    assert beyond.reason == "cpu 56% of requests > target 50%: 3 -> 4"


def test_memory_against_an_average_value_per_pod() -> None:
    autoscaler = hpa(average("memory", "300Mi"))
    pods = [pod(i) for i in range(3)]
    usage = {p.id: sample(p, memory=400 * MI) for p in pods}
    state = again(autoscaler, pods, usage, seen(autoscaler, 3))
    assert state.replicas == 4
    assert state.reason == "memory 400Mi per pod > target 300Mi: 3 -> 4"
    assert state.metrics == (MetricStatus("memory", "400Mi", "300Mi", 4),)


def test_an_average_value_needs_no_requests() -> None:
    autoscaler = hpa(average("cpu", "50m"))
    pods, usage = fleet(90, 90, cpu=0)
    state = again(autoscaler, pods, usage, seen(autoscaler, 2))
    assert (state.replicas, state.reason) == (4, "cpu 90m per pod > target 50m: 2 -> 4")


def test_a_container_resource_metric_measures_only_its_container_and_the_largest_proposal_wins() -> None:
    autoscaler = hpa(utilization("cpu", 50), utilization("cpu", 50, container="app"))
    pods = [pod(i, sidecar=True) for i in range(2)]
    usage = {p.id: sample(p, 90, log=10) for p in pods}
    state = again(autoscaler, pods, usage, seen(autoscaler, 2))
    assert state.metrics == (
        MetricStatus("cpu", "50%", "50%", 2),
        MetricStatus("cpu of container app", "90%", "50%", 4),
    )
    assert state.replicas == 4
    assert (
        state.reason
        == "cpu of container app 90% of requests > target 50%: 2 -> 4 (largest proposal; cpu wants 2)"
    )


def test_no_metrics_listed_means_cpu_at_80_percent() -> None:
    autoscaler = hpa()
    state = again(autoscaler, *fleet(160, 160), seen(autoscaler, 2))
    assert (state.replicas, state.metrics) == (4, (MetricStatus("cpu", "160%", "80%", 4),))


# --- pods without a usable sample -----------------------------------------------------------


def test_pods_without_a_sample_count_at_their_full_request_on_a_scale_down() -> None:
    """Read alone, three pods at 10% would ask for 1 replica; the unread fourth, counted at
    100% of its request, keeps it at 3."""
    autoscaler = hpa(utilization("cpu", 50), behavior=NO_DOWN_WINDOW)
    state = again(autoscaler, *fleet(10, 10, 10, None), seen(autoscaler, 4))
    assert state.replicas == 3
    assert (
        state.reason
        == "cpu 10% of requests < target 50%: 4 -> 3 (1 pod without a sample counted at 100% of requests)"
    )


def test_pods_without_a_sample_count_at_zero_on_a_scale_up_and_can_cancel_it() -> None:
    autoscaler = hpa(utilization("cpu", 50))
    state = again(autoscaler, *fleet(60, 60, None, None), seen(autoscaler, 4))
    assert state.replicas == 4
    assert state.reason == (
        "cpu 60% of requests > target 50%: stays at 4 "
        "(2 pods without a sample counted at 0%; then below target)"
    )


def test_not_ready_pods_count_at_zero_on_a_scale_up() -> None:
    """Two ready pods at 100% would double; the two that never became ready, counted as
    idle, bring the average to the target."""
    autoscaler = hpa(utilization("cpu", 50))
    pods, usage = fleet(100, 100, 100, 100)
    pods[2:] = [dataclasses.replace(p, ready=False, ready_since=0.0) for p in pods[2:]]
    state = again(autoscaler, pods, usage, seen(autoscaler, 4))
    assert state.replicas == 4
    assert state.reason == (
        "cpu 100% of requests > target 50%: stays at 4 "
        "(2 not-ready pods counted at 0%; then within 10% of target)"
    )


def test_not_ready_pods_are_left_out_of_a_cpu_scale_down() -> None:
    autoscaler = hpa(utilization("cpu", 50), behavior=NO_DOWN_WINDOW)
    pods, usage = fleet(10, 10, 300, 300)
    pods[2:] = [dataclasses.replace(p, ready=False, ready_since=0.0) for p in pods[2:]]
    state = again(autoscaler, pods, usage, seen(autoscaler, 4))
    assert (state.replicas, state.reason) == (1, "cpu 10% of requests < target 50%: 4 -> 1")


def test_a_starting_pods_cpu_counts_once_sampled_over_a_whole_window_after_it_became_ready() -> None:
    autoscaler = hpa(utilization("cpu", 50))
    pods, usage = fleet(100, 100, 0)
    # Started a minute ago, ready 10 s ago: its sample covers the 15 s before, start-up included.
    pods[2] = dataclasses.replace(pods[2], created_at=NOW - 60, ready_since=NOW - 10)
    starting = again(autoscaler, pods, usage, seen(autoscaler, 3))
    assert starting.metrics[0] == MetricStatus("cpu", "100%", "50%", 4)
    assert "1 not-ready pod counted at 0%" in starting.reason
    settled = dataclasses.replace(pods[2], ready_since=NOW - 20)
    assert again(autoscaler, [*pods[:2], settled], usage, seen(autoscaler, 3)).metrics[0].current == "66%"


def test_a_pod_that_lost_readiness_after_starting_is_still_measured() -> None:
    """Overload can fail a readiness probe: such a pod's usage is real load."""
    autoscaler = hpa(utilization("cpu", 50))
    pods, usage = fleet(100, 100)
    pods[1] = dataclasses.replace(pods[1], ready=False)
    state = again(autoscaler, pods, usage, seen(autoscaler, 2))
    assert (state.replicas, state.reason) == (4, "cpu 100% of requests > target 50%: 2 -> 4")


def test_memory_counts_not_ready_pods_and_pending_pods_count_as_not_ready() -> None:
    autoscaler = hpa(average("memory", "300Mi"))
    pods = [
        pod(0),
        pod(1, ready=False, ready_since=0.0),
        pod(2, phase="Pending", ready=False, ready_since=0.0),
    ]
    usage = {p.id: sample(p, memory=600 * MI) for p in pods[:2]}
    state = again(autoscaler, pods, usage, seen(autoscaler, 3))
    assert state.metrics[0].current == "600Mi"
    assert state.replicas == 4  # (600 + 600 + 0) / 300 per pod
    assert state.reason == "memory 600Mi per pod > target 300Mi: 3 -> 4 (1 not-ready pod counted at 0)"


def test_pods_being_deleted_and_failed_pods_are_ignored() -> None:
    autoscaler = hpa(utilization("cpu", 50))
    pods, usage = fleet(90, 90, 0, None)
    pods[2] = dataclasses.replace(pods[2], terminating_at=NOW - 5)
    pods[3] = dataclasses.replace(pods[3], phase="Failed", ready=False)
    state = again(autoscaler, pods, usage, seen(autoscaler, 4))
    assert state.metrics[0] == MetricStatus("cpu", "90%", "50%", 4)


# --- metrics that cannot be computed ---------------------------------------------------------


def test_a_container_without_a_request_leaves_the_utilization_unknown() -> None:
    autoscaler = hpa(utilization("cpu", 50))
    pods, usage = fleet(90, 90)
    pods[0] = pod(0, cpu=0)
    state = again(autoscaler, pods, usage, seen(autoscaler, 2))
    assert state.error == "missing request for cpu in container app of pod default/web-0"
    assert state.replicas == 2
    assert state.metrics == (MetricStatus("cpu", "unknown", "50%"),)
    assert state.reason == (
        "cannot compute a replica count "
        "(missing request for cpu in container app of pod default/web-0): stays at 2"
    )


def test_another_metric_still_scales_up_but_never_down_while_one_is_unknown() -> None:
    pods, usage = fleet(90, 90)
    pods[0] = pod(0, cpu=0)
    usage = {p.id: sample(p, 90, memory=600 * MI) for p in pods}
    up = hpa(utilization("cpu", 50), average("memory", "300Mi"))
    state = again(up, pods, usage, seen(up, 2))
    assert (state.replicas, state.error) == (
        4,
        "missing request for cpu in container app of pod default/web-0",
    )
    assert state.reason == "memory 600Mi per pod > target 300Mi: 2 -> 4 (largest proposal; cpu unknown)"

    down = hpa(utilization("cpu", 50), average("memory", "2Gi"), behavior=NO_DOWN_WINDOW)
    state = again(down, pods, usage, seen(down, 2))
    assert state.replicas == 2
    assert state.reason == (
        "memory 600Mi per pod < target 2Gi: stays at 2 "
        "(wants 1; largest proposal; cpu unknown; held at 2: no scale-down while cpu cannot be computed)"
    )


def test_pods_object_and_external_metrics_are_named_and_skipped() -> None:
    pods_metric = {"type": "Pods", "pods": {"metric": {"name": "rps"}, "target": {"type": "AverageValue"}}}
    external = {
        "type": "External",
        "external": {"metric": {"name": "queue_depth"}, "target": {"type": "Value"}},
    }
    autoscaler = hpa(pods_metric, utilization("cpu", 50), external)
    state = again(autoscaler, *fleet(90, 90), seen(autoscaler, 2))
    assert state.unsupported == ("Pods metric rps", "External metric queue_depth")
    assert (state.replicas, state.reason) == (4, "cpu 90% of requests > target 50%: 2 -> 4")

    only = hpa(external)
    state = again(only, *fleet(90, 90), seen(only, 2))
    assert state.replicas == 2
    assert state.reason == (
        "cannot compute a replica count "
        "(no metric gitops can read: External metric queue_depth not supported): stays at 2"
    )


def test_no_pods_or_no_samples_leave_the_metric_unknown() -> None:
    autoscaler = hpa(utilization("cpu", 50))
    state = again(autoscaler, [], {}, seen(autoscaler, 2))
    assert (state.replicas, state.error) == (2, "no pods of Deployment default/web to measure cpu on")
    pods, _ = fleet(90, 90)
    state = again(autoscaler, pods, {}, seen(autoscaler, 2))
    assert state.error == "no cpu sample from any ready pod of Deployment default/web"


def test_an_hpa_gitops_cannot_act_on_says_which_field() -> None:
    zero = hpa(utilization("cpu", 50), min_replicas=0)
    state = again(zero, *fleet(90, 90), seen(zero, 2))
    assert state.replicas == 2
    assert state.error == "spec.minReplicas: expected an integer >= 1 (gitops does not scale to zero), got 0"
    assert state.reason == f"cannot autoscale: {state.error}: stays at 2"
    daemons = hpa(scaleTargetRef={"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "web"})
    assert seen(daemons, 2).error == (
        "spec.scaleTargetRef.kind: expected Deployment, StatefulSet, ReplicaSet or ReplicationController, "
        'got "DaemonSet"'
    )


# --- bounds ---------------------------------------------------------------------------------


def test_first_sight_starts_from_the_replicas_in_git_brought_within_bounds() -> None:
    autoscaler = hpa(utilization("cpu", 50), min_replicas=2, max_replicas=10)
    inside = seen(autoscaler, 3, at=NOW)
    assert (inside.replicas, inside.recommendations, inside.events) == (3, ((NOW, 3),), ())
    assert inside.reason == "first sight: starts from the 3 replicas Deployment default/web runs"
    above = seen(autoscaler, 12, at=NOW)
    assert (above.replicas, above.events, above.last_scale_at) == (10, ((NOW, -2),), NOW)
    assert (
        above.reason == "first sight: Deployment default/web runs 12 replicas, above maxReplicas 10: 12 -> 10"
    )


def test_replicas_outside_the_bounds_are_brought_back_without_reading_metrics() -> None:
    autoscaler = hpa(utilization("cpu", 50), min_replicas=4)
    state = autoscale(autoscaler, 3, *fleet(10, 10, 10), seen(autoscaler, 5), NOW)
    assert (state.replicas, state.metrics) == (4, ())
    assert state.reason == "Deployment default/web runs 3 replicas, below minReplicas 4: 3 -> 4"


def test_a_target_at_zero_replicas_is_not_autoscaled() -> None:
    autoscaler = hpa(utilization("cpu", 50), min_replicas=2)
    first = seen(autoscaler, 0)
    later = autoscale(autoscaler, 0, *fleet(500, 500), first, NOW)
    for state in (first, later):
        assert (state.replicas, state.events) == (0, ())
        assert state.reason == "scaling is disabled: Deployment default/web runs 0 replicas"


def test_proposals_beyond_the_bounds_stop_at_them() -> None:
    autoscaler = hpa(utilization("cpu", 50), max_replicas=10)
    pods, usage = fleet(*[200] * 8)
    high = again(autoscaler, pods, usage, seen(autoscaler, 8))
    assert (high.replicas, high.reason) == (
        10,
        "cpu 200% of requests > target 50%: 8 -> 10 (wants 32; at maxReplicas 10)",
    )
    low_bound = hpa(utilization("cpu", 50), min_replicas=2, behavior=NO_DOWN_WINDOW)
    low = again(low_bound, *fleet(5, 5, 5), seen(low_bound, 3))
    assert (low.replicas, low.reason) == (
        2,
        "cpu 5% of requests < target 50%: 3 -> 2 (wants 1; at minReplicas 2)",
    )


# --- behavior: policies and stabilization -----------------------------------------------------


def test_the_default_scale_up_adds_at_most_4_pods_or_100_percent_per_15_seconds() -> None:
    autoscaler = hpa(utilization("cpu", 50), max_replicas=20)
    first = again(autoscaler, *fleet(1000), seen(autoscaler, 1))
    assert first.replicas == 5
    assert (
        first.reason == "cpu 1000% of requests > target 50%: 1 -> 5 "
        "(wants 20; limited to 5 by the scale-up policy Pods 4 per 15s)"
    )
    hot = [1000.0] * 5
    within = again(autoscaler, *fleet(*hot), first, NOW + 10)
    assert within.replicas == 5  # the period started at 1 replica
    assert within.reason.endswith(
        "stays at 5 (wants 100; limited to 5 by the scale-up policy Pods 4 per 15s)"
    )
    after = again(autoscaler, *fleet(*hot), within, NOW + 15)
    assert after.replicas == 10
    assert after.reason == (
        "cpu 1000% of requests > target 50%: 5 -> 10 "
        "(wants 100; limited to 10 by the scale-up policy Percent 100 per 15s)"
    )
    assert after.events == ((NOW + 15, 5),)  # the first scale-up is past every period


def test_a_drop_in_load_is_held_for_the_300_second_scale_down_window_then_applied() -> None:
    autoscaler = hpa(utilization("cpu", 50))
    state = seen(autoscaler, 5, at=NOW)
    quiet = [10.0] * 5
    for at in (NOW + 15, NOW + 150, NOW + 299):
        state = again(autoscaler, *fleet(*quiet), state, at)
        assert state.replicas == 5
        assert state.reason == (
            "cpu 10% of requests < target 50%: stays at 5 "
            "(wants 1; within the 300s scale-down stabilization window: held at 5)"
        )
    state = again(autoscaler, *fleet(*quiet), state, NOW + 300)
    assert (state.replicas, state.reason) == (1, "cpu 10% of requests < target 50%: 5 -> 1")
    assert [at for at, _ in state.recommendations] == [NOW + 15, NOW + 150, NOW + 299, NOW + 300]


def test_the_highest_recommendation_in_the_window_holds_a_scale_down() -> None:
    autoscaler = hpa(utilization("memory", 70))
    pods = [pod(i) for i in range(5)]
    usage = {p.id: sample(p, memory=103 * MI) for p in pods}  # 40% of 256Mi
    state = ScaleState(HPA, WEB, 5, recommendations=((NOW - 100, 4),))
    state = again(autoscaler, pods, usage, state)
    assert state.replicas == 4
    assert state.reason == (
        "memory 40% of requests < target 70%: 5 -> 4 "
        "(wants 3; within the 300s scale-down stabilization window: held at 4)"
    )


def test_a_scale_up_window_applies_the_lowest_recent_recommendation() -> None:
    autoscaler = hpa(utilization("cpu", 50), behavior={"scaleUp": {"stabilizationWindowSeconds": 60}})
    held = again(autoscaler, *fleet(90, 90), seen(autoscaler, 2))
    assert held.replicas == 2
    assert held.reason == (
        "cpu 90% of requests > target 50%: stays at 2 "
        "(wants 4; within the 60s scale-up stabilization window: held at 2)"
    )
    assert again(autoscaler, *fleet(90, 90), held, NOW + 46).replicas == 4


def test_custom_policies_count_from_the_start_of_their_period() -> None:
    behavior = {
        "scaleDown": {
            "stabilizationWindowSeconds": 0,
            "policies": [{"type": "Percent", "value": 50, "periodSeconds": 60}],
        }
    }
    autoscaler = hpa(utilization("cpu", 50), behavior=behavior)
    state = again(autoscaler, *fleet(*[5.0] * 8), seen(autoscaler, 8))
    assert state.replicas == 4
    assert state.reason == (
        "cpu 5% of requests < target 50%: 8 -> 4 "
        "(wants 1; limited to 4 by the scale-down policy Percent 50 per 60s)"
    )
    assert again(autoscaler, *fleet(*[5.0] * 4), state, NOW + 30).replicas == 4
    assert again(autoscaler, *fleet(*[5.0] * 4), state, NOW + 60).replicas == 2


def test_select_policy_min_takes_the_policy_allowing_the_smallest_change() -> None:
    behavior = {
        "scaleUp": {
            "selectPolicy": "Min",
            "policies": [
                {"type": "Pods", "value": 4, "periodSeconds": 60},
                {"type": "Percent", "value": 100, "periodSeconds": 60},
            ],
        }
    }
    autoscaler = hpa(utilization("cpu", 50), behavior=behavior)
    state = again(autoscaler, *fleet(1000), seen(autoscaler, 1))
    assert state.replicas == 2
    assert state.reason.endswith("1 -> 2 (wants 20; limited to 2 by the scale-up policy Percent 100 per 60s)")


def test_select_policy_disabled_turns_one_direction_off() -> None:
    no_down = hpa(utilization("cpu", 50), behavior={"scaleDown": {"selectPolicy": "Disabled"}})
    state = seen(no_down, 5, at=NOW - 1000)
    state = again(no_down, *fleet(*[5.0] * 5), state)
    assert state.replicas == 5
    assert state.reason == (
        "cpu 5% of requests < target 50%: stays at 5 "
        "(wants 1; scale-down is disabled by selectPolicy Disabled: held at 5)"
    )
    assert again(no_down, *fleet(*[200.0] * 5), state, NOW + 15).replicas == 10


# --- invariants ------------------------------------------------------------------------------


def _replicas_at(history: Sequence[tuple[float, int]], moment: float) -> int:
    """The replicas after every pass made at or before `moment`."""
    return [r for at, r in history if at <= moment][-1]


def _allowed(rules: dict[str, Any], history: Sequence[tuple[float, int]], now: float, *, up: bool) -> int:
    """The furthest the policies let the replicas go at `now`, from the replica history alone."""
    if rules["selectPolicy"] == "Disabled":
        return history[-1][1]
    limits: list[int] = []
    for policy in rules["policies"]:
        start = _replicas_at(history, now - policy["periodSeconds"])
        value: int = policy["value"]
        if policy["type"] == "Pods":
            limits.append(start + value if up else start - value)
        else:
            change = Fraction(start * value, 100)
            limits.append(math.ceil(start + change) if up else int(start - change))
    return max(limits) if (rules["selectPolicy"] == "Max") == up else min(limits)


_policies = st.lists(
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(["Pods", "Percent"]),
            "value": st.integers(1, 200),
            "periodSeconds": st.integers(1, 120),
        }
    ),
    min_size=1,
    max_size=3,
)
_rules = st.fixed_dictionaries(
    {
        "stabilizationWindowSeconds": st.integers(0, 120),
        "selectPolicy": st.sampled_from(["Max", "Min", "Disabled"]),
        "policies": _policies,
    }
)


@settings(max_examples=300, deadline=None)
@given(
    low=st.integers(1, 5),
    extra=st.integers(0, 15),
    start=st.integers(1, 25),
    scale_up=_rules,
    scale_down=_rules,
    passes=st.lists(
        st.tuples(st.integers(1, 40), st.lists(st.integers(0, 600) | st.none(), min_size=1, max_size=4)),
        min_size=1,
        max_size=12,
    ),
)
def test_replicas_stay_within_bounds_and_change_no_faster_than_the_policies_allow(
    *,
    low: int,
    extra: int,
    start: int,
    scale_up: dict[str, Any],
    scale_down: dict[str, Any],
    passes: list[tuple[int, list[int | None]]],
) -> None:
    autoscaler = hpa(
        utilization("cpu", 50),
        min_replicas=low,
        max_replicas=low + extra,
        behavior={"scaleUp": scale_up, "scaleDown": scale_down},
    )
    now = NOW
    state = autoscale(autoscaler, start, [], {}, None, now)
    history = [(-math.inf, start), (now, state.replicas)]
    for step, loads in passes:
        assert low <= state.replicas <= low + extra
        now += step
        pods, usage = fleet(*(loads[i % len(loads)] for i in range(state.replicas)))
        previous, before = state, state.replicas
        state = again(autoscaler, pods, usage, state, now)
        assert again(autoscaler, pods, usage, previous, now) == state  # pure: the same pass, the same answer
        assert low <= state.replicas <= low + extra
        if state.replicas > before:
            assert state.replicas <= _allowed(scale_up, history, now, up=True), state.reason
        elif state.replicas < before:
            assert state.replicas >= _allowed(scale_down, history, now, up=False), state.reason
        history.append((now, state.replicas))
