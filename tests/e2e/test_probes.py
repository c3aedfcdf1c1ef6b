"""Probes on a real Docker engine: readiness gates the Service, liveness restarts."""

from __future__ import annotations

import subprocess
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.e2e.cluster import IMAGE, Cluster, http_get, running_cluster

pytestmark = pytest.mark.docker

MANIFESTS = textwrap.dedent(
    f"""\
    apiVersion: apps/v1
    kind: Deployment
    metadata:
      name: probed
    spec:
      replicas: 1
      selector:
        matchLabels: {{app: probed}}
      template:
        metadata:
          labels: {{app: probed}}
        spec:
          terminationGracePeriodSeconds: 1
          containers:
            - name: httpd
              image: {IMAGE}
              imagePullPolicy: Never
              command: ["sh", "-c"]
              args:
                - rm -f /www/ready.html /tmp/die; echo up > /www/index.html; exec httpd -f -p 8080 -h /www
              ports:
                - {{name: http, containerPort: 8080}}
              startupProbe:
                tcpSocket: {{port: http}}
                periodSeconds: 1
              readinessProbe:
                httpGet: {{path: /ready.html, port: http}}
                periodSeconds: 1
                failureThreshold: 1
              livenessProbe:
                exec:
                  command: ["sh", "-c", "test ! -f /tmp/die"]
                periodSeconds: 1
                failureThreshold: 2
    ---
    apiVersion: v1
    kind: Service
    metadata:
      name: probed
    spec:
      selector: {{app: probed}}
      ports:
        - {{name: http, port: 80, targetPort: http}}
    """
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(
        tmp_path_factory.mktemp("probes"),
        {"probed.yaml": MANIFESTS},
        "a probed web server",
        service_cidr="10.250.2.0/24",
    ) as c:
        yield c


def the_pod(cluster: Cluster) -> dict[str, Any] | None:
    pods = cluster.api("/api/v1/pods")
    return pods[0] if pods and pods[0]["phase"] == "Running" else None


def in_container(cluster: Cluster, *command: str) -> None:
    (info,) = cluster.containers().values()
    subprocess.run(["docker", "exec", info["id"], *command], check=True, capture_output=True)


def test_readiness_gates_the_service_and_liveness_restarts_the_container(cluster: Cluster) -> None:
    pod = wait_for(
        lambda: (p := the_pod(cluster)) and "Readiness probe failed" in p["reason"] and p,
        timeout=60,
        what="a running pod failing its readiness probe",
    )
    assert not pod["ready"]
    assert "HTTP 404" in pod["reason"]
    svc = cluster.service("probed")
    assert svc is not None and svc["endpoints"][0][1] == []
    with pytest.raises(OSError):
        http_get(svc["vip"], 80)

    in_container(cluster, "sh", "-c", "echo ready > /www/ready.html")
    wait_for(lambda: (p := the_pod(cluster)) and p["ready"], timeout=30, what="the pod to become ready")

    def answers() -> bool:
        try:
            return http_get(svc["vip"], 80) == "up"
        except OSError:
            return False

    wait_for(answers, timeout=20, what="the VIP to answer once the pod is ready")

    started = next(iter(cluster.containers().values()))["started"]
    in_container(cluster, "touch", "/tmp/die")
    wait_for(
        lambda: (p := the_pod(cluster)) and p["restarts"] >= 1,
        timeout=60,  # the kill, then the crash backoff (10 s) like any other restart
        what="a restart after the liveness probe failed",
    )
    after = next(iter(cluster.containers().values()))
    assert after["started"] != started
    assert after["run"] == 1  # a fresh container: the previous run's files are not in it
    fresh = subprocess.run(["docker", "exec", after["id"], "test", "-f", "/tmp/die"], check=False)
    assert fresh.returncode == 1
    events = [e["message"] for e in cluster.api("/api/v1/events?limit=200")]
    assert any("Liveness probe failed (exec sh -c test ! -f /tmp/die): exit code 1" in m for m in events)
