"""A real cluster for end-to-end tests: a bare git repository, the control plane, and a
node agent process driving the local Docker engine and iptables."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx

from gitops.schemas.validate import DEFAULT_POLICY, Policy
from gitops.server import ControlPlane
from gitops.store import Store
from gitops.sync.sources import GitSource
from tests.conftest import docker_available, iptables_available, require
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "gitops-example/busybox:1"


def agent_process(
    log: Path,
    server: str,
    node: str,
    *args: str,
    prefix: Sequence[str] = (),
    join_token: str | None = None,
) -> subprocess.Popen[bytes]:
    """`gitops agent` for `node` as a process of its own (run through `prefix`, a network
    namespace's `nsenter` say), its output added to `log`, the join token in its
    environment when given (else in `args`, or none: a node already registered)."""
    env = None if join_token is None else {**os.environ, "GITOPS_JOIN_TOKEN": join_token}
    command = [*prefix, sys.executable, "-m", "gitops.cli", "--log-json", "agent", "--server", server]
    with open(log, "ab") as out:  # (the process has its own copy of the file)
        return subprocess.Popen([*command, "--node", node, *args], stdout=out, stderr=out, cwd=ROOT, env=env)


def remove_pod_networks(client: docker.DockerClient, nodes: list[str]) -> None:
    """Remove the pod networks the agents of `nodes` made on this engine (their routes and
    packet rules go with `IptablesProxy.cleanup`, their chains sharing its prefix)."""
    from gitops.agents.network import pod_network_name

    for node in nodes:
        try:
            client.networks.get(pod_network_name(node)).remove()
        except docker.errors.NotFound:
            continue


def build_image(tag: str = IMAGE) -> None:
    subprocess.run([str(ROOT / "scripts" / "busybox-image"), tag], check=True, capture_output=True)


def git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Tess Ter",
        "GIT_AUTHOR_EMAIL": "tess@example.org",
        "GIT_COMMITTER_NAME": "Tess Ter",
        "GIT_COMMITTER_EMAIL": "tess@example.org",
    }
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True, env=env).stdout


def web_manifests(replicas: int = 3, greeting: str = "hello", name: str = "web") -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: apps/v1
        kind: Deployment
        metadata:
          name: {name}
        spec:
          replicas: {replicas}
          selector:
            matchLabels: {{app: {name}}}
          template:
            metadata:
              labels: {{app: {name}}}
            spec:
              terminationGracePeriodSeconds: 5  # busybox httpd as PID 1 ignores SIGTERM
              containers:
                - name: httpd
                  image: {IMAGE}
                  imagePullPolicy: Never
                  command: ["sh", "-c"]
                  args:
                    - echo "$GREETING from $(hostname)" > /www/index.html && exec httpd -f -p 8080 -h /www
                  env:
                    - name: GREETING
                      value: "{greeting}"
                  ports:
                    - {{name: http, containerPort: 8080}}
                  resources:
                    requests: {{cpu: 10m, memory: 8Mi}}
        ---
        apiVersion: v1
        kind: Service
        metadata:
          name: {name}
        spec:
          selector: {{app: {name}}}
          ports:
            - {{name: http, port: 80, targetPort: http}}
        """
    )


@dataclass
class Cluster:
    tmp: Path
    node: str = field(default_factory=lambda: "e2e-" + uuid.uuid4().hex[:6])
    prefix: str = field(default_factory=lambda: "GE" + uuid.uuid4().hex[:4].upper())
    service_cidr: str = "10.250.0.0/24"
    heartbeat_grace: float = 40.0
    not_ready_toleration: float = 60.0
    policy: Policy = DEFAULT_POLICY  # what the control plane allows (--allow-host-path, ...)
    agent_args: tuple[str, ...] = ()  # more options of every agent (`--usage-interval 2`, ...)
    plane: ControlPlane | None = None
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    prefixes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.remote = self.tmp / "remote.git"
        self.work = self.tmp / "work"
        git(self.tmp, "init", "--bare", "-b", "main", str(self.remote))
        git(self.tmp, "init", "-b", "main", str(self.work))
        self.docker = docker.from_env()

    # --- git ------------------------------------------------------------------------

    def push(self, files: dict[str, str | None], message: str) -> str:
        for rel, content in files.items():
            path = self.work / rel
            if content is None:
                path.unlink()
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
        git(self.work, "add", "-A")
        git(self.work, "commit", "-m", message)
        git(self.work, "push", str(self.remote), "main")
        return git(self.work, "rev-parse", "HEAD").strip()

    # --- processes --------------------------------------------------------------------

    def start_plane(self) -> None:
        store = Store(
            f"sqlite:///{self.tmp / 'gitops.db'}",
            service_cidr=self.service_cidr,
            heartbeat_grace=self.heartbeat_grace,
        )
        source = GitSource(str(self.remote), self.tmp / "cache", branch="main")
        self.plane = ControlPlane(
            store,
            [source],
            port=free_port(),
            poll_interval=0.5,
            controller_interval=0.5,
            not_ready_toleration=self.not_ready_toleration,
            policy=self.policy,
        )
        self.plane.start()

    def log_of(self, node: str | None = None) -> Path:
        return self.tmp / f"agent-{node or self.node}.log"

    def start_agent(self, node: str | None = None) -> None:
        """Start the agent of `node` (default: the cluster's first node) as a process."""
        assert self.plane is not None
        node = node or self.node
        prefix = self.prefixes.setdefault(
            node, self.prefix if node == self.node else "GX" + uuid.uuid4().hex[:4].upper()
        )
        self.agents[node] = agent_process(
            self.log_of(node),
            self.plane.url,
            node,
            "--chain-prefix",
            prefix,
            # The spine reads its Services' iptables chains; the nftables proxy has its own
            # real-kernel tests (tests/agents/test_nftables_real.py) and the other end-to-end
            # clusters run the default mode.
            "--proxy-mode",
            "iptables",
            "--state-dir",
            str(self.tmp / "state"),
            *self.agent_args,
            join_token=self.plane.join_token,
        )

    def kill_agent(self, node: str | None = None) -> None:
        agent = self.agents[node or self.node]
        agent.send_signal(signal.SIGKILL)
        agent.wait(timeout=10)

    def stop(self) -> None:
        for agent in self.agents.values():
            if agent.poll() is None:
                agent.terminate()
                try:
                    agent.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    agent.kill()
        if self.plane is not None:
            self.plane.stop()
        from gitops.agents.iptables import IptablesProxy
        from gitops.agents.nftables import NftablesProxy

        for node, prefix in self.prefixes.items():
            for c in self.docker.containers.list(all=True, filters={"label": f"gitops.node={node}"}):
                c.remove(force=True)
            for volume in self.docker.volumes.list(filters={"label": f"gitops.node={node}"}):
                volume.remove(force=True)
            IptablesProxy(self.service_cidr, prefix=prefix).cleanup()
            NftablesProxy(self.service_cidr, prefix=prefix).cleanup()
            shutil.rmtree(Path("/dev/shm/gitops") / node, ignore_errors=True)
        remove_pod_networks(self.docker, list(self.prefixes))

    # --- observations -----------------------------------------------------------------

    def api(self, path: str) -> Any:
        assert self.plane is not None
        return httpx.get(self.plane.url + path, timeout=10).raise_for_status().json()

    def containers(self, node: str | None = None) -> dict[str, dict[str, Any]]:
        """The current container of each pod of a node (default: the first): pod id -> {id,
        status, started, run, ...}; the previous run of a pod, kept exited, is not shown."""
        found = {}
        label = f"gitops.node={node or self.node}"
        for summary in self.docker.api.containers(all=True, filters={"label": label}):
            try:
                c = self.docker.containers.get(summary["Id"])
            except docker.errors.NotFound:
                continue
            run = int(c.labels.get("gitops.restart", "0"))
            pod = c.labels["gitops.pod"]
            if pod in found and (found[pod]["run"], found[pod]["status"] == "running") > (
                run,
                c.status == "running",
            ):
                continue  # each run of a pod is a container: keep the newest
            found[pod] = {
                "id": c.id,
                "status": c.status,
                "started": c.attrs["State"]["StartedAt"],
                "restarts": c.attrs["RestartCount"],
                "run": run,
                "env": c.attrs["Config"]["Env"],
            }
        return found

    def ready_pods(self) -> list[dict[str, Any]]:
        return [p for p in self.api("/api/v1/pods") if p["ready"]]

    def service(self, name: str = "web") -> dict[str, Any] | None:
        return next((s for s in self.api("/api/v1/services") if s["name"] == name), None)

    def chains(self) -> set[str]:
        out = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
        return {line[1:].split()[0] for line in out.splitlines() if line.startswith(f":{self.prefix}")}


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(host: str, port: int, timeout: float = 3.0) -> str:
    """GET / from our own VIP, never through a proxy."""
    with _DIRECT.open(f"http://{host}:{port}/", timeout=timeout) as response:
        body: bytes = response.read()
        return body.decode().strip()


@contextmanager
def running_cluster(
    tmp: Path, files: dict[str, str | None], message: str, **options: Any
) -> Iterator[Cluster]:
    """A cluster whose source holds `files`, with its control plane and first agent up;
    stopped and cleaned up (containers, iptables chains) afterwards."""
    require(docker_available(), "a running Docker engine")
    require(iptables_available(), "iptables (as root)")
    build_image()
    cluster = Cluster(tmp, **options)
    cluster.push(files, message)
    cluster.start_plane()
    cluster.start_agent()
    try:
        yield cluster
    finally:
        cluster.stop()
