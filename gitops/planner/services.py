"""Services: which pods stand behind each Service, its virtual IP and its ports; pure.

A Service selects pods of its namespace by labels. Each port's `targetPort` (a number, or
the name of a container port) is resolved per pod. A Running, ready pod placed on a known,
Ready node is an endpoint, reached at its own address (`pod_ip:container_port`) from every
node; with `publishNotReadyAddresses` a Running pod that is not ready is one too (as in
Kubernetes, for the VIP as well as for DNS). `endpoints_for` turns one Service manifest
into `ServiceEndpoints`:

- ClusterIP: the VIP the store gave it, and per port its endpoints.
- headless (`clusterIP: None`): no VIP; DNS answers its name with `addresses`, the pods
  it selects (a pod whose `subdomain` is the Service and that sets `hostname` is named
  `hostname.service.namespace.svc`).
- NodePort and LoadBalancer: a ClusterIP Service whose ports also carry the node port the
  store allocated (`ServicePort.node_port`); a LoadBalancer answers its `port` on every
  node's addresses too (servicelb-style), which the node agents program.
- ExternalName: no VIP, no endpoints; DNS answers with a CNAME to `external_name`.

`sessionAffinity: ClientIP` (its timeout), `externalTrafficPolicy: Local` and
`internalTrafficPolicy: Local` are carried as they are for the node agents.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from gitops.model import (
    Endpoint,
    Manifest,
    Node,
    NodeName,
    ObjectKey,
    Pod,
    PodAddress,
    PodChange,
    ServiceEndpoints,
    ServicePort,
    ServiceType,
)

DEFAULT_AFFINITY_SECONDS = 10800  # sessionAffinityConfig.clientIP.timeoutSeconds' default: 3 hours
EXPOSED = ("NodePort", "LoadBalancer")
_TYPES: Mapping[str, ServiceType] = {
    "ClusterIP": "ClusterIP",
    "NodePort": "NodePort",
    "LoadBalancer": "LoadBalancer",
    "ExternalName": "ExternalName",
}


def service_type(service: Manifest) -> ServiceType:
    return _TYPES.get(str(service.spec.get("type", "ClusterIP")), "ClusterIP")


def is_headless(service: Manifest) -> bool:
    """`clusterIP: None` on a ClusterIP Service: DNS names its pods, there is no VIP."""
    return service_type(service) == "ClusterIP" and service.spec.get("clusterIP") == "None"


def needs_vip(service: Manifest) -> bool:
    """Whether the Service has a virtual IP: every one but headless and ExternalName."""
    return not is_headless(service) and service_type(service) != "ExternalName"


def port_key(port: ServicePort) -> str:
    """How a Service port is named in its node port allocation: `"<port>/<protocol>"`."""
    return f"{port.port}/{port.protocol}"


def service_ports(service: Manifest) -> tuple[ServicePort, ...]:
    """The ports as written; `node_port` is the one asked for (0: allocate one), and only
    on a NodePort or LoadBalancer Service."""
    exposed = service_type(service) in EXPOSED
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
                node_port=int(p.get("nodePort") or 0) if exposed else 0,
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


def _affinity_seconds(service: Manifest) -> int:
    if service.spec.get("sessionAffinity") != "ClientIP":
        return 0
    config = (service.spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}
    return int(config.get("timeoutSeconds") or DEFAULT_AFFINITY_SECONDS)


def _serving(pod: Pod, nodes: Mapping[NodeName, Node]) -> bool:
    """Ready to serve: Running, ready, not stopping, on a known Ready node."""
    return (
        pod.phase == "Running"
        and pod.ready
        and pod.terminating_at is None
        and pod.node is not None
        and pod.node in nodes
        and nodes[pod.node].ready  # a silent node's pods serve nobody we can vouch for
    )


def endpoints_for(
    service: Manifest,
    vip: str,
    pods: Sequence[Pod],
    nodes: Mapping[NodeName, Node],
    node_ports: Mapping[str, int] | None = None,
) -> ServiceEndpoints:
    """One Service with its endpoints; `node_ports` are those the store allocated
    (`port_key` -> node port), else the ones the manifest asks for are shown."""
    kind = service_type(service)
    allocated = node_ports or {}
    ports = tuple(
        # The store's allocation wins over what is asked: it is what the agents program.
        dataclasses.replace(p, node_port=allocated[port_key(p)]) if port_key(p) in allocated else p
        for p in service_ports(service)
    )
    base = ServiceEndpoints(
        namespace=service.key.namespace,
        name=service.key.name,
        vip=vip if needs_vip(service) else "",
        ports=ports,
        type=kind,
        headless=is_headless(service),
        session_affinity_seconds=_affinity_seconds(service),
        external_local=kind in EXPOSED and service.spec.get("externalTrafficPolicy") == "Local",
        internal_local=service.spec.get("internalTrafficPolicy") == "Local",
    )
    if kind == "ExternalName":
        return dataclasses.replace(base, external_name=str(service.spec.get("externalName", "")))

    selector = {str(k): str(v) for k, v in (service.spec.get("selector") or {}).items()}
    publish_not_ready = service.spec.get("publishNotReadyAddresses") is True
    published = sorted(
        (
            p
            for p in pods
            if p.namespace == service.key.namespace
            and p.pod_ip
            and p.node is not None
            and p.node in nodes
            and selects(selector, p)
            and (_serving(p, nodes) or (publish_not_ready and p.phase == "Running"))
        ),
        key=lambda p: p.name,
    )
    addresses = tuple(
        PodAddress(
            pod=p.id,
            ip=p.pod_ip,
            # Kubernetes names a pod in its Service's DNS only when it asks for a hostname.
            hostname=p.spec.hostname if p.spec.hostname and p.spec.subdomain == service.key.name else "",
            ready=_serving(p, nodes),
        )
        for p in published
    )
    per_port = []
    for port in ports:
        found = []
        for pod in published:
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
    return dataclasses.replace(base, endpoints=tuple(per_port), addresses=addresses)


def all_endpoints(
    desired: Sequence[Manifest],
    vips: Mapping[ObjectKey, str],
    pods: Sequence[Pod],
    nodes: Sequence[Node],
    node_ports: Mapping[ObjectKey, Mapping[str, int]] | None = None,
) -> tuple[ServiceEndpoints, ...]:
    """Every Service's endpoints, by key. A Service that needs a VIP and has none in `vips`
    (not yet allocated) is left out; headless and ExternalName Services never need one.
    `node_ports` are the store's allocations (`Store.node_ports()`).

    Each Service looks only at the pods carrying the rarest pair of its selector in its
    namespace (an index built once): 1,500 Services over 150,000 pods are not 225 million
    label checks; without a Service, no index."""
    services = [
        m
        for m in sorted(desired, key=lambda m: m.key)
        if m.key.kind == "Service" and (m.key in vips or not needs_vip(m))
    ]
    if not services:
        return ()
    by_name = {n.name: n for n in nodes}
    allocated = node_ports or {}
    in_namespace: dict[str, list[Pod]] = {}
    by_pair: dict[tuple[str, str, str], list[Pod]] = {}
    for pod in pods:
        in_namespace.setdefault(pod.namespace, []).append(pod)
        for key, value in pod.labels:
            by_pair.setdefault((pod.namespace, key, value), []).append(pod)

    def candidates(service: Manifest) -> Sequence[Pod]:
        namespace = service.key.namespace
        selector = service.spec.get("selector") or {}
        if not isinstance(selector, Mapping) or not selector:
            return in_namespace.get(namespace, [])
        lists = [by_pair.get((namespace, str(k), str(v)), []) for k, v in selector.items()]
        return min(lists, key=len)

    return tuple(
        endpoints_for(m, vips.get(m.key, ""), candidates(m), by_name, allocated.get(m.key)) for m in services
    )


class KeptEndpoints:
    """`all_endpoints`, kept from one call to the next: only the Services something moved
    under are computed again.

    Each Service's selected pods (those of its namespace its selector selects, whatever
    their state) are kept by id, and an index from each (namespace, label, value) of a
    selector to the Services holding it finds a changed pod's Services from its own labels.
    A Service is computed again when a pod it selected or selects now changed (the caller
    says which: `PodChange`s, from `gitops.model.pod_changes`), when its manifest, VIP or
    node ports changed, or when a node one of its pods is on changed (readiness, address).
    At 150,000 pods and 1,500 Services, computing and encoding every Service took 1.9 s of
    the serving process's interpreter at each move of any pod while pods came up; one pod's
    move now costs 11 ms (`bench/endpoints.py`). The result is what `all_endpoints` gives for the same inputs
    (tests hold it to that, over random changes); without changes (None), it is computed
    from scratch."""

    def __init__(self) -> None:
        self._services: dict[ObjectKey, Manifest] = {}
        self._vips: Mapping[ObjectKey, str] = {}
        self._node_ports: Mapping[ObjectKey, Mapping[str, int]] = {}
        self._nodes: dict[NodeName, Node] = {}
        self._selectors: dict[ObjectKey, dict[str, str]] = {}
        # (namespace, label, value) of a selector -> the Services whose selector holds it
        self._watching: dict[tuple[str, str, str], set[ObjectKey]] = {}
        self._selected: dict[ObjectKey, dict[str, Pod]] = {}  # Service -> the pods it selects, by id
        self._endpoints: dict[ObjectKey, ServiceEndpoints] = {}
        self._result: tuple[ServiceEndpoints, ...] = ()
        self.recomputed: frozenset[ObjectKey] = frozenset()  # the Services the last call computed

    def update(
        self,
        desired: Sequence[Manifest],
        vips: Mapping[ObjectKey, str],
        pods: Sequence[Pod],
        nodes: Sequence[Node],
        node_ports: Mapping[ObjectKey, Mapping[str, int]] | None,
        *,
        changed: Sequence[PodChange] | None,
    ) -> tuple[ServiceEndpoints, ...]:
        """Every Service's endpoints, as `all_endpoints(desired, vips, pods, nodes,
        node_ports)`; `changed` are the pods that changed since the last call's `pods`
        (None: every Service is computed)."""
        services = {
            m.key: m for m in desired if m.key.kind == "Service" and (m.key in vips or not needs_vip(m))
        }
        allocated = node_ports or {}
        by_name = {n.name: n for n in nodes}
        if changed is None:
            self._selectors, self._watching, self._selected, self._endpoints = {}, {}, {}, {}
            fresh = set(services)
            redo = set(services)
        else:
            for key in self._services.keys() - services.keys():
                self._forget(key)
            fresh = {
                key
                for key, m in services.items()
                if key not in self._selected or _selector(m) != self._selectors[key]
            }
            for key in fresh & self._selected.keys():
                self._forget(key)  # its selector changed: its pods are found again
            redo = set(fresh)
            redo.update(
                key
                for key, m in services.items()
                if m != self._services.get(key)
                or vips.get(key) != self._vips.get(key)
                or allocated.get(key) != self._node_ports.get(key)
            )
            redo.update(self._moved(changed))
            if by_name != self._nodes:
                moved = {
                    n for n in by_name.keys() | self._nodes.keys() if by_name.get(n) != self._nodes.get(n)
                }
                redo.update(key for key, pods_of in self._selected.items() if _on(pods_of, moved))
        self._find(fresh, services, pods)
        for key in redo:
            self._endpoints[key] = endpoints_for(
                services[key],
                vips.get(key, ""),
                list(self._selected[key].values()),
                by_name,
                allocated.get(key),
            )
        if redo or services.keys() != self._services.keys():
            self._result = tuple(self._endpoints[key] for key in sorted(services))
        self._services, self._vips, self._node_ports, self._nodes = services, vips, allocated, by_name
        self.recomputed = frozenset(redo)
        return self._result

    @property
    def keeps(self) -> bool:
        """Whether it keeps a Service's selected pods (else no pod's change matters to it)."""
        return bool(self._selected)

    def _forget(self, key: ObjectKey) -> None:
        namespace = key.namespace
        for label, value in self._selectors.pop(key, {}).items():
            watching = self._watching.get((namespace, label, value))
            if watching is not None:
                watching.discard(key)
                if not watching:
                    del self._watching[(namespace, label, value)]
        self._selected.pop(key, None)
        self._endpoints.pop(key, None)

    def _moved(self, changed: Sequence[PodChange]) -> set[ObjectKey]:
        """Bring the kept Services' selected pods up to date with `changed`; the Services
        one of them was or is selected by."""
        moved: set[ObjectKey] = set()
        watching, selected = self._watching, self._selected
        for before, after in changed:
            if before is not None:
                for label, value in before.labels:
                    for key in watching.get((before.namespace, label, value), ()):
                        if selected[key].pop(before.id, None) is not None:
                            moved.add(key)
            if after is not None:
                for label, value in after.labels:
                    for key in watching.get((after.namespace, label, value), ()):
                        if selects(self._selectors[key], after):
                            selected[key][after.id] = after
                            moved.add(key)
        return moved

    def _find(
        self, fresh: set[ObjectKey], services: Mapping[ObjectKey, Manifest], pods: Sequence[Pod]
    ) -> None:
        """Index the `fresh` Services' selectors and find the pods each selects (one walk of
        `pods` for all of them)."""
        if not fresh:
            return
        found: dict[tuple[str, str, str], list[ObjectKey]] = {}
        for key in fresh:
            selector = self._selectors[key] = _selector(services[key])
            self._selected[key] = {}
            for label, value in selector.items():
                self._watching.setdefault((key.namespace, label, value), set()).add(key)
                found.setdefault((key.namespace, label, value), []).append(key)
        for pod in pods:
            for label, value in pod.labels:
                for key in found.get((pod.namespace, label, value), ()):
                    if selects(self._selectors[key], pod):
                        self._selected[key][pod.id] = pod


def _selector(service: Manifest) -> dict[str, str]:
    selector = service.spec.get("selector") or {}
    if not isinstance(selector, Mapping):
        return {}
    return {str(k): str(v) for k, v in selector.items()}


def _on(pods: Mapping[str, Pod], nodes: set[NodeName]) -> bool:
    return any(p.node in nodes for p in pods.values())
