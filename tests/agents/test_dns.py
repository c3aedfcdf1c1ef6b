"""Cluster DNS: the zone's records, and the server answering them and forwarding the rest.

The server runs on 127.0.0.1 at a free port; names outside the cluster go to a fake
upstream resolver started here (UDP and TCP on loopback), which counts what it is asked.
"""

from __future__ import annotations

import logging
import random
import socket
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.reversename
import dns.rrset
import pytest
import structlog
from structlog.testing import capture_logs

from gitops.agents.dns import (
    ClusterDns,
    ForwardCache,
    UpstreamAnswer,
    build_zone,
    cache_ttl,
    parse_upstream,
    resolv_conf_nameservers,
)
from gitops.model import Endpoint, NodeName, PodAddress, PodId, ServiceEndpoints, ServicePort

HTTP = ServicePort(80, 8080, "TCP", "http")
PG = ServicePort(5433, "pg", "TCP", "pg")  # the pods' port is named: SRV says each pod's number
WEB = ServiceEndpoints("default", "web", "10.96.0.10", (HTTP, ServicePort(9090, 9090)))


def pod(name: str, ip: str, hostname: str = "", namespace: str = "default") -> PodAddress:
    return PodAddress(PodId(f"{namespace}/{name}"), ip, hostname)


def headless(
    name: str,
    addresses: Sequence[PodAddress],
    ports: tuple[ServicePort, ...] = (PG,),
    container_port: int = 5432,
) -> ServiceEndpoints:
    endpoints = tuple(
        (p, tuple(Endpoint(a.pod, NodeName("n1"), a.ip, container_port, "", 0) for a in addresses))
        for p in ports
    )
    return ServiceEndpoints("default", name, "", ports, endpoints, headless=True, addresses=tuple(addresses))


DB = headless(
    "db", [pod("db-0", "10.244.1.5", "db-0"), pod("db-1", "10.244.2.6", "db-1"), pod("x", "10.244.1.7")]
)
EXT = ServiceEndpoints("default", "ext", "", (), type="ExternalName", external_name="db.example.org")
ALIAS = ServiceEndpoints(
    "other", "alias", "", (), type="ExternalName", external_name="web.default.svc.cluster.local"
)
SERVICES = (WEB, DB, EXT, ALIAS)


# --- a fake upstream resolver ---------------------------------------------------------


@dataclass
class FakeUpstream:
    """A resolver on loopback (UDP and TCP) answering from `records`; `asked` lists what it
    got as (transport, lowercase name, type name). A UDP answer larger than the asker's
    EDNS size comes back truncated, so big answers need TCP."""

    records: dict[str, list[dns.rrset.RRset]] = field(default_factory=dict)
    asked: list[tuple[str, str, str]] = field(default_factory=list)
    udp: socket.socket = field(default_factory=lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    tcp: socket.socket = field(default_factory=socket.socket)

    def start(self) -> None:
        for _ in range(20):  # the free UDP port may be taken for TCP: then pick another
            self.udp.bind(("127.0.0.1", 0))
            self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                self.tcp.bind(("127.0.0.1", self.port))
                break
            except OSError:
                self.stop()
                self.udp, self.tcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket()
        self.tcp.listen(8)
        threading.Thread(target=self._serve_udp, daemon=True).start()
        threading.Thread(target=self._serve_tcp, daemon=True).start()

    def stop(self) -> None:
        self.udp.close()
        self.tcp.close()

    @property
    def port(self) -> int:
        port: int = self.udp.getsockname()[1]
        return port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def names(self) -> list[str]:
        return [name for _, name, _ in self.asked]

    def _answer(self, query: dns.message.Message, transport: str) -> dns.message.Message:
        question = query.question[0]
        name = question.name.to_text().lower()
        self.asked.append((transport, name, dns.rdatatype.to_text(question.rdtype)))
        response = dns.message.make_response(query)
        response.flags |= dns.flags.RA
        if name.startswith("missing."):
            response.set_rcode(dns.rcode.NXDOMAIN)
            soa = "ns.example. host.example. 1 7200 1800 86400 600"
            response.authority.append(dns.rrset.from_text("example.", 3600, "IN", "SOA", soa))
            return response
        response.answer = [r for r in self.records.get(name, []) if r.rdtype == question.rdtype]
        return response

    def _serve_udp(self) -> None:
        while True:
            try:
                data, peer = self.udp.recvfrom(65535)
                query = dns.message.from_wire(data)
                limit = query.payload if query.edns >= 0 else 512
                wire = self._answer(query, "udp").to_wire(max_size=limit, prefer_truncation=True)
                self.udp.sendto(wire, peer)
            except OSError:
                return

    def _serve_tcp(self) -> None:
        while True:
            try:
                connection, _ = self.tcp.accept()
            except OSError:
                return
            with connection:
                try:
                    query, _ = dns.query.receive_tcp(connection, time.time() + 2)
                    connection.sendall(
                        self._answer(query, "tcp").to_wire(max_size=65535, prepend_length=True)
                    )
                except (OSError, dns.exception.DNSException):
                    pass


class Clock:
    """Monotonic seconds the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def quiet_debug_logs() -> Iterator[None]:
    """Per-query debug lines would flood the captured output; warnings still pass."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    yield
    structlog.configure(**saved)


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream()
    fake.records["example.org."] = [dns.rrset.from_text("example.org.", 60, "IN", "A", "192.0.2.80")]
    fake.records["db.example.org."] = [dns.rrset.from_text("db.example.org.", 60, "IN", "A", "192.0.2.5")]
    fake.records["big.example."] = [
        dns.rrset.from_text_list("big.example.", 60, "IN", "A", [f"192.0.2.{i}" for i in range(1, 151)])
    ]
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def server(upstream: FakeUpstream, clock: Clock) -> Iterator[ClusterDns]:
    dns_server = ClusterDns("127.0.0.1", 0, upstreams=[upstream.address], clock=clock)
    dns_server.update(SERVICES)
    with dns_server:
        yield dns_server


def resolver(port: int, namespace: str = "default", domain: str = "cluster.local") -> dns.resolver.Resolver:
    """What a pod of `namespace` has: the cluster's search path and ndots:5."""
    r = dns.resolver.Resolver(configure=False)
    r.nameservers = ["127.0.0.1"]
    r.port = port
    r.search = [dns.name.from_text(s) for s in (f"{namespace}.svc.{domain}", f"svc.{domain}", domain)]
    r.ndots = 5
    r.use_search_by_default = True
    r.timeout = r.lifetime = 3
    r.cache = None
    return r


def addresses(answer: dns.resolver.Answer) -> set[str]:
    return {rdata.to_text() for rdata in answer}


def ask(port: int, wire: bytes, *, tcp: bool = False, timeout: float = 2.0) -> dns.message.Message | None:
    """Send one raw message; the reply parsed, or None if none came within `timeout`."""
    if tcp:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(len(wire).to_bytes(2, "big") + wire)
            size = int.from_bytes(_read(s, 2), "big")
            return dns.message.from_wire(_read(s, size))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(wire, ("127.0.0.1", port))
        try:
            return dns.message.from_wire(s.recv(65535))
        except TimeoutError:
            return None


def _read(s: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = s.recv(size - len(data))
        assert chunk, "the server closed the connection"
        data += chunk
    return data


def query(name: str, rdtype: str = "A", **kw: object) -> dns.message.Message:
    return dns.message.make_query(name, rdtype, **kw)  # type: ignore[arg-type]


def reply(port: int, name: str, rdtype: str = "A", *, tcp: bool = False, **kw: object) -> dns.message.Message:
    response = ask(port, query(name, rdtype, **kw).to_wire(), tcp=tcp)
    assert response is not None, f"no reply for {name} {rdtype}"
    return response


# --- the zone, pure -------------------------------------------------------------------


def test_zone_answers_a_service_name_with_its_vip_with_ttl_5() -> None:
    answer = build_zone([WEB]).answer("web.default.svc.cluster.local.", "A")
    assert answer is not None
    assert answer.rcode == dns.rcode.NOERROR
    (rrset,) = answer.answer
    assert [r.to_text() for r in rrset] == ["10.96.0.10"]
    assert rrset.ttl == 5


def test_zone_says_nxdomain_for_missing_names_and_nodata_for_missing_types() -> None:
    """Parents of real names exist: glibc would stop a search-list walk at NXDOMAIN."""
    zone = build_zone(SERVICES)
    missing = zone.answer("nope.default.svc.cluster.local.", "A")
    assert missing is not None and missing.rcode == dns.rcode.NXDOMAIN
    assert [r.rdtype for r in missing.authority] == [dns.rdatatype.SOA]
    for name, rdtype in [
        ("web.default.svc.cluster.local.", "AAAA"),
        ("web.default.svc.cluster.local.", "TXT"),
        ("default.svc.cluster.local.", "A"),
        ("svc.cluster.local.", "A"),
        ("cluster.local.", "A"),
        ("_tcp.web.default.svc.cluster.local.", "SRV"),
    ]:
        answer = zone.answer(name, rdtype)
        assert answer is not None, name
        assert (answer.rcode, answer.answer) == (dns.rcode.NOERROR, ()), name
        assert [r.rdtype for r in answer.authority] == [dns.rdatatype.SOA], name
    assert zone.answer("example.org.", "A") is None  # not ours: forwarded
    assert zone.answer("9.9.9.9.in-addr.arpa.", "PTR") is None


def test_zone_publishes_ptr_records_and_the_schema_version() -> None:
    zone = build_zone(SERVICES)
    vip = zone.answer(dns.reversename.from_address("10.96.0.10"), "PTR")
    assert vip is not None and [r.to_text() for r in vip.answer[0]] == ["web.default.svc.cluster.local."]
    pet = zone.answer(dns.reversename.from_address("10.244.1.5"), "PTR")
    assert pet is not None and [r.to_text() for r in pet.answer[0]] == ["db-0.db.default.svc.cluster.local."]
    version = zone.answer("dns-version.cluster.local.", "TXT")
    assert version is not None and [r.to_text() for r in version.answer[0]] == ['"1.1.0"']


def test_zone_publishes_ipv6_addresses_as_aaaa_with_dashed_names() -> None:
    zone = build_zone([headless("v6", [pod("a", "fd00::5")])])
    answer = zone.answer("v6.default.svc.cluster.local.", "AAAA")
    assert answer is not None and [r.to_text() for r in answer.answer[0]] == ["fd00::5"]
    dashed = zone.answer("fd00--5.v6.default.svc.cluster.local.", "AAAA")
    assert dashed is not None and dashed.answer
    assert zone.answer(dns.reversename.from_address("fd00::5"), "PTR") is not None


def test_zone_leaves_out_what_dns_cannot_carry_and_says_why() -> None:
    bad = ServiceEndpoints("default", "x" * 70, "10.96.0.99", ())
    bad_pod = headless("odd", [pod("p", "not-an-ip"), pod("q", "10.244.0.9")])
    zone = build_zone([bad, bad_pod, WEB])
    assert len(zone.skipped) == 2
    assert "default/" + "x" * 70 in zone.skipped[0]
    assert zone.skipped[1].endswith("pod default/p: 'not-an-ip' is not an IP address")
    odd = zone.answer("odd.default.svc.cluster.local.", "A")
    assert odd is not None and [r.to_text() for r in odd.answer[0]] == ["10.244.0.9"]
    assert zone.answer("web.default.svc.cluster.local.", "A") is not None


def test_zone_of_5000_services_builds_in_well_under_a_second() -> None:
    services = [
        ServiceEndpoints(f"ns{i % 40}", f"svc{i}", f"10.96.{i // 250}.{i % 250 + 1}", (HTTP,))
        for i in range(4500)
    ] + [
        headless(
            f"hl{i}", [pod(f"p{i}-{k}", f"10.244.{i // 4}.{i % 4 * 4 + k + 1}", f"h{k}") for k in range(3)]
        )
        for i in range(500)
    ]
    started = time.perf_counter()
    zone = build_zone(services)
    elapsed = time.perf_counter() - started
    assert elapsed < 0.8, f"{elapsed:.2f} s"
    assert not zone.skipped
    assert zone.answer("svc4499.ns19.svc.cluster.local.", "A") is not None


# --- names through a pod's resolver ----------------------------------------------------


def test_all_four_name_forms_resolve_through_the_search_path(
    server: ClusterDns, upstream: FakeUpstream
) -> None:
    r = resolver(server.bound_port)
    for name in ("web", "web.default", "web.default.svc", "web.default.svc.cluster.local"):
        assert addresses(r.resolve(name, "A")) == {"10.96.0.10"}, name
    other = resolver(server.bound_port, namespace="other")
    assert addresses(other.resolve("web.default", "A")) == {"10.96.0.10"}
    assert upstream.asked == []
    with pytest.raises(dns.resolver.NoAnswer):
        other.resolve("web", "A")  # not in namespace other: each search candidate is ours, and missing
    assert upstream.names() == ["web."]  # only the bare name, last, left the cluster


def test_a_custom_cluster_domain_is_served_and_cluster_local_is_not(upstream: FakeUpstream) -> None:
    with ClusterDns("127.0.0.1", 0, domain="Corp.Internal", upstreams=[upstream.address]) as server:
        server.update([WEB])
        r = resolver(server.bound_port, domain="corp.internal")
        for name in ("web", "web.default", "web.default.svc", "web.default.svc.corp.internal"):
            assert addresses(r.resolve(name, "A")) == {"10.96.0.10"}, name
        assert upstream.asked == []
        assert reply(server.bound_port, "web.default.svc.cluster.local.").rcode() == dns.rcode.NOERROR
        assert upstream.names() == ["web.default.svc.cluster.local."]  # not ours: forwarded


def test_headless_service_lists_exactly_its_addresses_and_an_update_drops_one(server: ClusterDns) -> None:
    r = resolver(server.bound_port)
    assert addresses(r.resolve("db", "A")) == {"10.244.1.5", "10.244.2.6", "10.244.1.7"}
    server.update([WEB, headless("db", [pod("db-0", "10.244.1.5", "db-0"), pod("x", "10.244.1.7")])])
    assert addresses(r.resolve("db", "A")) == {"10.244.1.5", "10.244.1.7"}
    assert reply(server.bound_port, "db-1.db.default.svc.cluster.local.").rcode() == dns.rcode.NXDOMAIN


def test_pod_hostname_under_its_subdomain_and_dashed_ip_names(server: ClusterDns) -> None:
    r = resolver(server.bound_port)
    assert addresses(r.resolve("db-0.db", "A")) == {"10.244.1.5"}
    assert addresses(r.resolve("db-1.db.default.svc.cluster.local", "A")) == {"10.244.2.6"}
    assert addresses(r.resolve("10-244-1-7.db", "A")) == {"10.244.1.7"}
    # Hostnames are published for headless Services only.
    assert reply(server.bound_port, "db-0.web.default.svc.cluster.local.").rcode() == dns.rcode.NXDOMAIN


def test_external_name_is_a_cname_followed_through_the_upstream(
    server: ClusterDns, upstream: FakeUpstream
) -> None:
    """Stub resolvers do not chase a CNAME: the answer carries the target's records too."""
    response = reply(server.bound_port, "ext.default.svc.cluster.local.")
    assert [(r.rdtype, r.name.to_text()) for r in response.answer] == [
        (dns.rdatatype.CNAME, "ext.default.svc.cluster.local."),
        (dns.rdatatype.A, "db.example.org."),
    ]
    assert response.answer[0][0].to_text() == "db.example.org."
    assert upstream.names() == ["db.example.org."]
    cname_only = reply(server.bound_port, "ext.default.svc.cluster.local.", "CNAME")
    assert [r.rdtype for r in cname_only.answer] == [dns.rdatatype.CNAME]
    assert len(upstream.asked) == 1
    r = resolver(server.bound_port)
    assert addresses(r.resolve("ext", "A")) == {"192.0.2.5"}


def test_external_name_inside_the_cluster_is_followed_in_the_zone(
    server: ClusterDns, upstream: FakeUpstream
) -> None:
    response = reply(server.bound_port, "alias.other.svc.cluster.local.")
    assert [r.to_text() for r in response.answer] == [
        "alias.other.svc.cluster.local. 5 IN CNAME web.default.svc.cluster.local.",
        "web.default.svc.cluster.local. 5 IN A 10.96.0.10",
    ]
    assert upstream.asked == []


def test_srv_for_a_clusterip_named_port_points_at_the_service(server: ClusterDns) -> None:
    response = reply(server.bound_port, "_http._tcp.web.default.svc.cluster.local.", "SRV")
    assert [r.to_text() for r in response.answer[0]] == ["0 100 80 web.default.svc.cluster.local."]
    assert [r.to_text() for r in response.additional] == ["web.default.svc.cluster.local. 5 IN A 10.96.0.10"]
    unnamed = reply(server.bound_port, "_9090._tcp.web.default.svc.cluster.local.", "SRV")
    assert unnamed.rcode() == dns.rcode.NXDOMAIN  # unnamed ports have no SRV record


def test_srv_for_a_headless_named_port_lists_each_pod_with_its_own_port(server: ClusterDns) -> None:
    r = resolver(server.bound_port)
    answer = r.resolve("_pg._tcp.db", "SRV")
    assert sorted((rd.port, rd.target.to_text()) for rd in answer) == [
        (5432, "10-244-1-7.db.default.svc.cluster.local."),
        (5432, "db-0.db.default.svc.cluster.local."),
        (5432, "db-1.db.default.svc.cluster.local."),
    ]
    glue = {rrset.name.to_text(): [rd.to_text() for rd in rrset] for rrset in answer.response.additional}
    assert glue == {
        "db-0.db.default.svc.cluster.local.": ["10.244.1.5"],
        "db-1.db.default.svc.cluster.local.": ["10.244.2.6"],
        "10-244-1-7.db.default.svc.cluster.local.": ["10.244.1.7"],
    }


def test_nxdomain_for_missing_names_and_nodata_for_missing_types(
    server: ClusterDns, upstream: FakeUpstream
) -> None:
    missing = reply(server.bound_port, "nope.default.svc.cluster.local.")
    assert missing.rcode() == dns.rcode.NXDOMAIN
    assert missing.flags & dns.flags.AA
    assert [r.rdtype for r in missing.authority] == [dns.rdatatype.SOA]
    for name, rdtype in [
        ("web.default.svc.cluster.local.", "AAAA"),
        ("default.svc.cluster.local.", "A"),
        ("svc.cluster.local.", "A"),
    ]:
        nodata = reply(server.bound_port, name, rdtype)
        assert (nodata.rcode(), nodata.answer) == (dns.rcode.NOERROR, []), name
    with pytest.raises(dns.resolver.NoAnswer):
        resolver(server.bound_port).resolve("web", "AAAA")
    assert upstream.asked == []


def test_names_are_case_insensitive_and_answers_echo_the_asked_case(server: ClusterDns) -> None:
    response = reply(server.bound_port, "WeB.DeFault.SVC.Cluster.LOCAL.")
    assert response.answer[0].name.to_text() == "WeB.DeFault.SVC.Cluster.LOCAL."
    assert [r.to_text() for r in response.answer[0]] == ["10.96.0.10"]
    assert addresses(resolver(server.bound_port).resolve("DB-0.DB", "A")) == {"10.244.1.5"}


def test_ptr_for_a_vip_is_answered_and_an_unknown_address_is_forwarded(
    server: ClusterDns, upstream: FakeUpstream
) -> None:
    response = reply(server.bound_port, dns.reversename.from_address("10.96.0.10").to_text(), "PTR")
    assert [r.to_text() for r in response.answer[0]] == ["web.default.svc.cluster.local."]
    assert upstream.asked == []
    reply(server.bound_port, "8.8.8.8.in-addr.arpa.", "PTR")
    assert upstream.names() == ["8.8.8.8.in-addr.arpa."]


def test_cluster_names_are_answered_servfail_until_the_first_update(upstream: FakeUpstream) -> None:
    """NXDOMAIN before the Services are known would be cached by clients."""
    with ClusterDns("127.0.0.1", 0, upstreams=[upstream.address]) as server:
        assert reply(server.bound_port, "web.default.svc.cluster.local.").rcode() == dns.rcode.SERVFAIL
        server.update([WEB])
        assert reply(server.bound_port, "web.default.svc.cluster.local.").rcode() == dns.rcode.NOERROR
        assert upstream.asked == []


# --- forwarding -------------------------------------------------------------------------


def test_forwarded_answers_are_cached_for_their_ttl(
    server: ClusterDns, upstream: FakeUpstream, clock: Clock
) -> None:
    r = resolver(server.bound_port)
    first = r.resolve("example.org.", "A")
    assert addresses(first) == {"192.0.2.80"}
    assert not first.response.flags & dns.flags.AA
    assert upstream.names() == ["example.org."]
    clock.now += 20
    again = reply(server.bound_port, "example.org.")
    assert [r.to_text() for r in again.answer] == ["example.org. 40 IN A 192.0.2.80"]  # aged
    assert upstream.names() == ["example.org."]
    clock.now += 41
    reply(server.bound_port, "example.org.")
    assert upstream.names() == ["example.org.", "example.org."]


def test_negative_answers_are_cached_by_their_soa_minimum_capped_at_30_s(
    server: ClusterDns, upstream: FakeUpstream, clock: Clock
) -> None:
    for _ in range(3):
        assert reply(server.bound_port, "missing.example.").rcode() == dns.rcode.NXDOMAIN
    assert len(upstream.asked) == 1
    clock.now += 31  # the SOA says 600 s
    reply(server.bound_port, "missing.example.")
    assert len(upstream.asked) == 2


def test_a_name_outside_the_cluster_walks_the_search_path_inside_it_first(
    server: ClusterDns, upstream: FakeUpstream
) -> None:
    """`example.org` has fewer than 5 dots: each search candidate is asked (and is ours,
    NXDOMAIN), then the name itself, the only one the upstream sees."""
    assert addresses(resolver(server.bound_port).resolve("example.org", "A")) == {"192.0.2.80"}
    assert upstream.names() == ["example.org."]


def test_cluster_names_never_reach_the_upstream(server: ClusterDns, upstream: FakeUpstream) -> None:
    names = [
        "web.default.svc.cluster.local.",
        "nope.default.svc.cluster.local.",
        "a.b.c.d.nope.cluster.local.",
        "cluster.local.",
        "pod.cluster.local.",
        "x.nosuchns.svc.cluster.local.",
        "_http._udp.web.default.svc.cluster.local.",
    ]
    for name in names:
        for rdtype in ("A", "AAAA", "SRV", "TXT", "MX", "ANY"):
            assert reply(server.bound_port, name, rdtype).rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN)
            assert reply(server.bound_port, name, rdtype, tcp=True).rcode() in (
                dns.rcode.NOERROR,
                dns.rcode.NXDOMAIN,
            )
    assert upstream.asked == []
    assert server.stats.forwarded == 0


def test_next_upstream_is_tried_when_one_fails_and_all_failing_is_servfail(
    upstream: FakeUpstream, clock: Clock
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dead:
        dead.bind(("127.0.0.1", 0))  # takes queries, never answers
        dead_address = f"127.0.0.1:{dead.getsockname()[1]}"
        with ClusterDns(
            "127.0.0.1", 0, upstreams=[dead_address, upstream.address], upstream_timeout=0.3, clock=clock
        ) as server:
            assert [r.to_text() for r in reply(server.bound_port, "example.org.").answer[0]] == ["192.0.2.80"]
        with ClusterDns(
            "127.0.0.1", 0, upstreams=[dead_address], upstream_timeout=0.2, clock=clock
        ) as server:
            with capture_logs() as logs:
                for i in range(3):
                    assert reply(server.bound_port, f"n{i}.example.").rcode() == dns.rcode.SERVFAIL
            assert server.stats.upstream_failures == 3
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1, warnings  # one line per upstream per 30 s, not one per query
    assert warnings[0]["upstream"] == dead_address


def test_forwarding_waits_are_bounded_beyond_which_queries_get_servfail_at_once(clock: Clock) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dead:
        dead.bind(("127.0.0.1", 0))
        upstream = f"127.0.0.1:{dead.getsockname()[1]}"
        with (
            ClusterDns(
                "127.0.0.1", 0, upstreams=[upstream], upstream_timeout=1.5, max_pending=2, clock=clock
            ) as server,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
        ):
            client.settimeout(1.0)
            for i in range(5):
                client.sendto(query(f"slow{i}.example.").to_wire(), ("127.0.0.1", server.bound_port))
            started = time.monotonic()
            refused = [dns.message.from_wire(client.recv(4096)) for _ in range(3)]
            assert time.monotonic() - started < 1.0
            assert {m.rcode() for m in refused} == {dns.rcode.SERVFAIL}
            assert server.stats.refused == 3


def test_a_truncated_upstream_answer_is_fetched_again_over_tcp(
    server: ClusterDns, upstream: FakeUpstream
) -> None:
    over_tcp = reply(server.bound_port, "big.example.", tcp=True)
    assert len(over_tcp.answer[0]) == 150
    assert [t for t, name, _ in upstream.asked if name == "big.example."] == ["udp", "tcp"]
    over_udp = reply(server.bound_port, "big.example.")
    assert over_udp.flags & dns.flags.TC


def test_large_udp_answers_set_tc_and_the_tcp_answer_is_complete(server: ClusterDns) -> None:
    many = [pod(f"p{i}", f"10.244.{i // 200}.{i % 200 + 1}") for i in range(100)]
    server.update([headless("big", many)])
    name = "big.default.svc.cluster.local."
    plain = reply(server.bound_port, name)
    assert plain.flags & dns.flags.TC
    assert len(plain.to_wire()) <= 512
    edns = ask(server.bound_port, query(name, use_edns=0, payload=4096).to_wire())
    assert edns is not None and edns.flags & dns.flags.TC  # 1,600 bytes of addresses > 1,232
    over_tcp = reply(server.bound_port, name, tcp=True)
    assert not over_tcp.flags & dns.flags.TC
    assert {r.to_text() for r in over_tcp.answer[0]} == {p.ip for p in many}
    assert addresses(resolver(server.bound_port).resolve("big", "A")) == {p.ip for p in many}


def test_updates_swap_the_zone_whole_while_queries_are_answered(server: ClusterDns) -> None:
    """Every answer comes from one zone or the other, never from a mix or a half-built one."""
    old = headless("db", [pod("a", "10.244.9.1"), pod("b", "10.244.9.2")])
    new = headless("db", [pod("c", "10.244.9.3")])
    stop = threading.Event()

    def flip() -> None:
        while not stop.is_set():
            for version in (old, new):
                server.update([WEB, version])

    flipper = threading.Thread(target=flip)
    flipper.start()
    seen = set()
    try:
        for _ in range(300):
            response = reply(server.bound_port, "db.default.svc.cluster.local.")
            seen.add(frozenset(r.to_text() for r in response.answer[0]))
    finally:
        stop.set()
        flipper.join()
    assert seen <= {frozenset({"10.244.9.1", "10.244.9.2"}), frozenset({"10.244.9.3"})}
    assert_still_answers(server)


def test_an_identical_query_is_answered_from_memory_with_its_own_id(server: ClusterDns) -> None:
    first, second = query("web.default.svc.cluster.local."), query("web.default.svc.cluster.local.")
    second.id = (first.id + 1) % 65536
    a, b = ask(server.bound_port, first.to_wire()), ask(server.bound_port, second.to_wire())
    assert a is not None and b is not None
    assert (a.id, b.id) == (first.id, second.id)
    assert a.answer == b.answer


# --- hostile input ----------------------------------------------------------------------


def header(qid: int = 0x1234, flags: int = dns.flags.RD, qdcount: int = 1, arcount: int = 0) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qdcount, 0, 0, arcount)


def assert_still_answers(server: ClusterDns) -> None:
    response = reply(server.bound_port, "web.default.svc.cluster.local.")
    assert [r.to_text() for r in response.answer[0]] == ["10.96.0.10"]


def test_random_bytes_and_truncated_packets_are_dropped_or_formerr(server: ClusterDns) -> None:
    rng = random.Random(7)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(500):
            s.sendto(rng.randbytes(rng.randrange(0, 200)), ("127.0.0.1", server.bound_port))
    wire = query("web.default.svc.cluster.local.").to_wire()
    for cut in range(1, len(wire)):
        response = ask(server.bound_port, wire[:cut], timeout=0.05 if cut < 12 else 2.0)
        if cut < 12:
            assert response is None  # no header: nothing to answer to
        else:
            assert response is not None and response.rcode() == dns.rcode.FORMERR
            assert response.id == struct.unpack("!H", wire[:2])[0]
    assert_still_answers(server)


def test_qdcount_other_than_one_is_formerr(server: ClusterDns) -> None:
    none = ask(server.bound_port, header(qdcount=0))
    assert none is not None and none.rcode() == dns.rcode.FORMERR
    two = query("web.default.svc.cluster.local.")
    two.question.append(query("db.default.svc.cluster.local.").question[0])
    response = ask(server.bound_port, two.to_wire())
    assert response is not None and response.rcode() == dns.rcode.FORMERR
    assert_still_answers(server)


def test_names_dns_does_not_allow_are_formerr(server: ClusterDns) -> None:
    question_tail = struct.pack("!HH", 1, 1)
    too_long = b"".join(b"\x3f" + b"a" * 63 for _ in range(5)) + b"\x00"  # 320 bytes > 255
    bad_label = b"\x40" + b"a" * 64 + b"\x00"  # 64 is no label length, nor a pointer
    pointer_loop = b"\xc0\x0c"  # points at itself
    for name in (too_long, bad_label, pointer_loop):
        response = ask(server.bound_port, header() + name + question_tail)
        assert response is not None and response.rcode() == dns.rcode.FORMERR, name[:8]
    assert_still_answers(server)


def test_opcodes_other_than_query_are_notimp_and_responses_are_ignored(server: ClusterDns) -> None:
    notify = query("web.default.svc.cluster.local.")
    notify.set_opcode(dns.opcode.NOTIFY)
    response = ask(server.bound_port, notify.to_wire())
    assert response is not None and response.rcode() == dns.rcode.NOTIMP
    assert response.opcode() == dns.opcode.NOTIFY
    a_response = dns.message.make_response(query("web.default.svc.cluster.local."))
    assert ask(server.bound_port, a_response.to_wire(), timeout=0.3) is None  # answering could loop
    zone_transfer = reply(server.bound_port, "cluster.local.", "AXFR", tcp=True)
    assert zone_transfer.rcode() == dns.rcode.REFUSED
    assert_still_answers(server)


def test_a_burst_of_10000_udp_queries_does_not_kill_it(server: ClusterDns) -> None:
    rng = random.Random(3)
    wires = [query(f"svc{rng.randrange(200)}.default.svc.cluster.local.").to_wire() for _ in range(200)]
    wires += [query("web.default.svc.cluster.local.").to_wire()] * 100
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        sent = 0
        for i in range(10_000):
            packet = wires[i % len(wires)] if i % 10 else rng.randbytes(40)
            try:
                s.sendto(packet, ("127.0.0.1", server.bound_port))
                sent += 1
            except BlockingIOError:
                time.sleep(0.001)
        s.settimeout(1.0)
        replies = 0
        try:
            while True:
                s.recv(4096)
                replies += 1
        except TimeoutError:
            pass
    assert sent > 5000
    assert replies > 0
    assert_still_answers(server)
    assert server.stats.queries >= replies


def test_stop_closes_the_sockets_and_is_safe_twice(upstream: FakeUpstream) -> None:
    server = ClusterDns("127.0.0.1", 0, upstreams=[upstream.address])
    server.update([WEB])
    server.start()
    port = server.bound_port
    assert_still_answers(server)
    server.stop()
    server.stop()
    with pytest.raises(RuntimeError):
        _ = server.bound_port
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))  # free again
    assert not [t for t in threading.enumerate() if t.name.startswith("cluster-dns")]


# --- the parts --------------------------------------------------------------------------


def test_upstreams_are_addresses_with_an_optional_port() -> None:
    assert parse_upstream("10.0.0.2") == ("10.0.0.2", 53)
    assert parse_upstream("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_upstream("fd00::2") == ("fd00::2", 53)
    assert parse_upstream("[fd00::2]:5353") == ("fd00::2", 5353)
    with pytest.raises(ValueError, match=r"'dns\.google'"):
        parse_upstream("dns.google")


def test_resolv_conf_nameservers_are_read_in_order(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    path.write_text(
        "# comment\nsearch example\nnameserver 127.0.0.53\nnameserver fe80::1%eth0\noptions edns0\n"
    )
    assert resolv_conf_nameservers(path) == ("127.0.0.53", "fe80::1")
    assert resolv_conf_nameservers(path.parent / "absent") == ()


def test_cache_ttl_is_the_answers_minimum_and_negative_ttl_comes_from_the_soa() -> None:
    positive = dns.message.make_response(query("a.example."))
    positive.answer = [
        dns.rrset.from_text("a.example.", 300, "IN", "CNAME", "b.example."),
        dns.rrset.from_text("b.example.", 20, "IN", "A", "192.0.2.1"),
    ]
    assert cache_ttl(positive, 3600, 30) == 20
    negative = dns.message.make_response(query("a.example."))
    negative.set_rcode(dns.rcode.NXDOMAIN)
    negative.authority = [dns.rrset.from_text("example.", 3600, "IN", "SOA", "ns. h. 1 2 3 4 10")]
    assert cache_ttl(negative, 3600, 30) == 10
    negative.authority = []
    assert cache_ttl(negative, 3600, 30) == 0  # no SOA: not cached (RFC 2308)
    failed = dns.message.make_response(query("a.example."))
    failed.set_rcode(dns.rcode.SERVFAIL)
    assert cache_ttl(failed, 3600, 30) == 0


def test_forward_cache_is_bounded_and_evicts_the_least_recently_used() -> None:
    cache = ForwardCache(size=2)
    entry = UpstreamAnswer(dns.rcode.NOERROR, ttl=10, received_at=0)
    a, b, c = ((b"a", b""), 1, 1), ((b"b", b""), 1, 1), ((b"c", b""), 1, 1)
    cache.put(a, entry)
    cache.put(b, entry)
    assert cache.get(a, 1) is entry  # a is now the most recently used
    cache.put(c, entry)
    assert len(cache) == 2
    assert cache.get(b, 1) is None
    assert cache.get(a, 1) is entry
    assert cache.get(a, 10) is None  # expired
