"""End to end: `git push` over HTTP straight to the server, on a real Docker engine.

A valid push has its containers running within seconds (the poll interval is ten minutes,
so only the push can explain it); an invalid one is refused and the containers keep running.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from gitops.server import ControlPlane
from gitops.store import Store
from gitops.sync.hosted import HostedRepo
from tests.conftest import docker_available, iptables_available, require, wait_for
from tests.e2e.cluster import Cluster, build_image, git, web_manifests
from tests.servers import free_port

pytestmark = pytest.mark.docker

TOKEN = "e2e-push-token"


def push(work: Path, url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    return subprocess.run(
        ["git", "-c", "credential.helper=", "push", url, "main"],
        cwd=work,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


def running(cluster: Cluster, greeting: str, count: int) -> bool:
    envs = [c["env"] for c in cluster.containers().values() if c["status"] == "running"]
    return len(envs) == count and all(f"GREETING={greeting}" in e for e in envs)


def test_a_pushed_revision_runs_within_seconds_and_a_refused_one_changes_nothing(tmp_path: Path) -> None:
    require(docker_available(), "a running Docker engine")
    require(iptables_available(), "iptables (as root)")
    build_image()
    cluster = Cluster(tmp_path, service_cidr="10.250.7.0/24")
    store = Store(f"sqlite:///{tmp_path / 'gitops.db'}", service_cidr=cluster.service_cidr)
    repo = HostedRepo("cluster", tmp_path / "state")
    cluster.plane = ControlPlane(
        store,
        [],
        hosted=[repo],
        port=free_port(),
        poll_interval=600,
        controller_interval=0.5,
        push_token=TOKEN,
    )
    cluster.plane.start()
    cluster.start_agent()
    url = f"http://gitops:{TOKEN}@127.0.0.1:{cluster.plane.port}/git/cluster.git"
    try:
        wait_for(lambda: cluster.api("/api/v1/nodes"), timeout=30, what="the agent to register")
        (cluster.work / "apps").mkdir()
        (cluster.work / "apps" / "web.yaml").write_text(web_manifests(replicas=2, greeting="pushed"))
        git(cluster.work, "add", "-A")
        git(cluster.work, "commit", "-m", "web: 2 replicas")
        accepted = push(cluster.work, url)
        assert accepted.returncode == 0, accepted.stderr
        wait_for(lambda: running(cluster, "pushed", 2), timeout=15, what="2 running containers")

        (cluster.work / "apps" / "web.yaml").write_text(
            web_manifests(replicas=2, greeting="broken").replace("replicas: 2", "replicas: two")
        )
        git(cluster.work, "commit", "-am", "web: broken")
        refused = push(cluster.work, url)
        assert refused.returncode != 0
        assert "remote: apps/web.yaml:" in refused.stderr and "spec.replicas" in refused.stderr
        assert "(pre-receive hook declined)" in refused.stderr
        before = {pod: c["id"] for pod, c in cluster.containers().items()}
        time.sleep(2)
        assert {pod: c["id"] for pod, c in cluster.containers().items()} == before
        assert running(cluster, "pushed", 2)
    finally:
        cluster.stop()
