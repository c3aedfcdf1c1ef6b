"""A hostPath volume resolves to a shared `Volume` of the pod (its path normalised) that
containers mount; templates without one hash as they did before hostPath was acted on."""

from __future__ import annotations

from typing import Any

from gitops.model import Volume, VolumeMount
from gitops.planner.podspec import hash_input, resolve_template
from tests.planner.test_template_hash import deployment

FLUENTD: dict[str, Any] = {
    "containers": [
        {
            "name": "fluentd",
            "image": "fluent/fluentd:v1.16",
            "volumeMounts": [
                {"name": "varlog", "mountPath": "/var/log"},
                {"name": "containers", "mountPath": "/var/lib/docker/containers", "readOnly": True},
                {"name": "cache", "mountPath": "/cache"},
            ],
        }
    ],
    "volumes": [
        {"name": "varlog", "hostPath": {"path": "/var/log/"}},
        {"name": "containers", "hostPath": {"path": "/var/lib/docker//containers", "type": "Directory"}},
        {"name": "cache", "emptyDir": {}},
    ],
}


def test_host_path_volumes_are_shared_volumes_with_their_normalised_path_and_type() -> None:
    spec = resolve_template(deployment(FLUENTD), {}).spec
    assert spec.volumes == (
        Volume("varlog", host_path="/var/log"),
        Volume("containers", host_path="/var/lib/docker/containers", host_path_type="Directory"),
        Volume("cache"),
    )
    assert spec.main.mounts == (
        VolumeMount("varlog", "/var/log"),
        VolumeMount("containers", "/var/lib/docker/containers", read_only=True),
        VolumeMount("cache", "/cache"),
    )


def test_volumes_without_a_host_path_hash_without_its_fields() -> None:
    template = resolve_template(deployment(FLUENTD), {})
    hashed = hash_input(template.spec, {}, {})
    assert hashed["volumes"][2] == {"name": "cache", "medium": "", "size_limit_bytes": 0}
    assert hashed["volumes"][1]["host_path_type"] == "Directory"


def test_changing_a_host_path_or_its_type_changes_the_hash() -> None:
    base = resolve_template(deployment(FLUENTD), {}).hash
    volumes = FLUENTD["volumes"]
    other_path = {**FLUENTD, "volumes": [{"name": "varlog", "hostPath": {"path": "/srv/log"}}, *volumes[1:]]}
    other_type = {
        **FLUENTD,
        "volumes": [{"name": "varlog", "hostPath": {"path": "/var/log", "type": "Directory"}}, *volumes[1:]],
    }
    hashes = {resolve_template(deployment(p), {}).hash for p in (other_path, other_type)}
    assert base not in hashes and len(hashes) == 2
