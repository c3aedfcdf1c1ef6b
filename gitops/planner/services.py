"""Services: which ready pods stand behind each virtual IP and port; a pure function.

A Service selects pods of its namespace by labels. Each port's `targetPort` (a number, or
the name of a container port) is resolved per pod. Only Running and ready pods placed on a
known, Ready node are endpoints. An endpoint carries both the pod's own address (for the node it
runs on) and its node's address with the published host port (for every other node).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gitops.model import (
    Endpoint,
    Manifest,
    Node,
    NodeName,
    ObjectKey,
    Pod,
    ServiceEndpoints,
    ServicePort,
)


def service_ports(service: Manifest) -> tuple[ServicePort, ...]:
    ports = []
    for p in service.spec.get("ports") or []:
        target = p.get("targetPort", p["port"])
        target_port: int | str = (
            int(target) if isinstance(target, int) or str(target).isdigit() else str(target)
        )
        ports.append(
            ServicePort(
                port=int(p["port"]),
                target_port=target_port,
                protocol=str(p.get("protocol", "TCP")),
                name=str(p.get("name", "")),
            )
        )
    return tuple(ports)


def selects(selector: Mapping[str, str], pod: Pod) -> bool:
    if not selector:
        return False
    labels = pod.label_map
    return all(labels.get(k) == v for k, v in selector.items())


def _container_port(pod: Pod, port: ServicePort) -> int | None:
    if isinstance(port.target_port, int):
        return port.target_port
    for p in pod.spec.ports:
        if p.name == port.target_port and p.protocol == port.protocol:
            return p.container_port
    return None


def endpoints_for(
    service: Manifest, vip: str, pods: Sequence[Pod], nodes: Mapping[NodeName, Node]
) -> ServiceEndpoints:
    selector = {str(k): str(v) for k, v in (service.spec.get("selector") or {}).items()}
    ports = service_ports(service)
    ready = [
        p
        for p in pods
        if p.namespace == service.key.namespace
        and p.phase == "Running"
        and p.ready
        and p.terminating_at is None
        and p.node is not None
        and p.node in nodes
        and nodes[p.node].ready  # a silent node's pods serve nobody we can vouch for
        and selects(selector, p)
    ]
    per_port = []
    for port in ports:
        found = []
        for pod in sorted(ready, key=lambda p: p.name):
            container_port = _container_port(pod, port)
            if container_port is None or pod.node is None:
                continue
            host_port = next(
                (h for c, proto, h in pod.host_ports if c == container_port and proto == port.protocol),
                0,
            )
            found.append(
                Endpoint(
                    pod=pod.id,
                    node=pod.node,
                    pod_ip=pod.pod_ip,
                    container_port=container_port,
                    node_address=nodes[pod.node].address,
                    host_port=host_port,
                )
            )
        per_port.append((port, tuple(found)))
    return ServiceEndpoints(
        namespace=service.key.namespace,
        name=service.key.name,
        vip=vip,
        ports=ports,
        endpoints=tuple(per_port),
    )


def all_endpoints(
    desired: Sequence[Manifest],
    vips: Mapping[ObjectKey, str],
    pods: Sequence[Pod],
    nodes: Sequence[Node],
) -> tuple[ServiceEndpoints, ...]:
    by_name = {n.name: n for n in nodes}
    return tuple(
        endpoints_for(m, vips[m.key], pods, by_name)
        for m in sorted(desired, key=lambda m: m.key)
        if m.key.kind == "Service" and m.key in vips
    )
