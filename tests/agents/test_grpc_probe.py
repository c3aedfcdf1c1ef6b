"""gRPC probes ask a real gRPC health server at the pod's address (grpc.health.v1.Health/Check):
SERVING is a success; any other status, an error or no answer in time is a failure that says
which."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gitops.agents.probes import Prober, real_handler
from gitops.agents.runtime import ContainerInfo
from gitops.model import PodId, Probe
from tests.agents.fakes import MemoryRuntime

POD = PodId("default/a")
HOST = "127.0.0.1"


def container(pod_ip: str = HOST) -> ContainerInfo:
    return ContainerInfo("c1", POD, "h", True, None, pod_ip, (), 0.0, 0.0)


def grpc_probe(port: int, service: str = "", timeout: int = 1) -> Probe:
    return Probe("grpc", port=port, service=service, timeout_seconds=timeout)


def check(probe: Probe, pod_ip: str = HOST) -> tuple[bool, str]:
    return real_handler(MemoryRuntime())(container(pod_ip), probe)  # type: ignore[arg-type]


@pytest.fixture
def health_server() -> Iterator[tuple[int, health.HealthServicer]]:
    """A gRPC server on 127.0.0.1 with the standard health service; "" and "shop" SERVING."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"{HOST}:0")
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    servicer.set("shop", health_pb2.HealthCheckResponse.SERVING)
    server.start()
    yield port, servicer
    server.stop(None)


class _Stalling(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """Answers SERVING only once released: a server that does not answer in time."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def Check(self, request: Any, context: Any) -> Any:
        self.release.wait(10)
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def test_serving_is_a_success(health_server: tuple[int, health.HealthServicer]) -> None:
    port, _ = health_server
    assert check(grpc_probe(port)) == (True, f"{HOST}:{port}: SERVING")
    assert check(grpc_probe(port, "shop"))[0]


def test_not_serving_fails_and_says_the_status(health_server: tuple[int, health.HealthServicer]) -> None:
    port, servicer = health_server
    servicer.set("shop", health_pb2.HealthCheckResponse.NOT_SERVING)
    ok, message = check(grpc_probe(port, "shop"))
    assert not ok
    assert message == f"{HOST}:{port}: service unhealthy (responded with NOT_SERVING)"
    assert check(grpc_probe(port))[0], "the server as a whole still serves"


def test_an_unknown_service_fails_and_names_it(health_server: tuple[int, health.HealthServicer]) -> None:
    port, _ = health_server
    ok, message = check(grpc_probe(port, "nope"))
    assert not ok
    assert message == f"{HOST}:{port}: the server does not know the service 'nope'"


def test_a_server_without_the_health_service_fails_and_says_so() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port(f"{HOST}:0")
    server.start()
    try:
        ok, message = check(grpc_probe(port))
    finally:
        server.stop(None)
    assert not ok
    assert "does not implement the gRPC health checking protocol" in message


def test_nothing_listening_is_a_failure() -> None:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    ok, message = check(grpc_probe(port))
    assert not ok
    assert message.startswith(f"{HOST}:{port}: UNAVAILABLE: "), message


def test_the_probe_timeout_is_honoured() -> None:
    stalling = _Stalling()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(stalling, server)
    port = server.add_insecure_port(f"{HOST}:0")
    server.start()
    try:
        started = time.monotonic()
        ok, message = check(grpc_probe(port, timeout=1))
        elapsed = time.monotonic() - started
    finally:
        stalling.release.set()
        server.stop(None)
    assert not ok
    assert message == f"{HOST}:{port}: timeout: no answer within 1s"
    assert 0.9 <= elapsed < 3, elapsed


def test_a_container_without_an_address_is_not_probed() -> None:
    assert check(grpc_probe(50051), pod_ip="") == (False, "the container has no address to probe yet")


def test_the_prober_makes_a_serving_pod_ready_and_says_why_a_failing_one_is_not(
    health_server: tuple[int, health.HealthServicer],
) -> None:
    port, servicer = health_server
    prober = Prober(real_handler(MemoryRuntime()), clock=lambda: 100.0)  # type: ignore[arg-type]
    readiness = Probe("grpc", port=port, service="shop", failure_threshold=1)
    [(_, verdict)] = prober.check([(POD, container(), None, None, readiness)]).items()
    assert verdict.ready
    servicer.set("shop", health_pb2.HealthCheckResponse.NOT_SERVING)
    prober.clock = lambda: 200.0
    [(_, verdict)] = prober.check([(POD, container(), None, None, readiness)]).items()
    assert not verdict.ready
    assert verdict.reason == (
        f"Readiness probe failed (grpc :{port}/shop): {HOST}:{port}: service unhealthy "
        "(responded with NOT_SERVING)"
    )


def test_the_agents_proxy_settings_are_not_used(
    health_server: tuple[int, health.HealthServicer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like HTTP probes, a grpc probe goes straight to the pod, never through a proxy."""
    for name in ("grpc_proxy", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:1")
    for name in ("no_proxy", "NO_PROXY", "no_grpc_proxy"):
        monkeypatch.delenv(name, raising=False)
    port, _ = health_server
    assert check(grpc_probe(port))[0]
