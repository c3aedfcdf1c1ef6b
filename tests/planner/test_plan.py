"""The planner turns Deployments and existing pods into create/stop/keep buckets with reasons."""

from __future__ import annotations

import dataclasses

from gitops.model import Manifest, NodeName, Pod
from gitops.planner import plan, resolve_template
from gitops.planner.plan import configs_of
from tests.planner.factories import configmap, deployment, secret


def _with_spec(dep: Manifest, extra: dict[str, object]) -> Manifest:
    body = {**dep.body, "spec": {**dep.body["spec"], **extra}}
    return dataclasses.replace(dep, body=body)


def materialise(result_pods: list[Pod], node: str = "n1") -> list[Pod]:
    """Pretend the pods were scheduled and became ready."""
    return [dataclasses.replace(p, node=NodeName(node), phase="Running", ready=True) for p in result_pods]


def test_a_new_deployment_creates_its_replicas_with_a_reason() -> None:
    result = plan([deployment(replicas=3)], [])
    assert len(result.create) == 3
    assert not result.stop
    assert {a.reason for a in result.create} == {"Deployment default/web wants 3 replicas"}
    names = [a.pod.name for a in result.create]
    assert len(set(names)) == 3
    assert all(n.startswith("web-") for n in names)


def test_planning_twice_is_a_no_op() -> None:
    desired = [deployment(replicas=3)]
    first = plan(desired, [])
    second = plan(desired, [a.pod for a in first.create])
    assert second.empty
    assert len(second.keep) == 3


def test_pod_names_are_deterministic() -> None:
    a = plan([deployment(replicas=2)], [])
    b = plan([deployment(replicas=2)], [])
    assert [x.pod.name for x in a.create] == [x.pod.name for x in b.create]


def test_scale_up_adds_only_the_missing_pods() -> None:
    running = materialise([a.pod for a in plan([deployment(replicas=3)], []).create])
    result = plan([deployment(replicas=5)], running)
    assert len(result.create) == 2
    assert {a.reason for a in result.create} == {"scale up: 3 -> 5 replicas"}
    assert not {a.pod.name for a in result.create} & {p.name for p in running}


def test_scale_down_stops_unready_pods_first() -> None:
    pods = materialise([a.pod for a in plan([deployment(replicas=3)], []).create])
    unready = dataclasses.replace(pods[1], ready=False)
    pods = [pods[0], unready, pods[2]]
    result = plan([deployment(replicas=2)], pods)
    assert [a.pod.name for a in result.stop] == [unready.name]
    assert result.stop[0].reason == "scale down: 3 -> 2 replicas"


def test_recreate_stops_every_old_pod_first_and_then_creates_the_new_ones() -> None:
    recreate = {"strategy": {"type": "Recreate"}}
    pods = materialise([a.pod for a in plan([deployment(image="web:1", **{})], []).create])
    desired = [_with_spec(deployment(image="web:2"), recreate)]
    first = plan(desired, pods)
    assert (len(first.stop), len(first.create)) == (3, 0)
    assert (
        first.stop[0].reason
        == "template changed: image changed: web:1 -> web:2 (Recreate: old pods stop first)"
    )
    second = plan(desired, [])
    assert len(second.create) == 3


def test_a_rolling_update_surges_by_one_for_three_replicas_by_default() -> None:
    pods = materialise([a.pod for a in plan([deployment(image="web:1")], []).create])
    result = plan([deployment(image="web:2")], pods)
    assert (len(result.create), len(result.stop)) == (1, 0)
    assert result.create[0].reason == (
        "template changed: image changed: web:1 -> web:2 (rolling update, surge 1, unavailable 0: new pod)"
    )


def test_an_env_change_names_the_variable_but_not_its_value() -> None:
    pods = materialise([a.pod for a in plan([deployment(env=[{"name": "MODE", "value": "a"}])], []).create])
    result = plan([deployment(env=[{"name": "MODE", "value": "secret-b"}])], pods)
    assert result.create[0].reason.startswith("template changed: env MODE changed (rolling update")
    assert "secret-b" not in result.create[0].reason


def test_a_removed_deployment_stops_its_pods() -> None:
    pods = materialise([a.pod for a in plan([deployment()], []).create])
    result = plan([], pods)
    assert len(result.stop) == 3
    assert result.stop[0].reason == "Deployment default/web was removed from the source"


def test_configmap_and_secret_values_become_env_and_files() -> None:
    desired = [
        configmap("cfg", GREETING="hi", **{"app.conf": "x=1"}),
        secret("token", key="s3cret"),
        deployment(
            env=[
                {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "GREETING"}}},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "token", "key": "key"}}},
            ],
            envFrom=[{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
            volumeMounts=[
                {"name": "conf", "mountPath": "/etc/app"},
                {"name": "tok", "mountPath": "/run/tok"},
            ],
        ),
    ]
    dep = desired[2]
    body = dict(dep.body)
    body["spec"]["template"]["spec"]["volumes"] = [
        {"name": "conf", "configMap": {"name": "cfg", "items": [{"key": "app.conf", "path": "app.conf"}]}},
        {"name": "tok", "secret": {"secretName": "token"}},
    ]
    template = resolve_template(dep, configs_of(desired))
    env = dict(template.spec.main.env)
    assert env["GREETING"] == "hi"
    assert env["TOKEN"] == "s3cret"
    assert env["CFG_GREETING"] == "hi"
    files = {f.path: f.content for f in template.spec.main.files}
    assert files == {"/etc/app/app.conf": b"x=1", "/run/tok/key": b"s3cret"}


def test_a_configmap_change_replaces_the_pods_that_use_it() -> None:
    env = [{"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "GREETING"}}}]
    before = [configmap("cfg", GREETING="hi"), deployment(env=env)]
    pods = materialise([a.pod for a in plan(before, []).create])
    after = [configmap("cfg", GREETING="hello"), deployment(env=env)]
    result = plan(after, pods)
    assert len(result.create) == 1
    assert result.create[0].reason.startswith(
        "template changed: env GREETING changed (uses ConfigMap default/cfg) (rolling update"
    )


def test_an_unrelated_configmap_change_replaces_nothing() -> None:
    before = [configmap("cfg", GREETING="hi"), configmap("other", A="1"), deployment()]
    pods = materialise([a.pod for a in plan(before, []).create])
    after = [configmap("cfg", GREETING="hi"), configmap("other", A="2"), deployment()]
    assert plan(after, pods).empty


def test_resources_are_parsed_and_a_missing_request_defaults_to_the_limit() -> None:
    dep = deployment(resources={"limits": {"cpu": "500m", "memory": "64Mi"}, "requests": {"cpu": "100m"}})
    spec = resolve_template(dep, {}).spec
    assert spec.cpu_request_milli == 100
    assert spec.main.cpu_limit_milli == 500
    assert spec.memory_request_bytes == 64 * 2**20
    assert spec.main.memory_limit_bytes == 64 * 2**20


def test_pod_names_are_unique_by_construction_even_for_thousands_of_replicas() -> None:
    """Two slots whose 5-letter suffixes collide once made a scale-up to 5,000 pods fail the
    whole controller pass (UNIQUE constraint failed: pods.id) more often than not."""
    for replicas in (5_000, 10_000):
        pods: list[Pod] = []
        while len(pods) < replicas:  # at most BURST new pods per pass
            created = [a.pod for a in plan([deployment(replicas=replicas)], pods).create]
            assert created
            pods += created
        names = [p.name for p in pods]
        assert len(names) == replicas
        assert len(set(names)) == replicas


def test_new_pods_skip_the_names_of_pods_still_stopping() -> None:
    """A pod being stopped outside the plan (evicted, or its old self terminating) keeps its
    name until its agent reports it gone: a new pod never takes it, and `avoid` is left as
    it was given."""
    first = [a.pod.name for a in plan([deployment(replicas=3)], []).create]
    avoid = frozenset(first[:2])
    result = plan([deployment(replicas=3)], [], avoid=avoid)
    names = [a.pod.name for a in result.create]
    assert len(names) == 3 and len(set(names)) == 3
    assert not set(names) & avoid
    assert first[2] in names  # the free slot is still the first taken
    assert avoid == frozenset(first[:2])
