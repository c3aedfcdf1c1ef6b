"""An agent given a pod subnet runs its pods on a bridge of it, with cluster DNS and service variables."""

from __future__ import annotations

from pathlib import Path

import httpx

from gitops.agents.agent import Agent, AgentConfig, service_rules
from gitops.agents.iptables import Backend
from gitops.agents.network import pod_network_name
from gitops.agents.runtime import RuntimeFailure
from gitops.codec import encode
from gitops.model import (
    Endpoint,
    NodeName,
    ObjectKey,
    Pod,
    PodId,
    PodName,
    ServiceEndpoints,
    ServicePort,
)
from tests.agents.fakes import MemoryRuntime
from tests.specs import pod_spec

NODE = NodeName("n1")
WEB = ServiceEndpoints("default", "web", "10.243.0.9", (ServicePort(80, 8080, name="http"),))


def test_pods_run_on_the_nodes_pod_network_with_resolv_conf_and_service_variables(tmp_path: Path) -> None:
    pod = Pod(
        "default",
        PodName("a"),
        ObjectKey("Deployment", "default", "a"),
        "h",
        pod_spec(image="web:1", env=(("WEB_SERVICE_HOST", "mine"),)),
        node=NODE,
    )

    def server(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/register"):
            return httpx.Response(
                200,
                json={
                    "token": "t",
                    "service_cidr": "10.243.0.0/16",
                    "cluster_cidr": "10.244.0.0/16",
                    "pod_cidr": "10.244.5.0/24",
                },
            )
        return httpx.Response(
            200,
            json={
                "pods": [encode(pod)],
                "services": [encode(WEB)],
                "service_cidr": "10.243.0.0/16",
                "cluster_cidr": "10.244.0.0/16",
                "routes": [],
            },
        )

    rt = MemoryRuntime()
    config = AgentConfig(
        server="http://gitops.invalid",
        node=NODE,
        join_token="t",
        state_dir=tmp_path,
        address="192.0.2.7",
        iptables="/bin/false",
    )
    agent = Agent(config, rt, clock=lambda: rt.now)
    agent._http = httpx.Client(transport=httpx.MockTransport(server), base_url="http://gitops.invalid")
    agent.tick()
    name = pod_network_name(NODE)
    assert rt.networks == {name: "10.244.5.0/24"}
    assert rt.networks_of[PodId("default/a")] == name
    env = dict(rt.env[PodId("default/a")])
    assert env["WEB_SERVICE_PORT_HTTP"] == "80"
    assert env["WEB_SERVICE_HOST"] == "mine"  # the pod's own variable wins
    (resolv,) = [host for host, inside in rt.mounts[PodId("default/a")] if inside == "/etc/resolv.conf"]
    text = Path(resolv).read_text()
    assert text.startswith(
        "nameserver 10.244.5.1\nsearch default.svc.cluster.local svc.cluster.local cluster.local"
    )
    assert "options ndots:5" in text


class NoNetworkRuntime(MemoryRuntime):
    def ensure_network(self, name: str, subnet: str, gateway: str, bridge: str) -> str:
        raise RuntimeFailure(f"network {name}: Pool overlaps with other one on this address space")


def test_a_pod_network_that_cannot_be_made_is_reported_and_pods_still_run(tmp_path: Path) -> None:
    pod = Pod(
        "default",
        PodName("a"),
        ObjectKey("Deployment", "default", "a"),
        "h",
        pod_spec(image="web:1"),
        node=NODE,
    )

    def server(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/register"):
            return httpx.Response(
                200, json={"token": "t", "service_cidr": "10.243.0.0/16", "pod_cidr": "10.244.5.0/24"}
            )
        reply = {"pods": [encode(pod)], "services": [], "service_cidr": "10.243.0.0/16", "routes": []}
        return httpx.Response(200, json=reply)

    rt = NoNetworkRuntime()
    config = AgentConfig(
        server="http://x.invalid", node=NODE, join_token="t", state_dir=tmp_path, iptables="/nonexistent"
    )
    agent = Agent(config, rt, clock=lambda: rt.now)
    agent._http = httpx.Client(transport=httpx.MockTransport(server), base_url="http://x.invalid")
    agent.tick()
    assert any("pod network 10.244.5.0/24" in p and "Pool overlaps" in p for p in agent._proxy_problems)
    assert rt.networks_of[PodId("default/a")] == ""  # on the engine's default network, ports published


def test_service_backends_are_pod_addresses_on_every_node_in_the_pod_range() -> None:
    port = ServicePort(80, 8080)
    eps = (
        Endpoint(PodId("default/a"), NODE, "10.244.5.3", 8080, "192.0.2.7", 0),
        Endpoint(PodId("default/b"), NodeName("n2"), "10.244.6.3", 8080, "192.0.2.8", 0),
        Endpoint(PodId("default/c"), NodeName("n3"), "172.17.0.4", 8080, "192.0.2.9", 31000),  # an old node
    )
    svc = ServiceEndpoints("default", "web", "10.243.0.9", (port,), ((port, eps),))
    (rule,) = service_rules([svc], NODE, "10.244.0.0/16")
    assert rule.backends == (
        Backend("10.244.5.3", 8080, local=True),
        Backend("10.244.6.3", 8080),
        Backend("192.0.2.9", 31000),
    )
    headless = ServiceEndpoints("default", "peers", "", (port,), ((port, eps),), headless=True)
    assert service_rules([headless], NODE, "10.244.0.0/16") == []


class _CountingNetwork:
    """Records each sync of the pod network (a real one runs several processes)."""

    def __init__(self) -> None:
        self.syncs = 0
        self.problems: list[str] = []

    def sync(self, *args: object, **kwargs: object) -> None:
        self.syncs += 1


class _BridgedRuntime(MemoryRuntime):
    def ensure_network(self, name: str, subnet: str, gateway: str, bridge: str) -> str:
        super().ensure_network(name, subnet, gateway, bridge)
        return bridge


class _Zone:
    skipped: tuple[str, ...] = ()


class _Dns:
    def update(self, services: object) -> _Zone:
        return _Zone()


def test_an_unchanged_pod_network_is_synced_again_only_after_a_start_or_every_ten_seconds(
    tmp_path: Path,
) -> None:
    from gitops.agents.network import Route

    rt = _BridgedRuntime()
    config = AgentConfig(
        iptables="/nonexistent/iptables",
        server="http://127.0.0.1:9",
        node=NODE,
        join_token="t",
        state_dir=tmp_path,
    )
    agent = Agent(config, rt, clock=lambda: rt.now)
    net = _CountingNetwork()
    agent._net, agent._dns, agent._pod_cidr, agent._cluster_cidr = (
        net,
        _Dns(),
        "10.244.1.0/24",
        "10.244.0.0/16",
    )  # type: ignore[assignment]
    routes = [Route("10.244.2.0/24", "192.0.2.12")]
    agent._pod_network([], routes)
    assert net.syncs == 1
    for _ in range(5):
        rt.now += 1
        agent._pod_network([], routes)
    assert net.syncs == 1  # nothing changed: no process run
    agent._pod_network([], [*routes, Route("10.244.3.0/24", "192.0.2.13")])
    assert net.syncs == 2  # a node joined
    started = Pod(
        "default", PodName("a"), ObjectKey("Deployment", "default", "a"), "h", pod_spec(), node=NODE
    )
    agent.converge([started], [])  # a container started: its bridge port wants hairpin
    agent._pod_network([], [*routes, Route("10.244.3.0/24", "192.0.2.13")])
    assert net.syncs == 3
    rt.now += 10
    agent._pod_network([], [*routes, Route("10.244.3.0/24", "192.0.2.13")])
    assert net.syncs == 4  # the periodic recheck repairs what someone changed
