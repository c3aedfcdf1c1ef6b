"""What a pod is told about the cluster when its container starts, as kubelet tells it.

- `resolv_conf`: the pod's /etc/resolv.conf (bind-mounted read-only over Docker's), from its
  `dnsPolicy` and `dnsConfig`. `ClusterFirst` (the default) sends every query to the node's
  cluster DNS, with the search path `<ns>.svc.<domain> svc.<domain> <domain>` (then the
  node's own search domains) and `ndots:5`, so `web`, `web.shop` and the full name all
  resolve. `Default` gives the node's own resolvers (loopback ones, such as a local stub
  resolver, cannot be reached from a pod: they are replaced by the cluster DNS, which
  forwards). `None` gives exactly `dnsConfig`. `dnsConfig` adds to the others: nameservers
  and search domains appended (at most 3 and 32, duplicates dropped), options replaced by
  name.
- `service_env`: the Docker-links style variables of every Service of the pod's namespace
  that has a virtual IP (`{NAME}_SERVICE_HOST`, `{NAME}_SERVICE_PORT`,
  `{NAME}_SERVICE_PORT_{PORTNAME}`, `{NAME}_PORT`, `{NAME}_PORT_{port}_{PROTO}[_PROTO|_PORT|_ADDR]`),
  unless the pod says `enableServiceLinks: false`. They are given at container start, not
  part of the pod's template: a Service created later reaches a pod at its next start, as
  with kubelet. The pod's own variables win a clash.

- `field_value`: a downward API field (`metadata.name`, `status.podIP`, labels, ...) of a
  pod (`PodFacts`), for env variables and downwardAPI volume files.

All are pure functions of their inputs.
"""

from __future__ import annotations

import ipaddress
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from gitops.model import PodSpec, ServiceEndpoints

MAX_NAMESERVERS = 3
MAX_SEARCHES = 32


@dataclass(frozen=True)
class HostResolv:
    """The node's own /etc/resolv.conf, as far as pods care."""

    nameservers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[tuple[str, str], ...] = ()


def parse_resolv_conf(text: str) -> HostResolv:
    nameservers: list[str] = []
    searches: list[str] = []
    options: list[tuple[str, str]] = []
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split(";", 1)[0].split()
        if not words:
            continue
        if words[0] == "nameserver" and len(words) > 1:
            nameservers.append(words[1])
        elif words[0] in ("search", "domain"):
            searches = words[1:]  # the last search or domain line wins, as in glibc
        elif words[0] == "options":
            for option in words[1:]:
                name, _, value = option.partition(":")
                options.append((name, value))
    return HostResolv(tuple(nameservers), tuple(searches), tuple(options))


def read_host_resolv(path: str = "/etc/resolv.conf") -> HostResolv:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return parse_resolv_conf(f.read())
    except OSError:
        return HostResolv()


def _unique(values: Sequence[str], limit: int) -> list[str]:
    seen: list[str] = []
    for v in values:
        if v and v not in seen:
            seen.append(v)
    return seen[:limit]


def _reachable_from_pods(address: str) -> bool:
    try:
        return not ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def resolv_conf(spec: PodSpec, namespace: str, *, cluster_dns: str, domain: str, host: HostResolv) -> str:
    """The pod's /etc/resolv.conf (see the module doc)."""
    policy = spec.dns_policy
    nameservers: list[str]
    searches: list[str]
    options: dict[str, str]
    if policy == "None":
        nameservers, searches, options = [], [], {}
    elif policy == "Default":
        nameservers = [a for a in host.nameservers if _reachable_from_pods(a)] or [cluster_dns]
        searches = list(host.searches)
        options = dict(host.options)
    else:  # ClusterFirst, and ClusterFirstWithHostNet (pods never share the host's network here)
        nameservers = [cluster_dns]
        searches = [f"{namespace}.svc.{domain}", f"svc.{domain}", domain, *host.searches]
        options = {"ndots": "5"}
    nameservers = _unique([*nameservers, *spec.dns_nameservers], MAX_NAMESERVERS)
    searches = _unique([*searches, *spec.dns_searches], MAX_SEARCHES)
    for name, value in spec.dns_options:
        options[name] = value
    lines = [f"nameserver {n}" for n in nameservers]
    if searches:
        lines.append("search " + " ".join(searches))
    if options:
        lines.append("options " + " ".join(f"{k}:{v}" if v else k for k, v in options.items()))
    return "\n".join(lines) + "\n"


def _env_name(name: str) -> str:
    return name.upper().replace("-", "_")


def service_env(services: Sequence[ServiceEndpoints], spec: PodSpec, namespace: str) -> list[tuple[str, str]]:
    """The service variables for a pod of `namespace` (see the module doc), in Service name
    order; none with `enableServiceLinks: false`."""
    if not spec.enable_service_links:
        return []
    env: list[tuple[str, str]] = []
    for svc in sorted(services, key=lambda s: s.name):
        if svc.namespace != namespace or not svc.vip or svc.headless or svc.type == "ExternalName":
            continue
        if not svc.ports:
            continue
        name, ip = _env_name(svc.name), svc.vip
        first = svc.ports[0]
        env.append((f"{name}_SERVICE_HOST", ip))
        env.append((f"{name}_SERVICE_PORT", str(first.port)))
        for port in svc.ports:
            if port.name:
                env.append((f"{name}_SERVICE_PORT_{_env_name(port.name)}", str(port.port)))
        env.append((f"{name}_PORT", f"{first.protocol.lower()}://{ip}:{first.port}"))
        for port in svc.ports:
            proto = port.protocol.upper()
            base = f"{name}_PORT_{port.port}_{proto}"
            env.append((base, f"{proto.lower()}://{ip}:{port.port}"))
            env.append((f"{base}_PROTO", proto.lower()))
            env.append((f"{base}_PORT", str(port.port)))
            env.append((f"{base}_ADDR", ip))
    return env


@dataclass(frozen=True)
class PodFacts:
    """What the downward API can tell a container about its pod, known once it is placed."""

    name: str
    namespace: str
    uid: str
    node: str
    pod_ip: str = ""
    host_ip: str = ""
    service_account: str = "default"
    labels: tuple[tuple[str, str], ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()


def pod_uid(pod_id: str, created_at: float) -> str:
    """A pod's uid: stable for the pod, new for a pod of the same name made again."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"gitops:pod:{pod_id}:{created_at!r}"))


def _quoted_map(pairs: Sequence[tuple[str, str]]) -> str:
    """Labels or annotations as a downwardAPI volume file has them: `key="value"` lines."""
    return "\n".join(f"{k}={json.dumps(v)}" for k, v in sorted(pairs))


def field_value(path: str, facts: PodFacts) -> str:
    """The value of a downward API `fieldPath` (Kubernetes' names; validation has checked
    them); "" for a label or annotation the pod does not have."""
    simple = {
        "metadata.name": facts.name,
        "metadata.namespace": facts.namespace,
        "metadata.uid": facts.uid,
        "spec.nodeName": facts.node,
        "spec.serviceAccountName": facts.service_account or "default",
        "status.podIP": facts.pod_ip,
        "status.podIPs": facts.pod_ip,
        "status.hostIP": facts.host_ip,
        "status.hostIPs": facts.host_ip,
        "metadata.labels": _quoted_map(facts.labels),
        "metadata.annotations": _quoted_map(facts.annotations),
    }
    if path in simple:
        return simple[path]
    for prefix, pairs in (("metadata.labels", facts.labels), ("metadata.annotations", facts.annotations)):
        if path.startswith(prefix + "[") and path.endswith("]"):
            key = path[len(prefix) + 1 : -1].strip("'\"")
            return dict(pairs).get(key, "")
    return ""


def needs_pod_ip(spec: PodSpec) -> bool:
    """Whether a container is told its pod's address (which is known before it starts only
    when an infra container holds the pod's network)."""
    return any(path.startswith("status.podIP") for c in spec.all_containers for _, path in c.field_env)
