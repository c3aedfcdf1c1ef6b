"""Pod ports on a real Docker engine: published on the node's address only, never on every
interface; a declared hostPort at exactly that port."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from gitops.agents.runtime import DockerRuntime
from gitops.model import ContainerPort, NodeName, ObjectKey, Pod, PodName
from tests.conftest import docker_available, require
from tests.e2e.cluster import IMAGE, build_image
from tests.servers import free_port
from tests.specs import pod_spec

pytestmark = pytest.mark.docker


@pytest.fixture
def runtime() -> Iterator[tuple[DockerRuntime, NodeName]]:
    require(docker_available(), "a running Docker engine")
    build_image()
    node = NodeName("publish-" + uuid.uuid4().hex[:6])
    runtime = DockerRuntime()
    try:
        yield runtime, node
    finally:
        for c in runtime.list(node):
            runtime.remove(c.id, 0)


def test_pod_ports_are_published_on_the_node_address_and_a_host_port_as_declared(
    runtime: tuple[DockerRuntime, NodeName],
) -> None:
    docker, node = runtime
    host_port = free_port()
    spec = pod_spec(
        image=IMAGE,
        command=("sleep", "30"),
        ports=(ContainerPort(8080), ContainerPort(53, "UDP", "dns", host_port)),
    )
    pod = Pod("default", PodName("web-1"), ObjectKey("Deployment", "default", "web"), "h", spec, node=node)
    info = docker.run(node, pod, [], address="127.0.0.1")

    bindings = docker.client.api.inspect_container(info.id)["HostConfig"]["PortBindings"]
    assert {key: [b["HostIp"] for b in found] for key, found in bindings.items()} == {
        "8080/tcp": ["127.0.0.1"],
        "53/udp": ["127.0.0.1"],
    }
    assert bindings["53/udp"][0]["HostPort"] == str(host_port)
    published = {(c, proto): h for c, proto, h in info.host_ports}
    assert published[(53, "UDP")] == host_port
    assert published[(8080, "TCP")] > 0
