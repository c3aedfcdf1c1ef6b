"""On one real node, pods find Services as Kubernetes pods do: by DNS name in all four forms,
a headless Service by its ready pods' addresses, and by kubelet's environment variables;
NodePort and LoadBalancer Services answer on loopback and on the node's address."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from gitops.agents.agent import default_address
from tests.conftest import wait_for
from tests.e2e.cluster import IMAGE, Cluster, http_get, running_cluster, web_manifests

pytestmark = pytest.mark.docker

PEERS = textwrap.dedent(
    f"""\
    apiVersion: apps/v1
    kind: Deployment
    metadata:
      name: peer
    spec:
      replicas: 2
      selector:
        matchLabels: {{app: peer}}
      template:
        metadata:
          labels: {{app: peer}}
        spec:
          terminationGracePeriodSeconds: 1
          containers:
            - name: main
              image: {IMAGE}
              imagePullPolicy: Never
              command: ["sh", "-c", "touch /tmp/ready && exec sleep 100000"]
              readinessProbe:
                exec: {{command: ["test", "-f", "/tmp/ready"]}}
                periodSeconds: 1
                failureThreshold: 1
    ---
    apiVersion: v1
    kind: Service
    metadata:
      name: peers
    spec:
      clusterIP: None
      selector: {{app: peer}}
    ---
    apiVersion: v1
    kind: Service
    metadata:
      name: web-np
    spec:
      type: NodePort
      selector: {{app: web}}
      ports:
        - {{port: 80, targetPort: 8080, nodePort: 30480}}
    ---
    apiVersion: v1
    kind: Service
    metadata:
      name: web-lb
    spec:
      type: LoadBalancer
      selector: {{app: web}}
      ports:
        - {{port: 8481, targetPort: 8080}}
    """
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    files: dict[str, str | None] = {"web.yaml": web_manifests(replicas=2), "peers.yaml": PEERS}
    with running_cluster(tmp_path_factory.mktemp("discovery"), files, "services to find") as c:
        wait_for(lambda: len(c.ready_pods()) == 4, timeout=120, what="4 ready pods")
        yield c


def exec_in(cluster: Cluster, pod: dict[str, Any], command: str) -> str:
    container = cluster.containers()[f"{pod['namespace']}/{pod['name']}"]
    result = cluster.docker.containers.get(container["id"]).exec_run(["sh", "-c", command])
    output: bytes = result.output
    return output.decode(errors="replace")


def a_web_pod(cluster: Cluster) -> dict[str, Any]:
    return next(p for p in cluster.ready_pods() if p["name"].startswith("web-"))


def test_a_service_answers_by_all_four_dns_name_forms(cluster: Cluster) -> None:
    vip = cluster.service("web")["vip"]  # type: ignore[index]
    pod = a_web_pod(cluster)
    for name in ("web", "web.default.svc.cluster.local"):  # busybox's nslookup searches only a bare name
        looked_up = exec_in(cluster, pod, f"nslookup {name}")
        assert f"Address: {vip}" in looked_up, (name, looked_up)
    for name in ("web", "web.default", "web.default.svc", "web.default.svc.cluster.local"):
        # nc resolves as libc does: the search path, and ndots:5
        body = exec_in(cluster, pod, f'printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 3 {name} 80 | tail -n 1')
        assert body.startswith("hello from web-"), (name, body)


def test_a_headless_service_lists_exactly_its_ready_pods_and_drops_one_that_turns_unready(
    cluster: Cluster,
) -> None:
    assert cluster.service("peers")["vip"] in (None, "", "None")  # type: ignore[index]
    peers = sorted(
        (p for p in cluster.ready_pods() if p["name"].startswith("peer-")), key=lambda p: p["name"]
    )
    pod = a_web_pod(cluster)

    def listed() -> set[str]:
        out = exec_in(cluster, pod, "nslookup peers.default.svc.cluster.local")
        return {
            line.split()[-1] for line in out.splitlines() if line.startswith("Address:") and ":53" not in line
        }

    # Ready in the store reaches the agent's DNS through its watch and next sync: eventually,
    # as in Kubernetes (CI once asked before it had arrived, and found no address yet).
    wait_for(lambda: listed() == {p["pod_ip"] for p in peers}, timeout=20, what="both ready peers in DNS")
    exec_in(cluster, peers[0], "rm /tmp/ready")
    wait_for(lambda: listed() == {peers[1]["pod_ip"]}, timeout=20, what="the unready peer to leave DNS")
    exec_in(cluster, peers[0], "touch /tmp/ready")
    wait_for(lambda: listed() == {p["pod_ip"] for p in peers}, timeout=20, what="the peer to come back")


def test_pods_get_kubelets_service_variables(cluster: Cluster) -> None:
    vip = cluster.service("web")["vip"]  # type: ignore[index]
    env = exec_in(cluster, a_web_pod(cluster), "env").split()
    assert f"WEB_SERVICE_HOST={vip}" in env
    assert "WEB_SERVICE_PORT=80" in env and "WEB_SERVICE_PORT_HTTP=80" in env
    assert f"WEB_PORT_80_TCP=tcp://{vip}:80" in env
    assert not any(v.startswith("PEERS_SERVICE_HOST=") for v in env)  # headless: no variables


@pytest.mark.parametrize("port", [30480, 8481], ids=["NodePort", "LoadBalancer"])
def test_node_ports_and_load_balancers_answer_on_loopback_and_the_node_address(
    cluster: Cluster, port: int
) -> None:
    for address in ("127.0.0.1", default_address()):

        def answers(address: str = address) -> bool:
            try:
                return http_get(address, port).startswith("hello from web-")
            except OSError:
                return False

        wait_for(answers, timeout=20, what=f"{address}:{port} to answer")


def test_a_pod_on_the_pod_network_publishes_no_port_it_did_not_ask_for(cluster: Cluster) -> None:
    pod = a_web_pod(cluster)
    container = cluster.docker.containers.get(cluster.containers()[f"default/{pod['name']}"]["id"])
    assert not any(container.attrs["NetworkSettings"]["Ports"].values())
    assert pod["pod_ip"].startswith("10.244.")
