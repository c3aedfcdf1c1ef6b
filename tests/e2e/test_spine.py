"""End to end on a real Docker engine, real iptables and a real bare git repository.

The steps run in order against one cluster: push, scale, change, reject, restart the
agent, delete. Each test states one behaviour the user sees.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.conftest import wait_for
from tests.e2e.cluster import ROOT, Cluster, http_get, running_cluster, web_manifests

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(
        tmp_path_factory.mktemp("e2e"), {"apps/web.yaml": web_manifests(replicas=3)}, "web: 3 replicas"
    ) as c:
        yield c


def responders(vip: str, requests: int = 30) -> dict[str, int]:
    seen: dict[str, int] = {}
    for _ in range(requests):
        body = http_get(vip, 80)
        seen[body] = seen.get(body, 0) + 1
    return seen


def wait_ready(cluster: Cluster, count: int, greeting: str) -> list[str]:
    def ready() -> list[str] | None:
        svc = cluster.service()
        pods = cluster.ready_pods()
        if svc is None or len(pods) != count or len(svc["endpoints"][0][1]) != count:
            return None
        envs = [c["env"] for c in cluster.containers().values() if c["status"] == "running"]
        if len(envs) != count or not all(f"GREETING={greeting}" in e for e in envs):
            return None
        names = sorted(p["name"] for p in pods)
        # The agent programs the new endpoints on its next tick: wait until every pod answers.
        try:
            seen = {http_get(svc["vip"], 80) for _ in range(4 * count)}
        except OSError:
            return None
        return names if seen == {f"{greeting} from {n}" for n in names} else None

    names: list[str] = wait_for(ready, timeout=90, what=f"{count} ready pods saying {greeting!r}")
    return names


def test_pushed_deployment_runs_three_containers_answering_on_the_service_vip(cluster: Cluster) -> None:
    names = wait_ready(cluster, 3, "hello")
    vip = cluster.service()["vip"]  # type: ignore[index]
    assert vip.startswith("10.250.0.")
    seen = responders(vip)
    assert set(seen) == {f"hello from {n}" for n in names}, seen
    assert sum(seen.values()) == 30


def test_pushing_five_replicas_adds_two_pods_and_keeps_the_first_three(cluster: Cluster) -> None:
    before = cluster.containers()
    cluster.push({"apps/web.yaml": web_manifests(replicas=5)}, "web: 5 replicas")
    names = wait_ready(cluster, 5, "hello")
    after = cluster.containers()
    for pod, info in before.items():
        assert after[pod]["id"] == info["id"]
        assert after[pod]["started"] == info["started"]
    seen = responders(cluster.service()["vip"], 60)  # type: ignore[index]
    assert set(seen) == {f"hello from {n}" for n in names}


def test_an_env_change_replaces_every_pod(cluster: Cluster) -> None:
    before = cluster.containers()
    cluster.push({"apps/web.yaml": web_manifests(replicas=5, greeting="bonjour")}, "web: say bonjour")
    names = wait_ready(cluster, 5, "bonjour")
    wait_for(lambda: len(cluster.containers()) == 5, what="old containers removed")
    after = cluster.containers()
    assert not set(after) & set(before)
    assert not {i["id"] for i in after.values()} & {i["id"] for i in before.values()}
    seen = responders(cluster.service()["vip"], 40)  # type: ignore[index]
    assert set(seen) <= {f"bonjour from {n}" for n in names}
    stops = [e for e in cluster.api("/api/v1/events?limit=200") if e["reason"] == "Stopped"]
    assert any(
        e["message"]
        == "template changed: env GREETING changed (rolling update, surge 2, unavailable 1: old pod replaced)"
        for e in stops
    )


def test_an_invalid_push_is_rejected_with_its_error_and_nothing_changes(cluster: Cluster) -> None:
    before = cluster.containers()
    bad = web_manifests(replicas=5, greeting="bonjour").replace("replicas: 5", 'replicas: "three"')
    sha = cluster.push({"apps/web.yaml": bad}, "web: broken replicas")

    def rejected() -> bool:
        latest = cluster.api("/api/v1/status")["latest"]
        return latest is not None and latest["revision"] == sha and latest["status"] == "rejected"

    wait_for(rejected, timeout=30, what="the bad revision to be rejected")
    assert plane_url(cluster)
    out = subprocess.run(
        [sys.executable, "-m", "gitops.cli", "status", "--server", plane_url(cluster)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    ).stdout
    assert f"REJECTED: {sha[:12]} web: broken replicas" in out
    assert "apps/web.yaml:6:13: Deployment default/web: spec.replicas:" in out
    time.sleep(3)  # several controller and agent passes
    assert cluster.containers() == before
    assert all(c["status"] == "running" for c in before.values())


def plane_url(cluster: Cluster) -> str:
    assert cluster.plane is not None
    return cluster.plane.url


def test_a_killed_agent_adopts_its_containers_without_recreating_them(cluster: Cluster) -> None:
    before = cluster.containers()
    cluster.kill_agent()
    cluster.start_agent()

    def reported_again() -> bool:
        nodes = cluster.api("/api/v1/nodes")
        return (
            bool(nodes)
            and nodes[0]["heartbeat_age"] < 1.0
            and cluster.log_of().read_text().count("agent.registered") >= 2
        )

    wait_for(reported_again, timeout=30, what="the restarted agent to report")
    time.sleep(3)
    after = cluster.containers()
    assert after == before
    assert all(c["restarts"] == 0 for c in after.values())
    assert len(cluster.ready_pods()) == 5


BROKEN = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: 1
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
        - name: main
          image: {image}
          imagePullPolicy: Never
          command: ["sh", "-c", "echo crashing now; exit 3"]
"""


def test_a_missing_image_and_a_crashing_command_show_their_reasons(cluster: Cluster) -> None:
    cluster.push(
        {
            "apps/missing.yaml": BROKEN.format(name="missing", image="gitops-example/absent:9"),
            "apps/crash.yaml": BROKEN.format(name="crash", image="gitops-example/busybox:1"),
            # The rejected revision's file, fixed: web itself does not change.
            "apps/web.yaml": web_manifests(replicas=5, greeting="bonjour"),
        },
        "two broken workloads",
    )

    def reasons() -> dict[str, str] | None:
        found = {p["owner"]: p["reason"] for p in cluster.api("/api/v1/pods")}
        missing = found.get("Deployment default/missing", "")
        crash = found.get("Deployment default/crash", "")
        if missing.startswith("ErrImageNeverPull") and crash.startswith("CrashLoopBackOff"):
            return found
        return None

    found = wait_for(reasons, timeout=60, what="reasons for the broken pods")
    assert found["Deployment default/missing"] == (
        f"ErrImageNeverPull: image 'gitops-example/absent:9' is not present on node {cluster.node}"
    )
    assert found["Deployment default/crash"].startswith(
        "CrashLoopBackOff: exited with code 3; restarting in "
    )
    assert len(cluster.ready_pods()) == 5
    web = [p for p in cluster.api("/api/v1/pods") if p["owner"] == "Deployment default/web"]
    assert all(p["ready"] for p in web) and len(web) == 5


def test_deleting_the_manifests_is_refused_until_allowed_then_removes_containers_and_chains(
    cluster: Cluster,
) -> None:
    assert any("-SVC-" in c for c in cluster.chains())
    running = set(cluster.containers())
    cluster.push(
        {
            "apps/web.yaml": None,
            "apps/missing.yaml": None,
            "apps/crash.yaml": None,
            "README.md": "nothing to run\n",
        },
        "remove everything",
    )
    rejected = wait_for(
        lambda: (
            (r := cluster.api("/api/v1/status")["last_rejected"])
            and "holds no objects" in r["errors"][0]
            and r
        ),
        timeout=30,
        what="the emptied revision to be refused",
    )
    assert "--allow-empty" in rejected["errors"][0]
    assert set(cluster.containers()) == running  # nothing stopped
    assert cluster.plane is not None
    (sync,) = cluster.plane.syncs
    sync.allow_empty = True  # what `gitops serve --allow-empty SOURCE` sets
    sync.trigger()
    wait_for(lambda: not cluster.containers(), timeout=60, what="containers removed")
    wait_for(
        lambda: not any("-SVC-" in c for c in cluster.chains()), timeout=30, what="service chains removed"
    )
    assert cluster.api("/api/v1/pods") == []
    assert cluster.api("/api/v1/services") == []
