"""ReplicaSets and ReplicationControllers run as Kubernetes' ReplicaSet controller runs them:
`replicas` pods named `<set>-<5 characters>`, scale up and down (the least valuable pods
first), ended pods replaced, and a template change that replaces no pod: only pods created
afterwards take the new template."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gitops.model import Manifest, NodeName, ObjectKey, Phase, Pod
from gitops.planner import Plan, plan
from gitops.planner.actions import BURST, Workloads
from gitops.planner.plan import PLANNERS, configs_of
from gitops.planner.podspec import resolve_template
from gitops.planner.replicaset import NAME_PREFIX_MAX, new_pod_name, replicaset_status
from gitops.schemas import SourceFile, validate_files

NOW = 10_000.0
LONG_AGO = NOW - 3600
SUFFIX = "[bcdfghjklmnpqrstvwxz2456789]{5}"  # Kubernetes' alphabet for generated names
FRONTEND = ObjectKey("ReplicaSet", "default", "frontend")


def load(body: dict[str, Any], path: str = "apps/workload.yaml") -> Manifest:
    """A manifest as the source would give it: validated, with its hash."""
    result = validate_files([SourceFile(path, json.dumps(body).encode())])
    assert not result.errors, [str(e) for e in result.errors]
    return next(m for m in result.manifests if m.key.kind == body["kind"])


def replicaset(replicas: int | None = 3, image: str = "node:20", *, name: str = "frontend") -> Manifest:
    """Argo CD's sync-waves frontend ReplicaSet."""
    labels = {"tier": "frontend"}
    spec: dict[str, Any] = {
        "selector": {"matchLabels": labels},
        "template": {
            "metadata": {"labels": labels},
            "spec": {"containers": [{"name": "main", "image": image}]},
        },
    }
    if replicas is not None:
        spec["replicas"] = replicas
    return load({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": name}, "spec": spec})


def controller(replicas: int = 1, image: str = "k8s.gcr.io/redis:e2e", *, name: str = "frontend") -> Manifest:
    """guestbook-go's redis-master ReplicationController (no selector: it defaults to the labels)."""
    return load(
        {
            "apiVersion": "v1",
            "kind": "ReplicationController",
            "metadata": {"name": name, "labels": {"app": "redis", "role": "master"}},
            "spec": {
                "replicas": replicas,
                "template": {
                    "metadata": {"labels": {"app": "redis", "role": "master"}},
                    "spec": {
                        "containers": [
                            {
                                "name": "redis-master",
                                "image": image,
                                "ports": [{"name": "redis-server", "containerPort": 6379}],
                            }
                        ]
                    },
                },
            },
        }
    )


def step(manifest: Manifest, pods: Iterable[Pod], **context: Any) -> Plan:
    return plan([manifest], list(pods), context=Workloads(now=NOW, **context))


def running(pod: Pod, *, node: str = "n1", ready: bool = True, created: float | None = None) -> Pod:
    """The pod as its agent reports it once started (ready since long ago)."""
    return dataclasses.replace(
        pod,
        node=NodeName(node),
        phase="Running",
        ready=ready,
        ready_since=LONG_AGO,
        created_at=pod.created_at if created is None else created,
    )


def started(result: Plan, **how: Any) -> list[Pod]:
    return [running(a.pod, **how) for a in result.create]


def names(actions: Iterable[Any]) -> list[str]:
    return [a.pod.name for a in actions]


# --- scaling ---------------------------------------------------------------------------------


def test_a_new_replicaset_creates_its_replicas_with_a_reason() -> None:
    result = step(replicaset(3), [])
    assert len(result.create) == 3
    assert not result.stop
    template = resolve_template(replicaset(3), configs_of([]))
    for action in result.create:
        assert re.fullmatch(f"frontend-{SUFFIX}", action.pod.name)
        assert action.reason == "ReplicaSet default/frontend wants 3 replicas"
        assert action.pod.owner == FRONTEND
        assert action.pod.template_hash == template.hash
        assert action.pod.labels == (("tier", "frontend"),)
        assert action.pod.spec.containers[0].image == "node:20"
    assert len(set(names(result.create))) == 3


def test_replicas_default_to_one() -> None:
    assert len(step(replicaset(None), []).create) == 1


def test_pod_names_are_deterministic() -> None:
    assert names(step(replicaset(3), []).create) == names(step(replicaset(3), []).create)


def test_planning_a_converged_replicaset_again_changes_nothing() -> None:
    pods = started(step(replicaset(3), []))
    result = step(replicaset(3), pods)
    assert result.empty
    assert sorted(p.name for p in result.keep) == sorted(p.name for p in pods)


def test_scale_up_adds_only_the_missing_pods() -> None:
    pods = started(step(replicaset(1), []))
    result = step(replicaset(3), pods)
    assert [a.reason for a in result.create] == ["scale up: 1 -> 3 replicas"] * 2
    assert not result.stop
    assert [p.name for p in result.keep] == [pods[0].name]
    assert len({pods[0].name, *names(result.create)}) == 3


def test_scale_down_stops_the_least_valuable_pods_first() -> None:
    first = step(replicaset(5), []).create
    pods = [
        running(first[0].pod, created=100.0),  # old, ready: kept
        running(first[1].pod, created=300.0),  # the newest ready pod
        running(first[2].pod, created=200.0),  # ready, older: kept
        running(first[3].pod, ready=False, created=50.0),  # not ready
        first[4].pod,  # not even placed
    ]
    result = step(replicaset(2), pods)
    assert names(result.stop) == [first[4].pod.name, first[3].pod.name, first[1].pod.name]
    assert {a.reason for a in result.stop} == {"scale down: 5 -> 2 replicas"}
    assert [p.name for p in result.keep] == sorted([first[0].pod.name, first[2].pod.name])
    assert not result.create


def test_scaling_to_zero_stops_every_pod() -> None:
    pods = started(step(replicaset(2), []))
    result = step(replicaset(0), pods)
    assert sorted(names(result.stop)) == sorted(p.name for p in pods)
    assert not result.keep


def test_an_autoscalers_count_wins_over_the_manifests() -> None:
    result = step(replicaset(2), [], replicas={FRONTEND: 4})
    assert len(result.create) == 4
    assert {a.reason for a in result.create} == {"ReplicaSet default/frontend wants 4 replicas"}


def test_at_most_a_burst_of_pods_is_created_per_pass() -> None:
    result = step(replicaset(BURST + 10), [])
    assert len(result.create) == BURST
    assert result.more
    rest = step(replicaset(BURST + 10), [a.pod for a in result.create])
    assert len(rest.create) == 10
    assert not rest.more
    assert not {a.pod.name for a in result.create} & {a.pod.name for a in rest.create}


def test_a_long_name_is_cut_as_kubernetes_cuts_a_generated_names_prefix() -> None:
    long = "a" * 70
    [action] = step(replicaset(1, name=long), []).create
    assert re.fullmatch(f"a{{{NAME_PREFIX_MAX}}}{SUFFIX}", action.pod.name)
    assert len(action.pod.name) == 63


# --- templates -------------------------------------------------------------------------------


def test_a_template_change_replaces_no_pod() -> None:
    pods = started(step(replicaset(3, "node:20"), []))
    result = step(replicaset(3, "node:22"), pods)
    assert result.empty
    assert sorted(p.name for p in result.keep) == sorted(p.name for p in pods)


def test_pods_created_after_a_template_change_run_the_new_template() -> None:
    pods = started(step(replicaset(2, "node:20"), []))
    result = step(replicaset(3, "node:22"), pods)
    [action] = result.create
    assert action.pod.spec.containers[0].image == "node:22"
    assert action.pod.template_hash == resolve_template(replicaset(3, "node:22"), configs_of([])).hash
    assert action.reason == (
        "scale up: 2 -> 3 replicas (a ReplicaSet does not replace pods when its template changes: "
        "2 pod(s) of an older template keep running; new pods run the current one)"
    )
    assert not result.stop
    assert {p.spec.containers[0].image for p in result.keep} == {"node:20"}


def test_scaling_down_after_a_template_change_does_not_prefer_old_pods() -> None:
    """Kubernetes' ReplicaSet does not know which template is newer: it stops by stop order."""
    old = started(step(replicaset(2, "node:20"), []), created=100.0)
    new = started(step(replicaset(3, "node:22"), old), created=200.0)
    result = step(replicaset(2, "node:22"), [*old, *new])
    assert names(result.stop) == [new[0].name]  # the newest, though it runs the current template


# --- ended pods ------------------------------------------------------------------------------


def test_a_failed_pod_is_stopped_and_replaced_under_a_new_name() -> None:
    pods = started(step(replicaset(3), []))
    failed = dataclasses.replace(pods[1], phase="Failed", ready=False, reason="OOMKilled")
    result = step(replicaset(3), [pods[0], failed, pods[2]])
    assert [(a.pod.name, a.reason) for a in result.stop] == [
        (failed.name, "pod failed (OOMKilled): replaced")
    ]
    [action] = result.create
    assert action.reason == f"replaces {failed.name} (pod failed (OOMKilled))"
    assert action.pod.name not in {p.name for p in pods}
    assert sorted(p.name for p in result.keep) == sorted([pods[0].name, pods[2].name])


def test_a_failed_pod_beyond_the_replicas_is_stopped_and_not_replaced() -> None:
    pods = started(step(replicaset(2), []))
    failed = dataclasses.replace(pods[1], phase="Failed", ready=False, reason="")
    result = step(replicaset(1), [pods[0], failed])
    assert [(a.pod.name, a.reason) for a in result.stop] == [
        (failed.name, "pod failed: not replaced (ReplicaSet default/frontend wants 1 replicas)")
    ]
    assert not result.create


def test_replacements_and_scale_up_say_which_is_which() -> None:
    pods = started(step(replicaset(2), []))
    failed = dataclasses.replace(pods[1], phase="Failed", ready=False, reason="Error")
    result = step(replicaset(4), [pods[0], failed])
    assert [a.reason for a in result.create] == [
        f"replaces {failed.name} (pod failed (Error))",
        "scale up: 2 -> 4 replicas",
        "scale up: 2 -> 4 replicas",
    ]


def test_a_name_is_never_reused_while_a_pod_of_that_name_is_draining() -> None:
    manifest = replicaset(1)
    template = resolve_template(manifest, configs_of([]))
    draining = new_pod_name(manifest, template, 0)
    [action] = step(manifest, [], avoid=frozenset({draining})).create
    assert action.pod.name == new_pod_name(manifest, template, 1)
    # Once it is gone, its name is free again.
    [again] = step(manifest, []).create
    assert again.pod.name == draining


# --- ReplicationControllers --------------------------------------------------------------------


def test_a_replication_controller_is_planned_as_a_replicaset() -> None:
    assert PLANNERS["ReplicationController"] is PLANNERS["ReplicaSet"]
    result = step(controller(2), [])
    assert [a.reason for a in result.create] == [
        "ReplicationController default/frontend wants 2 replicas"
    ] * 2
    for action in result.create:
        assert re.fullmatch(f"frontend-{SUFFIX}", action.pod.name)
        assert action.pod.labels == (("app", "redis"), ("role", "master"))
    pods = started(result)
    assert step(controller(3), pods).create[0].reason == "scale up: 2 -> 3 replicas"
    changed = step(controller(2, "redis:7"), pods)
    assert changed.empty


def test_a_replicaset_and_a_replication_controller_of_one_name_take_different_pod_names() -> None:
    both = plan([replicaset(3), controller(3)], [], now=NOW)
    assert len(both.create) == 6
    assert len(set(names(both.create))) == 6


# --- status ----------------------------------------------------------------------------------


def test_status_counts_pods_and_says_the_template_does_not_roll_out() -> None:
    manifest = replicaset(3, "node:22")
    template = resolve_template(manifest, configs_of([]))
    old = started(step(replicaset(2, "node:20"), []))
    new = started(step(manifest, old))
    status = replicaset_status(manifest, template.hash, [*old, *new], 3, now=NOW)
    assert (status.desired, status.total, status.updated, status.ready, status.available) == (3, 3, 1, 3, 3)
    assert status.complete
    assert status.step == "complete: 3/3 pods ready (2 on an older template: not replaced)"
    assert status.deployment == "default/frontend"

    waiting = replicaset_status(manifest, template.hash, [*old, running(new[0], ready=False)], 3, now=NOW)
    assert not waiting.complete
    assert waiting.step == "waiting: 2/3 pods available (2 on an older template: not replaced)"
    assert replicaset_status(manifest, template.hash, old, 3, now=NOW).step.startswith(
        "scaling up: 2 -> 3 pods"
    )


# --- invariants ------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    replicas=st.integers(min_value=0, max_value=8),
    states=st.lists(st.sampled_from(["pending", "unready", "ready", "failed", "succeeded"]), max_size=10),
    draining=st.integers(min_value=0, max_value=4),
)
def test_one_pass_reaches_the_replica_count_and_a_second_pass_does_nothing(
    replicas: int, states: list[str], draining: int
) -> None:
    manifest = replicaset(replicas)
    template = resolve_template(manifest, configs_of([]))
    avoid = frozenset(new_pod_name(manifest, template, slot) for slot in range(draining))
    seeds = [new_pod_name(manifest, template, slot) for slot in range(draining, draining + len(states))]
    phases: dict[str, Phase] = {"pending": "Pending", "failed": "Failed", "succeeded": "Succeeded"}
    pods = [
        dataclasses.replace(
            Pod(
                "default", name, FRONTEND, template.hash, template.spec, template.labels, created_at=float(i)
            ),
            node=None if state == "pending" else NodeName("n1"),
            phase=phases.get(state, "Running"),
            ready=state == "ready",
        )
        for i, (name, state) in enumerate(zip(seeds, states, strict=True))
    ]
    result = step(manifest, pods, avoid=avoid)
    created = names(result.create)
    assert len(set(created)) == len(created)
    assert not set(created) & (avoid | {p.name for p in pods})
    stopped = {a.pod.name for a in result.stop}
    assert all(p.name in stopped for p in pods if p.phase in ("Failed", "Succeeded"))
    assert len(result.keep) + len(created) == replicas
    assert all(a.reason for a in (*result.create, *result.stop))
    after = [*result.keep, *started(result)]
    assert step(manifest, after, avoid=avoid | stopped).empty
