"""Service endpoints are the ready pods the selector matches, per port; what each Service
type makes of them (headless, ExternalName, node ports, affinity and traffic policies)."""

from __future__ import annotations

import dataclasses

from gitops.model import Manifest, Node, NodeName, ObjectKey, Pod, PodAddress
from gitops.planner import all_endpoints, plan
from tests.planner.factories import deployment, manifest, service


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


def svc(name: str = "web", **spec: object) -> Manifest:
    body: dict[str, object] = {
        "selector": {"app": "web"},
        "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
    }
    body.update(spec)
    return manifest("Service", name, spec=body)


VIP = {ObjectKey("Service", "default", "web"): "10.243.0.5"}


def test_a_headless_service_has_no_vip_and_names_its_pods() -> None:
    """Headless: no VIP (none needed), DNS answers with the ready pods; a pod whose subdomain
    is the Service and that sets a hostname is named by it."""
    template = {"hostname": "db-0", "subdomain": "web", "containers": [{"name": "main", "image": "db:1"}]}
    desired = [
        manifest(
            "Deployment",
            "db",
            spec={
                "replicas": 1,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": template},
            },
        ),
        deployment(replicas=1),
        svc(clusterIP="None"),
    ]
    pods = running([a.pod for a in plan(desired, []).create])
    (headless,) = all_endpoints(desired, {}, pods, NODES)
    assert (headless.vip, headless.headless, headless.type) == ("", True, "ClusterIP")
    by_ip = {a.ip: a for a in headless.addresses}
    assert sorted(by_ip) == ["172.17.0.2", "172.17.0.3"]
    db = next(p for p in pods if p.owner.name == "db")
    assert by_ip[db.pod_ip] == PodAddress(db.id, db.pod_ip, "db-0", True)
    assert all(a.hostname == "" for a in headless.addresses if a.pod != db.id)
    assert len(headless.endpoints[0][1]) == 2  # its port still lists the pods (for SRV records)


def test_a_pod_of_another_subdomain_or_without_hostname_is_not_named() -> None:
    desired = [deployment(replicas=1), svc(clusterIP="None")]
    pods = running([a.pod for a in plan(desired, []).create])
    other = dataclasses.replace(
        pods[0], spec=dataclasses.replace(pods[0].spec, hostname="x", subdomain="other")
    )
    bare = dataclasses.replace(pods[0], spec=dataclasses.replace(pods[0].spec, subdomain="web"))
    for pod in (other, bare):
        (headless,) = all_endpoints(desired, {}, [pod], NODES)
        assert [a.hostname for a in headless.addresses] == [""]


def test_publish_not_ready_addresses_publishes_running_pods_that_are_not_ready() -> None:
    desired = [deployment(replicas=2), svc(clusterIP="None", publishNotReadyAddresses=True)]
    pods = running([a.pod for a in plan(desired, []).create], ready=False)
    pending = dataclasses.replace(pods[1], phase="Pending", pod_ip="")
    (headless,) = all_endpoints(desired, {}, [pods[0], pending], NODES)
    assert [(a.ip, a.ready) for a in headless.addresses] == [("172.17.0.2", False)]
    assert [e.pod_ip for e in headless.endpoints[0][1]] == ["172.17.0.2"]
    (without,) = all_endpoints([desired[0], svc(clusterIP="None")], {}, [pods[0], pending], NODES)
    assert without.addresses == () and without.endpoints[0][1] == ()


def test_an_external_name_service_has_no_vip_and_no_endpoints() -> None:
    desired = [deployment(replicas=1), svc(type="ExternalName", externalName="db.example.com")]
    pods = running([a.pod for a in plan(desired, []).create])
    (external,) = all_endpoints(desired, VIP, pods, NODES)
    assert (external.type, external.vip, external.external_name) == ("ExternalName", "", "db.example.com")
    assert external.endpoints == () and external.addresses == ()


def test_a_service_that_needs_a_vip_waits_for_one() -> None:
    desired = [deployment(replicas=1), svc(type="NodePort")]
    assert all_endpoints(desired, {}, [], NODES) == ()


def test_node_ports_are_the_stores_allocation_else_the_ones_asked_for() -> None:
    ports = [
        {"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080},
        {"name": "dns", "port": 53, "protocol": "UDP"},
    ]
    desired = [svc(type="LoadBalancer", ports=ports)]
    (asked,) = all_endpoints(desired, VIP, [], NODES)
    assert [(p.port, p.node_port) for p in asked.ports] == [(80, 30080), (53, 0)]
    (allocated,) = all_endpoints(
        desired, VIP, [], NODES, {ObjectKey("Service", "default", "web"): {"80/TCP": 30080, "53/UDP": 31053}}
    )
    assert [(p.port, p.node_port) for p in allocated.ports] == [(80, 30080), (53, 31053)]
    assert [p.node_port for p, _ in allocated.endpoints] == [30080, 31053]
    assert allocated.type == "LoadBalancer"


def test_affinity_and_traffic_policies_are_carried_for_the_agents() -> None:
    (plain,) = all_endpoints([svc()], VIP, [], NODES)
    assert (plain.session_affinity_seconds, plain.external_local, plain.internal_local) == (0, False, False)
    (sticky,) = all_endpoints([svc(sessionAffinity="ClientIP")], VIP, [], NODES)
    assert sticky.session_affinity_seconds == 10800  # Kubernetes' default: 3 hours
    configured = svc(
        type="NodePort",
        sessionAffinity="ClientIP",
        sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}},
        externalTrafficPolicy="Local",
        internalTrafficPolicy="Local",
    )
    (local,) = all_endpoints([configured], VIP, [], NODES)
    assert (local.session_affinity_seconds, local.external_local, local.internal_local) == (60, True, True)


def test_endpoints_are_pod_addresses_on_every_node() -> None:
    """Endpoints carry the pod's own address and container port; a pod without an address
    (not reported yet) is no endpoint."""
    desired = [deployment(replicas=2), svc()]
    pods = running([a.pod for a in plan(desired, []).create])
    no_ip = dataclasses.replace(pods[1], pod_ip="")
    (web,) = all_endpoints(desired, VIP, [pods[0], no_ip], NODES)
    assert [(e.pod_ip, e.container_port) for e in web.endpoints[0][1]] == [("172.17.0.2", 8080)]
