"""Probes as Kubernetes has them: grpc beside exec, httpGet and tcpSocket, and exactly one
handler per probe."""

from __future__ import annotations

from .helpers import DEPLOYMENT, errors, validate_one, warnings

WHERE = "Deployment default/web: spec.template.spec.containers[0]"


def with_probes(*lines: str) -> str:
    return DEPLOYMENT.replace(
        "          image: nginx:1.25\n",
        "          image: nginx:1.25\n" + "".join(f"          {line}\n" for line in lines),
    )


def test_a_grpc_probe_loads_without_warnings() -> None:
    result = validate_one(
        with_probes(
            "readinessProbe: {grpc: {port: 9090, service: shop}, timeoutSeconds: 2}",
            "livenessProbe: {grpc: {port: 9090}, periodSeconds: 5}",
            "startupProbe: {grpc: {port: 9090, service: ''}, failureThreshold: 30}",
        )
    )
    assert errors(result) == []
    assert warnings(result) == []


def test_a_grpc_port_must_be_a_number() -> None:
    """Kubernetes takes no port name for a grpc probe."""
    result = validate_one(with_probes("readinessProbe: {grpc: {port: http}}"))
    assert errors(result) == [
        f"apps/web.yaml:16:41: {WHERE}.readinessProbe.grpc.port: expected a port number between 1 "
        'and 65535 (a grpc probe takes no port name), got "http"'
    ]


def test_a_grpc_probe_needs_a_port_in_range_and_knows_only_port_and_service() -> None:
    result = validate_one(
        with_probes(
            "readinessProbe: {grpc: {service: shop}}",
            "livenessProbe: {grpc: {port: 70000}}",
            "startupProbe: {grpc: {port: 9, host: other}}",
        )
    )
    assert errors(result) == [
        f"apps/web.yaml:16:34: {WHERE}.readinessProbe.grpc.port: required field is missing",
        f"apps/web.yaml:17:40: {WHERE}.livenessProbe.grpc.port: expected a port number between 1 and "
        "65535 (a grpc probe takes no port name), got 70000",
    ]
    assert warnings(result) == [
        f"apps/web.yaml:18:42: {WHERE}.startupProbe.grpc.host: "
        "field is not acted on by gitops and is ignored (warning)"
    ]


def test_two_handlers_in_one_probe_is_an_error_at_the_probe() -> None:
    result = validate_one(with_probes("livenessProbe: {tcpSocket: {port: 80}, grpc: {port: 9}}"))
    assert errors(result) == [
        f"apps/web.yaml:16:26: {WHERE}.livenessProbe: expected exactly one handler "
        '(exec, httpGet, tcpSocket or grpc), got "tcpSocket", "grpc"'
    ]


def test_a_probe_without_a_handler_is_an_error_at_the_probe() -> None:
    result = validate_one(with_probes("readinessProbe: {periodSeconds: 5}"))
    assert errors(result) == [
        f"apps/web.yaml:16:27: {WHERE}.readinessProbe: expected exactly one handler "
        "(exec, httpGet, tcpSocket or grpc), got none"
    ]


def test_init_container_probes_are_checked_too() -> None:
    text = with_probes().replace(
        "      containers:\n",
        "      initContainers:\n"
        "        - name: proxy\n"
        "          image: envoy:1\n"
        "          restartPolicy: Always\n"
        "          startupProbe: {exec: {command: [x]}, grpc: {port: 9}}\n"
        "      containers:\n",
    )
    assert errors(validate_one(text)) == [
        "apps/web.yaml:17:25: Deployment default/web: spec.template.spec.initContainers[0].startupProbe: "
        'expected exactly one handler (exec, httpGet, tcpSocket or grpc), got "exec", "grpc"'
    ]
