"""Two real nodes: this host and a network namespace with its own dockerd and agent.

A Service's VIP reaches pods on both nodes from either node: pods on the same node by
their container address, pods on the other node through that node's published host port.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gitops.model import NodeName
from gitops.server import ControlPlane
from gitops.store import Store
from gitops.sync.sources import GitSource
from tests.conftest import docker_available, iptables_available, require, wait_for
from tests.e2e.cluster import (
    IMAGE,
    ROOT,
    agent_process,
    build_image,
    git,
    http_get,
    remove_pod_networks,
    web_manifests,
)
from tests.e2e.netns import NetnsNode
from tests.servers import free_port

pytestmark = pytest.mark.docker

PROBE = """
import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
seen = set()
for _ in range(int(sys.argv[2])):
    seen.add(opener.open(f"http://{sys.argv[1]}/", timeout=3).read().decode().strip())
print("\\n".join(sorted(seen)))
"""


class TwoNodes:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.netns = NetnsNode(7, tmp / "n7")
        self.prefix = "GT" + uuid.uuid4().hex[:4].upper()
        self.host_node = "host-" + uuid.uuid4().hex[:4]
        self.agents: list[subprocess.Popen[bytes]] = []
        self.plane: ControlPlane | None = None

    def start(self) -> None:
        self.netns.start()
        subprocess.run(
            [str(ROOT / "scripts" / "busybox-image"), IMAGE, self.netns.docker_host],
            check=True,
            capture_output=True,
        )
        remote = self.tmp / "remote.git"
        self.work = self.tmp / "work"
        git(self.tmp, "init", "--bare", "-b", "main", str(remote))
        git(self.tmp, "init", "-b", "main", str(self.work))
        self.remote = remote
        (self.work / "README.md").write_text("manifests\n")
        self.commit("empty cluster")
        store = Store(f"sqlite:///{self.tmp / 'gitops.db'}", service_cidr="10.250.1.0/24")
        source = GitSource(str(remote), self.tmp / "cache", branch="main")
        # Listen on the veth's host side: reachable from this host and from the namespace.
        self.plane = ControlPlane(
            store,
            [source],
            host=self.netns.host_address,
            port=free_port(),
            poll_interval=0.5,
            controller_interval=0.5,
        )
        self.plane.start()
        self._agent([], self.host_node, ["--address", self.netns.host_address])
        self._agent(
            self.netns.nsenter,
            self.netns.name,
            ["--docker", self.netns.docker_host, "--address", self.netns.address],
        )

    def commit(self, message: str) -> None:
        git(self.work, "add", "-A")
        git(self.work, "commit", "-m", message)
        git(self.work, "push", str(self.remote), "main")

    def _agent(self, prefix: list[str], node: str, extra: list[str]) -> None:
        assert self.plane is not None
        self.agents.append(
            agent_process(
                self.tmp / f"agent-{node}.log",
                self.plane.url,
                node,
                "--chain-prefix",
                self.prefix,
                "--state-dir",
                str(self.tmp / "state"),
                *extra,
                prefix=prefix,
                join_token=self.plane.join_token,
            )
        )

    def stop(self) -> None:
        for a in self.agents:
            a.terminate()
            a.wait(timeout=10)
        if self.plane is not None:
            self.plane.stop()
        from gitops.agents.iptables import IptablesProxy
        from gitops.agents.nftables import NftablesProxy
        from gitops.agents.runtime import DockerRuntime

        runtime = DockerRuntime()
        for c in runtime.list(NodeName(self.host_node)):
            runtime.remove(c.id, 0)
        IptablesProxy("10.250.1.0/24", prefix=self.prefix).cleanup()
        NftablesProxy("10.250.1.0/24", prefix=self.prefix).cleanup()
        remove_pod_networks(runtime.client, [self.host_node])
        self.netns.stop()


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoNodes]:
    require(docker_available(), "a running Docker engine")
    require(iptables_available(), "iptables (as root)")
    build_image()
    cluster = TwoNodes(tmp_path_factory.mktemp("two"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def test_pods_spread_over_both_nodes_and_the_vip_reaches_all_of_them_from_each(nodes: TwoNodes) -> None:
    assert nodes.plane is not None
    import httpx

    def both_nodes_ready() -> bool:
        found = httpx.get(nodes.plane.url + "/api/v1/nodes").json()  # type: ignore[union-attr]
        return sorted(n["name"] for n in found if n["ready"]) == sorted([nodes.host_node, nodes.netns.name])

    wait_for(both_nodes_ready, timeout=60, what="both agents to register")
    (nodes.work / "web.yaml").write_text(web_manifests(replicas=4))
    nodes.commit("web on two nodes")

    def ready() -> list[dict[str, str]] | None:
        pods = httpx.get(nodes.plane.url + "/api/v1/pods").json()  # type: ignore[union-attr]
        services = httpx.get(nodes.plane.url + "/api/v1/services").json()  # type: ignore[union-attr]
        if (
            len([p for p in pods if p["ready"]]) != 4
            or not services
            or len(services[0]["endpoints"][0][1]) != 4
        ):
            return None
        return pods  # type: ignore[no-any-return]

    pods = wait_for(ready, timeout=120, what="4 ready pods on two nodes")
    by_node: dict[str, set[str]] = {}
    for p in pods:
        by_node.setdefault(p["node"], set()).add(f"hello from {p['name']}")
    assert set(by_node) == {nodes.host_node, nodes.netns.name}
    assert all(len(v) == 2 for v in by_node.values())
    everyone = set().union(*by_node.values())
    vip = httpx.get(nodes.plane.url + "/api/v1/services").json()[0]["vip"]

    def seen_from_host() -> bool:
        try:
            seen = {http_get(vip, 80) for _ in range(40)}
        except OSError:
            return False  # the agents program new endpoints on their next tick
        return seen == everyone

    wait_for(seen_from_host, timeout=20, what="the host to reach pods on both nodes")

    def seen_from_namespace() -> bool:
        out = subprocess.run(
            [*nodes.netns.nsenter, sys.executable, "-c", PROBE, f"{vip}:80", "40"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        return set(out.stdout.split("\n")) - {""} == everyone

    wait_for(seen_from_namespace, timeout=20, what="the namespace node to reach pods on both nodes")
