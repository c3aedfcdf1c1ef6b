"""High availability end to end: two `gitops serve` on one PostgreSQL, a real agent on the
local Docker engine that knows both.

kill -9 of the leader in the middle of a rollout: the other takes the lease within 10 s,
the rollout completes, and no pod is lost or doubled (in the store and on Docker). Then a
leader stopped (SIGSTOP) past its lease: the other leads, and the old one, resumed, does
not lead and changes nothing."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from gitops.store import SecretKeys, Store
from tests.conftest import docker_available, iptables_available, require, wait_for
from tests.e2e.cluster import IMAGE, ROOT, Cluster, agent_process, build_image
from tests.servers import free_port

pytestmark = pytest.mark.docker

SERVE = 'echo "$GREETING from $(hostname)" > /www/index.html && exec httpd -f -p 8080 -h /www'


def app(greeting: str) -> str:
    """Four replicas rolled one at a time, each ready 2 s after it starts: a rollout takes
    long enough to kill the leader in the middle of it."""
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
                  command: ["sh", "-c", {SERVE!r}]
                  env: [{{name: GREETING, value: {greeting!r}}}]
                  ports: [{{name: http, containerPort: 8080}}]
                  readinessProbe:
                    httpGet: {{path: /, port: http}}
                    initialDelaySeconds: 2
                    periodSeconds: 1
                  resources: {{requests: {{cpu: 10m, memory: 8Mi}}}}
        """
    )


class Replicated(Cluster):
    """A cluster whose control plane is two `gitops serve` processes on one PostgreSQL."""

    database: str = ""
    servers: list[subprocess.Popen[bytes]]
    ports: list[int]
    join = "join-token-of-the-replicated-cluster"

    def start_servers(self, database: str) -> None:
        self.database = database
        self.ports = [free_port(), free_port()]
        self.servers = [self.start_server(i) for i in range(2)]
        for port in self.ports:
            wait_for(lambda port=port: self.status(port), timeout=60, what=f"the server on {port}")

    def start_server(self, i: int) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"serve-{i}.log", "ab")  # noqa: SIM115 - closed with the process
        (self.tmp / "join").write_text(self.join + "\n")
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gitops.cli",
                "--log-json",
                "serve",
                "--db",
                self.database,
                "--git",
                str(self.remote),
                "--previews",
                "",
                "--poll",
                "0.5",
                "--name",
                f"cp{i}",
                "--port",
                str(self.ports[i]),
                "--state-dir",
                str(self.tmp / f"state-{i}"),
                "--secret-key-file",
                str(self.tmp / "cluster.key"),
                "--join-token-file",
                str(self.tmp / "join"),
                "--service-cidr",
                self.service_cidr,
            ],
            stdout=log,
            stderr=log,
            cwd=ROOT,
        )

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.ports[i]}"

    def status(self, port: int) -> dict[str, Any] | None:
        try:
            response = httpx.get(f"http://127.0.0.1:{port}/api/v1/status", timeout=2)
        except httpx.HTTPError:
            return None
        return response.json() if response.status_code == 200 else None

    def leader(self) -> int | None:
        """Which server leads (by its own word), if exactly one says so."""
        leading = [i for i, port in enumerate(self.ports) if (self.status(port) or {}).get("leader")]
        return leading[0] if len(leading) == 1 else None

    def start_agent(self, node: str | None = None) -> None:
        node = node or self.node
        self.prefixes.setdefault(node, self.prefix)
        self.agents[node] = agent_process(
            self.log_of(node),
            f"{self.url(0)},{self.url(1)}",
            node,
            "--chain-prefix",
            self.prefix,
            "--state-dir",
            str(self.tmp / "state-agent"),
            join_token=self.join,
        )

    def stop(self) -> None:
        for server in getattr(self, "servers", []):
            if server.poll() is None:
                server.send_signal(signal.SIGCONT)
                server.terminate()
                try:
                    server.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    server.kill()
        super().stop()

    def logs(self) -> str:
        return "\n".join((self.tmp / f"serve-{i}.log").read_text() for i in range(2))

    def web_containers(self) -> list[dict[str, Any]]:
        """Running containers of the Deployment's pods on Docker (one per pod, or a bug)."""
        found = []
        for c in self.docker.containers.list(filters={"label": f"gitops.node={self.node}"}):
            if c.labels.get("gitops.container") == "httpd" and c.labels.get("gitops.pod", "").startswith(
                "default/web-"
            ):
                env = dict(e.split("=", 1) for e in c.attrs["Config"]["Env"] if "=" in e)
                found.append({"pod": c.labels["gitops.pod"], "greeting": env.get("GREETING", "")})
        return found


def settled_on(cluster: Replicated, store: Store, greeting: str) -> list[str] | None:
    """The web pods once exactly four exist, all ready with `greeting`, each with one running
    container on Docker saying it; else None."""
    pods = [p for p in store.pods() if p.owner.name == "web"]
    if len(pods) != 4 or not all(p.ready and p.terminating_at is None for p in pods):
        return None
    containers = cluster.web_containers()
    if sorted(c["pod"] for c in containers) != sorted(str(p.id) for p in pods):
        return None
    if {c["greeting"] for c in containers} != {greeting}:
        return None
    return [str(p.id) for p in pods]


def test_the_other_control_plane_takes_over_a_rollout_when_the_leader_is_killed(
    tmp_path: Path, postgres_database: str
) -> None:
    require(docker_available(), "a running Docker engine")
    require(iptables_available(), "iptables (as root)")
    build_image()
    SecretKeys.from_file(tmp_path / "cluster.key")
    cluster = Replicated(tmp_path, prefix="GH" + uuid.uuid4().hex[:4].upper(), service_cidr="10.251.0.0/24")
    cluster.push({"web.yaml": app("one")}, "web, first")
    store: Store | None = None
    try:
        cluster.start_servers(postgres_database)
        wait_for(lambda: cluster.leader() is not None, timeout=30, what="one leader")
        first = cluster.leader()
        assert first is not None
        follower = 1 - first
        # The follower reads the lease every fifth of its ttl: it names the leader after its next read.
        status = wait_for(
            lambda: (s := cluster.status(cluster.ports[follower])) and s["led_by"] and s,
            timeout=10,
            what="the follower naming the leader",
        )
        assert status["leader"] is False and status["led_by"].startswith(f"cp{first}#")
        cluster.start_agent()
        store = Store(postgres_database, keys=SecretKeys.from_file(tmp_path / "cluster.key"))
        wait_for(lambda: settled_on(cluster, store, "one"), timeout=90, what="four ready pods saying one")

        # A rollout; the leader dies once it is under way (a new pod exists, old ones remain).
        cluster.push({"web.yaml": app("two")}, "web, second")
        wait_for(
            lambda: {c["greeting"] for c in cluster.web_containers()} == {"one", "two"},
            timeout=60,
            what="the rollout under way",
        )
        cluster.servers[first].send_signal(signal.SIGKILL)
        cluster.servers[first].wait(timeout=10)
        killed = time.monotonic()
        wait_for(lambda: cluster.leader() == follower, timeout=20, interval=0.1, what="the follower leading")
        took = time.monotonic() - killed
        assert took < 10, f"failover took {took:.1f} s"
        pods = wait_for(lambda: settled_on(cluster, store, "two"), timeout=120, what="the rollout completed")
        assert len(set(pods)) == 4
        assert Counter(c["pod"] for c in cluster.web_containers()).most_common(1)[0][1] == 1

        # The killed one comes back as a follower; the leader is stopped past its lease.
        cluster.servers[first] = cluster.start_server(first)
        wait_for(lambda: cluster.status(cluster.ports[first]), timeout=60, what="the restarted server")
        assert cluster.leader() == follower
        before = store.pods()
        epoch = cluster.status(cluster.ports[first])["epoch"]  # type: ignore[index]
        cluster.servers[follower].send_signal(signal.SIGSTOP)
        try:
            wait_for(
                lambda: (cluster.status(cluster.ports[first]) or {}).get("leader"),
                timeout=40,
                interval=0.2,
                what="the restarted server taking over from the stopped leader",
            )
        finally:
            cluster.servers[follower].send_signal(signal.SIGCONT)
        wait_for(
            lambda: (cluster.status(cluster.ports[follower]) or {}).get("leader") is False,
            timeout=10,
            what="the resumed old leader following",
        )
        now = cluster.status(cluster.ports[first])
        assert now is not None and now["leader"] is True and now["epoch"] == epoch + 1
        time.sleep(3)  # the resumed one's loops had their chance to write
        after = store.pods()
        assert {p.id: (p.node, p.template_hash) for p in after} == {
            p.id: (p.node, p.template_hash) for p in before
        }
        assert settled_on(cluster, store, "two") is not None
        assert "server.following" in cluster.logs()
    finally:
        if store is not None:
            store.close()
        cluster.stop()
