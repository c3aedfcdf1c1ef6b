"""Failures end to end on real Docker: a rollout that never gets ready, with and without
rollback, and a container that keeps exiting."""

from __future__ import annotations

import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.e2e.cluster import IMAGE, Cluster, http_get, running_cluster

pytestmark = pytest.mark.docker

SERVE = 'echo "{greeting} from $(hostname)" > /www/index.html && exec httpd -f -p 8080 -h /www'


def app(name: str, command: str, *, rollback: bool) -> str:
    # Indented like the template below, before dedent.
    annotations = '\n          annotations: {"gitops.dev/rollback-on-failure": "true"}' if rollback else ""
    return textwrap.dedent(
        f"""\
        apiVersion: apps/v1
        kind: Deployment
        metadata:
          name: {name}{annotations}
        spec:
          replicas: 3
          progressDeadlineSeconds: 8
          strategy: {{rollingUpdate: {{maxSurge: 1, maxUnavailable: 1}}}}
          selector: {{matchLabels: {{app: {name}}}}}
          template:
            metadata: {{labels: {{app: {name}}}}}
            spec:
              terminationGracePeriodSeconds: 1
              containers:
                - name: main
                  image: {IMAGE}
                  imagePullPolicy: Never
                  command: ["sh", "-c", {command!r}]
                  ports: [{{name: http, containerPort: 8080}}]
                  readinessProbe: {{httpGet: {{path: /, port: http}}, periodSeconds: 1}}
        ---
        apiVersion: v1
        kind: Service
        metadata: {{name: {name}}}
        spec:
          selector: {{app: {name}}}
          ports: [{{name: http, port: 80, targetPort: http}}]
        """
    )


CRASH = textwrap.dedent(
    f"""\
    apiVersion: apps/v1
    kind: Deployment
    metadata: {{name: crash}}
    spec:
      replicas: 1
      selector: {{matchLabels: {{app: crash}}}}
      template:
        metadata: {{labels: {{app: crash}}}}
        spec:
          containers:
            - name: main
              image: {IMAGE}
              imagePullPolicy: Never
              command: ["sh", "-c", "echo giving up; exit 1"]
    """
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(
        tmp_path_factory.mktemp("failures"),
        {
            "stuck.yaml": app("stuck", SERVE.format(greeting="v1"), rollback=False),
            "safe.yaml": app("safe", SERVE.format(greeting="v1"), rollback=True),
        },
        "two apps",
        service_cidr="10.250.5.0/24",
    ) as c:
        yield c


def workloads(cluster: Cluster) -> dict[str, dict[str, Any]]:
    return {w["deployment"]: w for w in cluster.api("/api/v1/workloads")}


def test_a_never_ready_rollout_keeps_serving_fails_at_its_deadline_and_rolls_back_if_asked(
    cluster: Cluster,
) -> None:
    def both_complete() -> bool:
        found = workloads(cluster)  # one read: the two checks must see the same state
        return len(found) == 2 and all(w["state"] == "complete" for w in found.values())

    wait_for(both_complete, timeout=90, what="both apps complete")
    vips = {s["name"]: s["vip"] for s in cluster.api("/api/v1/services")}

    def serving(vip: str) -> bool:
        try:
            return http_get(vip, 80).startswith("v1 from ")
        except OSError:
            return False

    # "complete" is the control plane's view; the node's proxy learns the endpoints a moment
    # later (as kube-proxy does), so the client starts once both Services answer.
    for vip in vips.values():
        wait_for(lambda vip=vip: serving(vip), timeout=10, what=f"{vip} to answer")
    failures: list[str] = []
    answers: dict[str, set[str]] = {"stuck": set(), "safe": set()}
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            for name, vip in vips.items():
                try:
                    answers[name].add(http_get(vip, 80, timeout=5).split(" from ")[0])
                except OSError as exc:
                    failures.append(f"{name}: {exc!r}")
            time.sleep(0.05)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        cluster.push(
            {
                "stuck.yaml": app("stuck", "sleep 3600", rollback=False),
                "safe.yaml": app("safe", "sleep 3600", rollback=True),
            },
            "a version that never gets ready",
        )
        wait_for(
            lambda: (
                workloads(cluster)["default/stuck"]["state"] == "failed"
                and workloads(cluster)["default/safe"]["state"] == "rolled back"
            ),
            timeout=60,
            what="the deadline to pass",
        )

        def safe_back() -> bool:
            pods = [p for p in cluster.api("/api/v1/pods") if p["owner"] == "Deployment default/safe"]
            return len(pods) == 3 and all(p["ready"] for p in pods)

        wait_for(safe_back, timeout=60, what="the rolled-back app to run its old template again")
        time.sleep(2)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert failures == []
    assert answers == {"stuck": {"v1"}, "safe": {"v1"}}
    stuck = workloads(cluster)["default/stuck"]
    assert stuck["reason"].startswith("progress deadline exceeded: no progress for 8s")
    assert stuck["ready"] >= 3 - 1  # never below replicas - maxUnavailable
    safe = workloads(cluster)["default/safe"]
    assert safe["reason"].endswith(f"; rolled back to {safe['history'][-1]}")


def test_a_container_that_keeps_exiting_is_restarted_with_growing_delays(cluster: Cluster) -> None:
    cluster.push({"crash.yaml": CRASH}, "a crashing app")
    seen: list[tuple[int, float]] = []

    def restarted_twice() -> bool:
        pods = [p for p in cluster.api("/api/v1/pods") if p["owner"] == "Deployment default/crash"]
        if pods and (not seen or pods[0]["restarts"] != seen[-1][0]):
            seen.append((pods[0]["restarts"], time.monotonic()))
        return bool(seen) and seen[-1][0] >= 2

    wait_for(restarted_twice, timeout=90, interval=0.2, what="two restarts")
    times = {restarts: t for restarts, t in seen}
    # The container exits at once; restarts come 10 s, then 20 s after each exit. The first
    # sighting is the pod's creation, a moment before its container even starts and exits.
    first, second = times[1] - times[0], times[2] - times[1]
    assert 9 <= first <= 20, seen
    assert 18 <= second <= 28 and second > first, seen
    (pod,) = [p for p in cluster.api("/api/v1/pods") if p["owner"] == "Deployment default/crash"]
    assert pod["last_log"] == "giving up\n"
    assert pod["reason"].startswith("CrashLoopBackOff: exited with code 1; restarting in ")
