"""One endpoint that cannot be rendered (written by an older release, or by a broken agent
before requests were validated) costs only itself: every node programs every other Service
and says what it skipped (0.1 raised on it and programmed nothing, on every node). With
the iptables proxy and with the nftables one."""

from __future__ import annotations

import dataclasses
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from gitops.agents.agent import Agent, AgentConfig
from gitops.agents.iptables import IptablesProxy
from gitops.agents.nftables import NftablesProxy
from gitops.agents.runtime import ContainerInfo, MountSpec
from gitops.controller import reconcile_once
from gitops.model import Manifest, NodeName, Pod, Revision, content_hash
from gitops.server import ControlPlane
from gitops.store import Store, serials
from gitops.store.tables import NodeRow
from tests.agents.fakes import MemoryRuntime
from tests.agents.test_iptables_real import require_real_iptables
from tests.agents.test_iptables_real import save as iptables_save
from tests.agents.test_nftables_real import require_nft
from tests.planner.factories import deployment, service
from tests.servers import free_port

CIDR = "10.250.11.0/24"


class PublishingRuntime(MemoryRuntime):
    """Containers publish their port on the host, as Docker does for a pod's declared ports."""

    def run(
        self,
        node: NodeName,
        pod: Pod,
        mounts: Sequence[MountSpec],
        restart: int = 0,
        **options: Any,
    ) -> ContainerInfo:
        info = super().run(node, pod, mounts, restart, **options)
        info = dataclasses.replace(info, host_ports=((8080, "TCP", 32000 + len(self.containers)),))
        self.containers[info.id] = (node, info)
        return info


def pinned(name: str, node: str) -> Manifest:
    """A one-replica Deployment whose pod runs on `node` (labelled at=NODE)."""
    written = deployment(name, replicas=1, ports=[{"containerPort": 8080}])
    spec = written.body["spec"]
    pod = {**spec["template"]["spec"], "nodeSelector": {"at": node}}
    body = {**written.body, "spec": {**spec, "template": {**spec["template"], "spec": pod}}}
    return dataclasses.replace(written, body=body, hash=content_hash(body))


def programmed(proxy: IptablesProxy | NftablesProxy | None) -> int:
    """How many Service ports with backends `proxy` has in the kernel."""
    if isinstance(proxy, IptablesProxy):
        return sum("-SVC-" in c for c in proxy.chains())
    assert proxy is not None
    listing = subprocess.run(
        ["nft", "list", "map", "ip", proxy.table, "service-ips"], capture_output=True, text=True, check=True
    ).stdout
    return listing.count(": goto ")


def refused(proxy: IptablesProxy | NftablesProxy, service: str) -> bool:
    """Whether `proxy` refuses connections to `service` for want of endpoints."""
    if isinstance(proxy, IptablesProxy):
        return f"{service} has no endpoints" in iptables_save()
    listing = subprocess.run(
        ["nft", "list", "map", "ip", proxy.table, "no-endpoint-services"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return f'comment "{service}" : goto reject-chain' in listing


@pytest.fixture(params=["iptables", "nftables"])
def agents(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Store, dict[str, Agent], str]]:
    require_real_iptables()
    if request.param == "nftables":
        require_nft()
    store = Store(f"sqlite:///{tmp_path / 's.db'}", service_cidr=CIDR)
    store.apply_revision(
        Revision("git:x", "1" * 40),
        [
            pinned("one", "n1"),
            pinned("two", "n2"),
            service("one", {"app": "one"}),
            service("two", {"app": "two"}),
        ],
        [],
        1.0,
    )
    plane = ControlPlane(store, [], port=free_port(), controller_interval=3600)
    plane.start()
    made: dict[str, Agent] = {}
    try:
        for i, name in enumerate(("n1", "n2"), 1):
            config = AgentConfig(
                server=plane.url,
                node=NodeName(name),
                join_token=plane.join_token,
                state_dir=tmp_path / name,
                address=f"192.0.2.{i}",
                capacity=(4000, 2**33),
                labels=(("at", name),),
                chain_prefix="GB" + uuid.uuid4().hex[:4].upper(),
                proxy_mode=request.param,
                secret_dir=Path("/dev/shm/gitops-test") / tmp_path.name / name,
            )
            made[name] = Agent(config, PublishingRuntime())
            made[name].register()
        yield store, made, plane.url
    finally:
        for agent in made.values():
            IptablesProxy(CIDR, prefix=agent.config.chain_prefix).cleanup()
            if request.param == "nftables":
                NftablesProxy(CIDR, prefix=agent.config.chain_prefix).cleanup()
        plane.stop()


def test_one_unrenderable_endpoint_leaves_every_other_service_working_on_every_node(
    agents: tuple[Store, dict[str, Agent], str],
) -> None:
    store, nodes, plane_url = agents
    reconcile_once(store, now=store.nodes()[0].heartbeat_at)
    for _ in range(2):
        for agent in nodes.values():
            agent.tick()
    assert all(p.ready for p in store.pods())
    time.sleep(0.6)
    for agent in nodes.values():
        agent.tick()
    assert all(programmed(a._proxy) == 2 for a in nodes.values() if a._proxy)
    # A node address no request can set any more, as a 0.1 database may hold it: n2 reaches
    # service one's pod through it. Written as the store's writers write node rows (moving
    # their serial: `gitops.store.serials`), so that readers see it at once.
    with store.session() as s:
        s.execute(update(NodeRow).where(NodeRow.name == "n1").values(address="not-an-address"))
        serials.changed(s, "nodes")
    time.sleep(0.6)  # agents share one computation of the endpoints, refreshed every 0.5 s
    for agent in nodes.values():
        agent.tick()
        agent.tick()  # the second heartbeat carries what the first sync skipped

    n1, n2 = nodes["n1"]._proxy, nodes["n2"]._proxy
    assert n1 is not None and n2 is not None
    assert isinstance(n1, NftablesProxy if nodes["n1"].config.proxy_mode == "nftables" else IptablesProxy)
    assert programmed(n1) == 2 and not n1.skipped  # one is local to n1
    assert programmed(n2) == 1  # two works; one's only backend is skipped
    assert len(n2.skipped) == 1 and "default/one:http" in n2.skipped[0] and "not-an-address" in n2.skipped[0]
    assert refused(n2, "default/one:http")
    events = [e for e in store.events(limit=500) if e.reason == "ProxyRulesSkipped"]
    assert [e.object for e in events] == ["node n2"]
    assert "not-an-address" in events[0].message
    metrics = httpx.get(f"{plane_url}/metrics").text
    assert 'gitops_proxy_rules_skipped{node="n2"} 1.0' in metrics
    assert 'gitops_proxy_rules_skipped{node="n1"} 0.0' in metrics
