"""Services programmed into nftables on each node, kube-proxy's nftables mode in shape.

The same `ServiceRule`s as `gitops.agents.iptables` come in, vetted the same way (what
cannot be programmed is said in `skipped`), and connections end the same way: DNAT'd to a
backend spread evenly, masqueraded when the iptables proxy masquerades, rejected or
dropped when it does (its module docstring states the semantics; `docs/proxy.md` both
layouts). Everything lives in ONE table of ours, `ip {prefix}-services` (lower case):

- Base chains `nat-prerouting` and `nat-output` (priority dstnat - 1, so before Docker's
  nat chains, as the iptables proxy's jumps at position 1 are) jump to `services`:
  `ip daddr . meta l4proto . th dport vmap @service-ips`, then, for destinations that are
  addresses of this node (`fib daddr type local`, loopback included),
  `meta l4proto . th dport vmap @service-nodeports` (node ports and LoadBalancer ports).
- A Service port's element in those verdict maps goes to a *selector chain* shared by every
  Service port of its shape: `vip-tcp-80-to8080-of3` (port 80/TCP, 3 backends listening on
  8080) picks one of 3 *pick chains* with `numgen random mod 3 vmap {...}` (each 1/3), and
  pick chain i DNATs with a map of its own, keyed by VIP:
  `dnat ip to ip daddr map @vip-tcp-80-to8080-ep2 : 8080`, whose elements are backend i of
  every such port (`VIP : address`). Backends on different ports make another shape
  (`...-to{hash}-of3`). `ext-tcp-to8080-of3` marks the connection for masquerading and does
  the same with `node-tcp-to8080-ep{i}` maps keyed by node port; `extlocal-...-of3-local1`
  (externalTrafficPolicy Local) does so only for this node's own connections
  (`fib saddr type local`), and sends the others, unmasqueraded, to the local backends
  (`node-local-...` maps). internalTrafficPolicy Local puts only the local backends in the
  VIP maps.
- sessionAffinity ClientIP needs per-endpoint state, so such a Service port gets chains of
  its own, kube-proxy style: `svc-{hash}` first sends a client found in an endpoint's
  `aff-{hash}` set (`flags dynamic,timeout; timeout T`) to that endpoint's `sep-{hash}`
  chain, then picks one with `numgen random mod n vmap { 0 : goto sep-..., ... }`; `sep-`
  refreshes the client in its set (`update @aff-... { ip saddr }`) and DNATs. `svl-` (local
  backends) and `ext-` (node ports) chains follow the iptables proxy's SVL and EXT.
- Hairpin: `nat-postrouting` (priority srcnat - 1) jumps to `masquerading`, which marks
  DNAT'd connections whose source is their (new) destination
  (`ip saddr . ip daddr @hairpin`, one `X . X` element per backend address), then
  masquerades marked packets and clears kube-proxy's bit (0x4000), as the iptables proxy does.
- Filter base chains on input, forward and output (priority filter - 1) jump to `filter`:
  drop connections to 127.0.0.0/8 from elsewhere that no rule DNAT'd, then
  `@no-endpoint-services` and `@no-endpoint-nodeports` (`goto reject-chain` for a port
  without backends, `drop` where a Local policy finds no local backend), then reject the
  whole service CIDR (a VIP is never routed out). `install` creates the table with that
  rule before the first sync (fail closed) and sets `net.ipv4.conf.all.route_localnet=1`.

Why shared selector chains rather than a chain and an anonymous map per Service port, as
kube-proxy has: in this kernel, naming an anonymous set scans every set of the table, and
every element added to a map is checked against every rule that uses the map, so any
layout with a rule per Service using a map grows quadratically (2 to 50 s for 5,000
Service ports of 10 endpoints). With one rule using each map, a sync costs what its
elements cost in libnftables, cheapest with keys and values of one field each (see
`docs/proxy.md`; `bench/proxy.py --compare-layouts` measures the alternatives).

Each sync is ONE nft transaction. The proxy remembers what it programmed (per Service port,
a `Fragment`: its map elements, chains and sets) and sends only the difference: a change to
one Service port touches its elements (and chains of its own, if any), a shared chain only
when its first user comes or its last goes. The whole table is written again (deleted and
recreated in the same transaction) at the first sync, after any failure, when the table
was removed or changed behind our back (its layout, listed without elements, differs from
what we left; checked at most every `recheck_seconds`), and every `resync_seconds`.
Commands go through libnftables in this process (`ctypes`, no process per sync) or, where
the library cannot be loaded, one `nft -f -` process.

One exception: libnftables spends about 4 us of CPU on each element it parses (0.2 s of a
first sync of 50,000 endpoints; building the same netlink messages here takes a fifth of
that). When the table holds no Service yet (`install` made it,
or it is gone), it is written in two transactions: its layout (maps, sets, chains, no
element) through nft, which changes nothing a packet sees, then every element in ONE
netlink batch built here (`element_batch`: NEWSETELEM messages, the bytes nft would send),
which the kernel applies whole or not at all. A table that holds Services is rewritten in
one nft transaction, as above; a refused batch falls back to it.

`render`, `render_changes` and `element_batch` are pure (rules or fragments in, nft text
or netlink bytes out); the `NftablesProxy` adds the effects. `choose_proxy` is what the
agent calls: nftables where it works (`proxy_mode` auto), the iptables proxy otherwise,
removing the other one's rules.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import functools
import gc
import ipaddress
import itertools
import operator
import os
import re
import shutil
import socket
import struct
import subprocess
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

import structlog

from gitops.agents.iptables import (
    LOOPBACK,
    MASQ_MARK,
    MAX_AFFINITY_SECONDS,
    PROTOCOLS,
    Backend,
    IptablesError,
    IptablesProxy,
    RuleKey,
    ServiceRule,
    address_number,
    check_prefix,
    deletion,
    digest,
    filter_chain,
    is_per_service,
    is_port,
    jump_rules,
    node_claims,
    parse_chains,
    rule_key,
    rule_order,
    services_chain,
    set_route_localnet,
    settle_claims,
    static_nat_chains,
    vet,
)

log = structlog.get_logger(__name__)

FAMILY = "ip"
PROXY_MODES = ("auto", "nftables", "iptables")
SERVICE_IPS = "service-ips"
SERVICE_NODEPORTS = "service-nodeports"
NO_ENDPOINT_SERVICES = "no-endpoint-services"
NO_ENDPOINT_NODEPORTS = "no-endpoint-nodeports"
HAIRPIN = "hairpin"
REJECT_CHAIN = "reject-chain"
MARK_MASQ_CHAIN = "mark-for-masquerade"
AFFINITY_SET_SIZE = 65535
_COMMENT_UNSAFE = re.compile(r"[^A-Za-z0-9._:/=+@ -]")
_CHAIN_LINE = re.compile(r"^\s*chain (\S+) \{", re.MULTILINE)
_NFT_OUTPUT_TERSE = 1 << 11  # libnftables' NFT_CTX_OUTPUT_TERSE: listings leave set elements out
_ERROR_CHARS = 2000


class NftablesError(RuntimeError):
    """An nft command failed; the message carries nft's own words."""


PROXY_ERRORS = (IptablesError, NftablesError)


# --- names ------------------------------------------------------------------------------------


def table_name(prefix: str) -> str:
    """Our one table: `{prefix}-services` in lower case (`gitops-services` by default)."""
    return f"{check_prefix(prefix).lower()}-services"


def _rule_digest(rule: ServiceRule) -> str:
    return digest(rule.service, rule.protocol.upper(), rule.vip, rule.port)


def service_chain(rule: ServiceRule) -> str:
    """`svc-{hash16}` of a Service port with session affinity: every backend. The hash is
    the iptables proxy's SVC hash (service, protocol, vip, port)."""
    return f"svc-{_rule_digest(rule)}"


def local_chain(rule: ServiceRule) -> str:
    return f"svl-{_rule_digest(rule)}"


def external_chain(rule: ServiceRule) -> str:
    return f"ext-{_rule_digest(rule)}"


def endpoint_chain(rule: ServiceRule, backend: Backend) -> str:
    """`sep-{hash16}`: DNAT to one backend of one sticky Service port."""
    return f"sep-{digest(rule.service, rule.protocol.upper(), rule.vip, rule.port, *backend[:2])}"


def affinity_set(rule: ServiceRule, backend: Backend) -> str:
    """`aff-{hash16}`: the clients sent to one backend within the affinity timeout (which is
    in the hash: a new timeout is a new set)."""
    parts = (rule.service, rule.protocol.upper(), rule.vip, rule.port, *backend[:2], rule.affinity_seconds)
    return f"aff-{digest(*parts)}"


def _safe(text: str) -> str:
    """`text` as a comment may hold it: nothing that could end its quotes, at most 120
    characters (nft takes 128)."""
    return _COMMENT_UNSAFE.sub("_", text)[:120]


def _comment(text: str) -> str:
    return f'"{_safe(text)}"'


# --- vetting, as the iptables proxy does, kept per Service port ------------------------------


_VALID_ADDRESSES: set[object] = set()  # seen to be IPv4 addresses: most come back every sync
_ADDRESS, _PORT, _LOCAL = operator.itemgetter(0), operator.itemgetter(1), operator.itemgetter(2)


def _plainly_valid(rule: ServiceRule) -> bool:
    """Whether `vet` would keep `rule` as it is, found quickly; False also when unsure (then
    `vet` itself says what is wrong)."""
    valid = _VALID_ADDRESSES
    if len(valid) > 1 << 20:
        valid.clear()
    backends = rule.backends
    try:
        if rule.vip not in valid:
            address_number(rule.vip)
            valid.add(rule.vip)
        if backends:  # looked at in C, not backend by backend: a first sync has 50,000
            ports = list(map(_PORT, backends))
            if set(map(type, ports)) != {int} or min(ports) < 1 or max(ports) > 65535:
                return False
            ips = list(map(_ADDRESS, backends))
            if not valid.issuperset(ips):
                for ip in ips:
                    address_number(ip)
                valid.update(ips)
    except (ValueError, TypeError):
        return False
    seconds = rule.affinity_seconds
    return (
        isinstance(rule.protocol, str)
        and rule.protocol.upper() in PROTOCOLS
        and is_port(rule.port)
        and (not rule.node_port or is_port(rule.node_port))
        and isinstance(seconds, int)
        and 0 <= seconds <= MAX_AFFINITY_SECONDS
    )


def _claims(rule: ServiceRule) -> list[object]:
    """What a rule claims that no other may: its VIP:port, and its ports on this node."""
    out: list[object] = [(rule.protocol.upper(), rule.vip, rule.port)]
    if rule.node_port or rule.load_balancer:
        out += [(protocol, port) for protocol, port, _ in node_claims(rule)]
    return out


class Vetted(NamedTuple):
    """What vetting found of one rule alone: what is kept of it (None: nothing), what was
    wrong, and whether it is kept as it is."""

    candidate: ServiceRule | None
    problems: tuple[str, ...]
    plain: bool


def _alone_key(rule: ServiceRule) -> tuple[object, ...]:
    return (rule.service, rule.vip, rule.port, rule.protocol)


class Vetter:
    """`gitops.agents.iptables.vet`, with the same result and the same words, but what it
    found of each Service port alone is remembered: a sync of 5,000 unchanged ports costs a
    dictionary look-up each, not a validation of 50,000 backends."""

    def __init__(self) -> None:
        self._alone: dict[object, tuple[ServiceRule, Vetted]] = {}

    def vet_one(self, rule: ServiceRule) -> Vetted:
        """What `vet([rule])` finds. A rule equal to one seen before gets the same answer,
        its candidate the very object given then (so what was built from it is found again
        by identity)."""
        key = _alone_key(rule)
        try:
            seen = self._alone.get(key)
        except TypeError:  # an unhashable field: vet says what is wrong with it
            seen = None
        if seen is not None and (seen[0] is rule or seen[0] == rule):
            return seen[1]
        if _plainly_valid(rule):
            result = Vetted(rule, (), plain=True)
        else:
            kept, problems = vet([rule])
            result = Vetted(kept[0] if kept else None, tuple(problems), plain=False)
        with contextlib.suppress(TypeError):  # unhashable: vetted again next time
            self._alone[key] = (rule, result)
        return result

    def vet(self, rules: Sequence[ServiceRule]) -> tuple[list[ServiceRule], list[str]]:
        """What `vet(rules)` returns, but the kept rules in the order given when nothing is
        skipped (the order only says who wins a conflict, and there is none then)."""
        quick = self._vet_quickly(rules)
        return (quick, []) if quick is not None else self._vet_in_order(rules)

    def _vet_quickly(self, rules: Sequence[ServiceRule]) -> list[ServiceRule] | None:
        """The rules themselves when each is valid as it is and no two claim one VIP:port
        or one port of the node; None otherwise."""
        seen: set[RuleKey] = set()
        node_seen: set[tuple[str, int]] = set()
        kept: list[ServiceRule] = []
        for rule in rules:
            candidate, _, plain = self.vet_one(rule)
            if not plain or candidate is None:
                return None
            key = (candidate.protocol.upper(), candidate.vip, candidate.port)
            if key in seen:
                return None
            seen.add(key)
            if candidate.node_port or candidate.load_balancer:
                for protocol, port, _ in node_claims(candidate):
                    if (protocol, port) in node_seen:
                        return None
                    node_seen.add((protocol, port))
            kept.append(candidate)
        if len(self._alone) > 2 * len(rules) + 1024:
            self._alone = {k: v for k, v in self._alone.items() if k in {_alone_key(r) for r in rules}}
        return kept

    def _vet_in_order(self, rules: Sequence[ServiceRule]) -> tuple[list[ServiceRule], list[str]]:
        kept: list[ServiceRule] = []
        problems: list[str] = []
        seen: dict[RuleKey, str] = {}
        node_seen: dict[tuple[str, int], tuple[RuleKey, str]] = {}
        alive: set[object] = set()
        for rule in sorted(rules, key=rule_order):
            candidate, found, _ = self.vet_one(rule)
            alive.add(_alone_key(rule))
            problems += found
            if candidate is not None:
                settled = settle_claims(candidate, seen, node_seen, problems)
                if settled is not None:
                    kept.append(settled)
        if len(self._alone) > 2 * len(alive) + 1024:
            self._alone = {k: v for k, v in self._alone.items() if k in alive}
        return kept, problems


# --- what one Service port adds to the table ---------------------------------------------------


ENDPOINT_MAP = "type ipv4_addr : ipv4_addr ;"
NODE_ENDPOINT_MAP = "type inet_service : ipv4_addr ;"


class Shape(NamedTuple):
    """What every Service port of one shape shares: a selector chain (named `name`) that
    picks one of n pick chains at random, each DNATing through its own endpoint map to the
    address found there and the target port in its name. `maps` are those maps, in the
    order of the backends they hold; `local_maps` those of the local backends (Local policy)."""

    name: str
    chains: tuple[tuple[str, tuple[str, ...]], ...]
    maps: tuple[str, ...]
    local_maps: tuple[str, ...] = ()

    def declarations(self) -> Iterator[tuple[str, str]]:
        body = ENDPOINT_MAP if self.name.startswith("vip-") else NODE_ENDPOINT_MAP
        for name in (*self.maps, *self.local_maps):
            yield name, body


class Element(NamedTuple):
    """One element of a map or set: its key and its value in nft's words (no value in a
    set), and its comment, already made safe (`_safe`)."""

    key: str
    value: str = ""
    comment: str = ""

    def text(self) -> str:
        """As `add element` takes it."""
        note = f' comment "{self.comment}"' if self.comment else ""
        return f"{self.key}{note} : {self.value}" if self.value else f"{self.key}{note}"


class Picks(NamedTuple):
    """Endpoint map elements with one key (a VIP, or a node port): `addresses[i]` goes into
    `maps[i]`."""

    maps: tuple[str, ...]
    key: str
    addresses: tuple[str, ...]


class Fragment(NamedTuple):
    """What one (vetted) Service port adds to our table.

    `elements`: per verdict map, its elements. `picks`: its elements of endpoint maps.
    `chains` and `sets`: those of its own (only a port with session affinity has any),
    name and rules or declaration. `shapes`: the shared selector chains it uses.
    `hairpin`: the addresses of its backends (one may come twice)."""

    elements: tuple[tuple[str, tuple[Element, ...]], ...] = ()
    picks: tuple[Picks, ...] = ()
    chains: tuple[tuple[str, tuple[str, ...]], ...] = ()
    sets: tuple[tuple[str, str], ...] = ()
    shapes: tuple[Shape, ...] = ()
    hairpin: tuple[str, ...] = ()

    def entries(self) -> Iterator[tuple[str, Element]]:
        """(map, element) of every element."""
        for name, elements in self.elements:
            for element in elements:
                yield name, element
        for maps, key, addresses in self.picks:
            for name, address in zip(maps, addresses, strict=True):
                yield name, Element(key, address)


def _choose(picks: Sequence[str]) -> str:
    """Go to one of `picks`, each with probability 1/n."""
    if len(picks) == 1:
        return f"goto {picks[0]}"
    choices = ", ".join(f"{i} : goto {pick}" for i, pick in enumerate(picks))
    return f"numgen random mod {len(picks)} vmap {{ {choices} }}"


def _ports_tag(ports: tuple[int, ...]) -> str:
    """`to8080` when every backend listens on 8080, else a hash of the ports in order."""
    if len(set(ports)) == 1:
        return f"to{ports[0]}"
    return "to" + digest(*ports)[:8].lower()


def vip_endpoint(protocol: str, port: int, target: int, index: int) -> str:
    """`vip-tcp-80-to8080-ep2`: the map (VIP -> backend address) of backend 2 of every
    Service port 80/TCP whose backend 2 listens on 8080, and the chain that DNATs with it."""
    return f"vip-{protocol.lower()}-{port}-to{target}-ep{index}"


def node_endpoint(kind: str, protocol: str, target: int, index: int) -> str:
    """`node-tcp-to8080-ep2` (`node-local-...`): the same for node ports, keyed by node port."""
    return f"{kind}-{protocol.lower()}-to{target}-ep{index}"


@functools.lru_cache(maxsize=4096)
def vip_shape(protocol: str, port: int, targets: tuple[int, ...]) -> Shape:
    """`vip-tcp-80-to8080-of3`: every Service port 80/TCP with 3 backends on port 8080."""
    proto = protocol.lower()
    picks = tuple(vip_endpoint(proto, port, target, i) for i, target in enumerate(targets))
    name = f"vip-{proto}-{port}-{_ports_tag(targets)}-of{len(targets)}"
    chains = [(name, (_choose(picks),))]
    chains += [
        (pick, (f"meta l4proto {proto} dnat ip to ip daddr map @{pick} : {target}",))
        for pick, target in zip(picks, targets, strict=True)
    ]
    return Shape(name, tuple(chains), picks)


def _node_picks(
    kind: str, proto: str, targets: tuple[int, ...]
) -> tuple[tuple[str, ...], list[tuple[str, tuple[str, ...]]]]:
    picks = tuple(node_endpoint(kind, proto, target, i) for i, target in enumerate(targets))
    chains: list[tuple[str, tuple[str, ...]]] = [
        (pick, (f"meta l4proto {proto} dnat ip to {proto} dport map @{pick} : {target}",))
        for pick, target in zip(picks, targets, strict=True)
    ]
    return picks, chains


@functools.lru_cache(maxsize=4096)
def external_shape(protocol: str, targets: tuple[int, ...]) -> Shape:
    """`ext-tcp-to8080-of3`, externalTrafficPolicy Cluster: masqueraded (the reply must come
    back through this node), then one of 3 backends."""
    proto = protocol.lower()
    picks, chains = _node_picks("node", proto, targets)
    name = f"ext-{proto}-{_ports_tag(targets)}-of{len(targets)}"
    rules = (f"jump {MARK_MASQ_CHAIN}", _choose(picks))
    return Shape(name, ((name, rules), *chains), picks)


@functools.lru_cache(maxsize=4096)
def external_local_shape(protocol: str, targets: tuple[int, ...], local: tuple[int, ...]) -> Shape:
    """`extlocal-tcp-to8080-of3-local1`, externalTrafficPolicy Local: this node's own
    connections reach every backend, masqueraded; the others keep their source and reach a
    local one (none: they fall through, and the filter chain drops them)."""
    proto = protocol.lower()
    picks, chains = _node_picks("node", proto, targets)
    rules = [f"fib saddr type local jump {MARK_MASQ_CHAIN}", f"fib saddr type local {_choose(picks)}"]
    mine: tuple[str, ...] = ()
    if local:
        mine, more = _node_picks("node-local", proto, local)
        rules.append(_choose(mine))
        chains += more
    name = f"extlocal-{proto}-{_ports_tag(targets)}-of{len(targets)}-local{len(local)}"
    if local and len(set(local)) > 1:
        name += "-" + _ports_tag(local)
    return Shape(name, ((name, tuple(rules)), *chains), picks, mine)


def _pick(rule: ServiceRule, backends: Sequence[Backend]) -> list[str]:
    """The rules of a sticky port's svc or svl chain: clients seen within the timeout go
    back to their endpoint, the others to one of them at random."""
    out = [f"ip saddr @{affinity_set(rule, b)} goto {endpoint_chain(rule, b)}" for b in backends]
    out.append(_choose([endpoint_chain(rule, b) for b in backends]))
    return out


def _sticky(rule: ServiceRule) -> tuple[list[tuple[str, tuple[Element, ...]]], Fragment]:
    """The chains and sets of a port with session affinity, as the iptables proxy's SVC,
    SVL, EXT and SEP chains, and its elements in the verdict maps."""
    proto, local = rule.protocol.lower(), rule.local_backends
    exposed = bool(rule.external_ports())
    svc = service_chain(rule) if not rule.internal_local or exposed else ""
    svl = local_chain(rule) if local and (rule.internal_local or (exposed and rule.external_local)) else ""
    chains: dict[str, tuple[str, ...]] = {}
    if svc:
        chains[svc] = tuple(_pick(rule, rule.backends))
    if svl:
        chains[svl] = tuple(_pick(rule, local))
    if exposed:
        if rule.external_local:
            ext = [f"fib saddr type local jump {MARK_MASQ_CHAIN}", f"fib saddr type local goto {svc}"]
            if svl:
                ext.append(f"goto {svl}")
        else:
            ext = [f"jump {MARK_MASQ_CHAIN}", f"goto {svc}"]
        chains[external_chain(rule)] = tuple(ext)
    sets: dict[str, str] = {}
    for backend in rule.backends if svc else local:
        aff = affinity_set(rule, backend)
        sets[aff] = (
            f"type ipv4_addr ; flags dynamic,timeout ; timeout {rule.affinity_seconds}s ; "
            f"size {AFFINITY_SET_SIZE} ; comment {_comment(f'{rule.service} clients of {backend.ip}')} ;"
        )
        chains[endpoint_chain(rule, backend)] = (
            f"meta l4proto {proto} update @{aff} {{ ip saddr }} dnat ip to {backend.ip}:{backend.port} "
            f"comment {_comment(f'{rule.service} to {backend.ip}:{backend.port}')}",
        )
    elements: list[tuple[str, tuple[Element, ...]]] = []
    target = svl if rule.internal_local else svc
    if target:
        elements.append((SERVICE_IPS, (_vip_element(rule, f"goto {target}"),)))
    ports = rule.external_ports()
    if ports:
        to = f"goto {external_chain(rule)}"
        elements.append((SERVICE_NODEPORTS, tuple(_node_element(rule, p, to) for p in ports)))
    return elements, Fragment(chains=tuple(chains.items()), sets=tuple(sets.items()))


def _vip_element(rule: ServiceRule, verdict: str) -> Element:
    return Element(f"{rule.vip} . {rule.protocol.lower()} . {rule.port}", verdict, _safe(rule.service))


def _node_element(rule: ServiceRule, port: int, verdict: str) -> Element:
    what = "node port" if port == rule.node_port else "LoadBalancer port"
    return Element(f"{rule.protocol.lower()} . {port}", verdict, _safe(f"{rule.service} {what}"))


def fragment(rule: ServiceRule) -> Fragment:
    """What a vetted Service port adds to the table (see the module docstring)."""
    backends = rule.backends
    external = rule.external_ports()
    elements: list[tuple[str, tuple[Element, ...]]] = []
    if not backends:
        elements.append((NO_ENDPOINT_SERVICES, (_vip_element(rule, f"goto {REJECT_CHAIN}"),)))
        if external:
            refused = tuple(_node_element(rule, p, f"goto {REJECT_CHAIN}") for p in external)
            elements.append((NO_ENDPOINT_NODEPORTS, refused))
        return Fragment(elements=tuple(elements))
    local = list(itertools.compress(backends, map(_LOCAL, backends)))
    if rule.internal_local and not local:
        elements.append((NO_ENDPOINT_SERVICES, (_vip_element(rule, "drop"),)))
    if rule.external_local and not local and external:
        elements.append((NO_ENDPOINT_NODEPORTS, tuple(_node_element(rule, p, "drop") for p in external)))
    addresses = tuple(map(_ADDRESS, backends))
    if rule.affinity_seconds:
        routes, own = _sticky(rule)
        return own._replace(elements=(*routes, *elements), hairpin=addresses)
    proto = rule.protocol.lower()
    shapes: list[Shape] = []
    picks: list[Picks] = []
    chosen = local if rule.internal_local else backends
    if chosen:
        shape = vip_shape(proto, rule.port, tuple(map(_PORT, chosen)))
        shapes.append(shape)
        elements.append((SERVICE_IPS, (_vip_element(rule, f"goto {shape.name}"),)))
        picks.append(
            Picks(shape.maps, rule.vip, addresses if chosen is backends else tuple(map(_ADDRESS, chosen)))
        )
    if external:
        targets = tuple(map(_PORT, backends))
        if rule.external_local:
            shape = external_local_shape(proto, targets, tuple(map(_PORT, local)))
        else:
            shape = external_shape(proto, targets)
        shapes.append(shape)
        to = f"goto {shape.name}"
        elements.append((SERVICE_NODEPORTS, tuple(_node_element(rule, p, to) for p in external)))
        mine = tuple(map(_ADDRESS, local))
        for port in external:
            picks.append(Picks(shape.maps, str(port), addresses))
            if shape.local_maps:
                picks.append(Picks(shape.local_maps, str(port), mine))
    return Fragment(tuple(elements), tuple(picks), (), (), tuple(shapes), addresses)


# --- rendering -------------------------------------------------------------------------------


def _static_maps() -> list[tuple[str, str]]:
    return [
        (SERVICE_IPS, "type ipv4_addr . inet_proto . inet_service : verdict ;"),
        (SERVICE_NODEPORTS, "type inet_proto . inet_service : verdict ;"),
        (NO_ENDPOINT_SERVICES, "type ipv4_addr . inet_proto . inet_service : verdict ;"),
        (NO_ENDPOINT_NODEPORTS, "type inet_proto . inet_service : verdict ;"),
    ]


def _static_chains(service_cidr: str) -> list[tuple[str, tuple[str, ...]]]:
    """The frame every sync keeps: base chains and the chains they jump to."""
    cidr = str(ipaddress.IPv4Network(service_cidr, strict=False))
    base = "type {} hook {} priority {} ; policy accept ;"
    return [
        ("nat-prerouting", (base.format("nat", "prerouting", -101), "jump services")),
        ("nat-output", (base.format("nat", "output", -101), "jump services")),
        ("nat-postrouting", (base.format("nat", "postrouting", 99), "jump masquerading")),
        ("filter-input", (base.format("filter", "input", -1), "jump filter")),
        ("filter-forward", (base.format("filter", "forward", -1), "jump filter")),
        ("filter-output", (base.format("filter", "output", -1), "jump filter")),
        (
            "services",
            (
                f"ip daddr . meta l4proto . th dport vmap @{SERVICE_IPS}",
                f"fib daddr type local meta l4proto . th dport vmap @{SERVICE_NODEPORTS} "
                f"comment {_comment('node ports and LoadBalancer ports on every address of this node')}",
            ),
        ),
        (MARK_MASQ_CHAIN, (f"meta mark set meta mark | {MASQ_MARK}",)),
        (
            "masquerading",
            (
                f"ip saddr . ip daddr @{HAIRPIN} ct status dnat jump {MARK_MASQ_CHAIN} "
                f"comment {_comment('hairpin: a backend reaching itself through its service')}",
                f"meta mark & {MASQ_MARK} == 0 return",
                f"meta mark set meta mark ^ {MASQ_MARK}",
                f"masquerade comment {_comment('service traffic requiring SNAT')}",
            ),
        ),
        (
            "filter",
            (
                f"ip daddr {LOOPBACK} ip saddr != {LOOPBACK} ct state != {{ established, related }} "
                f"ct status ! dnat drop comment {_comment('block incoming localnet connections')}",
                f"ip daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES}",
                f"fib daddr type local meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS}",
                f"ip daddr {cidr} reject with icmp type port-unreachable "
                f"comment {_comment('service CIDR without a service')}",
            ),
        ),
        (REJECT_CHAIN, ("reject with icmp type port-unreachable",)),
    ]


def _chain_block(name: str, rules: Iterable[str]) -> str:
    return f"\tchain {name} {{\n" + "".join(f"\t\t{r}\n" for r in rules) + "\t}\n"


def _element_lines(table: str, verb: str, items: Mapping[str, list[str]]) -> Iterator[str]:
    for name, entries in items.items():
        if entries:
            yield f"{verb} element {FAMILY} {table} {name} {{ {', '.join(entries)} }}\n"


def _kind(declaration: str) -> str:
    """ "map" when the declaration's type has a value (`type key : value`), else "set"."""
    return "map" if " : " in declaration.split(";", 1)[0] else "set"


class Layout(NamedTuple):
    """Our table without its elements: map and set declarations, chains and their rules."""

    maps: dict[str, str]
    chains: dict[str, tuple[str, ...]]


def layout(fragments: Sequence[Fragment], service_cidr: str) -> Layout:
    """The frame and what `fragments` need of their own and of the shared shapes."""
    maps: dict[str, str] = dict(_static_maps())
    maps[HAIRPIN] = "type ipv4_addr . ipv4_addr ;"
    chains: dict[str, tuple[str, ...]] = dict(_static_chains(service_cidr))
    shapes = {shape.name: shape for item in fragments for shape in item.shapes}
    for shape in sorted(shapes.values(), key=lambda s: s.name):
        maps.update(shape.declarations())
        chains.update(shape.chains)
    for item in fragments:
        if item.sets or item.chains:
            maps.update(item.sets)
            chains.update(item.chains)
    return Layout(maps, chains)


def hairpin_addresses(fragments: Iterable[Fragment]) -> list[str]:
    """Every backend address, in address order: one `X . X` element of `hairpin` each."""
    return sorted(set().union(*(item.hairpin for item in fragments)), key=address_number)


def render_layout(table: str, shape: Layout) -> str:
    """The transaction that writes our table anew without elements: it adds the table (a
    no-op if it exists), deletes it and writes it again, atomically."""
    out = [
        f"add table {FAMILY} {table}\n",
        f"delete table {FAMILY} {table}\n",
        f"table {FAMILY} {table} {{\n",
    ]
    out += [f"\t{_kind(body)} {name} {{ {body} }}\n" for name, body in shape.maps.items()]
    out += [_chain_block(name, rules) for name, rules in shape.chains.items()]
    out.append("}\n")
    return "".join(out)


def render_full(fragments: Iterable[Fragment], *, service_cidr: str, table: str) -> str:
    """The transaction that makes our table exactly `fragments` (and the frame): the layout
    written anew (`render_layout`), then every element, atomically."""
    items = list(fragments)
    adds: dict[str, list[str]] = {}
    for item in items:
        for name, elements in item.elements:
            adds.setdefault(name, []).extend(element.text() for element in elements)
        for maps, key, addresses in item.picks:
            for name, address in zip(maps, addresses, strict=True):
                entry = f"{key} : {address}"
                if name in adds:
                    adds[name].append(entry)
                else:
                    adds[name] = [entry]
    adds[HAIRPIN] = [f"{ip} . {ip}" for ip in hairpin_addresses(items)]
    out = [render_layout(table, layout(items, service_cidr))]
    out += _element_lines(table, "add", adds)
    return "".join(out)


@dataclass
class Changes:
    """The difference between two programmed states, in the order one transaction must
    apply it (see `render_changes`)."""

    add_sets: dict[str, str] = dataclasses.field(default_factory=dict)
    add_chains: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    refill_chains: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    drop_chains: set[str] = dataclasses.field(default_factory=set)
    drop_sets: set[str] = dataclasses.field(default_factory=set)
    delete_elements: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    add_elements: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    ports: int = 0  # Service ports whose fragment changed

    def touches_layout(self) -> bool:
        """Whether chains or sets change (not only elements): what a listing without
        elements shows."""
        return bool(
            self.add_sets or self.add_chains or self.refill_chains or self.drop_chains or self.drop_sets
        )

    def __bool__(self) -> bool:
        return self.touches_layout() or any(self.delete_elements.values()) or any(self.add_elements.values())


@dataclass
class Usage:
    """How many Service ports use each shape and each hairpin address."""

    shapes: Counter[str] = dataclasses.field(default_factory=Counter)
    shape: dict[str, Shape] = dataclasses.field(default_factory=dict)
    hairpin: Counter[str] = dataclasses.field(default_factory=Counter)

    @classmethod
    def of(cls, fragments: Iterable[Fragment]) -> Usage:
        usage = cls()
        for item in fragments:
            for shape in item.shapes:
                usage.shapes[shape.name] += 1
                usage.shape[shape.name] = shape
            usage.hairpin.update(item.hairpin)
        return usage

    def shared(self) -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
        """The shared chains and maps the shapes in use need."""
        chains: dict[str, tuple[str, ...]] = {}
        maps: dict[str, str] = {}
        for name, count in self.shapes.items():
            if count > 0:
                chains.update(self.shape[name].chains)
                maps.update(self.shape[name].declarations())
        return chains, maps


def changes(
    old: Mapping[RuleKey, Fragment],
    new: Mapping[RuleKey, Fragment],
    usage: Usage | None = None,
    keys: Iterable[RuleKey] | None = None,
) -> Changes:
    """What turns the table holding `old` into one holding `new`. `usage` (of `old`) is
    updated to `new`'s. `keys`: the only ports that may differ, when the caller knows."""
    usage = usage if usage is not None else Usage.of(old.values())
    out = Changes()
    live = {name for name, count in usage.shapes.items() if count > 0}
    hairpin_before = Counter(usage.hairpin)
    for key in keys if keys is not None else (*new.keys(), *(old.keys() - new.keys())):
        before, after = old.get(key), new.get(key)
        if before is after or before == after:
            continue
        out.ports += 1
        before, after = before or Fragment(), after or Fragment()
        was = {(name, e.key): e for name, e in before.entries()}
        now = {(name, e.key): e for name, e in after.entries()}
        for where, element in was.items():
            if now.get(where) != element:
                out.delete_elements.setdefault(where[0], []).append(where[1])
        for where, element in now.items():
            if was.get(where) != element:
                out.add_elements.setdefault(where[0], []).append(element.text())
        old_chains, new_chains = dict(before.chains), dict(after.chains)
        out.drop_chains |= old_chains.keys() - new_chains.keys()
        for name, rules in new_chains.items():
            if name not in old_chains:
                out.add_chains[name] = rules
            elif old_chains[name] != rules:
                out.refill_chains[name] = rules
        old_sets, new_sets = dict(before.sets), dict(after.sets)
        out.drop_sets |= old_sets.keys() - new_sets.keys()
        out.add_sets.update((n, d) for n, d in new_sets.items() if n not in old_sets)
        for shape in before.shapes:
            usage.shapes[shape.name] -= 1
        for shape in after.shapes:
            usage.shapes[shape.name] += 1
            usage.shape[shape.name] = shape
        usage.hairpin.subtract(before.hairpin)
        usage.hairpin.update(after.hairpin)
    if live != {name for name, count in usage.shapes.items() if count > 0}:
        chains_before, maps_before = Usage(Counter(dict.fromkeys(live, 1)), usage.shape).shared()
        chains_after, maps_after = usage.shared()
        out.add_chains.update((n, r) for n, r in chains_after.items() if n not in chains_before)
        out.drop_chains |= chains_before.keys() - chains_after.keys()
        out.add_sets.update((n, d) for n, d in maps_after.items() if n not in maps_before)
        out.drop_sets |= maps_before.keys() - maps_after.keys()
        for name in [n for n, count in usage.shapes.items() if count <= 0]:
            del usage.shapes[name]
            usage.shape.pop(name, None)
    for ip in list(usage.hairpin):
        if usage.hairpin[ip] <= 0:
            del usage.hairpin[ip]
            if hairpin_before[ip] > 0:
                out.delete_elements.setdefault(HAIRPIN, []).append(f"{ip} . {ip}")
        elif hairpin_before[ip] <= 0:
            out.add_elements.setdefault(HAIRPIN, []).append(f"{ip} . {ip}")
    for name in out.drop_sets:  # its elements go with it
        out.delete_elements.pop(name, None)
    return out


def render_changes(table: str, change: Changes) -> str:
    """One transaction applying `change`: new sets and maps and chains are declared first,
    chains that change or go are flushed, rules filled in, elements deleted then added (a
    changed value is both), and last the chains, then the sets, no longer used are deleted."""
    out = []
    for name, body in change.add_sets.items():
        out.append(f"add {_kind(body)} {FAMILY} {table} {name} {{ {body} }}\n")
    out += [f"add chain {FAMILY} {table} {name}\n" for name in change.add_chains]
    out += [f"flush chain {FAMILY} {table} {name}\n" for name in sorted(change.drop_chains)]
    out += [f"flush chain {FAMILY} {table} {name}\n" for name in change.refill_chains]
    for name, rules in (*change.add_chains.items(), *change.refill_chains.items()):
        out += [f"add rule {FAMILY} {table} {name} {rule}\n" for rule in rules]
    out += _element_lines(table, "delete", change.delete_elements)
    out += _element_lines(table, "add", change.add_elements)
    out += [f"delete chain {FAMILY} {table} {name}\n" for name in sorted(change.drop_chains)]
    for name in sorted(change.drop_sets):
        out.append(f"delete {'set' if name.startswith('aff-') else 'map'} {FAMILY} {table} {name}\n")
    return "".join(out)


def render(rules: Sequence[ServiceRule], *, service_cidr: str, prefix: str = "GITOPS") -> str:
    """The whole transaction for `rules` (vetted first: what cannot be programmed is left
    out, as `NftablesProxy.sync` does). Output is independent of the order of `rules`."""
    kept, _ = vet(rules)
    return render_full((fragment(r) for r in kept), service_cidr=service_cidr, table=table_name(prefix))


def table_block(listing: str, table: str) -> str | None:
    """The lines of `table` in an nft listing, or None when it has none."""
    head = f"table {FAMILY} {table} {{"
    lines = listing.splitlines()
    try:
        start = lines.index(head)
    except ValueError:
        return None
    end = lines.index("}", start)
    return "\n".join(lines[start : end + 1]) + "\n"


# --- elements straight to the kernel ----------------------------------------------------------
#
# NEWSETELEM messages as nft builds them (`nft --debug=mnl` shows its bytes), for the first
# write of a table that holds no Service yet (see the module docstring).

_NETLINK_NETFILTER = 12
_SOL_NETLINK = 270
_NETLINK_CAP_ACK = 10  # errors carry the header of the message refused, not all of it
_SO_SNDBUFFORCE = 32
_NLMSG_ERROR = 2
_NLM_F_REQUEST, _NLM_F_ACK, _NLM_F_CREATE = 0x1, 0x4, 0x400
_NFNL_SUBSYS_NFTABLES = 10
_NFNL_MSG_BATCH_BEGIN, _NFNL_MSG_BATCH_END = 0x10, 0x11
_NFT_MSG_NEWSETELEM = 12
_NLA_NESTED = 0x8000
# linux/netfilter/nf_tables.h: NFTA_SET_ELEM_LIST_*, NFTA_LIST_ELEM, NFTA_SET_ELEM_*,
# NFTA_DATA_*, NFTA_VERDICT_*
_LIST_TABLE, _LIST_SET, _LIST_ELEMENTS = 1, 2, 3
_LIST_ELEM = 1
_ELEM_KEY, _ELEM_DATA, _ELEM_USERDATA = 1, 2, 6
_DATA_VALUE, _DATA_VERDICT = 1, 2
_VERDICT_CODE, _VERDICT_CHAIN = 1, 2
_VERDICTS = {"drop": 0, "accept": 1, "jump": -3, "goto": -4}  # NF_DROP, NF_ACCEPT, NFT_JUMP, NFT_GOTO
_UDATA_COMMENT = 0  # libnftnl's NFTNL_UDATA_SET_ELEM_COMMENT, what `nft list` shows as comment
_MAX_ELEMENTS_BYTES = 0xFFFF - 4  # a nested attribute's length is 16 bits


def _attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + bytes(-size % 4)


def _nest(kind: int, payload: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(payload), kind | _NLA_NESTED) + payload


def _message(kind: int, flags: int, seq: int, family: int, *, body: bytes = b"", res_id: int = 0) -> bytes:
    header = struct.pack("=IHHII", 20 + len(body), kind, flags, seq, 0)
    return header + struct.pack("!BBH", family, 0, res_id) + body


@functools.lru_cache(maxsize=1 << 16)
def _ipv4(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET, text)  # vetted: a dotted quad


def _port(text: str) -> bytes:
    return int(text).to_bytes(2, "big")


_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")  # by length % 4: what fills it up to 32 bits
# Each type of a key alone, and as a field of a concatenation (padded to the kernel's 32-bit registers).
_FIELDS: dict[str, Callable[[str], bytes]] = {
    "ipv4_addr": _ipv4,
    "inet_proto": {"tcp": b"\x06", "udp": b"\x11"}.__getitem__,
    "inet_service": _port,
}
_PADDED_FIELDS: dict[str, Callable[[str], bytes]] = {
    "ipv4_addr": _ipv4,
    "inet_proto": {"tcp": b"\x06\0\0\0", "udp": b"\x11\0\0\0"}.__getitem__,
    "inet_service": lambda text: int(text).to_bytes(2, "big") + b"\0\0",
}


@functools.lru_cache(maxsize=4096)
def _verdict(text: str) -> bytes:
    """The element data of a verdict: `goto <chain>`, `jump <chain>`, `drop`, `accept`."""
    word, _, chain = text.partition(" ")
    body = _attr(_VERDICT_CODE, struct.pack("!i", _VERDICTS[word]))
    if chain:
        body += _attr(_VERDICT_CHAIN, chain.encode() + b"\0")
    return _nest(_ELEM_DATA, _nest(_DATA_VERDICT, body))


def _value_of(data: bytes) -> bytes:
    return _nest(_ELEM_DATA, _attr(_DATA_VALUE, data))


def _value(text: str) -> bytes:
    return _value_of(_ipv4(text))


_VALUES: dict[str, Callable[[str], bytes]] = {"verdict": _verdict, "ipv4_addr": _value}


def _element(key: bytes, data: bytes = b"", comment: str = "") -> bytes:
    """One NFTA_LIST_ELEM: its key, its data (a nested NFTA_SET_ELEM_DATA), its comment."""
    size = 4 + len(key)
    keyed = 4 + size + len(_PAD[size % 4])
    note = b""
    if comment:
        text = comment.encode()
        noted = 7 + len(text)  # attribute header, type and length bytes, the text, its NUL
        note = struct.pack("=HHBB", noted, _ELEM_USERDATA, _UDATA_COMMENT, len(text) + 1) + text
        note += b"\0" + _PAD[noted % 4]
    header = struct.pack(
        "=HHHHHH",
        4 + keyed + len(data) + len(note),
        _LIST_ELEM | _NLA_NESTED,
        keyed,
        _ELEM_KEY | _NLA_NESTED,
        size,
        _DATA_VALUE,
    )
    return header + key + _PAD[size % 4] + data + note


class _Codec(NamedTuple):
    """How the elements of one map or set become bytes, from its declaration."""

    key: Callable[[str], bytes]
    value: Callable[[str], bytes] | None

    @classmethod
    def of(cls, declaration: str) -> _Codec:
        """`type a . b : c ;` -> fields a and b (each padded to 32 bits in a concatenation,
        as the kernel's registers hold them), values of type c (ipv4_addr or verdict)."""
        kind = declaration.split(";", 1)[0].strip().removeprefix("type ")
        key, _, value = kind.partition(" : ")
        names = key.split(" . ")
        values = _VALUES[value] if value else None
        if len(names) == 1:
            return cls(_FIELDS[names[0]], values)
        fields = [_PADDED_FIELDS[name] for name in names]

        def concatenation(text: str) -> bytes:
            return b"".join([field(part) for field, part in zip(fields, text.split(" . "), strict=True)])

        return cls(concatenation, values)


def _pick_parts(size: int) -> tuple[bytes, bytes]:
    """What comes before and after a key of `size` bytes in an element whose data is an
    IPv4 address, less the address itself (`_element`'s layout)."""
    key_attribute = 4 + size + len(_PAD[size % 4])
    before = struct.pack(
        "=HHHHHH",
        4 + 4 + key_attribute + 12,
        _LIST_ELEM | _NLA_NESTED,
        4 + key_attribute,
        _ELEM_KEY | _NLA_NESTED,
        4 + size,
        _DATA_VALUE,
    )
    return before, _PAD[size % 4] + struct.pack("=HHHH", 12, _ELEM_DATA | _NLA_NESTED, 8, _DATA_VALUE)


class Batch(NamedTuple):
    """Netlink messages sent as one transaction, and what each acknowledged one carries
    (by sequence number), to say what the kernel refused."""

    data: bytes
    acks: dict[int, str]


def element_batch(table: str, maps: Mapping[str, str], fragments: Sequence[Fragment]) -> Batch:
    """Every element of `fragments` and of the hairpin set, as one batch of NEWSETELEM
    messages for our table, whose maps are declared in `maps`: what `render_full`'s `add
    element` lines make, without libnftables. Raises KeyError for a map it cannot encode."""
    elements: dict[str, list[bytes]] = {}
    codecs: dict[str, _Codec] = {}
    picks: dict[tuple[str, ...], list[Picks]] = {}  # by the maps they fill
    for item in fragments:
        for name, entries in item.elements:
            found = codecs.get(name) or codecs.setdefault(name, _Codec.of(maps[name]))
            key, value = found
            assert value is not None
            out = elements.setdefault(name, [])
            out += [_element(key(e.key), value(e.value), e.comment) for e in entries]
        for pick in item.picks:
            if pick.maps in picks:
                picks[pick.maps].append(pick)
            else:
                picks[pick.maps] = [pick]
    for names, rows in picks.items():
        # Endpoint map elements are a head (per key) and an address: joined in C, 55,000 of them.
        keys = list(map(_Codec.of(maps[names[0]]).key, [pick.key for pick in rows]))
        before, after = _pick_parts(len(keys[0]))
        heads = [before + key + after for key in keys]
        addresses = [pick.addresses for pick in rows]
        for i, name in enumerate(names):
            packed = map(_ipv4, map(operator.itemgetter(i), addresses))
            elements.setdefault(name, []).extend(map(bytes.__add__, heads, packed))
    hairpin = _Codec.of(maps[HAIRPIN]).key
    elements[HAIRPIN] = [_element(hairpin(f"{ip} . {ip}")) for ip in hairpin_addresses(fragments)]

    family = socket.AF_INET
    kind = (_NFNL_SUBSYS_NFTABLES << 8) | _NFT_MSG_NEWSETELEM
    flags = _NLM_F_REQUEST | _NLM_F_CREATE | _NLM_F_ACK
    out = [_message(_NFNL_MSG_BATCH_BEGIN, _NLM_F_REQUEST, 1, socket.AF_UNSPEC, res_id=_NFNL_SUBSYS_NFTABLES)]
    acks: dict[int, str] = {}
    about = _attr(_LIST_TABLE, table.encode() + b"\0")
    for name, items in elements.items():
        if not items:
            continue
        head = about + _attr(_LIST_SET, name.encode() + b"\0")
        step = max(1, _MAX_ELEMENTS_BYTES // max(map(len, items)))
        for start in range(0, len(items), step):
            seq = len(out) + 1
            acks[seq] = f"elements of {name}"
            body = head + _nest(_LIST_ELEMENTS, b"".join(items[start : start + step]))
            out.append(_message(kind, flags, seq, family, body=body))
    out.append(
        _message(
            _NFNL_MSG_BATCH_END, _NLM_F_REQUEST, len(out) + 1, socket.AF_UNSPEC, res_id=_NFNL_SUBSYS_NFTABLES
        )
    )
    return Batch(b"".join(out), acks)


def send_batch(batch: Batch, *, timeout: float = 30.0) -> None:
    """Send `batch` on a netlink socket of its own and wait for every acknowledgement;
    NftablesError with the kernel's errno when it refuses any of it (then none of it is
    applied)."""
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER) as sock:
            sock.bind((0, 0))
            room = len(batch.data) + (1 << 16)
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_SNDBUFFORCE, room)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, room)
            sock.setsockopt(_SOL_NETLINK, _NETLINK_CAP_ACK, 1)
            sock.settimeout(timeout)
            sock.send(batch.data)
            waiting = set(batch.acks)
            while waiting:
                reply = sock.recv(1 << 16)
                at = 0
                while at + 20 <= len(reply):
                    size, kind, _, seq, _ = struct.unpack_from("=IHHII", reply, at)
                    if kind == _NLMSG_ERROR:
                        (error,) = struct.unpack_from("=i", reply, at + 16)
                        if error:
                            what = batch.acks.get(seq, f"message {seq}")
                            raise NftablesError(f"netlink refused the {what}: {os.strerror(-error)}")
                        waiting.discard(seq)
                    at += (size + 3) & ~3
    except OSError as exc:
        raise NftablesError(f"netlink: {exc}") from None


# --- running nft ------------------------------------------------------------------------------


class Nft(Protocol):
    """Runs nft commands: one call, one transaction. Raises NftablesError."""

    description: str

    def run(self, commands: str) -> str: ...


class LibraryNft:
    """libnftables in this process (`libnftables.so.1`, as Debian's python3-nftables
    loads it): no process per sync. Listings are terse (no set elements)."""

    description = "libnftables"

    def __init__(self, library: str | None = None) -> None:
        path = library or ctypes.util.find_library("nftables") or "libnftables.so.1"
        try:
            lib = ctypes.CDLL(path)
        except OSError as exc:
            raise NftablesError(f"cannot load libnftables ({exc})") from None
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = ctypes.c_int
        for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = ctypes.c_char_p
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        ctx = lib.nft_ctx_new(0)
        if not ctx:
            raise NftablesError("libnftables: nft_ctx_new failed")
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        lib.nft_ctx_output_set_flags(ctx, _NFT_OUTPUT_TERSE)
        self._lib, self._ctx = lib, ctx
        weakref.finalize(self, lib.nft_ctx_free, ctx)

    def run(self, commands: str) -> str:
        done = self._lib.nft_run_cmd_from_buffer(self._ctx, commands.encode())
        output = (self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode()
        error = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode()
        if done != 0:
            raise NftablesError(f"libnftables refused the commands: {error.strip()[:_ERROR_CHARS]}")
        return output


class ProcessNft:
    """One `nft -t -f -` process per call: where libnftables cannot be loaded."""

    def __init__(self, nft: str = "nft") -> None:
        self.nft = nft
        self.description = f"{nft} -f -"

    def run(self, commands: str) -> str:
        try:
            done = subprocess.run(
                [self.nft, "-t", "-f", "-"], input=commands, capture_output=True, text=True, check=False
            )
        except FileNotFoundError as exc:
            raise NftablesError(f"{self.nft}: not found ({exc})") from None
        if done.returncode != 0:
            raise NftablesError(f"{self.nft} -f - failed: {done.stderr.strip()[:_ERROR_CHARS]}")
        return done.stdout


def open_nft(nft: str = "nft", backend: str = "auto") -> Nft:
    """libnftables in this process ("library"), an `nft` process per call ("process"), or
    the library where it loads and the process otherwise ("auto")."""
    if backend not in ("auto", "library", "process"):
        raise ValueError(f"nft backend {backend!r}: expected auto, library or process")
    if backend != "process":
        try:
            return LibraryNft()
        except NftablesError:
            if backend == "library":
                raise
    return ProcessNft(nft)


def nftables_works(nft: str = "nft") -> str:
    """ "" when nftables can be used here (libnftables or the nft command, and a kernel with
    nf_tables), else why not."""
    if shutil.which(nft) is None and ctypes.util.find_library("nftables") is None:
        return f"neither libnftables nor {nft} is installed"
    try:
        open_nft(nft).run(f"list tables {FAMILY}")
    except NftablesError as exc:
        return str(exc)
    return ""


# --- the proxy --------------------------------------------------------------------------------


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused for a sync. A first sync of 5,000 Service
    ports makes some 100,000 small objects and keeps most of them; the collections they
    set off walk every object of the agent (its rules, its fragments) again and again, a
    third of the sync's Python time (measured: 50-90 ms of 250-300). A sync makes no
    reference cycle to wait for, and the collector runs as usual after it."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class NftablesProxy:
    """Keeps our table equal to the Service ports it is given (see the module doc); the
    interface of `gitops.agents.iptables.IptablesProxy`.

    `recheck_seconds`: the table's layout (`nft -t list table`) is compared with what this
    proxy left at most that often, and written anew when it differs; 0 checks at every
    sync. `resync_seconds`: the whole table is written anew that often anyway (which also
    repairs elements changed behind our back). `backend`: see `open_nft`. `netlink`: when
    the table holds nothing of ours yet (`install` made it, or it is gone), write it in two
    transactions: its layout through nft, then every element in one netlink batch of our
    own (`element_batch`), five times cheaper than through libnftables; until the second,
    the table answers as an empty one does. A table that holds Services is always
    rewritten in one nft transaction."""

    def __init__(
        self,
        service_cidr: str,
        *,
        prefix: str = "GITOPS",
        nft: str = "nft",
        backend: str = "auto",
        route_localnet: bool = True,
        sysctl_dir: Path = Path("/proc/sys"),
        recheck_seconds: float = 0.0,
        resync_seconds: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
        netlink: bool = True,
    ) -> None:
        self.service_cidr = str(ipaddress.IPv4Network(service_cidr, strict=False))
        self.prefix = check_prefix(prefix)
        self.table = table_name(prefix)
        self.nft_command, self.backend = nft, backend
        self.route_localnet = route_localnet
        self.sysctl_dir = sysctl_dir
        self.recheck_seconds = recheck_seconds
        self.resync_seconds = resync_seconds
        self.clock = clock
        self.netlink = netlink
        self._nft: Nft | None = None
        self._bare = False  # our table is known to hold no Service (or to be gone)
        self._vetter = Vetter()
        # The last rules, what they wanted, and how many of them claim each VIP:port and port
        # of this node, when vetting kept them all as they were.
        self._last: tuple[list[ServiceRule], dict[RuleKey, Fragment], dict[object, int]] | None = None
        self._touched: set[RuleKey] = set()  # the ports a patched sync may have changed
        self._fragments: dict[RuleKey, tuple[ServiceRule, Fragment]] = {}
        self._programmed: dict[RuleKey, Fragment] | None = None  # None: not known, write it all
        self._usage = Usage()
        self._layout = ""  # `nft -t list table` as we left it
        self._checked_at = float("-inf")
        self._written_at = float("-inf")
        self._localnet_problem = ""
        self.skipped: tuple[str, ...] = ()  # what the last sync could not program, and why

    @property
    def nft(self) -> Nft:
        if self._nft is None:
            self._nft = open_nft(self.nft_command, self.backend)
        return self._nft

    def _list(self) -> str | None:
        """Our table without set elements, or None when there is none. Through `list
        ruleset ip`: a terse `list table` still fetches every element from the kernel."""
        return table_block(self.nft.run(f"list ruleset {FAMILY}"), self.table)

    # --- lifecycle --------------------------------------------------------------------

    def install(self) -> None:
        """Create our table with its frame if it is not there (so the whole service CIDR is
        refused before the first sync), and set `route_localnet`. A table already there is
        left as it is: the next sync writes it anew in one transaction."""
        created = self._list() is None
        if created:
            self.nft.run(render_full([], service_cidr=self.service_cidr, table=self.table))
            self._programmed, self._bare = None, True
        if self.route_localnet:
            self._set_route_localnet()
        log.info("nftables.installed", table=self.table, service_cidr=self.service_cidr, created=created)

    def _set_route_localnet(self) -> None:
        self._localnet_problem = set_route_localnet(self.sysctl_dir)
        if self._localnet_problem:
            log.warning("nftables.route_localnet_failed", error=self._localnet_problem)

    def _vetted(
        self, rules: Sequence[ServiceRule]
    ) -> tuple[Sequence[ServiceRule], list[str], dict[RuleKey, Fragment]]:
        kept, problems = self._vetter.vet(rules)
        wanted = {rule_key(rule): self._fragment(rule) for rule in kept}
        if len(self._fragments) > len(wanted):
            self._fragments = {k: v for k, v in self._fragments.items() if k in wanted}
        self._last = None
        if not problems:  # every rule kept as it is: the next sync may patch this one
            keys = Counter(claim for rule in kept for claim in _claims(rule))
            self._last = (list(rules), wanted, dict(keys))
        return kept, problems, wanted

    def _patched(self, rules: Sequence[ServiceRule]) -> dict[RuleKey, Fragment] | None:
        """What the last sync wanted, changed where `rules` holds other objects than the
        last rules did (an agent keeping unchanged rules as they were pays for the changed
        ones only); None when that is not known to be what vetting everything gives."""
        last = self._last
        if last is None or len(last[0]) != len(rules) or self._localnet_problem:
            return None
        before, wanted, keys = last
        changed = [i for i, (a, b) in enumerate(zip(before, rules, strict=True)) if a is not b]
        if len(changed) > 64:
            return None
        wanted, keys = dict(wanted), dict(keys)
        self._touched = {rule_key(before[i]) for i in changed} | {rule_key(rules[i]) for i in changed}
        fresh: list[ServiceRule] = []
        for i in changed:
            old, new = before[i], rules[i]
            candidate, _, plain = self._vetter.vet_one(new)
            if not plain or candidate is None:
                return None
            for claim in _claims(old):
                keys[claim] -= 1
            for claim in _claims(candidate):
                keys[claim] = keys.get(claim, 0) + 1
            wanted.pop(rule_key(old), None)
            fresh.append(candidate)
        for candidate in fresh:
            if any(keys[claim] != 1 for claim in _claims(candidate)):
                return None
            wanted[rule_key(candidate)] = self._fragment(candidate)
        self._last = (list(rules), wanted, keys)
        if len(self._fragments) > 2 * len(wanted) + 1024:
            self._fragments = {k: v for k, v in self._fragments.items() if k in wanted}
        return wanted

    def _fragment(self, rule: ServiceRule) -> Fragment:
        key = rule_key(rule)
        seen = self._fragments.get(key)
        if seen is not None and (seen[0] is rule or seen[0] == rule):
            return seen[1]
        made = fragment(rule)
        self._fragments[key] = (rule, made)
        return made

    def _why_write_all(self, now: float) -> str:
        """Why the whole table must be written now, or "" when a difference will do."""
        if self._programmed is None:
            return "first sync or after a failure"
        if now - self._written_at >= self.resync_seconds:
            return f"every {self.resync_seconds:g} s"
        if now - self._checked_at >= self.recheck_seconds:
            self._checked_at = now
            layout = self._list()
            if layout is None:
                self._bare = True
                return "our table is gone"
            if layout != self._layout:
                return "our table was changed by someone else"
        return ""

    def sync(self, rules: Sequence[ServiceRule]) -> bool:
        """Make our table hold the valid ones of `rules` (the others are in `skipped`);
        False when nothing had to be applied."""
        with _collector_paused():
            return self._sync(rules)

    def _sync(self, rules: Sequence[ServiceRule]) -> bool:
        started = time.perf_counter()
        patched = self._patched(rules)
        problems: list[str]
        touched = self._touched if patched is not None else None
        if patched is not None:
            kept, problems, wanted = rules, [], patched
        else:
            kept, problems, wanted = self._vetted(rules)
        if self._localnet_problem:
            problems.append(self._localnet_problem)
        if problems and tuple(problems) != self.skipped:
            log.warning("nftables.rules_skipped", skipped=len(problems), first=problems[0])
        self.skipped = tuple(problems)
        now = self.clock()
        try:
            why = self._why_write_all(now)
            if why:
                size = self._write_all(list(wanted.values()))
                self._usage = Usage.of(wanted.values())
                self._written_at, relist, changed = now, True, len(wanted)
            else:
                assert self._programmed is not None
                change = changes(self._programmed, wanted, self._usage, touched)
                if not change:
                    log.debug("nftables.unchanged", services=len(kept))
                    return False
                text = render_changes(self.table, change)
                self._programmed = None
                self.nft.run(text)
                relist, changed, size = change.touches_layout(), change.ports, len(text)
            if relist:
                self._layout = self._list() or ""
                self._checked_at = now
        except Exception:
            # What the kernel holds is not known any more: the next sync writes it all.
            self._programmed, self._last, self._bare = None, None, False
            raise
        self._programmed = wanted
        log.info(
            "nftables.synced",
            services=len(kept),
            written=changed,
            full=why or False,
            bytes=size,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return True

    def _write_all(self, fragments: list[Fragment]) -> int:
        """Write our table anew to hold `fragments`; the bytes sent. In one nft transaction,
        or (`netlink`, the table holding no Service) its layout then its elements."""
        self._programmed = None
        bare, self._bare = self._bare, False
        if bare and self.netlink:
            try:
                shape = layout(fragments, self.service_cidr)
                batch = element_batch(self.table, shape.maps, fragments)
                text = render_layout(self.table, shape)
                self.nft.run(text)
                send_batch(batch)
            except (NftablesError, KeyError, ValueError) as exc:
                # Nothing is lost: the table answers as an empty one does until it is written.
                log.warning("nftables.netlink_failed", error=str(exc))
                self.netlink = False
            else:
                return len(text) + len(batch.data)
        text = render_full(fragments, service_cidr=self.service_cidr, table=self.table)
        self.nft.run(text)
        return len(text)

    def cleanup(self) -> None:
        """Delete our table (and nothing else); a no-op when it is not there.
        `route_localnet` stays as it is: other software may rely on it too."""
        self._programmed = None
        present = self._list() is not None
        if present:
            self.nft.run(f"delete table {FAMILY} {self.table}")
        self._bare = True
        log.info("nftables.cleaned", table=self.table, deleted=present)

    def chains(self) -> set[str]:
        """The chains of our table present now (none when it is not there)."""
        return set(_CHAIN_LINE.findall(self._list() or ""))


# --- choosing ---------------------------------------------------------------------------------


def remove_iptables_proxy(prefix: str, iptables: str = "iptables") -> bool:
    """Remove what `IptablesProxy` of `prefix` programmed (its jumps and its own chains,
    not the pod network's `{prefix}-PODNET`); True when there was something. For a node
    switching to nftables: its old service chains would still DNAT and reject."""

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(list(args), input=stdin, capture_output=True, text=True, check=False)
        except FileNotFoundError as exc:
            raise IptablesError(f"{args[0]}: not found ({exc})") from None

    saved = {table: run(f"{iptables}-save", "-t", table) for table in ("nat", "filter")}
    if any(done.returncode != 0 for done in saved.values()):
        raise IptablesError(
            f"{iptables}-save failed: {saved['nat'].stderr.strip()} {saved['filter'].stderr.strip()}"
        )
    nat = {
        c
        for c in parse_chains(saved["nat"].stdout, prefix)
        if c in static_nat_chains(prefix) or is_per_service(c, prefix)
    }
    filt = parse_chains(saved["filter"].stdout, prefix) & {filter_chain(prefix)}
    if services_chain(prefix) not in nat and not filt:
        return False
    for table, builtin, spec in jump_rules(prefix):
        while run(iptables, "-w", "10", "-t", table, "-D", builtin, *spec).returncode == 0:
            pass
    text = deletion({"nat": nat, "filter": filt})
    done = run(f"{iptables}-restore", "--noflush", stdin=text)
    if done.returncode != 0:
        raise IptablesError(f"{iptables}-restore --noflush failed: {done.stderr.strip()}")
    log.info("nftables.iptables_proxy_removed", prefix=prefix, chains=len(nat) + len(filt))
    return True


def choose_proxy(
    mode: str,
    service_cidr: str,
    *,
    prefix: str = "GITOPS",
    iptables: str = "iptables",
    recheck_seconds: float = 0.0,
) -> IptablesProxy | NftablesProxy:
    """The agent's proxy for `mode`: "nftables", "iptables", or "auto": nftables where it
    works here, unless an iptables command other than the default one was configured (which
    says iptables, e.g. `iptables-legacy`), iptables otherwise. The other mode's rules of the
    same prefix, left by an earlier run, are removed. Raises NftablesError when nftables was
    asked for and does not work, ValueError for another mode."""
    if mode not in PROXY_MODES:
        raise ValueError(f"proxy mode {mode!r}: expected one of {', '.join(PROXY_MODES)}")
    problem = nftables_works()
    if mode == "nftables" and problem:
        raise NftablesError(f"proxy mode nftables: {problem}")
    if mode == "nftables" or (mode == "auto" and not problem and iptables == "iptables"):
        try:
            remove_iptables_proxy(prefix, iptables)
        except IptablesError as exc:
            log.warning("nftables.iptables_proxy_not_removed", error=str(exc))
        log.info("nftables.chosen", mode=mode, table=table_name(prefix))
        return NftablesProxy(service_cidr, prefix=prefix, recheck_seconds=recheck_seconds)
    if problem:
        log.info("nftables.not_available", mode=mode, reason=problem)
    else:
        try:
            NftablesProxy(service_cidr, prefix=prefix).cleanup()
        except NftablesError as exc:
            log.warning("nftables.table_not_removed", error=str(exc))
    return IptablesProxy(service_cidr, prefix=prefix, iptables=iptables, recheck_seconds=recheck_seconds)
