"""Services programmed into iptables on each node, kube-proxy style.

Every Service port has a virtual IP and port (VIP:port) that no interface owns; a NodePort
or LoadBalancer Service port also answers on a port of every address of every node. The
node agent turns the service endpoints it receives into `ServiceRule` values (each backend
a pod address and port, flagged `local` when the pod runs on this node) and hands them to
`IptablesProxy.sync`, which makes the kernel match them:

- nat table: `{prefix}-SERVICES` is jumped to from `OUTPUT` (connections made by the host)
  and `PREROUTING` (from containers and from other machines). It holds one rule per
  VIP:port with backends, jumping to that port's `{prefix}-SVC-{hash16}` chain, and last a
  jump to `{prefix}-NODEPORTS` for destinations that are addresses of this node
  (`-m addrtype --dst-type LOCAL`, loopback included). NODEPORTS sends each node port (and
  each LoadBalancer's own port: without a cloud, as k3s's servicelb does, a LoadBalancer
  answers its port on every node's addresses) to the port's `{prefix}-EXT-{hash16}` chain.
- The SVC chain picks one backend, spread evenly kube-proxy style (backend *i* of *n* with
  probability `1/(n-i)` of what reaches it, the last unconditionally), and jumps to its
  `{prefix}-SEP-{hash16}` chain, which DNATs the connection there. `{prefix}-SVL-{hash16}`
  does the same over the local backends only.
- Traffic policies: `internal_local` (internalTrafficPolicy Local) sends the VIP to SVL, and
  drops it when no backend is local. EXT with `external_local` (externalTrafficPolicy
  Local) keeps the client's address and uses SVL; traffic from this node itself
  (`--src-type LOCAL`) still reaches every backend, masqueraded; with no local backend
  other clients' connections are dropped (as kube-proxy does). Without it, EXT marks the
  connection for masquerading and uses SVC.
- Masquerading: `{prefix}-MARK-MASQ` marks a connection (`0x4000`, kube-proxy's bit) and
  `{prefix}-POSTROUTING`, jumped to from `POSTROUTING`, masquerades marked packets. Marked
  are: external traffic to node ports with the Cluster policy (the reply must come back
  through this node, which undoes the DNAT), traffic from this node to node ports with
  the Local policy (loopback's 127.0.0.1 cannot leave the host), and hairpin connections (a
  pod reaching itself through its Service: the SEP chain marks `-s <its ip>/32`).
- sessionAffinity ClientIP (`affinity_seconds`): the SVC/SVL chain first sends a client
  seen within the timeout back to its backend (`-m recent --rcheck --seconds T --reap`,
  one list per SEP chain), and every DNAT records the client (`-m recent --set`).
- filter table: `{prefix}-FILTER` is jumped to from `INPUT`, `OUTPUT` and `FORWARD`. It
  sees destinations after DNAT, so it only meets what no rule above took: it REJECTs
  (`icmp-port-unreachable`, "connection refused" at once) a VIP:port, node port or
  LoadBalancer port without backends, DROPs (as kube-proxy does) those whose Local policy
  finds no local backend, REJECTs every other address of the service CIDR (a VIP is never
  routed out of the machine), and drops connections to 127.0.0.0/8 from elsewhere (as
  kube-proxy does, since node ports answer on loopback: `install` sets
  `net.ipv4.conf.all.route_localnet=1`, without which the kernel will not route a packet
  from 127.0.0.1 to a pod; it is left set by `cleanup`).

UDP is handled as TCP is (`-p udp -m udp`). One bad rule never costs the others:
`IptablesProxy.sync` first `vet`s the rules, skipping a rule whose VIP, ports or protocol
cannot be programmed (or that claims a VIP:port another rule holds), dropping a backend
whose address or port cannot, and dropping a node port or LoadBalancer port another rule
already takes on this node; it says what it skipped (`skipped`), so the agent can report it.

`render` is pure: rules in, the complete `iptables-restore --noflush` text out, which
declares (so creates or flushes) our chains, fills them and deletes our chains that are no
longer needed, in one atomic transaction per table. `IptablesProxy` adds the effects:
listing our chains, one `iptables-restore` call per sync, installing and removing the jump
rules. Only chains named `{prefix}-...` are ever created, flushed or deleted; a sync deletes
only per-service chains no rule needs any more (`{prefix}-SVC-`, `-SVL-`, `-EXT-`, `-SEP-`),
so the pod network's `{prefix}-PODNET` (`gitops.agents.network`) and anything else of the
prefix are left alone; `cleanup` removes every chain of the prefix. The jump rules are the
only lines we add to built-in chains.

Conntrack: the nat table only sees the first packet of a connection, so a connection keeps
its backend (and its masquerading) for its lifetime. When a backend disappears its
established connections (and UDP flows, until their conntrack entry expires) keep pointing
at it; flushing those entries is not done here.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import hashlib
import ipaddress
import re
import shlex
import socket
import subprocess
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import structlog

from gitops.model import ServiceEndpoints, ServicePort

log = structlog.get_logger(__name__)

TABLES = ("nat", "filter")
PROTOCOLS = ("TCP", "UDP")
MAX_CHAIN_NAME = 28
HASH_LENGTH = 16
MAX_AFFINITY_SECONDS = 86400
JUMP_COMMENT = "gitops service portals"
CIDR_COMMENT = "service CIDR without a service"
LOCALNET_COMMENT = "block incoming localnet connections"
MASQ_MARK = "0x4000"  # kube-proxy's bit: a connection to masquerade on its way out
LOOPBACK = "127.0.0.0/8"
ROUTE_LOCALNET = Path("net/ipv4/conf/all/route_localnet")
_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_COMMENT_UNSAFE = re.compile(r"[^A-Za-z0-9._:/=+@ -]")
_WAIT = ("-w", "10")
_REJECT = "-j REJECT --reject-with icmp-port-unreachable"


class IptablesError(RuntimeError):
    """An iptables command failed; the message carries its stderr."""


class Backend(NamedTuple):
    """Where a service port's connections may go: a pod's address and port, and whether
    the pod runs on this node (the Local traffic policies use only those)."""

    ip: str
    port: int
    local: bool = False


@dataclass(frozen=True)
class ServiceRule:
    """One service port: connections to `vip:port` go to one of `backends`.

    With `node_port`, connections to that port on any address of this node do too; with
    `load_balancer`, so do connections to `port` itself on any address of this node.
    Plain `(ip, port)` pairs given as backends are read as non-local `Backend`s."""

    service: str
    """`namespace/name:portname-or-port`, shown in rule comments."""
    vip: str
    port: int
    protocol: str
    """"TCP" or "UDP"."""
    backends: tuple[Backend, ...]
    """Destinations, in the order given."""
    node_port: int = 0
    load_balancer: bool = False
    affinity_seconds: int = 0
    """sessionAffinity ClientIP: how long a client sticks to its backend; 0 for None."""
    external_local: bool = False
    """externalTrafficPolicy Local: node and LoadBalancer ports reach local backends only."""
    internal_local: bool = False
    """internalTrafficPolicy Local: the VIP reaches local backends only."""

    def __post_init__(self) -> None:
        if any(not isinstance(b, Backend) for b in self.backends):
            backends = tuple(b if isinstance(b, Backend) else Backend(*b) for b in self.backends)
            object.__setattr__(self, "backends", backends)

    @property
    def local_backends(self) -> tuple[Backend, ...]:
        return tuple(b for b in self.backends if b.local)

    def external_ports(self) -> tuple[int, ...]:
        """The ports this rule answers on every address of this node."""
        ports = [self.node_port] if self.node_port else []
        if self.load_balancer and self.port not in ports:
            ports.append(self.port)
        return tuple(ports)


RuleKey = tuple[str, str, int]
"""(PROTOCOL, vip, port): what a Service port is known by (`rule_key`)."""


def service_rule(service: ServiceEndpoints, port: ServicePort, backends: Sequence[Backend]) -> ServiceRule:
    """The rule of one port of `service` (which must have a VIP) with `backends`, which
    the caller chooses: each endpoint's pod address and container port, `local` when the
    pod runs on this node. Everything else comes from the Service: node port, LoadBalancer,
    session affinity and the traffic policies."""
    return ServiceRule(
        service=f"{service.namespace}/{service.name}:{port.name or port.port}",
        vip=service.vip,
        port=port.port,
        protocol=port.protocol,
        backends=tuple(backends),
        node_port=port.node_port if service.type in ("NodePort", "LoadBalancer") else 0,
        load_balancer=service.type == "LoadBalancer",
        affinity_seconds=service.session_affinity_seconds,
        external_local=service.external_local,
        internal_local=service.internal_local,
    )


def max_prefix_length() -> int:
    return MAX_CHAIN_NAME - len("-SVC-") - HASH_LENGTH


def check_prefix(prefix: str) -> str:
    if not _PREFIX.fullmatch(prefix) or len(prefix) > max_prefix_length():
        raise ValueError(
            f"chain prefix {prefix!r}: expected a letter then letters, digits or '_', "
            f"at most {max_prefix_length()} characters (chain names are limited to {MAX_CHAIN_NAME})"
        )
    return prefix


def services_chain(prefix: str) -> str:
    """The nat chain jumped to from OUTPUT and PREROUTING."""
    return f"{prefix}-SERVICES"


def nodeports_chain(prefix: str) -> str:
    """The nat chain of node ports and LoadBalancer ports, jumped to last from SERVICES."""
    return f"{prefix}-NODEPORTS"


def mark_masq_chain(prefix: str) -> str:
    """The nat chain that marks a connection for masquerading."""
    return f"{prefix}-MARK-MASQ"


def postrouting_chain(prefix: str) -> str:
    """The nat chain jumped to from POSTROUTING: masquerades marked connections."""
    return f"{prefix}-POSTROUTING"


def filter_chain(prefix: str) -> str:
    """The filter chain jumped to from INPUT, OUTPUT and FORWARD."""
    return f"{prefix}-FILTER"


def static_nat_chains(prefix: str) -> tuple[str, ...]:
    """The nat chains every sync declares, whatever the rules."""
    return (
        services_chain(prefix),
        nodeports_chain(prefix),
        mark_masq_chain(prefix),
        postrouting_chain(prefix),
    )


@functools.lru_cache(maxsize=1 << 16)
def digest(*parts: object) -> str:
    """16 base32 characters of the sha256 of `parts`: stable names across agents and restarts."""
    key = "\0".join(str(p) for p in parts).encode()
    return base64.b32encode(hashlib.sha256(key).digest()).decode()[:HASH_LENGTH]


def _rule_digest(rule: ServiceRule) -> str:
    return digest(rule.service, rule.protocol.upper(), rule.vip, rule.port)


def service_chain(rule: ServiceRule, prefix: str) -> str:
    """`{prefix}-SVC-{hash16}`, a pure function of (service, protocol, vip, port): every backend."""
    return f"{prefix}-SVC-{_rule_digest(rule)}"


def local_chain(rule: ServiceRule, prefix: str) -> str:
    """`{prefix}-SVL-{hash16}`, same hash as the SVC chain: the local backends only."""
    return f"{prefix}-SVL-{_rule_digest(rule)}"


def external_chain(rule: ServiceRule, prefix: str) -> str:
    """`{prefix}-EXT-{hash16}`, same hash as the SVC chain: where node ports lead."""
    return f"{prefix}-EXT-{_rule_digest(rule)}"


def endpoint_chain(rule: ServiceRule, backend: Backend, prefix: str) -> str:
    """`{prefix}-SEP-{hash16}` of one backend of one service port: it DNATs there. Also the
    name of the `recent` list that remembers the clients sent there (session affinity)."""
    return f"{prefix}-SEP-{digest(rule.service, rule.protocol.upper(), rule.vip, rule.port, *backend[:2])}"


def is_ours(chain: str, prefix: str) -> bool:
    return chain.startswith(f"{prefix}-")


PER_SERVICE_FAMILIES = ("SVC", "SVL", "EXT", "SEP")


def is_per_service(chain: str, prefix: str) -> bool:
    """A chain a sync makes per service port or backend (`{prefix}-SVC-{hash}`, ...): the
    only ones a sync deletes when no rule needs them. Other chains of the prefix (the pod
    network's, any added later) are never a sync's to delete."""
    return any(chain.startswith(f"{prefix}-{family}-") for family in PER_SERVICE_FAMILIES)


def jump_rules(prefix: str) -> list[tuple[str, str, list[str]]]:
    """(table, built-in chain, rule spec) of every rule we put into a built-in chain."""
    comment = ["-m", "comment", "--comment", JUMP_COMMENT]
    return [
        ("nat", "OUTPUT", [*comment, "-j", services_chain(prefix)]),
        ("nat", "PREROUTING", [*comment, "-j", services_chain(prefix)]),
        ("nat", "POSTROUTING", [*comment, "-j", postrouting_chain(prefix)]),
        ("filter", "INPUT", [*comment, "-j", filter_chain(prefix)]),
        ("filter", "OUTPUT", [*comment, "-j", filter_chain(prefix)]),
        ("filter", "FORWARD", [*comment, "-j", filter_chain(prefix)]),
    ]


def reject_cidr_spec(service_cidr: str) -> list[str]:
    """The fail-closed rule: nothing in the service CIDR that was not DNAT'd leaves."""
    return [
        "-d",
        service_cidr,
        "-m",
        "comment",
        "--comment",
        CIDR_COMMENT,
        "-j",
        "REJECT",
        "--reject-with",
        "icmp-port-unreachable",
    ]


def _comment(text: str) -> str:
    return '"' + _COMMENT_UNSAFE.sub("_", text)[:200] + '"'


@functools.lru_cache(maxsize=1 << 16)
def address_number(text: str) -> int:
    """The IPv4 address as a number; ValueError (ipaddress' own words) when it is not one.
    Cached: every sync reads the same few thousand addresses again. A string is read by the
    C library's inet_pton first, ten times quicker than ipaddress and taking exactly the
    strings it takes (a property test checks it)."""
    if type(text) is str:
        with contextlib.suppress(OSError, ValueError):  # not a dotted quad: ipaddress says why
            return int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    return int(ipaddress.IPv4Address(text))


def is_port(value: object) -> bool:
    """An int (not a bool) from 1 to 65535."""
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


def set_route_localnet(sysctl_dir: Path) -> str:
    """Set `net.ipv4.conf.all.route_localnet=1` under `sysctl_dir` (node ports answer on
    127.0.0.1 only with it); "" when it is set, else what stops node ports answering there."""
    path = sysctl_dir / ROUTE_LOCALNET
    try:
        if path.read_text().strip() != "1":
            path.write_text("1\n")
    except OSError as exc:
        return f"node ports do not answer on 127.0.0.1: cannot set net.ipv4.conf.all.route_localnet=1 ({exc})"
    return ""


def _validate(rule: ServiceRule) -> None:
    where = f"service rule {rule.service!r}"
    try:
        address_number(rule.vip)
        for backend in rule.backends:
            address_number(backend.ip)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}: {e}; expected dotted-quad IPv4 addresses") from None
    if rule.protocol.upper() not in PROTOCOLS:
        raise ValueError(f"{where}: protocol {rule.protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    for port in (rule.port, *(b.port for b in rule.backends)):
        if not is_port(port):
            raise ValueError(f"{where}: port {port}: expected 1..65535")
    if rule.node_port and not is_port(rule.node_port):
        raise ValueError(f"{where}: node port {rule.node_port}: expected 1..65535 (or 0 for none)")
    seconds = rule.affinity_seconds
    if not isinstance(seconds, int) or not 0 <= seconds <= MAX_AFFINITY_SECONDS:
        raise ValueError(f"{where}: affinity seconds {seconds!r}: expected 0..{MAX_AFFINITY_SECONDS}")


def rule_order(rule: ServiceRule) -> tuple[int, int, str, str]:
    """The order `vet` takes rules in (VIP, port, protocol, name): who wins a conflict.
    Defined for invalid rules too (they sort first)."""
    try:
        address = address_number(rule.vip)
    except (ValueError, TypeError):
        address = -1
    return (
        address,
        rule.port if isinstance(rule.port, int) else -1,
        str(rule.protocol).upper(),
        rule.service,
    )


def rule_key(rule: ServiceRule) -> RuleKey:
    """What a Service port is known by: no two kept rules share it."""
    return (rule.protocol.upper(), rule.vip, rule.port)


def node_claims(rule: ServiceRule) -> list[tuple[str, int, str]]:
    """(PROTOCOL, port, what) of each port `rule` takes on this node's addresses."""
    claims = [(rule.protocol.upper(), rule.node_port, "node port")] if rule.node_port else []
    if rule.load_balancer and rule.port != rule.node_port:
        claims.append((rule.protocol.upper(), rule.port, "LoadBalancer port"))
    return claims


def settle_claims(
    candidate: ServiceRule,
    seen: dict[RuleKey, str],
    node_seen: dict[tuple[str, int], tuple[RuleKey, str]],
    problems: list[str],
) -> ServiceRule | None:
    """What is kept of `candidate` (valid on its own) beside the rules kept before it, whose
    claims are in `seen` (VIP:port -> service) and `node_seen` (a port of this node -> the
    key and service of the rule holding it): None when its VIP:port is taken, else the rule
    without the node and LoadBalancer ports another rule took. Records its own claims and
    says in `problems` what it lost."""
    key = rule_key(candidate)
    if key in seen:
        claim = f"{candidate.vip}:{candidate.port}/{candidate.protocol.upper()}"
        problems.append(
            f"service rules {seen[key]!r} and {candidate.service!r} both claim {claim}; "
            f"{candidate.service!r} skipped"
        )
        return None
    seen[key] = candidate.service
    for protocol, port, what in node_claims(candidate):
        holder_key, holder = node_seen.setdefault((protocol, port), (key, candidate.service))
        if holder_key != key:
            problems.append(
                f"service rules {holder!r} and {candidate.service!r} both claim port {port}/{protocol} "
                f"on this node; {candidate.service!r} keeps its VIP without that {what}"
            )
            candidate = dataclasses.replace(
                candidate,
                node_port=0 if candidate.node_port == port else candidate.node_port,
                load_balancer=candidate.load_balancer and candidate.port != port,
            )
    return candidate


def vet(rules: Sequence[ServiceRule]) -> tuple[list[ServiceRule], list[str]]:
    """The rules that can be programmed, and what was skipped and why (one line each).

    A rule with an invalid VIP, port, node port, affinity or protocol is skipped whole; an
    invalid backend is dropped from its rule; of two rules for one VIP:port the first (in
    VIP, port, name order) is kept; of two rules taking one port on this node's addresses
    (a node port, a LoadBalancer port) the first keeps it, the other loses that port only."""
    kept: list[ServiceRule] = []
    problems: list[str] = []
    seen: dict[RuleKey, str] = {}
    node_seen: dict[tuple[str, int], tuple[RuleKey, str]] = {}
    for rule in sorted(rules, key=rule_order):
        backends = []
        for backend in rule.backends:
            ip, port = backend[0], backend[1]
            try:
                address_number(ip)
                if not is_port(port):
                    raise ValueError(f"port {port!r}: expected 1..65535")
            except (ValueError, TypeError) as exc:
                problems.append(f"service rule {rule.service!r}: backend {ip}:{port} skipped: {exc}")
                continue
            backends.append(backend)
        candidate = dataclasses.replace(rule, backends=tuple(backends))
        try:
            _validate(candidate)
        except ValueError as exc:
            problems.append(f"{exc}; rule skipped")
            continue
        settled = settle_claims(candidate, seen, node_seen, problems)
        if settled is not None:
            kept.append(settled)
    return kept, problems


def probabilities(n: int) -> list[str | None]:
    """Per-rule `--probability` of a chain of n backends; None for the unconditional last."""
    return [f"{1 / (n - i):.10f}" for i in range(n - 1)] + ([None] if n else [])


@dataclass
class _Plan:
    """The nat chains one service port needs, by what they are for."""

    rule: ServiceRule
    svc: str = ""  # every backend
    svl: str = ""  # the local backends
    ext: str = ""  # node ports and LoadBalancer ports
    endpoints: dict[Backend, str] = field(default_factory=dict)

    def chains(self) -> set[str]:
        return {c for c in (self.svc, self.svl, self.ext) if c} | set(self.endpoints.values())


def _plan(rule: ServiceRule, prefix: str) -> _Plan:
    plan = _Plan(rule)
    local = rule.local_backends
    if not rule.backends:
        return plan
    exposed = bool(rule.external_ports())
    if not rule.internal_local or exposed:
        plan.svc = service_chain(rule, prefix)
    if local and (rule.internal_local or (exposed and rule.external_local)):
        plan.svl = local_chain(rule, prefix)
    if exposed:
        plan.ext = external_chain(rule, prefix)
    used = rule.backends if plan.svc else local
    plan.endpoints = {b: endpoint_chain(rule, b, prefix) for b in used}
    return plan


def _recent(name: str) -> str:
    return f"-m recent --name {name} --mask 255.255.255.255 --rsource"


def _balance(chain: str, plan: _Plan, backends: Sequence[Backend]) -> Iterator[str]:
    """The rules of an SVC or SVL chain: sticky clients first, then an even spread."""
    rule = plan.rule
    if rule.affinity_seconds:
        for backend in backends:
            sep = plan.endpoints[backend]
            yield (
                f"-A {chain} -m comment --comment {_comment(f'{rule.service} sticky to {backend.ip}')} "
                f"{_recent(sep)} --rcheck --seconds {rule.affinity_seconds} --reap -j {sep}"
            )
    n = len(backends)
    for i, (backend, probability) in enumerate(zip(backends, probabilities(n), strict=True)):
        statistic = f" -m statistic --mode random --probability {probability}" if probability else ""
        yield (
            f"-A {chain} -m comment --comment {_comment(f'{rule.service} backend {i + 1}/{n}')}"
            f"{statistic} -j {plan.endpoints[backend]}"
        )


def _nat_rules(plan: _Plan, prefix: str) -> Iterator[str]:
    """Every nat rule of one service port, SERVICES and NODEPORTS entries first."""
    rule = plan.rule
    proto = rule.protocol.lower()
    match = f"-p {proto} -m {proto} --dport"
    target = plan.svl if rule.internal_local else plan.svc
    if target:
        yield (
            f"-A {services_chain(prefix)} -d {rule.vip}/32 {match} {rule.port} "
            f"-m comment --comment {_comment(rule.service)} -j {target}"
        )
    if plan.ext:
        for port in rule.external_ports():
            what = "node port" if port == rule.node_port else "LoadBalancer port"
            yield (
                f"-A {nodeports_chain(prefix)} {match} {port} "
                f"-m comment --comment {_comment(f'{rule.service} {what}')} -j {plan.ext}"
            )
        masq = mark_masq_chain(prefix)
        if rule.external_local:
            this_node = "-m addrtype --src-type LOCAL"
            yield (
                f"-A {plan.ext} {this_node} -m comment --comment "
                f"{_comment(f'{rule.service} masquerade traffic from this node')} -j {masq}"
            )
            yield (
                f"-A {plan.ext} {this_node} -m comment --comment "
                f"{_comment(f'{rule.service} traffic from this node reaches every backend')} -j {plan.svc}"
            )
            if plan.svl:
                local = _comment(f"{rule.service} local backends")
                yield f"-A {plan.ext} -m comment --comment {local} -j {plan.svl}"
        else:
            external = _comment(f"{rule.service} masquerade external traffic")
            yield f"-A {plan.ext} -m comment --comment {external} -j {masq}"
            yield f"-A {plan.ext} -j {plan.svc}"
    if plan.svc:
        yield from _balance(plan.svc, plan, rule.backends)
    if plan.svl:
        yield from _balance(plan.svl, plan, rule.local_backends)
    seps: dict[str, Backend] = {}
    for backend, sep in plan.endpoints.items():
        seps.setdefault(sep, backend)  # one chain per address and port, whatever `local` says
    for sep, backend in seps.items():
        yield (
            f"-A {sep} -s {backend.ip}/32 -m comment --comment {_comment(f'{rule.service} hairpin')} "
            f"-j {mark_masq_chain(prefix)}"
        )
        remember = f" {_recent(sep)} --set" if rule.affinity_seconds else ""
        yield (
            f"-A {sep} -m comment --comment {_comment(f'{rule.service} to {backend.ip}:{backend.port}')}"
            f"{remember} -p {proto} -m {proto} -j DNAT --to-destination {backend.ip}:{backend.port}"
        )


def _filter_rules(rule: ServiceRule, prefix: str) -> Iterator[str]:
    """What the filter table does with what the nat table did not take of one service port."""
    chain, proto = filter_chain(prefix), rule.protocol.lower()
    vip = f"-A {chain} -d {rule.vip}/32 -p {proto} -m {proto} --dport {rule.port}"
    node = f"-A {chain} -m addrtype --dst-type LOCAL -p {proto} -m {proto} --dport"
    if not rule.backends:
        none = _comment(f"{rule.service} has no endpoints")
        yield f"{vip} -m comment --comment {none} {_REJECT}"
        for port in rule.external_ports():
            yield f"{node} {port} -m comment --comment {none} {_REJECT}"
        return
    no_local = _comment(f"{rule.service} has no local endpoints")
    if rule.internal_local and not rule.local_backends:
        yield f"{vip} -m comment --comment {no_local} -j DROP"
    if rule.external_local and not rule.local_backends:
        for port in rule.external_ports():
            yield f"{node} {port} -m comment --comment {no_local} -j DROP"


def render(
    rules: Sequence[ServiceRule],
    *,
    service_cidr: str,
    prefix: str = "GITOPS",
    existing_chains: Collection[str] = (),
) -> str:
    """The complete `iptables-restore --noflush` input making our chains exactly `rules`.

    `existing_chains` are the chain names present now (nat table; the filter table only
    ever holds `{prefix}-FILTER`); those with our prefix that `rules` no longer need are
    flushed and deleted. Output is independent of the order of `rules`.
    Raises ValueError for an invalid rule, prefix or CIDR, two rules for one VIP:port, or
    two rules taking one port on this node's addresses.
    """
    check_prefix(prefix)
    cidr = str(ipaddress.IPv4Network(service_cidr, strict=False))

    seen: dict[RuleKey, str] = {}
    node_seen: dict[tuple[str, int], tuple[RuleKey, str]] = {}  # -> (rule key, service)
    ordered = sorted(rules, key=rule_order)
    for rule in ordered:
        _validate(rule)
        key = rule_key(rule)
        if key in seen:
            raise ValueError(
                f"service rules {seen[key]!r} and {rule.service!r} both claim "
                f"{rule.vip}:{rule.port}/{rule.protocol.upper()}; a VIP:port belongs to one service"
            )
        seen[key] = rule.service
        for protocol, port, _ in node_claims(rule):
            holder_key, holder = node_seen.setdefault((protocol, port), (key, rule.service))
            if holder_key != key:
                raise ValueError(
                    f"service rules {holder!r} and {rule.service!r} both claim port {port}/{protocol} "
                    "on this node; a node port belongs to one service"
                )

    plans = [_plan(r, prefix) for r in ordered]
    needed = set(static_nat_chains(prefix)).union(*(p.chains() for p in plans))
    stale = sorted(c for c in set(existing_chains) if is_per_service(c, prefix) and c not in needed)

    masq, postrouting = mark_masq_chain(prefix), postrouting_chain(prefix)
    nat = ["*nat"]
    nat += [f":{chain} - [0:0]" for chain in static_nat_chains(prefix)]
    nat += [f":{chain} - [0:0]" for chain in sorted((needed - set(static_nat_chains(prefix))) | set(stale))]
    nat += [
        f"-A {masq} -j MARK --or-mark {MASQ_MARK}",
        f"-A {postrouting} -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN",
        f"-A {postrouting} -j MARK --xor-mark {MASQ_MARK}",
        f"-A {postrouting} -m comment --comment {_comment('service traffic requiring SNAT')} -j MASQUERADE",
    ]
    for plan in plans:
        nat += _nat_rules(plan, prefix)
    nat.append(
        f"-A {services_chain(prefix)} -m addrtype --dst-type LOCAL "
        f"-m comment --comment {_comment('node ports: the last rule of this chain')} "
        f"-j {nodeports_chain(prefix)}"
    )
    nat += [f"-X {chain}" for chain in stale]
    nat.append("COMMIT")

    top_filter = filter_chain(prefix)
    filt = [
        "*filter",
        f":{top_filter} - [0:0]",
        f"-A {top_filter} ! -s {LOOPBACK} -d {LOOPBACK} -m comment --comment {_comment(LOCALNET_COMMENT)} "
        "-m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",
    ]
    for rule in ordered:
        filt += _filter_rules(rule, prefix)
    filt.append(f"-A {top_filter} -d {cidr} -m comment --comment {_comment(CIDR_COMMENT)} {_REJECT}")
    filt.append("COMMIT")
    return "\n".join(nat + filt) + "\n"


def parse_chains(save_output: str, prefix: str) -> set[str]:
    """Our chain names declared in `iptables-save` output."""
    return {
        line[1:].split()[0]
        for line in save_output.splitlines()
        if line.startswith(":") and is_ours(line[1:].split()[0], prefix)
    }


def deletion(chains: Mapping[str, Collection[str]]) -> str:
    """The `iptables-restore --noflush` input that flushes and deletes `chains` (table ->
    chain names); "" when there are none."""
    text = ""
    for table, names in chains.items():
        if names:
            ordered = sorted(names)
            text += f"*{table}\n" + "".join(f":{c} - [0:0]\n" for c in ordered)
            text += "".join(f"-X {c}\n" for c in ordered) + "COMMIT\n"
    return text


class IptablesProxy:
    """Keeps this node's service chains equal to the rules it is given (see the module doc).

    `route_localnet`: `install` sets `net.ipv4.conf.all.route_localnet=1` (under
    `sysctl_dir`), so that node ports answer on 127.0.0.1 as kube-proxy's do; if it cannot,
    every sync says so in `skipped`."""

    def __init__(
        self,
        service_cidr: str,
        *,
        prefix: str = "GITOPS",
        iptables: str = "iptables",
        route_localnet: bool = True,
        sysctl_dir: Path = Path("/proc/sys"),
        recheck_seconds: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`recheck_seconds`: a sync given the same rules as the last one within that time
        does nothing at all (no `iptables-save`); after it, the kernel's chains are read and
        repaired again. 0 reads them at every sync."""
        self.recheck_seconds = recheck_seconds
        self.clock = clock
        self._settled: tuple[list[ServiceRule], float] | None = None  # rules last found in place, when
        self.service_cidr = str(ipaddress.IPv4Network(service_cidr, strict=False))
        self.prefix = check_prefix(prefix)
        self.iptables = iptables
        self.route_localnet = route_localnet
        self.sysctl_dir = sysctl_dir
        self._last_applied: str | None = None
        self._restore_wait: tuple[str, ...] | None = None
        self._localnet_problem = ""
        self.skipped: tuple[str, ...] = ()  # what the last sync could not program, and why

    # --- commands ---------------------------------------------------------------------

    def _run(self, args: Sequence[str], *, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(list(args), input=stdin, capture_output=True, text=True, check=False)
        except FileNotFoundError as e:
            raise IptablesError(f"{args[0]}: not found ({e})") from None

    def _iptables(self, table: str, *args: str) -> subprocess.CompletedProcess[str]:
        return self._run([self.iptables, *_WAIT, "-t", table, *args])

    def _save(self, table: str) -> str:
        done = self._run([f"{self.iptables}-save", "-t", table])
        if done.returncode != 0:
            raise IptablesError(f"{self.iptables}-save -t {table} failed: {done.stderr.strip()}")
        return done.stdout

    def _restore(self, text: str) -> None:
        if self._restore_wait is None:
            probe = self._run(
                [f"{self.iptables}-restore", *_WAIT, "--test", "--noflush"], stdin="*filter\nCOMMIT\n"
            )
            self._restore_wait = _WAIT if probe.returncode == 0 else ()
        done = self._run([f"{self.iptables}-restore", *self._restore_wait, "--noflush"], stdin=text)
        if done.returncode != 0:
            raise IptablesError(f"{self.iptables}-restore --noflush failed: {done.stderr.strip()}")

    # --- lifecycle --------------------------------------------------------------------

    def install(self) -> None:
        """Create our top chains, the jump rules into them, reject the whole CIDR, and let
        the kernel route loopback-sourced packets to pods (`route_localnet`)."""
        for table, chain in (
            ("nat", services_chain(self.prefix)),
            ("nat", postrouting_chain(self.prefix)),
            ("filter", filter_chain(self.prefix)),
        ):
            if chain not in parse_chains(self._save(table), self.prefix):
                done = self._iptables(table, "-N", chain)
                if done.returncode != 0 and "exists" not in done.stderr:
                    raise IptablesError(f"iptables -t {table} -N {chain} failed: {done.stderr.strip()}")
        reject = reject_cidr_spec(self.service_cidr)
        self._ensure("filter", filter_chain(self.prefix), reject, append=True)
        inserted = sum(self._ensure(table, chain, spec) for table, chain, spec in jump_rules(self.prefix))
        if self.route_localnet:
            self._set_route_localnet()
        log.info(
            "iptables.installed", prefix=self.prefix, service_cidr=self.service_cidr, jumps_added=inserted
        )

    def _set_route_localnet(self) -> None:
        self._localnet_problem = set_route_localnet(self.sysctl_dir)
        if self._localnet_problem:
            log.warning("iptables.route_localnet_failed", error=self._localnet_problem)

    def _ensure(self, table: str, chain: str, spec: list[str], *, append: bool = False) -> bool:
        if self._iptables(table, "-C", chain, *spec).returncode == 0:
            return False
        where = ["-A", chain] if append else ["-I", chain, "1"]
        done = self._iptables(table, *where, *spec)
        if done.returncode != 0:
            raise IptablesError(
                f"iptables -t {table} {' '.join(where)} {shlex.join(spec)}: {done.stderr.strip()}"
            )
        return True

    def sync(self, rules: Sequence[ServiceRule]) -> bool:
        """Make our chains match the valid ones of `rules` (the others are in `skipped`);
        False when nothing had to be applied."""
        started = time.perf_counter()
        rules, problems = vet(rules)
        if self._localnet_problem:
            problems.append(self._localnet_problem)
        if problems and tuple(problems) != self.skipped:
            log.warning("iptables.rules_skipped", skipped=len(problems), first=problems[0])
        self.skipped = tuple(problems)
        now = self.clock()
        if (
            self._settled is not None
            and self._settled[0] == rules
            and now - self._settled[1] < self.recheck_seconds
        ):
            return False
        self._settled = None
        saved = {table: self._save(table) for table in TABLES}
        if not self._jumps_present(saved):
            self.install()
            self._last_applied = None
        nat_chains = parse_chains(saved["nat"], self.prefix)
        text = render(rules, service_cidr=self.service_cidr, prefix=self.prefix, existing_chains=nat_chains)
        present = nat_chains | parse_chains(saved["filter"], self.prefix)
        if text == self._last_applied and parse_chains(text, self.prefix) <= present:
            log.debug("iptables.unchanged", services=len(rules))
            self._settled = (rules, now)
            return False
        self._last_applied = None
        self._restore(text)
        self._last_applied = text
        self._settled = (rules, now)
        log.info(
            "iptables.synced",
            services=len(rules),
            with_backends=sum(1 for r in rules if r.backends),
            backends=sum(len(r.backends) for r in rules),
            node_ports=sum(len(r.external_ports()) for r in rules),
            stale_chains_deleted=text.count("\n-X "),
            bytes=len(text),
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return True

    def _jumps_present(self, saved: dict[str, str]) -> bool:
        for table, chain, spec in jump_rules(self.prefix):
            target = spec[-1]
            if not any(
                line.startswith(f"-A {chain} ") and line.endswith(f"-j {target}")
                for line in saved[table].splitlines()
            ):
                return False
        return filter_chain(self.prefix) in parse_chains(saved["filter"], self.prefix)

    def cleanup(self) -> None:
        """Remove our jump rules and all our chains; a no-op when nothing is left.
        `route_localnet` stays as it is: other software may rely on it too."""
        self._settled = None
        removed_jumps = 0
        chains: dict[str, set[str]] = {}
        for table in TABLES:
            saved = self._save(table)
            chains[table] = parse_chains(saved, self.prefix)
            for line in saved.splitlines():
                words = shlex.split(line) if line.startswith("-A ") else []
                if len(words) < 2 or is_ours(words[1], self.prefix):
                    continue
                targets = [
                    words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-j", "-g", "--jump", "--goto")
                ]
                if any(is_ours(t, self.prefix) for t in targets):
                    done = self._iptables(table, "-D", *words[1:])
                    if done.returncode != 0:
                        raise IptablesError(
                            f"iptables -t {table} -D {shlex.join(words[1:])}: {done.stderr.strip()}"
                        )
                    removed_jumps += 1
        text = deletion(chains)
        if text:
            self._restore(text)
        self._last_applied = None
        log.info(
            "iptables.cleaned",
            prefix=self.prefix,
            jumps_removed=removed_jumps,
            chains_deleted=sum(len(c) for c in chains.values()),
        )

    def chains(self) -> set[str]:
        """Our chains present now, in any table."""
        return set().union(*(parse_chains(self._save(table), self.prefix) for table in TABLES))
