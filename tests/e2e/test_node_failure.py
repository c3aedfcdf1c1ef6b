"""Node failure end to end: two agents on one Docker engine, one of them killed.

With a 3 s heartbeat grace and a 3 s toleration, the dead node's pods are replaced on the
other node; when the dead agent comes back it removes the containers it no longer owns.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import wait_for
from tests.e2e.cluster import Cluster, running_cluster, web_manifests

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(
        tmp_path_factory.mktemp("failure"),
        {"web.yaml": web_manifests(replicas=2)},
        "web",
        service_cidr="10.250.3.0/24",
        heartbeat_grace=3,
        not_ready_toleration=3,
    ) as c:
        yield c


def test_a_dead_nodes_pods_move_and_the_returning_agent_stops_its_copies(cluster: Cluster) -> None:
    first = cluster.node
    wait_for(
        lambda: len([c for c in cluster.containers().values() if c["status"] == "running"]) == 2,
        what="2 pods",
    )
    spare = first + "-spare"
    cluster.start_agent(spare)
    wait_for(
        lambda: any(n["name"] == spare and n["ready"] for n in cluster.api("/api/v1/nodes")),
        what="the spare node",
    )
    old = set(cluster.containers())

    cluster.kill_agent(first)

    def moved() -> bool:
        pods = cluster.api("/api/v1/pods")
        return len(pods) == 2 and all(p["node"] == spare and p["ready"] for p in pods)

    wait_for(moved, timeout=60, what="the pods to be replaced on the spare node")
    assert not {p["id"] for p in cluster.api("/api/v1/pods")} & old
    nodes = {n["name"]: n for n in cluster.api("/api/v1/nodes")}
    assert not nodes[first]["ready"]
    stops = [e["message"] for e in cluster.api("/api/v1/events?limit=200") if e["reason"] == "Stopped"]
    assert any(m.startswith(f"node {first} has been NotReady for ") for m in stops)
    # The dead agent's containers still run: nothing could stop them.
    assert set(cluster.containers(first)) == old

    cluster.start_agent(first)
    wait_for(
        lambda: not cluster.containers(first), timeout=30, what="the returning agent to remove its old pods"
    )
    assert len([c for c in cluster.containers(spare).values() if c["status"] == "running"]) == 2
