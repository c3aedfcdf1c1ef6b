"""An operator's bad day, on real Docker: a control plane as its own process (`gitops serve`)
and two nodes, this host and a network namespace with its own dockerd.

One cluster serves the whole module; the faults come one after the other, as they would:
an agent killed, the control plane killed in the middle of a rolling update, the node's
Docker engine stopped and started, the database deleted, the database corrupted, the node
cut off from the control plane and back. After each: no pod lost or doubled, no orphaned
container, converged within the bound the test states, and what `gitops status` and the
API said during the fault was true.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from tests.conftest import docker_available, iptables_available, require, wait_for
from tests.e2e.cluster import IMAGE, ROOT, agent_process, build_image, remove_pod_networks
from tests.e2e.netns import NetnsNode
from tests.servers import free_port

pytestmark = pytest.mark.docker

CIDR = "10.250.12.0/24"
GRACE = 6  # --node-grace: a silent node is NotReady after 6 s
TOLERATION = 120  # --not-ready-toleration: longer than any fault here, so nothing is evicted


def manifests(greeting: str) -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: apps/v1
        kind: Deployment
        metadata: {{name: web}}
        spec:
          replicas: 4
          strategy: {{rollingUpdate: {{maxSurge: 1, maxUnavailable: 0}}}}
          selector: {{matchLabels: {{app: web}}}}
          template:
            metadata: {{labels: {{app: web}}}}
            spec:
              terminationGracePeriodSeconds: 1
              containers:
                - name: httpd
                  image: {IMAGE}
                  imagePullPolicy: Never
                  command: ["sh", "-c"]
                  args:
                    - echo "{greeting} from $(hostname)" > /www/index.html && exec httpd -f -p 8080 -h /www
                  ports: [{{name: http, containerPort: 8080}}]
                  readinessProbe:
                    tcpSocket: {{port: http}}
                    periodSeconds: 1
                  resources: {{requests: {{cpu: 10m, memory: 8Mi}}}}
        ---
        apiVersion: v1
        kind: Service
        metadata: {{name: web}}
        spec:
          selector: {{app: web}}
          ports: [{{name: http, port: 80, targetPort: http}}]
        """
    )


class FaultCluster:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.netns = NetnsNode(8, tmp / "n8")
        self.folder = tmp / "manifests"
        self.state = tmp / "state"
        self.port = free_port()
        self.host_node = "host-" + uuid.uuid4().hex[:4]
        self.prefix = "GF" + uuid.uuid4().hex[:4].upper()
        self.server: subprocess.Popen[bytes] | None = None
        self.agents: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return f"http://{self.netns.host_address}:{self.port}"

    def gitops(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "gitops.cli", "--log-json", *args]

    def start(self) -> None:
        self.netns.start()
        subprocess.run(
            [str(ROOT / "scripts" / "busybox-image"), IMAGE, self.netns.docker_host],
            check=True,
            capture_output=True,
        )
        self.folder.mkdir()
        (self.folder / "web.yaml").write_text(manifests("one"))
        (self.tmp / "join").write_text("fault-join-token\n")
        self.start_server()
        self.start_agent(self.host_node, [], ["--address", self.netns.host_address])
        self.start_agent(
            self.netns.name,
            self.netns.nsenter,
            ["--docker", self.netns.docker_host, "--address", self.netns.address],
        )

    def start_server(self) -> subprocess.Popen[bytes]:
        log = open(self.tmp / "server.log", "ab")  # noqa: SIM115 - closed with the process
        self.server = subprocess.Popen(
            self.gitops(
                "serve",
                "--dir",
                str(self.folder),
                "--state-dir",
                str(self.state),
                "--host",
                self.netns.host_address,
                "--port",
                str(self.port),
                "--public-read",
                "--join-token-file",
                str(self.tmp / "join"),
                "--service-cidr",
                CIDR,
                "--node-grace",
                str(GRACE),
                "--not-ready-toleration",
                str(TOLERATION),
                "--poll",
                "1",
            ),
            stdout=log,
            stderr=log,
            cwd=ROOT,
        )
        return self.server

    def start_agent(self, node: str, prefix: list[str], extra: list[str]) -> None:
        self.agents[node] = agent_process(
            self.tmp / f"agent-{node}.log",
            self.url,
            node,
            "--chain-prefix",
            self.prefix,
            "--state-dir",
            str(self.tmp / "agents"),
            "--join-token-file",
            str(self.tmp / "join"),
            "--label",
            f"at={node}",
            *extra,
            prefix=prefix,
        )

    def kill_server(self) -> None:
        assert self.server is not None
        self.server.send_signal(signal.SIGKILL)
        self.server.wait(timeout=10)

    def stop(self) -> None:
        for process in [*self.agents.values(), self.server]:
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
        from gitops.agents.iptables import IptablesProxy
        from gitops.agents.nftables import NftablesProxy

        client = docker.from_env()
        for c in client.containers.list(all=True, filters={"label": f"gitops.node={self.host_node}"}):
            c.remove(force=True)
        IptablesProxy(CIDR, prefix=self.prefix).cleanup()
        NftablesProxy(CIDR, prefix=self.prefix).cleanup()
        remove_pod_networks(client, [self.host_node])
        subprocess.run(
            [*self.netns.nsenter, "iptables", "-D", "OUTPUT", "-d", self.netns.host_address, "-j", "DROP"],
            capture_output=True,
            check=False,
        )
        self.netns.stop()
        for node in (self.host_node, self.netns.name):
            shutil.rmtree(Path("/dev/shm/gitops") / node, ignore_errors=True)

    # --- observations -----------------------------------------------------------------

    def api(self, path: str) -> Any:
        return httpx.get(self.url + path, timeout=10).raise_for_status().json()

    def up(self) -> bool:
        try:
            return httpx.get(self.url + "/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def containers(self) -> dict[str, list[dict[str, Any]]]:
        """Every container of the cluster, running or not, by pod."""
        found: dict[str, list[dict[str, Any]]] = {}
        for client in (docker.from_env(), docker.DockerClient(base_url=self.netns.docker_host)):
            for c in client.api.containers(all=True, filters={"label": "gitops.pod"}):
                labels = c.get("Labels") or {}
                if labels.get("gitops.node") not in (self.host_node, self.netns.name):
                    continue
                found.setdefault(labels["gitops.pod"], []).append(
                    {"id": c["Id"], "status": c["State"], "run": int(labels.get("gitops.restart", "0"))}
                )
        return found

    def converged(self, greeting: str) -> dict[str, Any] | None:
        """4 ready pods of the current template serving `greeting`, one running container
        each, every endpoint in the Service, and no container without its pod."""
        try:
            pods = self.api("/api/v1/pods")
            (workload,) = self.api("/api/v1/workloads")
            (service,) = self.api("/api/v1/services")
        except (httpx.HTTPError, ValueError):
            return None
        ready = [p for p in pods if p["ready"] and not p["terminating"]]
        if len(pods) != 4 or len(ready) != 4 or not workload["complete"]:
            return None
        if any(p["template_hash"] != workload["template_hash"] for p in pods):
            return None
        running = {pod: [c for c in cs if c["status"] == "running"] for pod, cs in self.containers().items()}
        if {pod for pod, cs in running.items() if cs} != {p["id"] for p in pods}:
            return None  # a pod without its container, or a container without its pod
        if any(len(cs) != 1 for cs in running.values() if cs) or len(service["endpoints"][0][1]) != 4:
            return None
        for p in pods:
            (container,) = running[p["id"]]
            if greeting not in self.served(p["node"], container["id"]):
                return None
            p["container"] = container["id"]
        return {p["id"]: p for p in pods}

    def served(self, node: str, container: str) -> str:
        env = {**os.environ}
        if node == self.netns.name:
            env["DOCKER_HOST"] = self.netns.docker_host
        done = subprocess.run(
            ["docker", "exec", container, "cat", "/www/index.html"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        return done.stdout

    def status_text(self) -> str:
        done = subprocess.run(
            self.gitops("status", "--server", self.url), capture_output=True, text=True, cwd=ROOT, check=False
        )
        return done.stdout + done.stderr


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultCluster]:
    require(docker_available(), "a running Docker engine")
    require(iptables_available(), "iptables (as root)")
    build_image()
    faults = FaultCluster(tmp_path_factory.mktemp("faults"))
    try:
        faults.start()
        settle(faults, "one", bound=120)
        yield faults
    finally:
        faults.stop()


def settle(cluster: FaultCluster, greeting: str, *, bound: float) -> dict[str, Any]:
    found: dict[str, Any] = wait_for(
        lambda: cluster.up() and cluster.converged(greeting),
        timeout=bound,
        interval=0.5,
        what=f"4 ready pods saying {greeting!r}",
    )
    return found


def test_an_agent_killed_and_restarted_keeps_every_container(cluster: FaultCluster) -> None:
    before = settle(cluster, "one", bound=30)
    agent = cluster.agents[cluster.netns.name]
    agent.send_signal(signal.SIGKILL)
    agent.wait(timeout=10)
    cluster.start_agent(
        cluster.netns.name,
        cluster.netns.nsenter,
        ["--docker", cluster.netns.docker_host, "--address", cluster.netns.address],
    )
    time.sleep(4)
    after = settle(cluster, "one", bound=30)
    assert {p: v["container"] for p, v in after.items()} == {p: v["container"] for p, v in before.items()}


def test_the_control_plane_killed_mid_rollout_finishes_it_losing_and_doubling_nothing(
    cluster: FaultCluster,
) -> None:
    settle(cluster, "one", bound=30)
    (cluster.folder / "web.yaml").write_text(manifests("two"))
    wait_for(
        lambda: any(not w["complete"] for w in cluster.api("/api/v1/workloads")),
        timeout=30,
        interval=0.2,
        what="the rollout under way",
    )
    cluster.kill_server()
    cluster.start_server()
    wait_for(cluster.up, timeout=30, what="the control plane back")
    settle(cluster, "two", bound=120)


def test_a_stopped_docker_engine_is_shown_at_once_and_its_return_serves_within_seconds(
    cluster: FaultCluster,
) -> None:
    before = settle(cluster, "two", bound=30)
    on_netns = {p for p, v in before.items() if v["node"] == cluster.netns.name}
    assert on_netns, "the pods spread over both nodes"
    pid = int((cluster.netns.root / "docker.pid").read_text())
    os.kill(pid, signal.SIGTERM)  # the engine stops, and its containers with it
    stopped_at = time.monotonic()

    def shown() -> bool:
        nodes = {n["name"]: n for n in cluster.api("/api/v1/nodes")}
        node = nodes[cluster.netns.name]
        pods = {p["id"]: p for p in cluster.api("/api/v1/pods")}
        return (
            not node["ready"]
            and "container runtime" in node["reason"]
            and not any(pods[p]["ready"] for p in on_netns if p in pods)
        )

    wait_for(shown, timeout=15, interval=0.5, what="the node NotReady with the runtime's reason")
    assert time.monotonic() - stopped_at < 15
    status = cluster.status_text()
    assert f"{cluster.netns.name}" in status and "container runtime" in status
    services = cluster.api("/api/v1/services")
    assert {e["pod"] for e in services[0]["endpoints"][0][1]} == set(before) - on_netns
    time.sleep(3)
    cluster.netns.start_docker()
    back = time.monotonic()
    after = settle(cluster, "two", bound=60)
    took = time.monotonic() - back
    assert took < 30, f"served again {took:.0f}s after the engine returned"
    assert set(after) == set(before)  # the same pods, restarted in place on their node
    assert all(after[p]["restarts"] <= 1 for p in on_netns)


def test_a_deleted_database_is_rebuilt_from_the_source_and_adopts_every_container(
    cluster: FaultCluster,
) -> None:
    before = settle(cluster, "two", bound=30)
    cluster.kill_server()
    for f in cluster.state.glob("gitops.db*"):
        f.unlink()
    cluster.start_server()
    wait_for(cluster.up, timeout=30, what="the control plane back")
    after = settle(cluster, "two", bound=90)
    assert {p: v["container"] for p, v in after.items()} == {p: v["container"] for p, v in before.items()}
    events = [e["reason"] for e in cluster.api("/api/v1/events?limit=500")]
    assert "Adopted" in events


def test_a_corrupted_database_is_one_line_and_a_backup_brings_the_cluster_back(cluster: FaultCluster) -> None:
    before = settle(cluster, "two", bound=30)
    backup = cluster.tmp / "backup.db"
    done = subprocess.run(
        cluster.gitops("backup", "-o", str(backup), "--state-dir", str(cluster.state)),
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert cluster.server is not None
    cluster.server.terminate()
    cluster.server.wait(timeout=15)
    database = cluster.state / "gitops.db"
    wal = database.with_name("gitops.db-wal")
    assert not wal.exists() or wal.stat().st_size == 0  # a clean stop leaves one file
    with open(database, "r+b") as f:
        f.write(b"\0" * 4096)  # the header and first page gone
    failed = cluster.start_server()
    assert failed.wait(timeout=30) != 0
    last = (cluster.tmp / "server.log").read_text().strip().splitlines()[-1]
    assert "cannot be used" in last and "gitops restore" in last
    restored = subprocess.run(
        cluster.gitops("restore", str(backup), "--state-dir", str(cluster.state), "--force"),
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert restored.returncode == 0, restored.stderr
    assert "the unreadable database it replaced is kept as" in restored.stdout
    assert list(cluster.state.glob("gitops.db.unreadable-*"))
    cluster.start_server()
    wait_for(cluster.up, timeout=30, what="the control plane back")
    after = settle(cluster, "two", bound=60)
    assert {p: v["container"] for p, v in after.items()} == {p: v["container"] for p, v in before.items()}


def test_a_node_cut_off_from_the_control_plane_is_shown_and_heals_without_losing_a_pod(
    cluster: FaultCluster,
) -> None:
    before = settle(cluster, "two", bound=30)
    rule = [
        "OUTPUT",
        "-d",
        cluster.netns.host_address,
        "-p",
        "tcp",
        "--dport",
        str(cluster.port),
        "-j",
        "DROP",
    ]
    subprocess.run([*cluster.netns.nsenter, "iptables", "-I", *rule], check=True)
    try:
        wait_for(
            lambda: not {n["name"]: n for n in cluster.api("/api/v1/nodes")}[cluster.netns.name]["ready"],
            timeout=GRACE + 15,
            what="the cut-off node NotReady",
        )
        reason = {n["name"]: n for n in cluster.api("/api/v1/nodes")}[cluster.netns.name]["reason"]
        assert reason.startswith("no heartbeat for")
        on_netns = {p for p, v in before.items() if v["node"] == cluster.netns.name}

        def served_by() -> set[str]:
            return {e["pod"] for e in cluster.api("/api/v1/services")[0]["endpoints"][0][1]}

        # The status view re-reads node readiness every few seconds (gitops.api.view).
        wait_for(lambda: not served_by() & on_netns, timeout=10, what="its pods out of the endpoints")
        assert served_by() == set(before) - on_netns
        assert {p["id"] for p in cluster.api("/api/v1/pods")} == set(before)  # tolerated, not evicted
    finally:
        subprocess.run([*cluster.netns.nsenter, "iptables", "-D", *rule], check=True)
    after = settle(cluster, "two", bound=60)
    assert {p: v["container"] for p, v in after.items()} == {p: v["container"] for p, v in before.items()}
