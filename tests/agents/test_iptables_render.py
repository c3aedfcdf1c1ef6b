"""`render`: the iptables-restore text for services, checked without touching the kernel.

Beside the layout checks, the rendered text is run by hand (`tests.agents.proxy_reference`)
and compared with the slow twin's plain statement of what should happen to a connection.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import shlex
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gitops.agents.iptables import (
    Backend,
    ServiceRule,
    address_number,
    check_prefix,
    endpoint_chain,
    external_chain,
    filter_chain,
    jump_rules,
    local_chain,
    mark_masq_chain,
    nodeports_chain,
    postrouting_chain,
    probabilities,
    render,
    service_chain,
    service_rule,
    services_chain,
    static_nat_chains,
    vet,
)
from gitops.model import Endpoint, NodeName, PodId, ServiceEndpoints, ServicePort
from tests.agents.proxy_reference import (
    NODE_ADDRESS,
    Outcome,
    Packet,
    outcomes,
    parse_tables,
    reference,
    same,
    simulate,
    simulate_tables,
)

CIDR = "10.250.0.0/16"
WEB = ServiceRule("default/web:http", "10.250.0.10", 80, "TCP", (("192.0.2.2", 8080), ("192.0.2.3", 8080)))
DNS = ServiceRule("kube/dns:dns", "10.250.0.53", 53, "UDP", (("172.17.0.5", 53),))
EMPTY = ServiceRule("default/idle:80", "10.250.0.20", 80, "TCP", ())
CLIENT = "198.51.100.7"  # a machine elsewhere
STATIC = set(static_nat_chains("GITOPS"))


@dataclass
class Parsed:
    """Rendered text read back: declared chains, rules per chain, deleted chains, per table."""

    declared: dict[str, list[str]] = field(default_factory=dict)
    rules: dict[str, dict[str, list[list[str]]]] = field(default_factory=dict)
    deleted: dict[str, list[str]] = field(default_factory=dict)


def parse(text: str) -> Parsed:
    out = Parsed()
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:]
            out.declared[table], out.rules[table], out.deleted[table] = [], {}, []
        elif line.startswith(":"):
            out.declared[table].append(line[1:].split()[0])
        elif line.startswith("-A "):
            words = shlex.split(line)
            out.rules[table].setdefault(words[1], []).append(words[2:])
        elif line.startswith("-X "):
            out.deleted[table].append(line.split()[1])
        else:
            assert line == "COMMIT", line
    return out


def opt(words: list[str], name: str) -> str | None:
    return words[words.index(name) + 1] if name in words else None


def dnat_of(parsed: Parsed, chain: str) -> str | None:
    """Where an SEP chain sends its connections."""
    return next(opt(r, "--to-destination") for r in parsed.rules["nat"][chain] if opt(r, "-j") == "DNAT")


def connect(rules: list[ServiceRule], packet: Packet) -> dict[Outcome, float]:
    return outcomes(simulate(render(rules, service_cidr=CIDR), packet))


def test_chain_names_are_deterministic_short_and_prefixed() -> None:
    """The per-service chain name depends only on (service, protocol, vip, port), fits 28 chars."""
    name = service_chain(WEB, "GITOPS")
    assert re.fullmatch(r"GITOPS-SVC-[A-Z2-7]{16}", name)
    assert len(name) <= 28
    assert service_chain(WEB, "GITOPS") == name
    assert service_chain(ServiceRule(WEB.service, WEB.vip, WEB.port, "TCP", ()), "GITOPS") == name
    assert service_chain(ServiceRule(WEB.service, WEB.vip, 81, "TCP", ()), "GITOPS") != name
    assert service_chain(ServiceRule(WEB.service, WEB.vip, 80, "UDP", ()), "GITOPS") != name
    assert local_chain(WEB, "GITOPS") == name.replace("-SVC-", "-SVL-")
    assert external_chain(WEB, "GITOPS") == name.replace("-SVC-", "-EXT-")
    sep = endpoint_chain(WEB, WEB.backends[0], "GITOPS")
    assert re.fullmatch(r"GITOPS-SEP-[A-Z2-7]{16}", sep)
    assert sep != endpoint_chain(WEB, WEB.backends[1], "GITOPS")
    assert sep == endpoint_chain(WEB, Backend("192.0.2.2", 8080, local=True), "GITOPS")
    assert all(len(c) <= 28 for c in static_nat_chains("GOT1a2b"))


def test_plain_backend_pairs_are_non_local_backends() -> None:
    assert WEB.backends == (Backend("192.0.2.2", 8080, False), Backend("192.0.2.3", 8080, False))
    assert WEB.local_backends == ()


def test_render_is_independent_of_rule_order() -> None:
    assert render([WEB, DNS, EMPTY], service_cidr=CIDR) == render([EMPTY, DNS, WEB], service_cidr=CIDR)


def test_backends_are_spread_with_probabilities_one_over_remaining() -> None:
    """Backend i of n is taken with probability 1/(n-i); the last one unconditionally."""
    assert probabilities(1) == [None]
    assert probabilities(4) == ["0.2500000000", "0.3333333333", "0.5000000000", None]
    rule = ServiceRule("a/b:c", "10.250.1.1", 80, "TCP", tuple(("192.0.2.2", 9000 + i) for i in range(4)))
    parsed = parse(render([rule], service_cidr=CIDR))
    chain = parsed.rules["nat"][service_chain(rule, "GITOPS")]
    assert [opt(r, "--probability") for r in chain] == ["0.2500000000", "0.3333333333", "0.5000000000", None]
    assert [dnat_of(parsed, str(opt(r, "-j"))) for r in chain] == [f"192.0.2.2:{9000 + i}" for i in range(4)]
    spread = connect([rule], Packet(CLIENT, rule.vip, "TCP", 80))
    assert same(spread, {Outcome("dnat", ("192.0.2.2", 9000 + i)): 0.25 for i in range(4)})


def test_service_port_jumps_from_the_services_chain_and_node_ports_come_last() -> None:
    parsed = parse(render([WEB], service_cidr=CIDR))
    jump, last = parsed.rules["nat"][services_chain("GITOPS")]
    assert opt(jump, "-d") == "10.250.0.10/32"
    assert (opt(jump, "-p"), opt(jump, "--dport")) == ("tcp", "80")
    assert opt(jump, "--comment") == "default/web:http"
    assert opt(jump, "-j") == service_chain(WEB, "GITOPS")
    assert (opt(last, "--dst-type"), opt(last, "-j")) == ("LOCAL", nodeports_chain("GITOPS"))


def test_udp_service_uses_udp_matches() -> None:
    parsed = parse(render([DNS], service_cidr=CIDR))
    jump = parsed.rules["nat"][services_chain("GITOPS")][0]
    assert (opt(jump, "-p"), opt(jump, "-m"), opt(jump, "--dport")) == ("udp", "udp", "53")
    sep = endpoint_chain(DNS, DNS.backends[0], "GITOPS")
    dnat = parsed.rules["nat"][sep][-1]
    assert (opt(dnat, "-p"), opt(dnat, "--to-destination")) == ("udp", "172.17.0.5:53")
    assert same(
        connect([DNS], Packet(CLIENT, DNS.vip, "UDP", 53)), {Outcome("dnat", ("172.17.0.5", 53)): 1.0}
    )
    assert same(connect([DNS], Packet(CLIENT, DNS.vip, "TCP", 53)), {Outcome("reject"): 1.0})


def test_service_without_backends_is_rejected_and_has_no_chain() -> None:
    parsed = parse(render([EMPTY], service_cidr=CIDR))
    assert set(parsed.declared["nat"]) == STATIC
    assert [opt(r, "-j") for r in parsed.rules["nat"][services_chain("GITOPS")]] == [
        nodeports_chain("GITOPS")
    ]
    localnet, reject_vip, reject_cidr = parsed.rules["filter"][filter_chain("GITOPS")]
    assert (opt(reject_vip, "-d"), opt(reject_vip, "--dport"), opt(reject_vip, "-j")) == (
        "10.250.0.20/32",
        "80",
        "REJECT",
    )
    assert opt(reject_vip, "--comment") == "default/idle:80 has no endpoints"
    assert (opt(reject_cidr, "-d"), opt(reject_cidr, "-j")) == (CIDR, "REJECT")
    assert (opt(localnet, "-d"), opt(localnet, "-j")) == ("127.0.0.0/8", "DROP")


def test_whole_cidr_is_rejected_last_even_without_services() -> None:
    parsed = parse(render([], service_cidr="10.250.7.7/16"))
    reject = parsed.rules["filter"][filter_chain("GITOPS")][-1]
    assert (opt(reject, "-d"), opt(reject, "-j"), opt(reject, "--reject-with")) == (
        "10.250.0.0/16",
        "REJECT",
        "icmp-port-unreachable",
    )


def test_multiple_ports_of_one_service_get_one_chain_each() -> None:
    http = ServiceRule("default/web:http", "10.250.0.10", 80, "TCP", (("192.0.2.2", 8080),))
    https = ServiceRule("default/web:https", "10.250.0.10", 443, "TCP", (("192.0.2.2", 8443),))
    parsed = parse(render([http, https], service_cidr=CIDR))
    chains = {service_chain(http, "GITOPS"), service_chain(https, "GITOPS")}
    seps = {
        endpoint_chain(http, http.backends[0], "GITOPS"),
        endpoint_chain(https, https.backends[0], "GITOPS"),
    }
    assert len(chains) == 2 and len(seps) == 2
    assert set(parsed.declared["nat"]) == STATIC | chains | seps
    assert [opt(r, "--dport") for r in parsed.rules["nat"][services_chain("GITOPS")]] == ["80", "443", None]


def test_masquerading_is_a_mark_and_one_postrouting_chain() -> None:
    """MARK-MASQ sets kube-proxy's bit; POSTROUTING masquerades marked packets and clears it."""
    parsed = parse(render([], service_cidr=CIDR))
    assert parsed.rules["nat"][mark_masq_chain("GITOPS")] == [["-j", "MARK", "--or-mark", "0x4000"]]
    skip, clear, masquerade = parsed.rules["nat"][postrouting_chain("GITOPS")]
    assert skip == ["-m", "mark", "!", "--mark", "0x4000/0x4000", "-j", "RETURN"]
    assert clear == ["-j", "MARK", "--xor-mark", "0x4000"]
    assert opt(masquerade, "-j") == "MASQUERADE"
    jumps = {(table, builtin, spec[-1]) for table, builtin, spec in jump_rules("GITOPS")}
    assert ("nat", "POSTROUTING", postrouting_chain("GITOPS")) in jumps
    assert ("filter", "INPUT", filter_chain("GITOPS")) in jumps  # node ports from other machines


def test_a_pod_reaching_itself_through_its_service_is_masqueraded() -> None:
    """Hairpin: the endpoint chain marks connections from the endpoint's own address."""
    parsed = parse(render([WEB], service_cidr=CIDR))
    sep = endpoint_chain(WEB, WEB.backends[0], "GITOPS")
    hairpin = parsed.rules["nat"][sep][0]
    assert (opt(hairpin, "-s"), opt(hairpin, "-j")) == ("192.0.2.2/32", mark_masq_chain("GITOPS"))
    spread = connect([WEB], Packet("192.0.2.2", WEB.vip, "TCP", 80))
    assert same(
        spread,
        {
            Outcome("dnat", ("192.0.2.2", 8080), masquerade=True): 0.5,
            Outcome("dnat", ("192.0.2.3", 8080)): 0.5,
        },
    )


NODE_PORT = ServiceRule(
    "default/web:http",
    "10.250.0.10",
    80,
    "TCP",
    (Backend("10.244.0.5", 8080, local=True), Backend("10.244.1.5", 8080)),
    node_port=30080,
)


def test_a_node_port_answers_on_every_address_of_the_node_masqueraded() -> None:
    parsed = parse(render([NODE_PORT], service_cidr=CIDR))
    [entry] = parsed.rules["nat"][nodeports_chain("GITOPS")]
    assert (opt(entry, "-p"), opt(entry, "--dport"), opt(entry, "-j")) == (
        "tcp",
        "30080",
        external_chain(NODE_PORT, "GITOPS"),
    )
    mark, jump = parsed.rules["nat"][external_chain(NODE_PORT, "GITOPS")]
    assert (opt(mark, "-j"), opt(jump, "-j")) == (
        mark_masq_chain("GITOPS"),
        service_chain(NODE_PORT, "GITOPS"),
    )
    both = {
        Outcome("dnat", ("10.244.0.5", 8080), True): 0.5,
        Outcome("dnat", ("10.244.1.5", 8080), True): 0.5,
    }
    for packet in (
        Packet(CLIENT, NODE_ADDRESS, "TCP", 30080, dst_local=True),
        Packet("127.0.0.1", "127.0.0.1", "TCP", 30080, src_local=True, dst_local=True),  # loopback too
        Packet(NODE_ADDRESS, NODE_ADDRESS, "TCP", 30080, src_local=True, dst_local=True),
    ):
        assert same(connect([NODE_PORT], packet), both), packet
    # Another port of the node, or the node port of another protocol, is not ours.
    assert same(
        connect([NODE_PORT], Packet(CLIENT, NODE_ADDRESS, "TCP", 30081, dst_local=True)),
        {Outcome("accept"): 1},
    )
    assert same(
        connect([NODE_PORT], Packet(CLIENT, NODE_ADDRESS, "UDP", 30080, dst_local=True)),
        {Outcome("accept"): 1},
    )


def test_a_node_port_without_backends_is_rejected_on_the_node() -> None:
    idle = ServiceRule("default/idle:80", "10.250.0.20", 80, "UDP", (), node_port=30053)
    parsed = parse(render([idle], service_cidr=CIDR))
    assert nodeports_chain("GITOPS") not in parsed.rules["nat"]  # declared, and empty
    reject = parsed.rules["filter"][filter_chain("GITOPS")][-2]
    assert (opt(reject, "--dst-type"), opt(reject, "-p"), opt(reject, "--dport"), opt(reject, "-j")) == (
        "LOCAL",
        "udp",
        "30053",
        "REJECT",
    )
    packet = Packet(CLIENT, NODE_ADDRESS, "UDP", 30053, dst_local=True)
    assert same(connect([idle], packet), {Outcome("reject"): 1.0})


def test_a_load_balancer_answers_its_port_and_its_node_port_on_the_node() -> None:
    """servicelb-style: without a cloud the Service port itself answers on every node address."""
    lb = ServiceRule("default/lb:http", "10.250.0.11", 8000, "TCP", (("10.244.1.6", 8080),), 30081, True)
    parsed = parse(render([lb], service_cidr=CIDR))
    entries = parsed.rules["nat"][nodeports_chain("GITOPS")]
    assert [(opt(e, "--dport"), opt(e, "-j")) for e in entries] == [
        ("30081", external_chain(lb, "GITOPS")),
        ("8000", external_chain(lb, "GITOPS")),
    ]
    for port in (8000, 30081):
        spread = connect([lb], Packet(CLIENT, NODE_ADDRESS, "TCP", port, dst_local=True))
        assert same(spread, {Outcome("dnat", ("10.244.1.6", 8080), True): 1.0})
    # A LoadBalancer whose port is its node port gets one entry.
    same_port = ServiceRule(
        "default/lb:http", "10.250.0.11", 30081, "TCP", (("10.244.1.6", 8080),), 30081, True
    )
    assert len(parse(render([same_port], service_cidr=CIDR)).rules["nat"][nodeports_chain("GITOPS")]) == 1


def test_external_traffic_policy_local_keeps_the_client_address_and_uses_local_backends() -> None:
    rule = ServiceRule(
        "default/web:http",
        "10.250.0.10",
        80,
        "TCP",
        (Backend("10.244.0.5", 8080, local=True), Backend("10.244.1.5", 8080)),
        node_port=30080,
        external_local=True,
    )
    outside = Packet(CLIENT, NODE_ADDRESS, "TCP", 30080, dst_local=True)
    assert same(connect([rule], outside), {Outcome("dnat", ("10.244.0.5", 8080)): 1.0})
    # The node itself (loopback included) reaches every backend, masqueraded, as kube-proxy does.
    loopback = Packet("127.0.0.1", "127.0.0.1", "TCP", 30080, src_local=True, dst_local=True)
    assert same(
        connect([rule], loopback),
        {Outcome("dnat", ("10.244.0.5", 8080), True): 0.5, Outcome("dnat", ("10.244.1.5", 8080), True): 0.5},
    )
    # The VIP is not external traffic: every backend.
    assert len(connect([rule], Packet(CLIENT, rule.vip, "TCP", 80))) == 2


def test_external_traffic_policy_local_without_a_local_backend_drops() -> None:
    rule = ServiceRule(
        "default/web:http",
        "10.250.0.10",
        80,
        "TCP",
        (("10.244.1.5", 8080),),
        node_port=30080,
        external_local=True,
    )
    parsed = parse(render([rule], service_cidr=CIDR))
    drops = [
        r for r in parsed.rules["filter"][filter_chain("GITOPS")] if opt(r, "-j") == "DROP" and "--dport" in r
    ]
    assert [(opt(r, "--dst-type"), opt(r, "--dport"), opt(r, "--comment")) for r in drops] == [
        ("LOCAL", "30080", "default/web:http has no local endpoints")
    ]
    assert same(
        connect([rule], Packet(CLIENT, NODE_ADDRESS, "TCP", 30080, dst_local=True)), {Outcome("drop"): 1}
    )
    from_node = Packet(NODE_ADDRESS, NODE_ADDRESS, "TCP", 30080, src_local=True, dst_local=True)
    assert same(connect([rule], from_node), {Outcome("dnat", ("10.244.1.5", 8080), True): 1.0})


def test_internal_traffic_policy_local_sends_the_vip_to_local_backends_only() -> None:
    rule = ServiceRule(
        "kube/dns:dns",
        "10.250.0.53",
        53,
        "UDP",
        (Backend("10.244.0.7", 53, local=True), Backend("10.244.1.7", 53)),
        internal_local=True,
    )
    parsed = parse(render([rule], service_cidr=CIDR))
    assert opt(parsed.rules["nat"][services_chain("GITOPS")][0], "-j") == local_chain(rule, "GITOPS")
    assert service_chain(rule, "GITOPS") not in parsed.declared["nat"]  # nothing uses every backend
    assert same(
        connect([rule], Packet(CLIENT, rule.vip, "UDP", 53)), {Outcome("dnat", ("10.244.0.7", 53)): 1.0}
    )
    remote_only = ServiceRule(
        "kube/dns:dns", "10.250.0.53", 53, "UDP", (("10.244.1.7", 53),), internal_local=True
    )
    assert same(connect([remote_only], Packet(CLIENT, rule.vip, "UDP", 53)), {Outcome("drop"): 1.0})


def test_client_ip_affinity_checks_and_sets_one_recent_list_per_endpoint() -> None:
    rule = ServiceRule(
        "default/web:http",
        "10.250.0.10",
        80,
        "TCP",
        (("10.244.0.5", 8080), ("10.244.1.5", 8080)),
        affinity_seconds=600,
    )
    text = render([rule], service_cidr=CIDR)
    parsed = parse(text)
    seps = [endpoint_chain(rule, b, "GITOPS") for b in rule.backends]
    sticky = parsed.rules["nat"][service_chain(rule, "GITOPS")][:2]
    assert [
        (opt(r, "--name"), opt(r, "--seconds"), "--rcheck" in r, "--reap" in r, opt(r, "-j")) for r in sticky
    ] == [(sep, "600", True, True, sep) for sep in seps]
    for sep in seps:
        dnat = parsed.rules["nat"][sep][-1]
        assert (opt(dnat, "--name"), "--set" in dnat, opt(dnat, "-j")) == (sep, True, "DNAT")
    first = simulate(text, Packet(CLIENT, rule.vip, "TCP", 80))
    for walk in first:
        (remembered,) = walk.recorded
        again = outcomes(simulate(text, Packet(CLIENT, rule.vip, "TCP", 80, recent={remembered: 599})))
        assert same(again, {walk.outcome: 1.0})
        expired = outcomes(simulate(text, Packet(CLIENT, rule.vip, "TCP", 80, recent={remembered: 601})))
        assert same(expired, outcomes(first))


def test_stale_chains_are_flushed_then_deleted() -> None:
    """A chain of ours that is no longer needed is declared (flushed) and deleted with -X."""
    stale = "GITOPS-SVC-AAAAAAAAAAAAAAAA"
    existing = [stale, service_chain(WEB, "GITOPS"), services_chain("GITOPS"), filter_chain("GITOPS")]
    parsed = parse(render([WEB], service_cidr=CIDR, existing_chains=existing))
    assert stale in parsed.declared["nat"]
    assert parsed.deleted == {"nat": [stale], "filter": []}


def test_the_pod_network_chain_is_not_pruned() -> None:
    """`{prefix}-PODNET` belongs to the pod network (gitops.agents.network), not to the proxy."""
    parsed = parse(render([WEB], service_cidr=CIDR, existing_chains=["GITOPS-PODNET"]))
    assert "GITOPS-PODNET" not in parsed.declared["nat"] and parsed.deleted["nat"] == []


def test_only_prefixed_chains_are_touched() -> None:
    """Chains of Docker, of someone else, or of a longer prefix are never declared or deleted."""
    existing = ["DOCKER", "KUBE-SVC-XYZ", "GITOPS2-SVC-AAAAAAAAAAAAAAAA", "GITOPSX", "OTHER-GITOPS-SVC-A"]
    exposed = ServiceRule(
        "default/np:80", "10.250.0.30", 80, "TCP", (("192.0.2.2", 80),), 30080, True, 60, True
    )
    text = render([WEB, EMPTY, DNS, exposed], service_cidr=CIDR, existing_chains=existing)
    parsed = parse(text)
    for table in ("nat", "filter"):
        assert all(c.startswith("GITOPS-") for c in parsed.declared[table])
        assert all(c.startswith("GITOPS-") for c in parsed.rules[table])
        assert parsed.deleted[table] == []


def test_custom_prefix_and_its_limit() -> None:
    text = render([WEB], service_cidr=CIDR, prefix="GOT1a2b")
    assert all(len(c) <= 28 and c.startswith("GOT1a2b-") for c in parse(text).declared["nat"])
    with pytest.raises(ValueError, match="at most 7 characters"):
        check_prefix("GITOPS12")
    with pytest.raises(ValueError, match="chain prefix"):
        render([], service_cidr=CIDR, prefix="bad prefix")


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (ServiceRule("a/b:c", "10.250.0.1", 80, "SCTP", ()), "protocol 'SCTP'"),
        (ServiceRule("a/b:c", "10.250.0.1", 0, "TCP", ()), "port 0"),
        (ServiceRule("a/b:c", "10.250.0.1", 80, "TCP", (("192.0.2.2", 70000),)), "port 70000"),
        (ServiceRule("a/b:c", "10.250.0.1", 80, "TCP", (("192.0.2.2 -j ACCEPT", 80),)), "IPv4"),
        (ServiceRule("a/b:c", "10.250.0.1", 80, "TCP", (), node_port=65536), "node port 65536"),
        (ServiceRule("a/b:c", "10.250.0.1", 80, "TCP", (), affinity_seconds=86401), "affinity seconds 86401"),
    ],
)
def test_invalid_rules_are_refused_with_the_service_named(rule: ServiceRule, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        render([rule], service_cidr=CIDR)
    assert "'a/b:c'" in str(info.value)


def test_two_services_on_one_vip_port_are_refused() -> None:
    other = ServiceRule("default/other:http", WEB.vip, WEB.port, "TCP", ())
    with pytest.raises(ValueError, match=re.escape("both claim 10.250.0.10:80/TCP")):
        render([WEB, other], service_cidr=CIDR)


def test_two_services_on_one_node_port_are_refused() -> None:
    other = ServiceRule(
        "default/other:http", "10.250.0.99", 8000, "TCP", (), load_balancer=True, node_port=30001
    )
    clash = ServiceRule("default/zz:http", "10.250.0.98", 80, "TCP", (), node_port=8000)
    with pytest.raises(ValueError, match=re.escape("both claim port 8000/TCP on this node")):
        render([other, clash], service_cidr=CIDR)
    render(
        [other, ServiceRule("default/zz:http", "10.250.0.98", 80, "UDP", (), node_port=8000)],
        service_cidr=CIDR,
    )


def test_comments_cannot_break_out_of_their_quotes() -> None:
    rule = ServiceRule('x/y:"; -j ACCEPT\n', "10.250.0.1", 80, "TCP", (("192.0.2.2", 80),))
    text = render([rule], service_cidr=CIDR)
    assert "\n-j" not in text and "ACCEPT\n" not in text
    jump = parse(text).rules["nat"][services_chain("GITOPS")][0]
    assert opt(jump, "--comment") == "x/y:__ -j ACCEPT_"


def test_service_rule_takes_everything_but_the_backends_from_the_service() -> None:
    port = ServicePort(80, 8080, "TCP", "http", node_port=30080)
    endpoint = Endpoint(PodId("default/web-1"), NodeName("n1"), "10.244.0.5", 8080, "192.0.2.1", 0)
    svc = ServiceEndpoints(
        "default",
        "web",
        "10.250.0.10",
        (port,),
        ((port, (endpoint,)),),
        type="LoadBalancer",
        session_affinity_seconds=30,
        external_local=True,
        internal_local=True,
    )
    rule = service_rule(svc, port, [Backend("10.244.0.5", 8080, local=True)])
    assert rule == ServiceRule(
        "default/web:http",
        "10.250.0.10",
        80,
        "TCP",
        (Backend("10.244.0.5", 8080, True),),
        node_port=30080,
        load_balancer=True,
        affinity_seconds=30,
        external_local=True,
        internal_local=True,
    )
    cluster_ip = service_rule(ServiceEndpoints("default", "api", "10.250.0.11", (port,)), port, [])
    assert (cluster_ip.node_port, cluster_ip.load_balancer) == (0, False)


# --- the rendered rules against their slow twin ---------------------------------------------

vips = st.integers(min_value=1, max_value=2**16 - 2).map(lambda n: str(ipaddress.IPv4Address(0x0AFA0000 + n)))
pod_ips = st.sampled_from([f"10.244.{n}.{h}" for n in (0, 1) for h in (5, 6, 7)])
backends = st.builds(Backend, pod_ips, st.sampled_from([8080, 9090]), st.booleans())
rule_sets = st.lists(
    st.builds(
        ServiceRule,
        service=st.from_regex(r"[a-z]{1,8}/[a-z]{1,8}:[a-z0-9]{1,5}", fullmatch=True),
        vip=vips,
        port=st.sampled_from([53, 80, 443, 30001]),
        protocol=st.sampled_from(["TCP", "UDP"]),
        backends=st.lists(backends, max_size=4).map(tuple),
        node_port=st.sampled_from([0, 0, 30001, 30002, 30003]),
        load_balancer=st.booleans(),
        affinity_seconds=st.sampled_from([0, 0, 10800]),
        external_local=st.booleans(),
        internal_local=st.booleans(),
    ),
    max_size=6,
)


def packets_for(rules: list[ServiceRule]) -> list[Packet]:
    """New connections worth asking about: to each VIP and node-facing port, from elsewhere,
    from the node itself, over loopback and from each backend; and to nothing in particular."""
    out = [
        Packet(CLIENT, "10.250.200.1", "TCP", 80),  # the service CIDR, no service there
        Packet(CLIENT, "203.0.113.9", "UDP", 53),  # somewhere else entirely
        Packet(CLIENT, "127.0.0.1", "TCP", 22, dst_local=True),  # loopback, from elsewhere
        Packet("127.0.0.1", "127.0.0.1", "TCP", 22, src_local=True, dst_local=True),
    ]
    for rule in rules:
        clients = [CLIENT, *(b.ip for b in rule.backends)]
        out += [Packet(c, rule.vip, rule.protocol, rule.port) for c in clients]
        out.append(Packet(NODE_ADDRESS, rule.vip, rule.protocol, rule.port, src_local=True))
        for port in {rule.node_port, rule.port} - {0}:
            out += [Packet(c, NODE_ADDRESS, rule.protocol, port, dst_local=True) for c in clients]
            out.append(Packet("127.0.0.1", "127.0.0.1", rule.protocol, port, src_local=True, dst_local=True))
            out.append(Packet(CLIENT, "127.0.0.1", rule.protocol, port, dst_local=True))
    return out


@settings(max_examples=300, deadline=None)
@given(
    rules=rule_sets, stale=st.lists(st.from_regex(r"GITOPS-S(VC|EP)-[A-Z]{16}", fullmatch=True), max_size=3)
)
def test_rendered_rules_do_what_the_slow_twin_says(rules: list[ServiceRule], stale: list[str]) -> None:
    """Every new connection (VIPs, node ports, LoadBalancer ports, loopback, hairpin, the
    Local policies) ends where the plain reference says, with the same probabilities and
    masquerading; a client remembered for session affinity comes back to its backend."""
    kept, _ = vet(rules)
    text = render(kept, service_cidr=CIDR, existing_chains=stale)
    parsed = parse(text)
    declared = set(parsed.declared["nat"])
    assert all(len(c) <= 28 for c in declared | set(parsed.declared["filter"]))
    assert set(parsed.deleted["nat"]) == set(stale) - declared_needed(parsed)
    tables = parse_tables(text)
    for packet in packets_for(kept):
        walks = simulate_tables(tables, packet)
        expected = reference(kept, packet, CIDR)
        assert same(outcomes(walks), expected), (packet, outcomes(walks), expected)
        for walk in walks:
            if not walk.recorded:
                continue
            again = dataclasses.replace(packet, recent=dict.fromkeys(walk.recorded, 1))
            back = outcomes(simulate_tables(tables, again))
            assert same(back, {walk.outcome: 1.0}), (packet, walk, back)
    assert parsed.rules["filter"][filter_chain("GITOPS")][-1][:2] == ["-d", CIDR]


def declared_needed(parsed: Parsed) -> set[str]:
    """The chains some rule jumps to (those a render needs), whatever their kind."""
    return {str(opt(r, "-j")) for rules in parsed.rules["nat"].values() for r in rules} | set(
        parsed.rules["nat"]
    )


def _by_ipaddress(text: object) -> int | None:
    try:
        return int(ipaddress.IPv4Address(text))  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return None


@settings(max_examples=2000, deadline=None)
@given(
    text=st.one_of(
        st.text(alphabet="0123456789.x/ -+\n\x00a", max_size=18),
        st.lists(
            st.sampled_from(["0", "00", "01", "1", "10", "99", "255", "256", "0255", ""]), max_size=5
        ).map(".".join),
        st.text(max_size=10),
        st.integers(-1, 2**33),
    )
)
def test_address_number_takes_exactly_what_ipaddress_takes(text: object) -> None:
    """The quick reading of dotted quads (inet_pton) accepts and refuses as ipaddress does:
    leading zeros, short forms, spaces, other digits; ints are ipaddress' to read."""
    expected = _by_ipaddress(text)
    address_number.cache_clear()
    if expected is None:
        with pytest.raises(ValueError):
            address_number(text)  # type: ignore[arg-type]
    else:
        assert address_number(text) == expected  # type: ignore[arg-type]


def test_vetting_keeps_every_valid_rule_and_says_what_it_skipped() -> None:
    bad_vip = ServiceRule("default/bad-vip:http", "not-an-ip", 80, "TCP", (("192.0.2.2", 80),))
    bad_backend = ServiceRule(
        "default/mixed:http", "10.250.0.20", 80, "TCP", (("192.0.2.2", 8080), ("garbage;rm -rf", 80))
    )
    clash = ServiceRule("default/zz-late:http", WEB.vip, WEB.port, "TCP", (("192.0.2.9", 80),))
    kept, problems = vet([bad_vip, WEB, bad_backend, clash, DNS])
    assert sorted(r.service for r in kept) == sorted([WEB.service, DNS.service, "default/mixed:http"])
    assert next(r for r in kept if r.service == "default/mixed:http").backends == (
        ("192.0.2.2", 8080, False),
    )
    assert len(problems) == 3
    assert any("'default/bad-vip:http'" in p and "rule skipped" in p for p in problems)
    assert any("backend garbage;rm -rf:80 skipped" in p for p in problems)
    assert any(
        "both claim 10.250.0.10:80/TCP" in p and "'default/zz-late:http' skipped" in p for p in problems
    )
    render(kept, service_cidr=CIDR)  # what is kept always renders


def test_vetting_keeps_the_vip_of_a_rule_whose_node_port_is_taken() -> None:
    first = ServiceRule("default/a:http", "10.250.0.1", 80, "TCP", (("192.0.2.2", 80),), node_port=30080)
    second = ServiceRule("default/b:http", "10.250.0.2", 30080, "TCP", (("192.0.2.3", 80),), 30081, True)
    kept, problems = vet([second, first])
    assert [(r.service, r.node_port, r.load_balancer) for r in kept] == [
        ("default/a:http", 30080, False),
        ("default/b:http", 30081, False),
    ]
    assert problems == [
        "service rules 'default/a:http' and 'default/b:http' both claim port 30080/TCP on this node; "
        "'default/b:http' keeps its VIP without that LoadBalancer port"
    ]
    render(kept, service_cidr=CIDR)


def test_a_sync_deletes_only_per_service_chains_no_rule_needs() -> None:
    """Other chains of the prefix (the pod network's, any a later release adds) are not the
    proxy's to delete; a per-service chain of a service gone is."""
    existing = [
        "GITOPS-PODNET",
        "GITOPS-FUTURE",
        "GITOPS-SVC-0123456789ABCDEF",
        "GITOPS-SEP-0123456789ABCDEF",
    ]
    parsed = parse(render([WEB], service_cidr=CIDR, existing_chains=existing))
    assert sorted(parsed.deleted["nat"]) == ["GITOPS-SEP-0123456789ABCDEF", "GITOPS-SVC-0123456789ABCDEF"]
    assert "GITOPS-FUTURE" not in parsed.declared["nat"]
