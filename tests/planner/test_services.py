"""Service endpoints are the ready pods the selector matches, per port."""

from __future__ import annotations

import dataclasses

from gitops.model import Node, NodeName, ObjectKey, Pod
from gitops.planner import all_endpoints, plan
from tests.planner.factories import deployment, service


def running(pods: list[Pod], ready: bool = True) -> list[Pod]:
    return [
        dataclasses.replace(
            p,
            node=NodeName("n1"),
            phase="Running",
            ready=ready,
            pod_ip=f"172.17.0.{i + 2}",
            host_ports=((8080, "TCP", 30000 + i),),
        )
        for i, p in enumerate(pods)
    ]


NODES = [Node(NodeName("n1"), address="192.0.2.10")]


def test_ready_pods_matching_the_selector_are_endpoints() -> None:
    desired = [
        deployment(replicas=2, ports=[{"containerPort": 8080, "name": "http"}]),
        service("web", {"app": "web"}, target="http"),
    ]
    pods = running([a.pod for a in plan(desired, []).create])
    (svc,) = all_endpoints(desired, {ObjectKey("Service", "default", "web"): "10.243.0.5"}, pods, NODES)
    (port, endpoints) = svc.endpoints[0]
    assert port.port == 80
    assert sorted((e.pod_ip, e.container_port, e.node_address, e.host_port) for e in endpoints) == [
        ("172.17.0.2", 8080, "192.0.2.10", 30000),
        ("172.17.0.3", 8080, "192.0.2.10", 30001),
    ]


def test_unready_pods_are_not_endpoints() -> None:
    desired = [deployment(replicas=2), service("web", {"app": "web"})]
    pods = running([a.pod for a in plan(desired, []).create], ready=False)
    (svc,) = all_endpoints(desired, {ObjectKey("Service", "default", "web"): "10.243.0.5"}, pods, NODES)
    assert svc.endpoints[0][1] == ()


def test_a_named_target_port_missing_on_the_pod_excludes_it() -> None:
    desired = [deployment(replicas=1), service("web", {"app": "web"}, target="http")]
    pods = running([a.pod for a in plan(desired, []).create])
    assert pods[0].spec.ports == ()
    (svc,) = all_endpoints(desired, {ObjectKey("Service", "default", "web"): "10.243.0.5"}, pods, NODES)
    assert svc.endpoints[0][1] == ()


def test_a_selector_for_other_labels_selects_nothing() -> None:
    desired = [deployment(replicas=1), service("web", {"app": "api"})]
    pods = running([a.pod for a in plan(desired, []).create])
    (svc,) = all_endpoints(desired, {ObjectKey("Service", "default", "web"): "10.243.0.5"}, pods, NODES)
    assert svc.endpoints[0][1] == ()
