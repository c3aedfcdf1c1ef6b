"""A rolling update on real Docker drops no request.

Four replicas with a readiness probe are rolled to a new env value while a client sends
requests to the Service VIP the whole time; every request must succeed, and the answers
move from the old greeting to the new one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from tests.conftest import wait_for
from tests.e2e.cluster import Cluster, http_get, running_cluster, web_manifests

pytestmark = pytest.mark.docker

PROBE = """\
          readinessProbe:
            httpGet: {path: /, port: http}
            periodSeconds: 1
"""


def probed(greeting: str) -> str:
    text = web_manifests(replicas=4, greeting=greeting)
    marker = "          resources:"
    return text.replace(marker, PROBE + marker)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(
        tmp_path_factory.mktemp("rollout"), {"web.yaml": probed("hello")}, "web", service_cidr="10.250.4.0/24"
    ) as c:
        yield c


def test_a_rolling_update_under_load_fails_no_request(cluster: Cluster) -> None:
    assert "readinessProbe" in probed("x")

    def serving(greeting: str) -> bool:
        svc = cluster.service()
        pods = cluster.ready_pods()
        return (
            bool(svc)
            and len(pods) == 4
            and len(svc["endpoints"][0][1]) == 4
            and all(  # type: ignore[index]
                p["phase"] == "Running" for p in pods
            )
            and _answers(svc["vip"]) == greeting
        )  # type: ignore[index]

    wait_for(lambda: serving("hello"), timeout=90, what="4 ready pods")
    vip = cluster.service()["vip"]  # type: ignore[index]

    answers: dict[str, int] = {}
    failures: list[str] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                body = http_get(vip, 80, timeout=5)
                greeting = body.split(" from ")[0]
                answers[greeting] = answers.get(greeting, 0) + 1
            except OSError as exc:
                failures.append(repr(exc))
            time.sleep(0.01)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        time.sleep(1)
        cluster.push({"web.yaml": probed("bonjour")}, "web: bonjour")

        def rolled() -> bool:
            pods = cluster.api("/api/v1/pods")
            return (
                len(pods) == 4
                and all(p["ready"] for p in pods)
                and "Terminating" not in str(pods)
                and (
                    all(c["status"] == "running" for c in cluster.containers().values())
                    and len(cluster.containers()) == 4
                    and all("GREETING=bonjour" in c["env"] for c in cluster.containers().values())
                )
            )

        wait_for(rolled, timeout=120, what="the rollout to finish")
        time.sleep(3)
    finally:
        stop.set()
        thread.join(timeout=10)
    print(f"rollout under load: {answers} answered, {len(failures)} failed")
    assert failures == []
    assert answers.get("hello", 0) > 0 and answers.get("bonjour", 0) > 0, answers
    assert set(answers) == {"hello", "bonjour"}
    (workload,) = cluster.api("/api/v1/workloads")
    assert workload["complete"] and (workload["desired"], workload["updated"], workload["ready"]) == (4, 4, 4)


def _answers(vip: str) -> str:
    try:
        return http_get(vip, 80).split(" from ")[0]
    except OSError:
        return ""
