"""A pod template's probes are resolved to `Probe` values, grpc among them, and a probe field
added after release 0.1 (`service`) does not change the hash of templates that leave it unset."""

from __future__ import annotations

from typing import Any

from gitops.model import Probe
from gitops.planner.podspec import hash_input, resolve_template

from .factories import deployment

# The fields a probe had when template hashes were first computed.
RELEASE_PROBE_FIELDS = {
    "handler",
    "command",
    "port",
    "path",
    "host",
    "scheme",
    "headers",
    "initial_delay_seconds",
    "period_seconds",
    "timeout_seconds",
    "success_threshold",
    "failure_threshold",
}


def test_a_grpc_probe_is_resolved_with_its_port_service_and_timing() -> None:
    template = resolve_template(
        deployment(
            readinessProbe={"grpc": {"port": 9090, "service": "shop"}, "timeoutSeconds": 2},
            livenessProbe={"grpc": {"port": 9090}, "periodSeconds": 5, "failureThreshold": 1},
        ),
        {},
    )
    main = template.spec.main
    assert main.readiness_probe == Probe("grpc", port=9090, service="shop", timeout_seconds=2)
    assert main.liveness_probe == Probe("grpc", port=9090, period_seconds=5, failure_threshold=1)
    assert main.readiness_probe.describe() == "grpc :9090/shop"
    assert main.liveness_probe.describe() == "grpc :9090"


def test_probes_without_a_service_hash_as_they_did_before_grpc() -> None:
    template = resolve_template(
        deployment(
            readinessProbe={"httpGet": {"path": "/", "port": 80}},
            livenessProbe={"exec": {"command": ["true"]}},
            startupProbe={"tcpSocket": {"port": 80}},
        ),
        {},
    )
    hashed: dict[str, Any] = hash_input(template.spec, {}, {})
    for kind in ("readiness_probe", "liveness_probe", "startup_probe"):
        assert set(hashed[kind]) == RELEASE_PROBE_FIELDS, kind


def test_a_grpc_probes_service_is_part_of_the_hash() -> None:
    def hash_for(grpc: dict[str, Any]) -> str:
        return resolve_template(deployment(readinessProbe={"grpc": grpc}), {}).hash

    assert len({hash_for({"port": 9090}), hash_for({"port": 9090, "service": "shop"})}) == 2
    assert hash_for({"port": 9090}) == hash_for({"port": 9090, "service": ""})
