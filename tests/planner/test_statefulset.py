"""StatefulSets run as Kubernetes' StatefulSet controller runs them: stable pod names,
hostnames and claims per ordinal, ordered creation and removal, rolling updates from the
highest ordinal down to the partition, and every action with its reason."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from typing import Any

import pytest

from gitops.model import ClusterState, Manifest, Node, NodeName, Pod, PodName, RolloutState, Volume
from gitops.planner import Plan, plan
from gitops.planner.actions import Workloads
from gitops.planner.plan import configs_of
from gitops.planner.podspec import resolve_template
from gitops.planner.statefulset import (
    POD_INDEX_LABEL,
    POD_NAME_LABEL,
    claim_fates,
    ordinal_of,
    statefulset_status,
)
from gitops.reconcile import decide, settle
from gitops.schemas import SourceFile, validate_files

NOW = 10_000.0
LONG_AGO = NOW - 3600


def load(body: dict[str, Any], path: str = "apps/workload.yaml") -> Manifest:
    """A manifest as the source would give it: validated, with its hash."""
    result = validate_files([SourceFile(path, json.dumps(body).encode())])
    assert not result.errors, [str(e) for e in result.errors]
    return next(m for m in result.manifests if m.key.kind == body["kind"])


def statefulset(
    name: str = "db",
    replicas: int = 3,
    image: str = "db:1",
    *,
    claims: Sequence[str] = ("data",),
    **spec: Any,
) -> Manifest:
    labels = {"app": name}
    container = {
        "name": "db",
        "image": image,
        "volumeMounts": [{"name": c, "mountPath": f"/{c}"} for c in claims],
    }
    templates = [
        {
            "metadata": {"name": c},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
        }
        for c in claims
    ]
    body = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}},
            "volumeClaimTemplates": templates,
            **spec,
        },
    }
    return load(body)


def step(
    manifest: Manifest,
    pods: Iterable[Pod],
    *,
    now: float = NOW,
    avoid: Iterable[str] = (),
    rollouts: dict[Any, RolloutState] | None = None,
) -> Plan:
    context = Workloads(now=now, avoid=frozenset(avoid), rollouts=rollouts or {})
    return plan([manifest], list(pods), context=context)


def running(pod: Pod, *, ready: bool = True, since: float = LONG_AGO) -> Pod:
    """The pod as its agent reports it once started (and ready since `since`)."""
    return dataclasses.replace(pod, node=NodeName("n1"), phase="Running", ready=ready, ready_since=since)


def converge(manifest: Manifest, pods: Iterable[Pod] = (), *, now: float = NOW) -> list[Pod]:
    """Passes until the plan is empty; new pods start ready at once, stopped ones vanish."""
    current = list(pods)
    for _ in range(100):
        result = step(manifest, current, now=now)
        if result.empty:
            return current
        stopped = {a.pod.id for a in result.stop}
        current = [p for p in current if p.id not in stopped] + [running(a.pod) for a in result.create]
    raise AssertionError("no convergence")


def template_hash(manifest: Manifest) -> str:
    return resolve_template(manifest, configs_of([manifest])).hash


def names(actions: Iterable[Any]) -> list[str]:
    return [a.pod.name for a in actions]


def by_name(pods: Iterable[Pod]) -> dict[str, Pod]:
    return {p.name: p for p in pods}


# --- identity ------------------------------------------------------------------------------


def test_pods_are_named_by_ordinal_with_their_hostname_subdomain_labels_and_own_claims() -> None:
    result = step(statefulset(podManagementPolicy="Parallel", claims=("data", "logs")), [])
    assert names(result.create) == ["db-0", "db-1", "db-2"]
    for i, action in enumerate(result.create):
        pod = action.pod
        assert pod.spec.hostname == f"db-{i}"
        assert pod.spec.subdomain == "db"
        assert pod.spec.claims == (f"default/data-db-{i}", f"default/logs-db-{i}")
        assert Volume("data", claim=f"default/data-db-{i}") in pod.spec.volumes
        assert pod.label_map[POD_NAME_LABEL] == f"db-{i}"
        assert pod.label_map[POD_INDEX_LABEL] == str(i)
        assert pod.label_map["app"] == "db"
        assert action.reason == f"StatefulSet default/db wants 3 replicas: db-{i} (ordinal {i})"


def test_ordinals_start_shifts_names_hostnames_and_claims() -> None:
    result = step(statefulset(replicas=2, podManagementPolicy="Parallel", ordinals={"start": 5}), [])
    assert names(result.create) == ["db-5", "db-6"]
    assert [a.pod.spec.claims for a in result.create] == [("default/data-db-5",), ("default/data-db-6",)]
    assert [a.pod.label_map[POD_INDEX_LABEL] for a in result.create] == ["5", "6"]


def test_ordinal_of_reads_only_the_sets_own_names() -> None:
    assert ordinal_of("db", "db-0") == 0
    assert ordinal_of("db", "db-12") == 12
    assert ordinal_of("db", "db-01") is None
    assert ordinal_of("db", "db-x") is None
    assert ordinal_of("db", "db-db-0") is None
    assert ordinal_of("db", "web-0") is None


def test_a_pod_with_a_name_outside_the_ordinals_scheme_is_stopped() -> None:
    pods = converge(statefulset(replicas=1))
    stray = dataclasses.replace(pods[0], name=PodName("db-abc"))
    result = step(statefulset(replicas=1), [*pods, stray])
    assert [(a.pod.name, a.reason) for a in result.stop] == [
        ("db-abc", "not a pod of StatefulSet default/db's ordinals")
    ]


def test_planning_a_converged_set_again_changes_nothing() -> None:
    manifest = statefulset()
    pods = converge(manifest)
    assert sorted(p.name for p in pods) == ["db-0", "db-1", "db-2"]
    result = step(manifest, pods)
    assert result.empty
    assert [p.name for p in result.keep] == ["db-0", "db-1", "db-2"]


# --- OrderedReady and Parallel ----------------------------------------------------------------


def test_ordered_ready_creates_one_pod_at_a_time_once_the_previous_is_running_and_ready() -> None:
    manifest = statefulset()
    first = step(manifest, [])
    assert names(first.create) == ["db-0"]
    pod0 = first.create[0].pod
    assert step(manifest, [pod0]).empty  # Pending, not yet placed
    assert step(manifest, [dataclasses.replace(pod0, node=NodeName("n1"))]).empty
    assert step(manifest, [running(pod0, ready=False)]).empty  # Running but not ready
    second = step(manifest, [running(pod0)])
    assert names(second.create) == ["db-1"]
    assert second.create[0].reason == (
        "StatefulSet default/db wants 3 replicas: db-1 (ordinal 1); db-0 is Running and ready"
    )


def test_ordered_ready_waits_for_a_lower_pod_that_lost_readiness() -> None:
    manifest = statefulset()
    pods = converge(statefulset(replicas=2))
    pods = [running(p, ready=False) if p.name == "db-0" else p for p in pods]
    assert step(manifest, pods).empty


def test_min_ready_seconds_holds_back_the_next_pod_until_the_previous_is_available() -> None:
    manifest = statefulset(minReadySeconds=30)
    pod0 = running(step(manifest, []).create[0].pod, since=NOW - 10)
    assert step(manifest, [pod0]).empty
    assert names(step(manifest, [pod0], now=NOW + 20).create) == ["db-1"]


def test_parallel_creates_every_pod_at_once() -> None:
    result = step(statefulset(replicas=4, podManagementPolicy="Parallel"), [])
    assert names(result.create) == ["db-0", "db-1", "db-2", "db-3"]
    assert all("is Running and ready" not in a.reason for a in result.create)


def test_ordered_scale_down_removes_the_highest_ordinal_first_one_at_a_time() -> None:
    pods = converge(statefulset(replicas=5))
    manifest = statefulset(replicas=2)
    result = step(manifest, pods)
    assert [(a.pod.name, a.reason) for a in result.stop] == [
        (
            "db-4",
            "scale down: 5 -> 2 replicas (OrderedReady: highest ordinal first, one at a time)",
        )
    ]
    assert not result.create


def test_ordered_scale_down_waits_until_the_removed_pod_is_gone() -> None:
    """The stopped pod is no longer among the set's pods but its name is still draining."""
    pods = [p for p in converge(statefulset(replicas=5)) if p.name != "db-4"]
    manifest = statefulset(replicas=2)
    assert step(manifest, pods, avoid={"db-4"}).empty
    assert names(step(manifest, pods).stop) == ["db-3"]


def test_ordered_scale_down_waits_while_a_kept_pod_is_not_ready() -> None:
    pods = converge(statefulset(replicas=3))
    pods = [running(p, ready=False) if p.name == "db-0" else p for p in pods]
    assert step(statefulset(replicas=2), pods).empty


def test_ordered_scale_down_is_not_stalled_by_an_unready_condemned_pod_below_the_top() -> None:
    """db-3 never gets ready: db-4 goes first anyway, then db-3 itself."""
    pods = converge(statefulset(replicas=5))
    pods = [running(p, ready=False) if p.name == "db-3" else p for p in pods]
    manifest = statefulset(replicas=3)
    first = step(manifest, pods)
    assert names(first.stop) == ["db-4"]
    pods = [p for p in pods if p.name != "db-4"]
    assert names(step(manifest, pods).stop) == ["db-3"]


def test_parallel_scale_down_removes_every_condemned_pod_at_once() -> None:
    pods = converge(statefulset(replicas=5, podManagementPolicy="Parallel"))
    result = step(statefulset(replicas=2, podManagementPolicy="Parallel"), pods)
    assert sorted(names(result.stop)) == ["db-2", "db-3", "db-4"]
    assert {a.reason for a in result.stop} == {"scale down: 5 -> 2 replicas (Parallel)"}


def test_scale_to_zero_removes_every_pod_in_reverse_order() -> None:
    manifest = statefulset(replicas=0)
    pods = converge(statefulset(replicas=3))
    stopped: list[str] = []
    for _ in range(5):
        result = step(manifest, pods)
        stopped += names(result.stop)
        gone = {a.pod.id for a in result.stop}
        pods = [p for p in pods if p.id not in gone]
    assert stopped == ["db-2", "db-1", "db-0"]


# --- pods that fail or vanish -------------------------------------------------------------------


def test_a_failed_pod_is_stopped_and_returns_under_its_name_once_gone() -> None:
    manifest = statefulset()
    pods = converge(manifest)
    pods = [
        dataclasses.replace(p, phase="Failed", ready=False, reason="OOMKilled") if p.name == "db-1" else p
        for p in pods
    ]
    first = step(manifest, pods)
    assert [(a.pod.name, a.reason) for a in first.stop] == [
        ("db-1", "pod failed (OOMKilled): recreated as db-1")
    ]
    assert not first.create
    pods = [p for p in pods if p.name != "db-1"]
    assert step(manifest, pods, avoid={"db-1"}).empty  # the old db-1 is still terminating
    again = step(manifest, pods)
    assert names(again.create) == ["db-1"]
    assert again.create[0].pod.spec.claims == ("default/data-db-1",)


def test_parallel_recreates_only_the_names_that_are_free() -> None:
    manifest = statefulset(replicas=3, podManagementPolicy="Parallel")
    assert names(step(manifest, [], avoid={"db-1"}).create) == ["db-0", "db-2"]


def test_ordered_ready_creates_nothing_above_a_name_still_terminating() -> None:
    manifest = statefulset()
    pods = [p for p in converge(manifest) if p.name != "db-0"]
    assert step(manifest, pods, avoid={"db-0"}).empty
    assert names(step(manifest, pods).create) == ["db-0"]


# --- rolling updates ------------------------------------------------------------------------------


def test_rolling_update_replaces_the_highest_ordinal_first_one_at_a_time() -> None:
    pods = converge(statefulset(image="db:1"))
    manifest = statefulset(image="db:2")
    first = step(manifest, pods)
    assert [(a.pod.name, a.reason) for a in first.stop] == [
        (
            "db-2",
            "template changed: image changed: db:1 -> db:2 "
            "(rolling update, highest ordinal first, maxUnavailable 1)",
        )
    ]
    pods = [p for p in pods if p.name != "db-2"]
    assert step(manifest, pods, avoid={"db-2"}).empty
    second = step(manifest, pods)
    assert names(second.create) == ["db-2"]
    assert second.create[0].pod.spec.image == "db:2"
    assert not second.stop  # db-1 waits for the new db-2 to be ready
    pods.append(running(second.create[0].pod, ready=False))
    assert step(manifest, pods).empty
    pods = [running(p) for p in pods]
    assert names(step(manifest, pods).stop) == ["db-1"]
    final = converge(manifest, pods)
    assert {p.spec.image for p in final} == {"db:2"}


def test_under_ordered_ready_a_scale_down_finishes_before_the_rolling_update_starts() -> None:
    pods = converge(statefulset(replicas=4, image="db:1"))
    manifest = statefulset(replicas=2, image="db:2")
    first = step(manifest, pods)
    assert names(first.stop) == ["db-3"]  # and no outdated db-1 beside it
    pods = [p for p in pods if p.name != "db-3"]
    assert step(manifest, pods, avoid={"db-3"}).empty
    assert names(step(manifest, pods).stop) == ["db-2"]
    pods = [p for p in pods if p.name != "db-2"]
    assert step(manifest, pods, avoid={"db-2"}).empty
    update = step(manifest, pods)
    assert names(update.stop) == ["db-1"]
    assert update.stop[0].reason.startswith("template changed")


def test_under_parallel_a_scale_down_and_the_rolling_update_go_together() -> None:
    pods = converge(statefulset(replicas=4, image="db:1", podManagementPolicy="Parallel"))
    result = step(statefulset(replicas=2, image="db:2", podManagementPolicy="Parallel"), pods)
    assert sorted(names(result.stop)) == ["db-1", "db-2", "db-3"]


def test_rolling_update_order_over_a_whole_rollout_is_descending() -> None:
    pods = converge(statefulset(replicas=4, image="db:1"))
    manifest = statefulset(replicas=4, image="db:2")
    order: list[str] = []
    for _ in range(40):
        result = step(manifest, pods)
        if result.empty:
            break
        order += names(result.stop)
        gone = {a.pod.id for a in result.stop}
        pods = [p for p in pods if p.id not in gone] + [running(a.pod) for a in result.create]
    assert order == ["db-3", "db-2", "db-1", "db-0"]


@pytest.mark.parametrize(
    ("max_unavailable", "replicas", "stopped"),
    [(2, 4, ["db-3", "db-2"]), ("50%", 3, ["db-2", "db-1"]), ("10%", 3, ["db-2"])],
)
def test_rolling_update_replaces_max_unavailable_pods_at_a_time(
    max_unavailable: int | str, replicas: int, stopped: list[str]
) -> None:
    """Percentages are of the replicas, rounded up, and at least one."""
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": max_unavailable}}
    pods = converge(statefulset(replicas=replicas, image="db:1", updateStrategy=strategy))
    result = step(statefulset(replicas=replicas, image="db:2", updateStrategy=strategy), pods)
    assert names(result.stop) == stopped


def test_rolling_update_budget_counts_pods_already_unavailable() -> None:
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 2}}
    pods = converge(statefulset(replicas=4, image="db:1", updateStrategy=strategy))
    pods = [running(p, ready=False) if p.name == "db-0" else p for p in pods]
    result = step(statefulset(replicas=4, image="db:2", updateStrategy=strategy), pods)
    assert names(result.stop) == ["db-3"]


def test_rolling_update_replaces_nothing_below_the_partition() -> None:
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"partition": 2}}
    manifest = statefulset(replicas=4, image="db:2", updateStrategy=strategy)
    pods = converge(statefulset(replicas=4, image="db:1", updateStrategy=strategy))
    first = step(manifest, pods)
    assert names(first.stop) == ["db-3"]
    assert first.stop[0].reason.endswith(
        "(rolling update, highest ordinal first, maxUnavailable 1, partition 2)"
    )
    final = converge(manifest, pods)
    assert {p.name: p.spec.image for p in final} == {
        "db-0": "db:1",
        "db-1": "db:1",
        "db-2": "db:2",
        "db-3": "db:2",
    }
    status = statefulset_status(manifest, template_hash(manifest), final, 4, now=NOW)
    assert status.complete
    assert status.step.endswith(f"({template_hash(manifest)} on ordinals >= 2)")


def test_a_pod_below_the_partition_comes_back_with_the_template_it_ran_before() -> None:
    """The previous template comes from the rollout history the controller keeps."""
    nodes = (Node(NodeName("n1"), cpu_milli=8000, memory_bytes=16 << 30),)
    strategy = {"type": "RollingUpdate", "rollingUpdate": {"partition": 2}}
    state = ClusterState(desired=(statefulset(image="db:1", updateStrategy=strategy),), pods=(), nodes=nodes)
    t = NOW
    for _ in range(6):
        t += 1
        state = settle(state, decide(state, t), t)
    assert {p.name: p.spec.image for p in state.pods} == {"db-0": "db:1", "db-1": "db:1", "db-2": "db:1"}
    state = dataclasses.replace(state, desired=(statefulset(image="db:2", updateStrategy=strategy),))
    for _ in range(6):
        t += 1
        state = settle(state, decide(state, t), t)
    assert {p.name: p.spec.image for p in state.pods} == {"db-0": "db:1", "db-1": "db:1", "db-2": "db:2"}
    old_hash = by_name(state.pods)["db-0"].template_hash
    state = dataclasses.replace(state, pods=tuple(p for p in state.pods if p.name != "db-0"))
    decision = decide(state, t + 1)
    assert names(decision.plan.create) == ["db-0"]
    recreated = decision.plan.create[0].pod
    assert recreated.spec.image == "db:1"
    assert recreated.template_hash == old_hash
    assert recreated.spec.hostname == "db-0"


def test_on_delete_replaces_nothing_and_a_deleted_pod_returns_with_the_new_template() -> None:
    strategy = {"type": "OnDelete"}
    pods = converge(statefulset(image="db:1", updateStrategy=strategy))
    manifest = statefulset(image="db:2", updateStrategy=strategy)
    assert step(manifest, pods).empty
    pods = [p for p in pods if p.name != "db-1"]
    result = step(manifest, pods)
    assert names(result.create) == ["db-1"]
    assert result.create[0].pod.spec.image == "db:2"
    assert not result.stop


def test_status_says_which_pod_rolls_out_next() -> None:
    pods = converge(statefulset(image="db:1"))
    manifest = statefulset(image="db:2")
    status = statefulset_status(manifest, template_hash(manifest), pods, 3, now=NOW)
    assert not status.complete
    assert status.step == f"rolling out {template_hash(manifest)}: next db-2 (3 outdated)"


# --- claims ---------------------------------------------------------------------------------


def _retention(when_deleted: str, when_scaled: str, replicas: int = 2) -> Manifest:
    policy = {"whenDeleted": when_deleted, "whenScaled": when_scaled}
    return statefulset(replicas=replicas, persistentVolumeClaimRetentionPolicy=policy)


CLAIMS = [
    "default/data-db-0",
    "default/data-db-1",
    "default/data-db-2",
    "default/other",
    "default/data-dbx-0",
]


def test_claims_of_ordinals_scaled_away_are_kept_by_default() -> None:
    fates = claim_fates([statefulset(replicas=2)], [], CLAIMS)
    assert fates == {
        "default/data-db-0": ("keep", "StatefulSet default/db ordinal 0"),
        "default/data-db-1": ("keep", "StatefulSet default/db ordinal 1"),
        "default/data-db-2": ("keep", "StatefulSet default/db ordinal 2"),
    }


def test_when_scaled_delete_deletes_the_claims_of_ordinals_scaled_away() -> None:
    fates = claim_fates([_retention("Retain", "Delete")], [], CLAIMS)
    assert fates["default/data-db-1"][0] == "keep"
    assert fates["default/data-db-2"] == (
        "delete",
        "StatefulSet default/db scaled below ordinal 2 (whenScaled: Delete)",
    )
    assert "default/other" not in fates and "default/data-dbx-0" not in fates


@pytest.mark.parametrize(("when_deleted", "fate"), [("Retain", "retain"), ("Delete", "delete")])
def test_when_deleted_decides_the_claims_of_a_set_that_left_the_source(when_deleted: str, fate: str) -> None:
    fates = claim_fates([], [_retention(when_deleted, "Retain")], CLAIMS)
    assert {claim: f for claim, (f, _) in fates.items()} == {
        "default/data-db-0": fate,
        "default/data-db-1": fate,
        "default/data-db-2": fate,
    }
    assert (
        fates["default/data-db-0"][1]
        == f"StatefulSet default/db left the source (whenDeleted: {when_deleted})"
    )


def test_a_desired_set_decides_over_one_of_the_same_name_that_left() -> None:
    fates = claim_fates([statefulset(replicas=3)], [_retention("Delete", "Delete")], CLAIMS)
    assert {f for f, _ in fates.values()} == {"keep"}
