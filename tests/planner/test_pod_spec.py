"""A pod template resolves into the containers a node runs: init containers and sidecars in
order, shared volumes and claims, downward API variables, merged security settings, and
Kubernetes' effective requests."""

from __future__ import annotations

from gitops.model import SecurityContext, Volume, VolumeMount
from gitops.planner.podspec import resolve_template
from tests.planner.test_template_hash import deployment

POD = {
    "securityContext": {
        "runAsUser": 1000,
        "fsGroup": 2000,
        "runAsNonRoot": True,
        "sysctls": [{"name": "net.core.somaxconn", "value": "1024"}],
    },
    "initContainers": [
        {"name": "setup", "image": "busybox:1", "resources": {"requests": {"cpu": "2", "memory": "1Gi"}}},
        {
            "name": "proxy",
            "image": "envoy:1",
            "restartPolicy": "Always",
            "resources": {"requests": {"cpu": "100m"}},
        },
    ],
    "containers": [
        {
            "name": "app",
            "image": "app:1",
            "securityContext": {
                "runAsUser": 0,
                "capabilities": {"drop": ["all"]},
                "allowPrivilegeEscalation": False,
            },
            "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
            "env": [
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {
                    "name": "MEM",
                    "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
                },
                {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu"}}},
            ],
            "volumeMounts": [
                {"name": "cache", "mountPath": "/cache", "subPath": "a"},
                {"name": "data", "mountPath": "/data"},
            ],
        },
        {"name": "metrics", "image": "m:1", "resources": {"requests": {"cpu": "100m"}}},
    ],
    "volumes": [
        {"name": "cache", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
        {"name": "data", "persistentVolumeClaim": {"claimName": "db", "readOnly": True}},
    ],
}


def test_init_containers_sidecars_and_app_containers_keep_their_order_and_kind() -> None:
    spec = resolve_template(deployment(POD), {}).spec
    assert [c.name for c in spec.init_containers] == ["setup", "proxy"]
    assert [c.name for c in spec.sidecars] == ["proxy"]
    assert [c.name for c in spec.containers] == ["app", "metrics"]
    assert spec.main.name == "app"


def test_the_effective_request_is_the_larger_of_the_running_set_and_each_init_step() -> None:
    spec = resolve_template(deployment(POD), {}).spec
    # app 500m + metrics 100m + sidecar 100m = 700m, but the setup step alone wants 2 cores.
    assert spec.cpu_request_milli == 2000
    assert spec.memory_request_bytes == 1024 * 2**20
    assert spec.qos_class == "Burstable"


def test_volumes_mounts_and_claims_are_resolved_with_the_claim_s_namespace() -> None:
    spec = resolve_template(deployment(POD), {}).spec
    assert spec.volumes == (Volume("cache", "Memory", 64 * 2**20), Volume("data", claim="default/db"))
    assert spec.claims == ("default/db",)
    assert spec.main.mounts == (
        VolumeMount("cache", "/cache", sub_path="a"),
        VolumeMount("data", "/data", read_only=True),
    )


def test_the_downward_api_splits_what_the_node_knows_from_what_the_template_does() -> None:
    app = resolve_template(deployment(POD), {}).spec.main
    assert app.field_env == (("IP", "status.podIP"),)
    # Resources are known from the template: limits.memory in Mi, requests.cpu in whole cores (rounded up).
    assert dict(app.env) == {"MEM": "512", "CPU": "1"}


def test_the_container_s_security_settings_override_the_pod_s() -> None:
    app, metrics = resolve_template(deployment(POD), {}).spec.containers
    assert app.security == SecurityContext(
        run_as_user=0,
        run_as_non_root=True,
        supplemental_groups=(2000,),
        capabilities_drop=("ALL",),
        no_new_privileges=True,
        sysctls=(("net.core.somaxconn", "1024"),),
    )
    assert metrics.security.run_as_user == 1000
