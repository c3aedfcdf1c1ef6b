"""A template hash covers what a pod runs, and upgrading gitops does not change the hash of
a template that uses nothing new: its pods are not replaced by an upgrade."""

from __future__ import annotations

from typing import Any

from gitops.model import Manifest, ObjectKey, SourceLocation
from gitops.planner.podspec import resolve_template

CONFIG = Manifest(
    ObjectKey("ConfigMap", "default", "cfg"),
    "v1",
    {"data": {"a": "1", "f.txt": "hello"}},
    SourceLocation("c.yaml"),
)
SIMPLE = {"containers": [{"name": "web", "image": "busybox:1"}]}
RICH = {
    "containers": [
        {
            "name": "app",
            "image": "nginx:1.25",
            "command": ["sh"],
            "args": ["-c", "x"],
            "env": [
                {"name": "A", "value": "b"},
                {"name": "C", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "a"}}},
            ],
            "ports": [
                {"containerPort": 80, "name": "http"},
                {"containerPort": 53, "protocol": "UDP", "hostPort": 5353},
            ],
            "resources": {
                "requests": {"cpu": "100m", "memory": "64Mi"},
                "limits": {"cpu": "1", "memory": "128Mi"},
            },
            "readinessProbe": {"httpGet": {"path": "/", "port": "http"}},
            "livenessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 5},
            "volumeMounts": [{"name": "c", "mountPath": "/etc/c"}],
            "workingDir": "/w",
            "imagePullPolicy": "Always",
        }
    ],
    "volumes": [{"name": "c", "configMap": {"name": "cfg"}}],
    "nodeSelector": {"disk": "ssd"},
    "tolerations": [{"key": "k", "operator": "Exists"}],
    "terminationGracePeriodSeconds": 5,
    "hostname": "h",
    "subdomain": "s",
    "dnsPolicy": "Default",
    "enableServiceLinks": False,
}


def deployment(pod: dict[str, Any]) -> Manifest:
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": pod},
        },
    }
    return Manifest(ObjectKey("Deployment", "default", "web"), "apps/v1", body, SourceLocation("a.yaml"))


def test_templates_of_one_container_hash_as_they_did_before_pods_had_several() -> None:
    # Computed by release 0.2, whose pods had exactly one container.
    assert resolve_template(deployment(SIMPLE), {CONFIG.key: CONFIG}).hash == "2f4701385a"
    assert resolve_template(deployment(RICH), {CONFIG.key: CONFIG}).hash == "8ac42c81b3"


def test_what_is_new_changes_the_hash() -> None:
    base = resolve_template(deployment(SIMPLE), {}).hash
    sidecar = {"containers": [*SIMPLE["containers"], {"name": "log", "image": "busybox:1"}]}
    init = {**SIMPLE, "initContainers": [{"name": "setup", "image": "busybox:1"}]}
    user = {"containers": [{**SIMPLE["containers"][0], "securityContext": {"runAsUser": 1000}}]}
    hashes = {resolve_template(deployment(p), {}).hash for p in (sidecar, init, user)}
    assert base not in hashes and len(hashes) == 3
