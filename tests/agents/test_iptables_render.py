"""`render`: the iptables-restore text for service VIPs, checked without touching the kernel."""

from __future__ import annotations

import ipaddress
import re
import shlex
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gitops.agents.iptables import (
    ServiceRule,
    check_prefix,
    filter_chain,
    probabilities,
    render,
    service_chain,
    services_chain,
    vet,
)

CIDR = "10.250.0.0/16"
WEB = ServiceRule("default/web:http", "10.250.0.10", 80, "TCP", (("192.0.2.2", 8080), ("192.0.2.3", 8080)))
DNS = ServiceRule("kube/dns:dns", "10.250.0.53", 53, "UDP", (("172.17.0.5", 53),))
EMPTY = ServiceRule("default/idle:80", "10.250.0.20", 80, "TCP", ())


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


def test_chain_names_are_deterministic_short_and_prefixed() -> None:
    """The per-service chain name depends only on (service, protocol, vip, port), fits 28 chars."""
    name = service_chain(WEB, "GITOPS")
    assert re.fullmatch(r"GITOPS-SVC-[A-Z2-7]{16}", name)
    assert len(name) <= 28
    assert service_chain(WEB, "GITOPS") == name
    assert service_chain(ServiceRule(WEB.service, WEB.vip, WEB.port, "TCP", ()), "GITOPS") == name
    assert service_chain(ServiceRule(WEB.service, WEB.vip, 81, "TCP", ()), "GITOPS") != name
    assert service_chain(ServiceRule(WEB.service, WEB.vip, 80, "UDP", ()), "GITOPS") != name


def test_render_is_independent_of_rule_order() -> None:
    assert render([WEB, DNS, EMPTY], service_cidr=CIDR) == render([EMPTY, DNS, WEB], service_cidr=CIDR)


def test_backends_are_spread_with_probabilities_one_over_remaining() -> None:
    """Backend i of n is taken with probability 1/(n-i); the last one unconditionally."""
    assert probabilities(1) == [None]
    assert probabilities(4) == ["0.2500000000", "0.3333333333", "0.5000000000", None]
    backends = tuple(("192.0.2.2", 9000 + i) for i in range(4))
    text = render([ServiceRule("a/b:c", "10.250.1.1", 80, "TCP", backends)], service_cidr=CIDR)
    chain = parse(text).rules["nat"][
        service_chain(ServiceRule("a/b:c", "10.250.1.1", 80, "TCP", ()), "GITOPS")
    ]
    assert [opt(r, "--probability") for r in chain] == ["0.2500000000", "0.3333333333", "0.5000000000", None]
    assert [opt(r, "--to-destination") for r in chain] == [f"192.0.2.2:{9000 + i}" for i in range(4)]


def test_service_port_jumps_from_the_services_chain() -> None:
    parsed = parse(render([WEB], service_cidr=CIDR))
    [jump] = parsed.rules["nat"][services_chain("GITOPS")]
    assert opt(jump, "-d") == "10.250.0.10/32"
    assert (opt(jump, "-p"), opt(jump, "--dport")) == ("tcp", "80")
    assert opt(jump, "--comment") == "default/web:http"
    assert opt(jump, "-j") == service_chain(WEB, "GITOPS")


def test_udp_service_uses_udp_matches() -> None:
    parsed = parse(render([DNS], service_cidr=CIDR))
    [jump] = parsed.rules["nat"][services_chain("GITOPS")]
    assert (opt(jump, "-p"), opt(jump, "-m"), opt(jump, "--dport")) == ("udp", "udp", "53")
    [dnat] = parsed.rules["nat"][service_chain(DNS, "GITOPS")]
    assert (opt(dnat, "-p"), opt(dnat, "--to-destination")) == ("udp", "172.17.0.5:53")


def test_service_without_backends_is_rejected_and_has_no_chain() -> None:
    parsed = parse(render([EMPTY], service_cidr=CIDR))
    assert parsed.declared["nat"] == [services_chain("GITOPS")]
    assert services_chain("GITOPS") not in parsed.rules["nat"]
    reject_vip, reject_cidr = parsed.rules["filter"][filter_chain("GITOPS")]
    assert (opt(reject_vip, "-d"), opt(reject_vip, "--dport"), opt(reject_vip, "-j")) == (
        "10.250.0.20/32",
        "80",
        "REJECT",
    )
    assert opt(reject_vip, "--comment") == "default/idle:80 has no endpoints"
    assert (opt(reject_cidr, "-d"), opt(reject_cidr, "-j")) == (CIDR, "REJECT")


def test_whole_cidr_is_rejected_last_even_without_services() -> None:
    parsed = parse(render([], service_cidr="10.250.7.7/16"))
    [reject] = parsed.rules["filter"][filter_chain("GITOPS")]
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
    assert len(chains) == 2
    assert set(parsed.declared["nat"]) == {services_chain("GITOPS"), *chains}
    assert [opt(r, "--dport") for r in parsed.rules["nat"][services_chain("GITOPS")]] == ["80", "443"]


def test_stale_chains_are_flushed_then_deleted() -> None:
    """A chain of ours that is no longer needed is declared (flushed) and deleted with -X."""
    stale = "GITOPS-SVC-AAAAAAAAAAAAAAAA"
    existing = [stale, service_chain(WEB, "GITOPS"), services_chain("GITOPS"), filter_chain("GITOPS")]
    parsed = parse(render([WEB], service_cidr=CIDR, existing_chains=existing))
    assert stale in parsed.declared["nat"]
    assert parsed.deleted == {"nat": [stale], "filter": []}


def test_only_prefixed_chains_are_touched() -> None:
    """Chains of Docker, of someone else, or of a longer prefix are never declared or deleted."""
    existing = ["DOCKER", "KUBE-SVC-XYZ", "GITOPS2-SVC-AAAAAAAAAAAAAAAA", "GITOPSX", "OTHER-GITOPS-SVC-A"]
    text = render([WEB, EMPTY], service_cidr=CIDR, existing_chains=existing)
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


def test_comments_cannot_break_out_of_their_quotes() -> None:
    rule = ServiceRule('x/y:"; -j ACCEPT\n', "10.250.0.1", 80, "TCP", (("192.0.2.2", 80),))
    text = render([rule], service_cidr=CIDR)
    assert "\n-j" not in text and "ACCEPT\n" not in text
    [jump] = parse(text).rules["nat"][services_chain("GITOPS")]
    assert opt(jump, "--comment") == "x/y:__ -j ACCEPT_"


ips = st.integers(min_value=0, max_value=2**16 - 1).map(lambda n: str(ipaddress.IPv4Address(0x0AFA0000 + n)))
backend_ips = st.integers(min_value=1, max_value=2**24).map(
    lambda n: str(ipaddress.IPv4Address(0xC0000000 + n))
)
ports = st.integers(min_value=1, max_value=65535)
rule_sets = st.lists(
    st.builds(
        ServiceRule,
        service=st.from_regex(r"[a-z]{1,8}/[a-z]{1,8}:[a-z0-9]{1,5}", fullmatch=True),
        vip=ips,
        port=ports,
        protocol=st.sampled_from(["TCP", "UDP"]),
        backends=st.lists(st.tuples(backend_ips, ports), max_size=6).map(tuple),
    ),
    max_size=12,
    unique_by=lambda r: (r.vip, r.port, r.protocol),
)


@settings(max_examples=200, deadline=None)
@given(rules=rule_sets, stale=st.lists(st.from_regex(r"GITOPS-SVC-[A-Z]{16}", fullmatch=True), max_size=3))
def test_rendered_chains_dnat_each_vip_to_exactly_its_backends(
    rules: list[ServiceRule], stale: list[str]
) -> None:
    """Read back, every VIP:port leads to its backends in order, uniformly; the rest is rejected."""
    parsed = parse(render(rules, service_cidr=CIDR, existing_chains=stale))
    nat, filt = parsed.rules["nat"], parsed.rules["filter"]
    declared = set(parsed.declared["nat"])
    assert all(len(c) <= 28 for c in declared | set(parsed.declared["filter"]))
    jumps = {
        (opt(r, "-d"), opt(r, "--dport"), opt(r, "-p")): opt(r, "-j")
        for r in nat.get(services_chain("GITOPS"), [])
    }
    rejects = {(opt(r, "-d"), opt(r, "--dport"), opt(r, "-p")) for r in filt[filter_chain("GITOPS")]}
    for rule in rules:
        key = (f"{rule.vip}/32", str(rule.port), rule.protocol.lower())
        if not rule.backends:
            assert key not in jumps and key in rejects
            continue
        chain = jumps[key]
        assert chain in declared and chain not in parsed.deleted["nat"]
        targets = [opt(r, "--to-destination") for r in nat[chain]]
        assert targets == [f"{ip}:{port}" for ip, port in rule.backends]
        remaining, chances = 1.0, []
        for r in nat[chain]:
            p = float(opt(r, "--probability") or 1.0)
            chances.append(remaining * p)
            remaining *= 1 - p
        assert chances == pytest.approx([1 / len(rule.backends)] * len(rule.backends), rel=1e-6)
    assert len(jumps) == sum(1 for r in rules if r.backends)
    assert set(parsed.deleted["nat"]) == set(stale) - declared_needed(rules)
    assert filt[filter_chain("GITOPS")][-1][:2] == ["-d", CIDR]


def declared_needed(rules: list[ServiceRule]) -> set[str]:
    return {service_chain(r, "GITOPS") for r in rules if r.backends}


def test_vetting_keeps_every_valid_rule_and_says_what_it_skipped() -> None:
    bad_vip = ServiceRule("default/bad-vip:http", "not-an-ip", 80, "TCP", (("192.0.2.2", 80),))
    bad_backend = ServiceRule(
        "default/mixed:http", "10.250.0.20", 80, "TCP", (("192.0.2.2", 8080), ("garbage;rm -rf", 80))
    )
    clash = ServiceRule("default/zz-late:http", WEB.vip, WEB.port, "TCP", (("192.0.2.9", 80),))
    kept, problems = vet([bad_vip, WEB, bad_backend, clash, DNS])
    assert sorted(r.service for r in kept) == sorted([WEB.service, DNS.service, "default/mixed:http"])
    assert next(r for r in kept if r.service == "default/mixed:http").backends == (("192.0.2.2", 8080),)
    assert len(problems) == 3
    assert any("'default/bad-vip:http'" in p and "rule skipped" in p for p in problems)
    assert any("backend garbage;rm -rf:80 skipped" in p for p in problems)
    assert any(
        "both claim 10.250.0.10:80/TCP" in p and "'default/zz-late:http' skipped" in p for p in problems
    )
    render(kept, service_cidr=CIDR)  # what is kept always renders
