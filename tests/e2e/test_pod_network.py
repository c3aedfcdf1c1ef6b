"""Four real nodes (network namespaces, each with its own dockerd and agent; three on one
L2 segment, routed there by host-gw, the fourth on another network behind this host,
reached through the VXLAN overlay): every pod has an address every pod reaches without
NAT, cluster DNS answers on every node, a VIP spreads over pods on all of them, and a
deleted node's routes leave the others."""

from __future__ import annotations

import os
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gitops.server import ControlPlane
from gitops.store import Store
from gitops.sync.sources import GitSource
from tests.conftest import docker_available, iptables_available, require, wait_for
from tests.e2e.cluster import IMAGE, ROOT, agent_process, build_image, git
from tests.e2e.netns import NetnsNode
from tests.servers import free_port

pytestmark = pytest.mark.docker

SERVICE_CIDR = "10.250.3.0/24"


def pinned_web(node: str, index: int) -> str:
    """A one-pod Deployment on `node` (by kubelet's hostname label) behind Service `web`; its
    httpd answers `/` with the pod's name and `/cgi-bin/ip` with the caller's address."""
    return textwrap.dedent(
        f"""\
        apiVersion: apps/v1
        kind: Deployment
        metadata:
          name: web-{index}
        spec:
          replicas: 1
          selector:
            matchLabels: {{app: web, at: n{index}}}
          template:
            metadata:
              labels: {{app: web, at: n{index}}}
            spec:
              nodeSelector: {{kubernetes.io/hostname: {node}}}
              terminationGracePeriodSeconds: 1
              containers:
                - name: httpd
                  image: {IMAGE}
                  imagePullPolicy: Never
                  command: ["sh", "-c"]
                  args:
                    - >-
                      mkdir -p /www/cgi-bin && hostname > /www/index.html &&
                      printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho $REMOTE_ADDR\\n'
                      > /www/cgi-bin/ip &&
                      chmod +x /www/cgi-bin/ip && exec httpd -f -p 8080 -h /www
                  ports:
                    - {{name: http, containerPort: 8080}}
        ---
        """
    )


SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
    - {name: http, port: 80, targetPort: http}
"""


class Nodes:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.nodes = [NetnsNode(i, tmp / f"n{i}") for i in (1, 2, 3)] + [
            NetnsNode(4, tmp / "n4", on_lan=False)
        ]
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.plane: ControlPlane | None = None
        self.store: Store | None = None

    @property
    def url(self) -> str:
        assert self.plane is not None
        return self.plane.url

    def start(self) -> None:
        for node in self.nodes:
            node.start()
            subprocess.run(
                [str(ROOT / "scripts" / "busybox-image"), IMAGE, node.docker_host],
                check=True,
                capture_output=True,
            )
        remote, self.work = self.tmp / "remote.git", self.tmp / "work"
        git(self.tmp, "init", "--bare", "-b", "main", str(remote))
        git(self.tmp, "init", "-b", "main", str(self.work))
        files = {f"web-{i}.yaml": pinned_web(n.name, i) for i, n in enumerate(self.nodes, 1)}
        files["service.yaml"] = SERVICE
        for name, text in files.items():
            (self.work / name).write_text(text)
        git(self.work, "add", "-A")
        git(self.work, "commit", "-m", "web on three nodes")
        git(self.work, "push", str(remote), "main")
        self.store = Store(f"sqlite:///{self.tmp / 'gitops.db'}", service_cidr=SERVICE_CIDR)
        self.plane = ControlPlane(
            self.store,
            [GitSource(str(remote), self.tmp / "cache", branch="main")],
            host=self.nodes[0].host_address,
            port=free_port(),
            poll_interval=0.5,
            controller_interval=0.5,
        )
        self.plane.start()
        for node in self.nodes:
            self.start_agent(node)

    def start_agent(self, node: NetnsNode) -> None:
        assert self.plane is not None
        self.agents[node.name] = agent_process(
            self.tmp / f"agent-{node.name}.log",
            self.plane.url,
            node.name,
            "--address",
            node.address,
            "--docker",
            node.docker_host,
            "--state-dir",
            str(self.tmp / "state"),
            prefix=node.nsenter,
            join_token=self.plane.join_token,
        )

    def push(self, name: str, text: str, message: str) -> None:
        (self.work / name).write_text(text)
        git(self.work, "add", "-A")
        git(self.work, "commit", "-m", message)
        git(self.work, "push", str(self.tmp / "remote.git"), "main")

    def stop_agent(self, node: NetnsNode) -> None:
        agent = self.agents.pop(node.name)
        agent.terminate()
        agent.wait(timeout=15)

    def stop(self) -> None:
        for agent in self.agents.values():
            agent.terminate()
            try:
                agent.wait(timeout=15)
            except subprocess.TimeoutExpired:
                agent.kill()
        if self.plane is not None:
            self.plane.stop()
        for node in self.nodes:
            node.stop()  # the namespace goes, and with it its routes, rules and bridge

    # --- observations ---------------------------------------------------------------------

    def pods(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = httpx.get(self.url + "/api/v1/pods").json()
        return found

    def exec(self, node: NetnsNode, pod: dict[str, Any], *command: str) -> str:
        """Run `command` in `pod`'s container (on `node`'s engine); its output."""
        env = {**os.environ, "DOCKER_HOST": node.docker_host}
        ids = subprocess.run(
            ["docker", "ps", "-q", "--filter", f"label=gitops.pod={pod['namespace']}/{pod['name']}"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert ids, f"no container of {pod['name']} on {node.name}"
        done = subprocess.run(
            ["docker", "exec", ids[0], *command],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        return done.stdout + done.stderr


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    require(docker_available(), "a running Docker engine")
    require(iptables_available(), "iptables (as root)")
    build_image()
    three = Nodes(tmp_path_factory.mktemp("three"))
    try:
        three.start()

        def all_ready() -> list[dict[str, Any]] | None:
            pods = [p for p in three.pods() if p["ready"] and p["pod_ip"]]
            return pods if len(pods) == len(three.nodes) else None

        wait_for(all_ready, timeout=120, what="a ready pod on each of four nodes")
        yield three
    finally:
        three.stop()


def http_get(host: str, port: int, path: str = "/") -> str:
    """A shell command printing the body of GET `path` (busybox's static wget cannot run
    here: it needs glibc's NSS libraries, which the image lacks; nc resolves without them)."""
    return f'printf "GET {path} HTTP/1.0\\r\\n\\r\\n" | nc -w 3 {host} {port} | tail -n 1'


def by_node(cluster: Nodes) -> dict[str, dict[str, Any]]:
    return {p["node"]: p for p in cluster.pods() if p["ready"]}


def test_every_node_gets_its_own_pod_subnet_and_pods_their_addresses_in_it(cluster: Nodes) -> None:
    nodes = {n["name"]: n for n in httpx.get(cluster.url + "/api/v1/nodes").json()}
    subnets = {name: nodes[name]["pod_cidr"] for name in nodes}
    assert len(set(subnets.values())) == len(cluster.nodes)
    for name, pod in by_node(cluster).items():
        assert pod["pod_ip"].rsplit(".", 1)[0] == subnets[name].rsplit(".", 1)[0]


def test_a_pod_reaches_a_pod_on_another_node_by_its_address_and_the_peer_sees_the_callers_address(
    cluster: Nodes,
) -> None:
    a, c = cluster.nodes[0], cluster.nodes[2]
    pods = by_node(cluster)
    caller, callee = pods[a.name], pods[c.name]
    seen = cluster.exec(a, caller, "sh", "-c", http_get(callee["pod_ip"], 8080, "/cgi-bin/ip"))
    assert seen.strip().removeprefix("[::ffff:").rstrip("]") == caller["pod_ip"]  # no NAT between pods


def test_a_node_on_another_network_is_reached_through_the_vxlan_overlay_without_nat(cluster: Nodes) -> None:
    a, far = cluster.nodes[0], cluster.nodes[3]
    pods = by_node(cluster)
    for caller_node, callee_node in ((a, far), (far, a)):
        caller, callee = pods[caller_node.name], pods[callee_node.name]
        seen = cluster.exec(caller_node, caller, "sh", "-c", http_get(callee["pod_ip"], 8080, "/cgi-bin/ip"))
        assert seen.strip().removeprefix("[::ffff:").rstrip("]") == caller["pod_ip"]
    route = subprocess.run(
        [*a.nsenter, "ip", "-4", "-o", "route", "show", "proto", "103"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    far_subnet = next(
        n["pod_cidr"] for n in httpx.get(cluster.url + "/api/v1/nodes").json() if n["name"] == far.name
    )
    assert any(line.startswith(far_subnet) and "dev gvx" in line for line in route.splitlines()), route


def test_cluster_dns_answers_on_every_node_and_a_vip_spreads_over_pods_on_all_of_them(
    cluster: Nodes,
) -> None:
    vip = httpx.get(cluster.url + "/api/v1/services").json()[0]["vip"]
    pods = by_node(cluster)
    everyone = {p["name"] for p in pods.values()}
    for node in cluster.nodes:
        pod = pods[node.name]
        answer = cluster.exec(node, pod, "nslookup", "web.default.svc.cluster.local")
        assert vip in answer, answer

        def spread(node: NetnsNode = node, pod: dict[str, Any] = pod) -> bool:
            script = f"for i in $(seq 30); do {http_get(vip, 80)}; done"
            return set(cluster.exec(node, pod, "sh", "-c", script).split()) == everyone

        wait_for(spread, timeout=30, what=f"the VIP to reach pods on every node from {node.name}")


DAEMONSET = f"""\
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: nodeinfo
spec:
  selector:
    matchLabels: {{app: nodeinfo}}
  template:
    metadata:
      labels: {{app: nodeinfo}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: info
          image: {IMAGE}
          imagePullPolicy: Never
          command: ["sh", "-c", "exec sleep 100000"]
"""


def test_a_daemonset_runs_one_pod_on_every_node_and_on_a_node_that_joins(cluster: Nodes) -> None:
    assert cluster.store is not None
    far = cluster.nodes[3]

    def daemons() -> dict[str, str]:
        pods = [p for p in cluster.pods() if p["name"].startswith("nodeinfo-") and p["ready"]]
        return {p["node"]: p["name"] for p in pods}

    cluster.push("nodeinfo.yaml", DAEMONSET, "a pod on every node")
    everywhere = {n.name for n in cluster.nodes}
    wait_for(lambda: set(daemons()) == everywhere, timeout=90, what="a nodeinfo pod on each of four nodes")
    assert len([p for p in cluster.pods() if p["name"].startswith("nodeinfo-")]) == 4  # one each
    # The far node leaves (its agent stops, the node is deleted): its pod goes with it.
    cluster.stop_agent(far)
    cluster.store.delete_node(far.name, time.time())
    wait_for(lambda: set(daemons()) == everywhere - {far.name}, timeout=30, what="three nodeinfo pods")
    # It joins again: it gets its pod.
    cluster.start_agent(far)
    wait_for(lambda: set(daemons()) == everywhere, timeout=90, what="a nodeinfo pod on the node that joined")


def test_a_deleted_nodes_route_leaves_the_other_nodes(cluster: Nodes) -> None:
    a, c = cluster.nodes[0], cluster.nodes[2]
    assert cluster.store is not None
    subnet = next(
        n["pod_cidr"] for n in httpx.get(cluster.url + "/api/v1/nodes").json() if n["name"] == c.name
    )

    def routes(node: NetnsNode) -> str:
        return subprocess.run(
            [*node.nsenter, "ip", "-4", "route", "show", "proto", "103"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    assert subnet in routes(a)
    cluster.stop_agent(c)
    cluster.store.delete_node(c.name, time.time())
    wait_for(lambda: subnet not in routes(a), timeout=15, what=f"node {a.name} to drop its route to {subnet}")
