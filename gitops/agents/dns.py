"""Cluster DNS: the resolver each node agent runs for the pods of its node.

Pods are told (by their /etc/resolv.conf) to ask the node's pod-bridge gateway address for
every name. Names inside the cluster domain (`cluster.local` unless configured) are
answered from the Services the agent knows, with Kubernetes' DNS schema (the records
CoreDNS serves); every other name is forwarded to the node's own resolvers, and their
answers are cached for their TTL.

Pure core, effects at the edge:

- `build_zone(services, domain)` turns `ServiceEndpoints` into an immutable `Zone`, and
  `Zone.answer(qname, qtype)` is a pure lookup: an `Answer` (rcode and sections) for a
  name the cluster owns, or `None` for a name it does not (to be forwarded). The zone
  holds these names, under `<svc>.<ns>.svc.<domain>`:

  - `<svc>`: A/AAAA of the VIP; of every address for a headless Service; a CNAME to
    `external_name` for an ExternalName Service.
  - `<hostname>.<svc>` for a headless Service's addresses with a hostname, and
    `<ip-with-dashes>.<svc>` for those without one (the names SRV records point at).
  - `_<port>._<proto>.<svc>`: SRV for each named port: one pointing at the Service
    name, or one per address of a headless Service with the pod's own port.
  - PTR for VIPs and headless addresses, `dns-version.<domain>` TXT, the apex SOA (also
    the authority of negative answers). Parents of these names exist with no data, so a
    type a name lacks is NODATA (NOERROR, empty), and only a name that does not exist is
    NXDOMAIN: a resolver walking its search list stops at neither, but NXDOMAIN for a
    name that has other types would make glibc and musl give up on it.

- `ClusterDns` serves the zone on UDP and TCP: `update(services)` swaps in a new zone
  atomically, from any thread. Replies from the zone are memoised as wire bytes per zone
  (an identical query, ID aside, is answered by copying). A name outside the domain is
  looked up in the forward cache, then sent to the upstreams in order, identical lookups
  in flight shared; so is the target of an ExternalName CNAME that leaves the cluster
  (stub resolvers do not follow a CNAME themselves). A name inside the domain is never
  forwarded. Hostile input costs nothing lasting: malformed packets are dropped or
  answered FORMERR, the queries waiting on upstreams are bounded (beyond that: SERVFAIL
  at once), a reply the kernel cannot take at once is dropped, and a UDP reply larger
  than the client takes is sent truncated with TC set, so it asks again over TCP.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import errno
import functools
import ipaddress
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.ANY.PTR
import dns.rdtypes.ANY.SOA
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rdtypes.IN.SRV
import dns.rrset
import structlog

from gitops.model import PodAddress, ServiceEndpoints

log = structlog.get_logger(__name__)

DEFAULT_DOMAIN = "cluster.local"
RECORD_TTL = 5  # CoreDNS' kubernetes plugin default: clients see endpoint changes quickly
SCHEMA_VERSION = "1.1.0"  # the Kubernetes DNS schema version these records follow
RESOLV_CONF = Path("/etc/resolv.conf")

IN = dns.rdataclass.IN
A = dns.rdatatype.A
AAAA = dns.rdatatype.AAAA
CNAME = dns.rdatatype.CNAME
SRV = dns.rdatatype.SRV
PTR = dns.rdatatype.PTR
SOA = dns.rdatatype.SOA
TXT = dns.rdatatype.TXT
ANY = dns.rdatatype.ANY

NameKey = tuple[bytes, ...]
"""A name as the zone indexes it: its labels lowercased, root (b"") last."""


class Srv(NamedTuple):
    """An SRV record as the zone keeps it: its target is a `NameKey`."""

    priority: int
    weight: int
    port: int
    target: NameKey


RecordData = str | NameKey | Srv
"""One record as the zone keeps it: an address (A, AAAA), a target name (CNAME, PTR), an
`Srv`, or a string (TXT; "" for the apex SOA, which the zone makes itself)."""
Records = Mapping[dns.rdatatype.RdataType, tuple[RecordData, ...]]
CacheKey = tuple[NameKey, int, int]
"""A forwarded question: its name's key, type and class."""

_MAX_CNAME_CHAIN = 8
_MAX_NAME_WIRE = 255
_REVERSE_V4: NameKey = (b"in-addr", b"arpa", b"")
_REVERSE_V6: NameKey = (b"ip6", b"arpa", b"")
_INVALID = object()
# dnspython's rdata classes are untyped; these are the constructors we call.
_MAKE_ADDRESS: Mapping[dns.rdatatype.RdataType, Callable[..., dns.rdata.Rdata]] = {
    A: dns.rdtypes.IN.A.A,
    AAAA: dns.rdtypes.IN.AAAA.AAAA,
}
_MAKE_TARGET: Mapping[dns.rdatatype.RdataType, Callable[..., dns.rdata.Rdata]] = {
    PTR: dns.rdtypes.ANY.PTR.PTR,
    CNAME: dns.rdtypes.ANY.CNAME.CNAME,
}
_MAKE_SRV: Callable[..., dns.rdata.Rdata] = dns.rdtypes.IN.SRV.SRV
_MAKE_SOA: Callable[..., dns.rdata.Rdata] = dns.rdtypes.ANY.SOA.SOA
_MAKE_TXT: Callable[..., dns.rdata.Rdata] = dns.rdtypes.ANY.TXT.TXT


class Answer(NamedTuple):
    """What the zone says about one question: an rcode and the sections of the reply."""

    rcode: dns.rcode.Rcode
    answer: tuple[dns.rrset.RRset, ...] = ()
    authority: tuple[dns.rrset.RRset, ...] = ()
    additional: tuple[dns.rrset.RRset, ...] = ()


def name_key(name: dns.name.Name) -> NameKey:
    """How the zone indexes `name`: DNS names compare without regard to ASCII case."""
    return tuple(label.lower() for label in name.labels)


@dataclass(frozen=True)
class Zone:
    """The cluster's names and their records, built by `build_zone`; never changed.

    Records are kept as plain values and made into dnspython rdata on first use (and
    kept): making one costs about as much as answering a query, and most of a big
    cluster's names are never asked for between two rebuilds. `skipped` says which
    Services (or pods of them) could not be published and why, for the caller to log or
    report; everything else is in the zone.
    """

    domain: dns.name.Name
    ttl: int
    names: Mapping[NameKey, Records]
    serial: int = 1
    skipped: tuple[str, ...] = ()
    domain_key: NameKey = field(init=False)
    soa: dns.rdata.Rdata = field(init=False)
    _rdatas: dict[tuple[dns.rdatatype.RdataType, RecordData], object] = field(
        init=False, default_factory=dict, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "domain_key", name_key(self.domain))
        soa = _MAKE_SOA(
            IN,
            SOA,
            dns.name.Name((b"ns", b"dns", *self.domain.labels)),
            dns.name.Name((b"hostmaster", *self.domain.labels)),
            self.serial % 2**32,
            7200,
            1800,
            86400,
            self.ttl,  # the minimum: how long resolvers keep a negative answer
        )
        object.__setattr__(self, "soa", soa)

    def owns(self, qname: dns.name.Name) -> bool:
        """Whether `qname` is this zone's to answer (inside the domain, or a known PTR)."""
        key = name_key(qname)
        return key in self.names or key[-len(self.domain_key) :] == self.domain_key

    def answer(self, qname: dns.name.Name | str, qtype: dns.rdatatype.RdataType | str) -> Answer | None:
        """The answer to `qname`/`qtype` (class IN), or `None` if the name is not ours.

        Answer records are owned by `qname` as given, so replies echo the asker's case.
        """
        if isinstance(qname, str):
            qname = dns.name.from_text(qname)
        return self._answer(qname, name_key(qname), dns.rdatatype.RdataType.make(qtype), 0)

    def soa_rrset(self) -> dns.rrset.RRset:
        return self._rrset(self.domain, SOA, ("",))

    def _answer(
        self, qname: dns.name.Name, key: NameKey, qtype: dns.rdatatype.RdataType, depth: int
    ) -> Answer | None:
        records = self.names.get(key)
        if records is None:
            if key[-len(self.domain_key) :] == self.domain_key:
                return Answer(dns.rcode.NXDOMAIN, authority=(self.soa_rrset(),))
            return None
        alias = records.get(CNAME)
        if alias and qtype not in (CNAME, ANY):
            head = self._rrset(qname, CNAME, alias)
            target = alias[0]
            rest = None
            if (
                depth < _MAX_CNAME_CHAIN
                and head
                and isinstance(target, tuple)
                and not isinstance(target, Srv)
            ):
                rest = self._answer(self._name(target), target, qtype, depth + 1)
            if rest is None:
                return Answer(dns.rcode.NOERROR, (head,))
            return Answer(rest.rcode, (head, *rest.answer), rest.authority, rest.additional)
        types = records if qtype == ANY else (qtype,) if qtype in records else ()
        answer = tuple(rrset for rdtype in types if (rrset := self._rrset(qname, rdtype, records[rdtype])))
        if not answer:
            return Answer(dns.rcode.NOERROR, authority=(self.soa_rrset(),))
        additional = self._target_addresses(records.get(SRV, ())) if qtype in (SRV, ANY) else ()
        return Answer(dns.rcode.NOERROR, answer, (), additional)

    def _rrset(
        self, owner: dns.name.Name, rdtype: dns.rdatatype.RdataType, records: Iterable[RecordData]
    ) -> dns.rrset.RRset:
        rrset = dns.rrset.RRset(owner, IN, rdtype)
        rrset.update_ttl(self.ttl)
        for data in records:
            rdata = self._rdata(rdtype, data)
            if rdata is not None:
                rrset.add(rdata)
        return rrset

    def _rdata(self, rdtype: dns.rdatatype.RdataType, data: RecordData) -> dns.rdata.Rdata | None:
        """The rdata of one record, made once; None if dnspython refuses it."""
        made = self._rdatas.get((rdtype, data))
        if made is None:
            try:
                made = self._make_rdata(rdtype, data)
            except (ValueError, dns.exception.DNSException):
                made = _INVALID
            self._rdatas[(rdtype, data)] = made
        return made if isinstance(made, dns.rdata.Rdata) else None

    def _make_rdata(self, rdtype: dns.rdatatype.RdataType, data: RecordData) -> dns.rdata.Rdata:
        if rdtype == SOA:
            return self.soa
        if isinstance(data, Srv):
            return _MAKE_SRV(IN, SRV, data.priority, data.weight, data.port, self._name(data.target))
        if isinstance(data, str):
            return _MAKE_TXT(IN, TXT, [data]) if rdtype == TXT else _MAKE_ADDRESS[rdtype](IN, rdtype, data)
        return _MAKE_TARGET[rdtype](IN, rdtype, self._name(data))

    def _name(self, key: NameKey) -> dns.name.Name:
        return dns.name.Name(key)

    def _target_addresses(self, services: Iterable[RecordData]) -> tuple[dns.rrset.RRset, ...]:
        """The A/AAAA records of SRV targets, for the additional section."""
        found: list[dns.rrset.RRset] = []
        for target in dict.fromkeys(srv.target for srv in services if isinstance(srv, Srv)):
            records = self.names.get(target, {})
            owner = self._name(target)
            found.extend(self._rrset(owner, t, records[t]) for t in (A, AAAA) if t in records)
        return tuple(found)


# --- building the zone ------------------------------------------------------------------


class _ZoneBuilder:
    """Collects records per name, each once, in the order first given; `zone()` freezes them."""

    def __init__(self, domain: dns.name.Name) -> None:
        self.domain_key = name_key(domain)
        self.names: dict[NameKey, dict[dns.rdatatype.RdataType, dict[RecordData, None]]] = {}
        self.skipped: list[str] = []

    def exists(self, key: NameKey) -> None:
        self.names.setdefault(key, {})

    def add(self, key: NameKey, rdtype: dns.rdatatype.RdataType, data: RecordData) -> None:
        self.names.setdefault(key, {}).setdefault(rdtype, {})[data] = None

    def address(self, key: NameKey, ip: str) -> None:
        """Give `key` the A or AAAA record of `ip`, and `ip` a PTR record back to `key`."""
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        try:
            packed = socket.inet_pton(family, ip)
        except OSError:
            raise ValueError(f"{ip!r} is not an IP address") from None
        if family == socket.AF_INET6:
            self.add(key, AAAA, ip)
            self.add(tuple(n.encode() for n in reversed(packed.hex())) + _REVERSE_V6, PTR, key)
        else:
            self.add(key, A, ip)
            self.add(tuple(octet.encode() for octet in reversed(ip.split("."))) + _REVERSE_V4, PTR, key)

    def zone(self, domain: dns.name.Name, ttl: int, serial: int) -> Zone:
        self.add(self.domain_key, SOA, "")
        self.add((b"dns-version", *self.domain_key), TXT, SCHEMA_VERSION)
        names = {
            key: {rdtype: tuple(data) for rdtype, data in records.items()}
            for key, records in self.names.items()
        }
        return Zone(domain, ttl, names, serial, tuple(self.skipped))


def _label(text: str) -> bytes:
    label = text.lower().encode("ascii")
    if not 0 < len(label) <= 63 or b"." in label:
        raise ValueError(f"{text!r} is not a DNS label")
    return label


def _checked(key: NameKey) -> NameKey:
    if sum(len(label) + 1 for label in key) > _MAX_NAME_WIRE:
        raise ValueError(f"{b'.'.join(key).decode(errors='replace')} is longer than DNS allows")
    return key


def _dashed(ip: str) -> bytes:
    return ip.replace(".", "-").replace(":", "-").encode()


def _add_service(zone: _ZoneBuilder, service: ServiceEndpoints) -> None:
    base = _checked((_label(service.name), _label(service.namespace), b"svc", *zone.domain_key))
    zone.exists(base[1:])
    zone.exists(base)
    if service.type == "ExternalName":
        zone.add(base, CNAME, name_key(dns.name.from_text(service.external_name)))
        return
    named_ports = [
        (p, (b"_" + _label(p.name), b"_" + _label(p.protocol), *base)) for p in service.ports if p.name
    ]
    for _, srv_key in named_ports:
        zone.exists(srv_key[1:])
        zone.exists(_checked(srv_key))
    if not service.headless:
        if service.vip:
            zone.address(base, service.vip)
            for port, srv_key in named_ports:
                zone.add(srv_key, SRV, Srv(0, 100, port.port, base))
        return
    targets: list[tuple[PodAddress, NameKey]] = []
    for pod in service.addresses:
        try:
            target = _checked((_label(pod.hostname) if pod.hostname else _dashed(pod.ip), *base))
            zone.address(target, pod.ip)
        except ValueError as error:
            zone.skipped.append(f"Service {service.namespace}/{service.name}: pod {pod.pod}: {error}")
            continue
        zone.add(base, AAAA if ":" in pod.ip else A, pod.ip)
        targets.append((pod, target))
    if not targets:
        return
    weight = max(1, 100 // len(targets))
    for port, srv_key in named_ports:
        pod_ports = {
            endpoint.pod: endpoint.container_port
            for service_port, endpoints in service.endpoints
            if service_port.name == port.name
            for endpoint in endpoints
        }
        for pod, target in targets:
            number = pod_ports.get(pod.pod)
            if number is None and isinstance(port.target_port, int):
                number = port.target_port
            if number:
                zone.add(srv_key, SRV, Srv(0, weight, number, target))


def cluster_domain(domain: str) -> dns.name.Name:
    """The cluster domain as an absolute, lowercase name; ValueError if it cannot be one."""
    try:
        name = dns.name.from_text(domain.strip().lower())
    except dns.exception.DNSException as error:
        raise ValueError(f"cluster domain {domain!r}: {error}") from error
    if name == dns.name.root:
        raise ValueError("the cluster domain cannot be the DNS root")
    return name


def build_zone(
    services: Sequence[ServiceEndpoints],
    domain: str = DEFAULT_DOMAIN,
    *,
    ttl: int = RECORD_TTL,
    serial: int = 1,
) -> Zone:
    """The zone of `services` under `domain`. A Service that cannot be published (a name or
    address DNS cannot carry) is left out and named in `Zone.skipped`."""
    origin = cluster_domain(domain)
    zone = _ZoneBuilder(origin)
    zone.exists((b"svc", *zone.domain_key))
    for service in services:
        try:
            _add_service(zone, service)
        except (ValueError, dns.exception.DNSException) as error:  # UnicodeError is a ValueError
            zone.skipped.append(f"Service {service.namespace}/{service.name}: {error}")
    return zone.zone(origin, ttl, serial)


# --- upstream resolvers -----------------------------------------------------------------


def parse_upstream(text: str) -> tuple[str, int]:
    """`10.0.0.2`, `10.0.0.2:5353`, `fd00::2` or `[fd00::2]:5353` as (address, port)."""
    host, port = text.strip(), 53
    if host.startswith("["):
        host, _, rest = host[1:].partition("]")
        if rest:
            port = int(rest.removeprefix(":"))
    elif host.count(":") == 1:
        host, _, number = host.partition(":")
        port = int(number)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"upstream resolver {text!r}: expected an IP address with an optional :port"
        ) from None
    if not 0 < port < 65536:
        raise ValueError(f"upstream resolver {text!r}: port {port} is out of range")
    return host, port


def resolv_conf_nameservers(path: Path = RESOLV_CONF) -> tuple[str, ...]:
    """The `nameserver` addresses of a resolv.conf, in order; none if it cannot be read."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ()
    found = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            found.append(words[1].split("%")[0])  # an IPv6 zone index is not ours to keep
    return tuple(found)


@dataclass(frozen=True)
class UpstreamAnswer:
    """An upstream's reply to a forwarded question, as cached: `ttl` 0 is not cached."""

    rcode: dns.rcode.Rcode
    answer: tuple[dns.rrset.RRset, ...] = ()
    authority: tuple[dns.rrset.RRset, ...] = ()
    additional: tuple[dns.rrset.RRset, ...] = ()
    ttl: float = 0.0
    received_at: float = 0.0


_SERVFAIL = UpstreamAnswer(dns.rcode.SERVFAIL)
_ANSWERED_RCODES = (dns.rcode.NOERROR, dns.rcode.NXDOMAIN)


def cache_ttl(response: dns.message.Message, max_ttl: float, max_negative_ttl: float) -> float:
    """How long to keep `response`: its answer's minimum TTL; for a negative answer its
    SOA's (RFC 2308, not kept without one); never a failure."""
    if response.rcode() not in _ANSWERED_RCODES:
        return 0.0
    if response.rcode() == dns.rcode.NOERROR and response.answer:
        return float(min(*(rrset.ttl for rrset in response.answer), max_ttl))
    for rrset in response.authority:
        if rrset.rdtype == SOA and rrset:
            soa = rrset[0]
            assert isinstance(soa, dns.rdtypes.ANY.SOA.SOA)
            return float(min(rrset.ttl, soa.minimum, max_negative_ttl))
    return 0.0


class ForwardCache:
    """Upstream answers by (name, type, class) until their TTL runs out; at most `size`,
    the least recently used going first. Thread-safe."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: collections.OrderedDict[CacheKey, UpstreamAnswer] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: CacheKey, now: float) -> UpstreamAnswer | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if now - entry.received_at >= entry.ttl:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return entry

    def put(self, key: CacheKey, entry: UpstreamAnswer) -> None:
        if entry.ttl <= 0 or self.size <= 0:
            return
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)


def _aged(rrsets: tuple[dns.rrset.RRset, ...], age: int) -> list[dns.rrset.RRset]:
    if age <= 0:
        return list(rrsets)
    aged = []
    for rrset in rrsets:
        copy = dns.rrset.RRset(rrset.name, rrset.rdclass, rrset.rdtype, rrset.covers)
        copy.update_ttl(max(0, rrset.ttl - age))
        for rdata in rrset:
            copy.add(rdata)
        aged.append(copy)
    return aged


# --- the server -------------------------------------------------------------------------


@dataclass(frozen=True)
class DnsStats:
    """Counters since the server was made: what came in and what became of it."""

    queries: int = 0  # UDP packets and TCP messages received
    answered: int = 0  # from the zone
    cached: int = 0  # from the forward cache
    forwarded: int = 0  # lookups sent to the upstreams (identical ones in flight counted once)
    upstream_failures: int = 0  # lookups no upstream answered
    malformed: int = 0  # dropped or answered FORMERR
    refused: int = 0  # NOTIMP, REFUSED, or SERVFAIL for being over a limit or not ready
    dropped: int = 0  # UDP replies not sent: the socket's send buffer was full


@dataclass
class _Counters:
    """One thread's counts (the UDP thread's, or the loop thread's), so none is lost."""

    queries: int = 0
    answered: int = 0
    cached: int = 0
    forwarded: int = 0
    upstream_failures: int = 0
    malformed: int = 0
    refused: int = 0
    dropped: int = 0


@dataclass(frozen=True)
class _Serving:
    """A zone and the wire replies memoised for it: swapped together by `update`.

    `replies` maps (over TCP?, query bytes after the ID) to the reply bytes after the ID:
    for a given zone, a query's reply depends on nothing else.
    """

    zone: Zone
    ready: bool
    replies: dict[tuple[bool, bytes], bytes] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True)
class _Forward:
    """A query to be answered from the upstreams, and how large its reply may be.

    `name` is what to ask them: the question's name, or the target of the CNAME records
    of an ExternalName Service (`aliases`), which then head the answer, as CoreDNS does:
    stub resolvers (glibc, musl) do not follow a CNAME themselves."""

    query: dns.message.Message
    name: dns.name.Name
    key: CacheKey
    limit: int
    aliases: tuple[dns.rrset.RRset, ...] = ()


_UDP_PAYLOAD = 1232  # what we take and send over UDP with EDNS: no IP fragmentation (DNS flag day 2020)
_PLAIN_UDP_LIMIT = 512
_TCP_LIMIT = 65535
_HEADER = struct.Struct("!HHH")  # ID, flags, QDCOUNT: all we read before dnspython parses
_WARN_EVERY = 30.0


class ClusterDns:
    """The node's DNS server on `address`:`port` (UDP and TCP) for the cluster's names.

    `update(services)` may be called from any thread, before or after `start()`; until the
    first one, names in the domain are answered SERVFAIL (not yet known) rather than
    NXDOMAIN, which clients would cache. `start()` binds (port 0 picks a free port, the
    same for UDP and TCP: see `bound_port`) and serves from two threads of its own: one
    answers UDP (a blocking socket: asyncio would double the time of an answer), one runs
    an asyncio loop for TCP and the lookups sent upstream. `stop()` closes the sockets
    and joins both. `upstreams` (`ip` or `ip:port`) default to the nameservers of
    /etc/resolv.conf; with none, forwarded names get SERVFAIL. `clock` is monotonic
    seconds, for cache expiry and log rate limits.
    """

    def __init__(
        self,
        address: str,
        port: int = 53,
        *,
        domain: str = DEFAULT_DOMAIN,
        upstreams: Sequence[str] | None = None,
        ttl: int = RECORD_TTL,
        upstream_timeout: float = 2.0,
        cache_size: int = 10_000,
        max_cache_ttl: float = 3600.0,
        max_negative_ttl: float = 30.0,
        max_pending: int = 1000,
        max_tcp_connections: int = 256,
        tcp_idle_timeout: float = 10.0,
        reply_cache_size: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.address = str(ipaddress.ip_address(address))
        self.port = port
        self.domain = cluster_domain(domain).to_text()
        self.ttl = ttl
        listed = resolv_conf_nameservers() if upstreams is None else upstreams
        self.upstreams: tuple[tuple[str, int], ...] = tuple(parse_upstream(u) for u in listed)
        self.upstream_timeout = upstream_timeout
        self.max_cache_ttl = max_cache_ttl
        self.max_negative_ttl = max_negative_ttl
        self.max_tcp_connections = max_tcp_connections
        self.tcp_idle_timeout = tcp_idle_timeout
        self.reply_cache_size = reply_cache_size
        self._clock = clock
        self._serial = 0
        self._serving = _Serving(build_zone((), self.domain, ttl=ttl), ready=False)
        self._update_lock = threading.Lock()
        self._cache = ForwardCache(cache_size)
        self._pending = threading.BoundedSemaphore(max_pending)  # queries waiting on upstreams
        self._udp_counters = _Counters()
        self._loop_counters = _Counters()
        self._lookups: dict[CacheKey, asyncio.Task[UpstreamAnswer]] = {}
        self._warned: dict[str, tuple[float, int]] = {}
        self._udp: socket.socket | None = None
        self._udp_thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._tcp: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._bound_port: int | None = None

    # --- the agent's side

    @property
    def bound_port(self) -> int:
        """The port served on (the one picked, if `port` was 0); only once started."""
        if self._bound_port is None:
            raise RuntimeError("the DNS server is not started")
        return self._bound_port

    @property
    def zone(self) -> Zone:
        return self._serving.zone

    @property
    def stats(self) -> DnsStats:
        a, b = self._udp_counters, self._loop_counters
        return DnsStats(*(getattr(a, f.name) + getattr(b, f.name) for f in dataclasses.fields(DnsStats)))

    def update(self, services: Sequence[ServiceEndpoints]) -> Zone:
        """Serve `services` from now on (thread-safe); returns the new zone (see `skipped`)."""
        with self._update_lock:
            self._serial += 1
            zone = build_zone(services, self.domain, ttl=self.ttl, serial=self._serial)
            self._serving = _Serving(zone, ready=True)
        return zone

    def start(self) -> None:
        """Bind UDP and TCP on the address and serve; OSError if binding fails."""
        if self._udp_thread is not None:
            return
        udp, tcp = self._bind()
        self._bound_port = udp.getsockname()[1]
        own = (self.address, self._bound_port)
        self.upstreams = tuple(u for u in self.upstreams if u != own)  # never forward to ourselves
        self._stopping = False
        loop = asyncio.new_event_loop()
        self._loop, self._udp = loop, udp
        self._loop_thread = threading.Thread(target=loop.run_forever, name="cluster-dns-loop", daemon=True)
        self._loop_thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._open(tcp), loop).result(timeout=10)
        except BaseException:
            tcp.close()
            self.stop()
            raise
        self._udp_thread = threading.Thread(
            target=self._serve_udp, args=(udp,), name="cluster-dns-udp", daemon=True
        )
        self._udp_thread.start()
        log.info("cluster dns started", address=self.address, port=self._bound_port, domain=self.domain)

    def stop(self) -> None:
        """Close the sockets, end pending work and join the threads; safe to call twice."""
        self._stopping = True
        udp, udp_thread, loop, loop_thread = self._udp, self._udp_thread, self._loop, self._loop_thread
        if udp is not None:
            with contextlib.suppress(OSError):
                udp.shutdown(socket.SHUT_RDWR)  # wakes the blocked recvfrom (Linux says ENOTCONN, and does)
            if udp_thread is not None:
                udp_thread.join(timeout=10)
            udp.close()
        if loop is not None and loop_thread is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._close(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
            loop_thread.join(timeout=10)
            if not loop_thread.is_alive():
                loop.close()
        self._udp = self._udp_thread = self._loop = self._loop_thread = None
        self._bound_port = None

    def __enter__(self) -> ClusterDns:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- sockets

    def _bind(self) -> tuple[socket.socket, socket.socket]:
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        for attempt in range(20):
            udp = socket.socket(family, socket.SOCK_DGRAM)
            tcp = socket.socket(family, socket.SOCK_STREAM)
            try:
                with contextlib.suppress(OSError):  # best effort: a burst waits in the kernel, not here
                    udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
                udp.bind((self.address, self.port))
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                tcp.bind((self.address, udp.getsockname()[1]))
                tcp.listen(128)
            except OSError:
                udp.close()
                tcp.close()
                if self.port != 0 or attempt == 19:
                    raise
                continue  # the free UDP port was taken for TCP: pick another
            tcp.setblocking(False)
            return udp, tcp
        raise AssertionError("unreachable")

    async def _open(self, tcp: socket.socket) -> None:
        self._tcp = await asyncio.start_server(self._serve_tcp, sock=tcp)

    async def _close(self) -> None:
        if self._tcp is not None:
            self._tcp.close()
        pending = [*self._connections, *self._lookups.values()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if self._tcp is not None:
            await self._tcp.wait_closed()
        self._tcp = None

    def _serve_udp(self, udp: socket.socket) -> None:
        counters = self._udp_counters
        while not self._stopping:
            try:
                data, peer = udp.recvfrom(65535)
            except OSError as error:
                if error.errno == errno.EBADF:
                    return  # closed under us
                continue  # an error queued by an earlier send; the socket still works
            if self._stopping:
                return
            try:
                outcome = self._respond(data, tcp=False)
                if isinstance(outcome, _Forward):
                    self._hand_over(outcome, functools.partial(self._send_udp, udp, peer), counters)
                elif outcome is not None:
                    self._send_udp(udp, peer, outcome)
            except Exception as error:  # one query must never take the server down
                counters.malformed += 1
                self._warn("query", "dns query failed", error=repr(error))

    def _send_udp(self, udp: socket.socket, peer: tuple[str, int], wire: bytes) -> None:
        """Send a reply, or drop it if the kernel's send buffer is full (the client asks again)."""
        try:
            udp.sendto(wire, socket.MSG_DONTWAIT, peer)
        except OSError as error:
            in_udp_thread = threading.current_thread() is self._udp_thread
            (self._udp_counters if in_udp_thread else self._loop_counters).dropped += 1
            if isinstance(error, BlockingIOError):
                self._warn("send", "dns replies dropped: the UDP send buffer is full")

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        counters = self._loop_counters
        if len(self._connections) >= self.max_tcp_connections:
            counters.refused += 1
            writer.close()
            return
        self._connections.add(task)
        try:
            while True:
                length = await asyncio.wait_for(reader.readexactly(2), self.tcp_idle_timeout)
                data = await asyncio.wait_for(
                    reader.readexactly(int.from_bytes(length, "big")), self.tcp_idle_timeout
                )
                outcome = self._respond(data, tcp=True)
                if outcome is None:
                    return  # not a query: the stream cannot be trusted any further
                if isinstance(outcome, _Forward):
                    reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
                    self._hand_over(outcome, functools.partial(_settle, reply), counters)
                    outcome = await reply
                writer.write(len(outcome).to_bytes(2, "big") + outcome)
                await asyncio.wait_for(writer.drain(), self.tcp_idle_timeout)
        except (asyncio.IncompleteReadError, TimeoutError, OSError):
            pass  # the client went away or went quiet
        except Exception as error:  # one connection must never take the server down
            self._warn("tcp", "dns tcp connection failed", error=repr(error))
        finally:
            self._connections.discard(task)
            writer.close()

    # --- answering

    def _respond(self, data: bytes, *, tcp: bool) -> bytes | _Forward | None:
        """The reply to one message: wire bytes, a lookup to forward, or None to drop it."""
        counters = self._loop_counters if tcp else self._udp_counters
        counters.queries += 1
        if len(data) < 12:
            counters.malformed += 1
            return None
        qid, flags, qdcount = _HEADER.unpack_from(data)
        if flags & dns.flags.QR:
            counters.malformed += 1  # a response: answering it could start a loop
            return None
        serving = self._serving
        memoised = serving.replies.get((tcp, data[2:]))
        if memoised is not None:
            counters.answered += 1
            log.debug("dns query", id=qid, memoised=True)
            return data[:2] + memoised
        if dns.opcode.from_flags(flags) != dns.opcode.QUERY:
            counters.refused += 1
            return _header_reply(qid, flags, dns.rcode.NOTIMP)
        if qdcount != 1:
            counters.malformed += 1
            return _header_reply(qid, flags, dns.rcode.FORMERR)
        try:
            query = dns.message.from_wire(data)
        except Exception as error:  # dnspython raises many kinds for hostile bytes
            counters.malformed += 1
            log.debug("dns query malformed", id=qid, error=repr(error))
            return _header_reply(qid, flags, dns.rcode.FORMERR)
        limit = _TCP_LIMIT if tcp else max(_PLAIN_UDP_LIMIT, min(query.payload, _UDP_PAYLOAD))
        refusal = _refusal(query)
        if refusal is not None:
            counters.refused += 1
            return self._reply(query, refusal, limit)
        return self._answer(query, serving, limit, counters, memo_key=(tcp, data[2:]))

    def _answer(
        self,
        query: dns.message.Message,
        serving: _Serving,
        limit: int,
        counters: _Counters,
        memo_key: tuple[bool, bytes],
    ) -> bytes | _Forward:
        """A question's reply from the zone (memoised), or from the forward cache (not: it
        ages), or the lookup to forward."""
        question = query.question[0]
        qname, qtype = question.name, dns.rdatatype.RdataType.make(question.rdtype)
        zone = serving.zone
        if not serving.ready and zone.owns(qname):
            counters.refused += 1
            return self._reply(query, dns.rcode.SERVFAIL, limit)
        answer = zone.answer(qname, qtype)
        forward = _Forward(query, qname, (name_key(qname), int(qtype), IN), limit)
        if answer is not None:
            target = _outside_alias(zone, answer, qtype)
            if target is None:
                counters.answered += 1
                log.debug("dns query", name=qname, type=qtype, rcode=answer.rcode)
                wire = self._reply(query, answer.rcode, limit, answer, authoritative=True)
                with serving.lock:
                    if len(serving.replies) >= self.reply_cache_size:
                        del serving.replies[next(iter(serving.replies))]
                    serving.replies[memo_key] = wire[2:]
                return wire
            forward = _Forward(query, target, (name_key(target), int(qtype), IN), limit, answer.answer)
        now = self._clock()
        cached = self._cache.get(forward.key, now)
        if cached is None:
            return forward
        counters.cached += 1
        log.debug("dns query", name=qname, type=qtype, rcode=cached.rcode, cached=True)
        return self._forwarded_reply(forward, cached, now)

    def _reply(
        self,
        query: dns.message.Message,
        rcode: dns.rcode.Rcode,
        limit: int,
        answer: Answer | UpstreamAnswer | None = None,
        *,
        authoritative: bool = False,
        age: int = 0,
        aliases: tuple[dns.rrset.RRset, ...] = (),
    ) -> bytes:
        response = dns.message.make_response(query, recursion_available=True, our_payload=_UDP_PAYLOAD)
        response.set_rcode(rcode)
        if authoritative:
            response.flags |= dns.flags.AA
        if answer is not None:
            response.answer = [*aliases, *_aged(answer.answer, age)]
            response.authority = _aged(answer.authority, age)
            response.additional = _aged(answer.additional, age)
        return response.to_wire(max_size=limit, prefer_truncation=True)

    def _forwarded_reply(self, forward: _Forward, upstream: UpstreamAnswer, now: float) -> bytes:
        age = int(now - upstream.received_at) if upstream.received_at else 0
        return self._reply(
            forward.query, upstream.rcode, forward.limit, upstream, age=age, aliases=forward.aliases
        )

    # --- forwarding

    def _hand_over(self, forward: _Forward, send: Callable[[bytes], object], counters: _Counters) -> None:
        """Have the loop answer `forward` from the upstreams (from any thread), or answer
        SERVFAIL now if there are none or too many queries wait on them already."""
        loop = self._loop
        if self.upstreams and loop is not None and self._pending.acquire(blocking=False):
            try:
                loop.call_soon_threadsafe(self._forward, forward, send)
                return
            except RuntimeError:  # the loop is closing: we are stopping
                self._pending.release()
        counters.refused += 1
        if self.upstreams and loop is not None:
            self._warn("pending", "dns forwarding over its limit: answering SERVFAIL")
        send(self._reply(forward.query, dns.rcode.SERVFAIL, forward.limit))

    def _forward(self, forward: _Forward, send: Callable[[bytes], object]) -> None:
        """On the loop: answer `forward` through a lookup (shared by identical questions)."""
        if self._stopping:
            self._pending.release()
            return
        lookup = self._lookups.get(forward.key)
        if lookup is None:
            self._loop_counters.forwarded += 1
            lookup = asyncio.get_running_loop().create_task(self._lookup(forward))
            self._lookups[forward.key] = lookup
            lookup.add_done_callback(lambda _: self._lookups.pop(forward.key, None))

        def answer(done: asyncio.Task[UpstreamAnswer]) -> None:
            self._pending.release()
            if done.cancelled():
                return
            try:
                send(self._forwarded_reply(forward, done.result(), self._clock()))
            except Exception as error:  # the client gets nothing, the server lives on
                self._warn("reply", "dns forwarded reply failed", error=repr(error))

        lookup.add_done_callback(answer)

    async def _lookup(self, forward: _Forward) -> UpstreamAnswer:
        question = forward.query.question[0]
        query = dns.message.make_query(forward.name, question.rdtype, IN, use_edns=0, payload=_UDP_PAYLOAD)
        for host, port in self.upstreams:
            upstream = f"{host}:{port}"
            try:
                response = await dns.asyncquery.udp(query, host, timeout=self.upstream_timeout, port=port)
                if response.flags & dns.flags.TC:
                    response = await dns.asyncquery.tcp(query, host, timeout=self.upstream_timeout, port=port)
            except Exception as error:  # a timeout, a refused port or a garbled reply alike
                self._warn(upstream, "dns upstream failed", upstream=upstream, error=repr(error))
                continue
            if response.rcode() not in _ANSWERED_RCODES:
                error_text = dns.rcode.to_text(response.rcode())
                self._warn(upstream, "dns upstream failed", upstream=upstream, error=error_text)
                continue
            ttl = cache_ttl(response, self.max_cache_ttl, self.max_negative_ttl)
            entry = UpstreamAnswer(
                response.rcode(),
                tuple(response.answer),
                tuple(response.authority),
                tuple(response.additional),
                ttl,
                self._clock(),
            )
            self._cache.put(forward.key, entry)
            log.debug("dns forwarded", name=forward.name, upstream=upstream, rcode=entry.rcode, ttl=ttl)
            return entry
        self._loop_counters.upstream_failures += 1
        return _SERVFAIL

    def _warn(self, key: str, event: str, **fields: object) -> None:
        """Log `event` at most once per 30 s per `key`, saying how many were held back."""
        now = self._clock()
        last, held_back = self._warned.get(key, (float("-inf"), 0))
        if now - last < _WARN_EVERY:
            self._warned[key] = (last, held_back + 1)
            return
        self._warned[key] = (now, 0)
        log.warning(event, held_back=held_back, **fields)


def _refusal(query: dns.message.Message) -> dns.rcode.Rcode | None:
    """Why a well-formed query is not served, if it is not: an EDNS version we do not
    speak, a class other than IN, a zone transfer, or a meta type other than ANY."""
    question = query.question[0]
    if query.edns > 0:
        return dns.rcode.BADVERS
    if question.rdclass != IN or question.rdtype in (dns.rdatatype.AXFR, dns.rdatatype.IXFR):
        return dns.rcode.REFUSED
    if dns.rdatatype.is_metatype(question.rdtype) and question.rdtype != ANY:
        return dns.rcode.NOTIMP
    return None


def _outside_alias(zone: Zone, answer: Answer, qtype: dns.rdatatype.RdataType) -> dns.name.Name | None:
    """The name outside the zone that `answer`'s CNAME chain ends at, if it does."""
    if not answer.answer or qtype in (CNAME, ANY):
        return None
    last = answer.answer[-1]
    if last.rdtype != CNAME or not last:
        return None
    target: dns.name.Name = last[0].target
    return None if zone.owns(target) else target


def _settle(future: asyncio.Future[bytes], value: bytes) -> None:
    if not future.done():
        future.set_result(value)


def _header_reply(qid: int, flags: int, rcode: dns.rcode.Rcode) -> bytes:
    """A reply carrying only a header, for a query that cannot be parsed or served."""
    reply = dns.message.Message(id=qid)
    reply.flags = dns.flags.QR | (flags & dns.flags.RD)
    reply.set_opcode(dns.opcode.from_flags(flags))
    reply.set_rcode(rcode)
    return reply.to_wire()
