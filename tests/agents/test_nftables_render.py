"""The nftables proxy's transactions, checked without touching the kernel.

Beside layout checks, the rendered table is run by hand (`tests.agents.nft_reference`) and
compared with the slow twin's plain statement of what should happen to a connection and
with what the iptables proxy's rules do with it, on the same random Services; every
incremental transaction, applied to the table it changes, gives what writing it all anew
gives; the netlink batch of a first write, read back, adds exactly the elements the nft
transaction adds; and an agent tick with unchanged Services costs the proxy nothing.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gitops.agents import iptables, nftables
from gitops.agents.agent import ServiceMemo, service_rules
from gitops.agents.iptables import Backend, ServiceRule, rule_order, vet
from gitops.agents.nftables import (
    HAIRPIN,
    NO_ENDPOINT_NODEPORTS,
    NO_ENDPOINT_SERVICES,
    SERVICE_IPS,
    SERVICE_NODEPORTS,
    Fragment,
    Usage,
    Vetter,
    affinity_set,
    changes,
    element_batch,
    endpoint_chain,
    fragment,
    layout,
    render,
    render_changes,
    render_full,
    rule_key,
    service_chain,
    table_block,
    table_name,
)
from gitops.codec import encode
from gitops.model import Endpoint, NodeName, PodId, ServiceEndpoints, ServicePort
from tests.agents import nft_reference
from tests.agents.nft_reference import Table, parse
from tests.agents.proxy_reference import NODE_ADDRESS, Outcome, Packet, outcomes, reference, same
from tests.agents.test_iptables_render import packets_for, rule_sets

CIDR = "10.250.0.0/16"
TABLE = "gitops-services"
CLIENT = "198.51.100.7"
WEB = ServiceRule("default/web:http", "10.250.0.10", 80, "TCP", (("192.0.2.2", 8080), ("192.0.2.3", 8080)))
DNS = ServiceRule("kube/dns:dns", "10.250.0.53", 53, "UDP", (("172.17.0.5", 53),))
EMPTY = ServiceRule("default/idle:80", "10.250.0.20", 80, "TCP", ())
NODE_PORT = ServiceRule(
    "default/np:http",
    "10.250.0.11",
    80,
    "TCP",
    (Backend("10.244.0.5", 8080, local=True), Backend("10.244.1.5", 8080)),
    node_port=30080,
)


def table_of(rules: list[ServiceRule]) -> Table:
    return parse(render(rules, service_cidr=CIDR), TABLE)


def connect(rules: list[ServiceRule], packet: Packet) -> dict[Outcome, float]:
    return outcomes(nft_reference.simulate(table_of(rules), packet))


def test_one_table_named_after_the_prefix() -> None:
    assert table_name("GITOPS") == "gitops-services"
    assert table_name("GOT1a2b") == "got1a2b-services"
    with pytest.raises(ValueError, match="chain prefix"):
        table_name("bad prefix")
    text = render([WEB], service_cidr=CIDR)
    assert {line.split()[2] for line in text.splitlines() if line.startswith(("add ", "delete "))} == {"ip"}
    assert {line.split()[3] for line in text.splitlines() if line.startswith(("add ", "delete "))} == {TABLE}


def test_the_frame_hooks_in_before_docker_and_rejects_the_whole_cidr() -> None:
    """Base chains one below the standard priorities (as the iptables proxy's jumps come
    first in the built-in chains); the filter chain ends with the CIDR reject."""
    text = render([], service_cidr="10.250.7.7/16")
    for chain, hook in (
        ("nat-prerouting", "type nat hook prerouting priority -101"),
        ("nat-output", "type nat hook output priority -101"),
        ("nat-postrouting", "type nat hook postrouting priority 99"),
        ("filter-input", "type filter hook input priority -1"),
        ("filter-forward", "type filter hook forward priority -1"),
        ("filter-output", "type filter hook output priority -1"),
    ):
        assert f"\tchain {chain} {{\n\t\t{hook} ; policy accept ;\n" in text
    table = parse(text, TABLE)
    assert table.chains["filter"][-1].startswith(
        "ip daddr 10.250.0.0/16 reject with icmp type port-unreachable"
    )
    assert same(
        outcomes(nft_reference.simulate(table, Packet(CLIENT, "10.250.3.4", "TCP", 80))),
        {Outcome("reject"): 1},
    )


def test_render_is_independent_of_rule_order() -> None:
    assert render([WEB, DNS, EMPTY, NODE_PORT], service_cidr=CIDR) == render(
        [NODE_PORT, EMPTY, DNS, WEB], service_cidr=CIDR
    )


def test_a_service_port_is_an_element_pointing_at_a_selector_shared_by_its_shape() -> None:
    """`vip-tcp-80-to8080-of2` (port 80, two backends on 8080) picks `vip-tcp-80-to8080-ep0`
    or `-ep1` at random; each DNATs to port 8080 of the address its map (keyed by VIP) holds
    for this port's backend 0 (1). Backends on other ports make another shape."""
    other = ServiceRule(
        "default/api:http", "10.250.0.12", 80, "TCP", (("192.0.2.7", 8080), ("192.0.2.8", 8080))
    )
    odd = ServiceRule(
        "default/odd:http", "10.250.0.13", 80, "TCP", (("192.0.2.9", 8080), ("192.0.2.9", 9090))
    )
    table = table_of([WEB, other, odd])
    shared = "goto vip-tcp-80-to8080-of2"
    mixed = f"goto vip-tcp-80-to{iptables.digest(8080, 9090)[:8].lower()}-of2"
    assert table.elements[SERVICE_IPS] == {
        "10.250.0.10 . tcp . 80": shared,
        "10.250.0.12 . tcp . 80": shared,
        "10.250.0.13 . tcp . 80": mixed,
    }
    assert table.chains["vip-tcp-80-to8080-of2"] == [
        "numgen random mod 2 vmap { 0 : goto vip-tcp-80-to8080-ep0, 1 : goto vip-tcp-80-to8080-ep1 }"
    ]
    assert table.chains["vip-tcp-80-to8080-ep1"] == [
        "meta l4proto tcp dnat ip to ip daddr map @vip-tcp-80-to8080-ep1 : 8080"
    ]
    assert table.elements["vip-tcp-80-to8080-ep0"] == {
        "10.250.0.10": "192.0.2.2",
        "10.250.0.12": "192.0.2.7",
        "10.250.0.13": "192.0.2.9",
    }
    assert table.elements["vip-tcp-80-to9090-ep1"] == {"10.250.0.13": "192.0.2.9"}
    assert table.declarations["vip-tcp-80-to8080-ep0"] == "type ipv4_addr : ipv4_addr ;"
    assert '10.250.0.10 . tcp . 80 comment "default/web:http" : goto vip-tcp-80-to8080-of2' in render(
        [WEB], service_cidr=CIDR
    )
    assert same(
        connect([odd], Packet(CLIENT, odd.vip, "TCP", 80)),
        {Outcome("dnat", ("192.0.2.9", 8080)): 0.5, Outcome("dnat", ("192.0.2.9", 9090)): 0.5},
    )
    spread = connect([WEB], Packet(CLIENT, WEB.vip, "TCP", 80))
    assert same(
        spread, {Outcome("dnat", ("192.0.2.2", 8080)): 0.5, Outcome("dnat", ("192.0.2.3", 8080)): 0.5}
    )


def test_udp_ports_have_udp_selectors() -> None:
    table = table_of([DNS])
    assert table.elements[SERVICE_IPS] == {"10.250.0.53 . udp . 53": "goto vip-udp-53-to53-of1"}
    assert table.chains["vip-udp-53-to53-of1"] == ["goto vip-udp-53-to53-ep0"]
    assert table.chains["vip-udp-53-to53-ep0"] == [
        "meta l4proto udp dnat ip to ip daddr map @vip-udp-53-to53-ep0 : 53"
    ]
    assert same(connect([DNS], Packet(CLIENT, DNS.vip, "UDP", 53)), {Outcome("dnat", ("172.17.0.5", 53)): 1})
    assert same(connect([DNS], Packet(CLIENT, DNS.vip, "TCP", 53)), {Outcome("reject"): 1})


def test_without_backends_the_port_is_refused_and_has_no_selector() -> None:
    idle = dataclasses.replace(EMPTY, node_port=30053)
    table = table_of([idle])
    assert table.elements[SERVICE_IPS] == {}
    assert table.elements[NO_ENDPOINT_SERVICES] == {"10.250.0.20 . tcp . 80": "goto reject-chain"}
    assert table.elements[NO_ENDPOINT_NODEPORTS] == {"tcp . 30053": "goto reject-chain"}
    assert table.chains["reject-chain"] == ["reject with icmp type port-unreachable"]
    assert not [c for c in table.chains if c.startswith("vip-")]
    assert same(connect([idle], Packet(CLIENT, idle.vip, "TCP", 80)), {Outcome("reject"): 1})
    on_node = Packet(CLIENT, NODE_ADDRESS, "TCP", 30053, dst_local=True)
    assert same(connect([idle], on_node), {Outcome("reject"): 1})


def test_node_ports_are_masqueraded_and_local_policies_use_local_backends() -> None:
    table = table_of([NODE_PORT])
    assert table.elements[SERVICE_NODEPORTS] == {"tcp . 30080": "goto ext-tcp-to8080-of2"}
    assert table.chains["ext-tcp-to8080-of2"] == [
        "jump mark-for-masquerade",
        "numgen random mod 2 vmap { 0 : goto node-tcp-to8080-ep0, 1 : goto node-tcp-to8080-ep1 }",
    ]
    assert table.chains["node-tcp-to8080-ep0"] == [
        "meta l4proto tcp dnat ip to tcp dport map @node-tcp-to8080-ep0 : 8080"
    ]
    assert table.elements["node-tcp-to8080-ep1"] == {"30080": "10.244.1.5"}
    both = {
        Outcome("dnat", ("10.244.0.5", 8080), True): 0.5,
        Outcome("dnat", ("10.244.1.5", 8080), True): 0.5,
    }
    assert same(connect([NODE_PORT], Packet(CLIENT, NODE_ADDRESS, "TCP", 30080, dst_local=True)), both)
    local = dataclasses.replace(NODE_PORT, external_local=True)
    table = table_of([local])
    assert table.elements[SERVICE_NODEPORTS] == {"tcp . 30080": "goto extlocal-tcp-to8080-of2-local1"}
    assert table.elements["node-local-tcp-to8080-ep0"] == {"30080": "10.244.0.5"}
    outside = Packet(CLIENT, NODE_ADDRESS, "TCP", 30080, dst_local=True)
    assert same(connect([local], outside), {Outcome("dnat", ("10.244.0.5", 8080)): 1})
    loopback = Packet("127.0.0.1", "127.0.0.1", "TCP", 30080, src_local=True, dst_local=True)
    assert same(connect([local], loopback), both)
    remote_only = dataclasses.replace(local, backends=(Backend("10.244.1.5", 8080),))
    assert table_of([remote_only]).elements[NO_ENDPOINT_NODEPORTS] == {"tcp . 30080": "drop"}
    assert same(connect([remote_only], outside), {Outcome("drop"): 1})


def test_a_load_balancer_answers_its_port_too() -> None:
    lb = ServiceRule("default/lb:http", "10.250.0.11", 8000, "TCP", (("10.244.1.6", 8080),), 30081, True)
    table = table_of([lb])
    assert table.elements[SERVICE_NODEPORTS] == {
        "tcp . 30081": "goto ext-tcp-to8080-of1",
        "tcp . 8000": "goto ext-tcp-to8080-of1",
    }
    assert table.elements["node-tcp-to8080-ep0"] == {"30081": "10.244.1.6", "8000": "10.244.1.6"}
    assert "LoadBalancer port" in render([lb], service_cidr=CIDR)


def test_internal_traffic_policy_local_keeps_only_local_backends_in_the_vip_maps() -> None:
    rule = dataclasses.replace(NODE_PORT, node_port=0, internal_local=True)
    table = table_of([rule])
    assert table.elements[SERVICE_IPS] == {"10.250.0.11 . tcp . 80": "goto vip-tcp-80-to8080-of1"}
    assert table.elements["vip-tcp-80-to8080-ep0"] == {"10.250.0.11": "10.244.0.5"}
    remote = dataclasses.replace(rule, backends=(Backend("10.244.1.5", 8080),))
    assert table_of([remote]).elements[NO_ENDPOINT_SERVICES] == {"10.250.0.11 . tcp . 80": "drop"}


def test_hairpin_masquerades_a_backend_reaching_itself() -> None:
    table = table_of([WEB, dataclasses.replace(DNS, backends=(("192.0.2.2", 53),))])
    # one element per address, whichever services have it
    assert table.elements[HAIRPIN] == {"192.0.2.2 . 192.0.2.2": "", "192.0.2.3 . 192.0.2.3": ""}
    assert HAIRPIN in table.chains["masquerading"][0]
    spread = connect([WEB], Packet("192.0.2.2", WEB.vip, "TCP", 80))
    assert same(
        spread,
        {
            Outcome("dnat", ("192.0.2.2", 8080), masquerade=True): 0.5,
            Outcome("dnat", ("192.0.2.3", 8080)): 0.5,
        },
    )


def test_client_ip_affinity_gets_chains_and_a_timed_set_per_endpoint() -> None:
    rule = dataclasses.replace(WEB, affinity_seconds=600)
    table = table_of([rule])
    svc = service_chain(rule)
    assert table.elements[SERVICE_IPS] == {"10.250.0.10 . tcp . 80": f"goto {svc}"}
    seps = [endpoint_chain(rule, b) for b in rule.backends]
    sets = [affinity_set(rule, b) for b in rule.backends]
    assert table.chains[svc] == [
        f"ip saddr @{sets[0]} goto {seps[0]}",
        f"ip saddr @{sets[1]} goto {seps[1]}",
        f"numgen random mod 2 vmap {{ 0 : goto {seps[0]}, 1 : goto {seps[1]} }}",
    ]
    assert "flags dynamic,timeout ; timeout 600s" in table.declarations[sets[0]]
    assert table.chains[seps[1]][0].startswith(
        f"meta l4proto tcp update @{sets[1]} {{ ip saddr }} dnat ip to 192.0.2.3:8080"
    )
    first = nft_reference.simulate(table, Packet(CLIENT, rule.vip, "TCP", 80))
    for walk in first:
        (remembered,) = walk.recorded
        again = nft_reference.simulate(table, Packet(CLIENT, rule.vip, "TCP", 80, recent={remembered: 599}))
        assert same(outcomes(again), {walk.outcome: 1.0})
        expired = nft_reference.simulate(table, Packet(CLIENT, rule.vip, "TCP", 80, recent={remembered: 600}))
        assert same(outcomes(expired), outcomes(first))
    # A new timeout is a new set (an element's timeout is the set's).
    assert affinity_set(dataclasses.replace(rule, affinity_seconds=60), rule.backends[0]) != sets[0]


def test_comments_cannot_break_out_of_their_quotes() -> None:
    rule = ServiceRule('x/y:"; drop }\n', "10.250.0.1", 80, "TCP", (("192.0.2.2", 80),))
    text = render([rule], service_cidr=CIDR)
    assert 'comment "x/y:__ drop __"' in text
    assert parse(text, TABLE).elements[SERVICE_IPS] == {"10.250.0.1 . tcp . 80": "goto vip-tcp-80-to80-of1"}


# --- incremental transactions ---------------------------------------------------------------


def fragments(rules: list[ServiceRule]) -> dict[tuple[str, str, int], Fragment]:
    kept, _ = vet(rules)
    return {rule_key(r): fragment(r) for r in kept}


def apply(table: Table, text: str, name: str = TABLE) -> None:
    """Carry out a `render_changes` transaction on `table`, refusing what nft would refuse."""
    for line in text.splitlines():
        words = line.split()
        verb, what, target = words[0], words[1], words[4] if len(words) > 4 else ""
        assert words[2:4] == ["ip", name], line
        if (verb, what) in (("add", "map"), ("add", "set")):
            body = line.split(" { ", 1)[1].rsplit(" }", 1)[0]
            assert target not in table.declarations, line
            table.declarations[target], table.elements[target] = body, {}
        elif (verb, what) == ("add", "chain"):
            assert target not in table.chains, line
            table.chains[target] = []
        elif (verb, what) == ("flush", "chain"):
            table.chains[target] = []
        elif (verb, what) == ("add", "rule"):
            table.chains[target].append(line.split(f" {target} ", 1)[1])
        elif what == "element":
            entries = line.split(" { ", 1)[1].rsplit(" }", 1)[0].split(", ")
            for entry in entries:
                key, _, value = entry.rpartition(" : ") if " : " in entry else (entry, "", "")
                key = nft_reference._COMMENT.sub("", key)
                if verb == "delete":
                    del table.elements[target][key]
                else:
                    assert key not in table.elements[target], line
                    table.elements[target][key] = value
        elif (verb, what) == ("delete", "chain"):
            assert table.chains.pop(target) == [], line
            assert not any(target in rule.split() for rules in table.chains.values() for rule in rules), line
            assert not any(f"goto {target}" == v for m in table.elements.values() for v in m.values()), line
        elif verb == "delete" and what in ("map", "set"):
            del table.declarations[target], table.elements[target]
            assert not any(f"@{target}" in rule for rules in table.chains.values() for rule in rules), line
        else:
            raise AssertionError(line)


def test_a_change_to_one_service_touches_only_its_elements() -> None:
    """One backend fewer: its elements change, and the shared chain of its new shape comes."""
    before = fragments([WEB, DNS, NODE_PORT])
    smaller = dataclasses.replace(WEB, backends=WEB.backends[:1])
    after = fragments([smaller, DNS, NODE_PORT])
    text = render_changes(TABLE, changes(before, after))
    table = parse(render_full(before.values(), service_cidr=CIDR, table=TABLE), TABLE)
    apply(table, text)  # in an order nft takes
    lines = set(text.splitlines())
    assert f"add chain ip {TABLE} vip-tcp-80-to8080-of1" in lines
    assert f"delete element ip {TABLE} vip-tcp-80-to8080-ep1 {{ 10.250.0.10 }}" in lines
    assert f"delete element ip {TABLE} {HAIRPIN} {{ 192.0.2.3 . 192.0.2.3 }}" in lines
    assert not [line for line in lines if line.startswith("delete ") and " element " not in line]  # np has 2
    assert not [line for line in lines if "53" in line or "30080" in line or "10.250.0.11" in line]
    # The last port with two backends loses one: the shape's chains and map go, whole.
    last = fragments([smaller, DNS, dataclasses.replace(NODE_PORT, backends=NODE_PORT.backends[:1])])
    text = render_changes(TABLE, changes(after, last))
    apply(table, text)
    assert (
        f"delete map ip {TABLE} vip-tcp-80-to8080-ep1" in text
        and "element ip gitops-services vip-tcp-80-to8080-ep1" not in text
    )
    assert f"delete chain ip {TABLE} vip-tcp-80-to8080-of2" in text
    assert not changes(after, fragments([DNS, NODE_PORT, smaller]))  # the same, in another order


def test_an_address_shared_by_two_services_stays_in_the_hairpin_set_while_one_has_it() -> None:
    api = ServiceRule("default/api:http", "10.250.0.12", 81, "TCP", (("192.0.2.2", 9000),))
    usage = Usage.of(fragments([WEB, api]).values())
    text = render_changes(TABLE, changes(fragments([WEB, api]), fragments([api]), usage))
    assert "192.0.2.3 . 192.0.2.3" in text and "192.0.2.2 . 192.0.2.2" not in text
    assert usage.hairpin == {"192.0.2.2": 1}


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(rule_sets, min_size=2, max_size=4))
def test_incremental_transactions_give_what_writing_it_all_anew_gives(steps: list[list[ServiceRule]]) -> None:
    """From any rule set to any other, the difference applied to the old table (in its
    order: nothing is used before it is declared or deleted while still used) is the table
    a full write of the new rule set makes."""
    old = fragments(steps[0])
    table = parse(render_full(old.values(), service_cidr=CIDR, table=TABLE), TABLE)
    usage = Usage.of(old.values())
    for rules in steps[1:]:
        new = fragments(rules)
        apply(table, render_changes(TABLE, changes(old, new, usage)))
        expected = parse(render_full(new.values(), service_cidr=CIDR, table=TABLE), TABLE)
        assert table.chains == expected.chains
        assert table.declarations == expected.declarations
        assert table.elements == expected.elements
        assert usage.hairpin == Usage.of(new.values()).hairpin
        old = new


# --- the same behaviour as the iptables proxy -----------------------------------------------


@settings(max_examples=300, deadline=None)
@given(rules=rule_sets)
def test_nftables_rules_do_what_the_slow_twin_and_the_iptables_rules_do(rules: list[ServiceRule]) -> None:
    """Every new connection (VIPs, node ports, LoadBalancer ports, loopback, hairpin, the
    Local policies, no backends, the rest of the CIDR) ends as the plain reference says and
    as the iptables proxy's rules for the same Services end it, with the same
    probabilities and masquerading; a client remembered for session affinity comes back."""
    kept, _ = vet(rules)
    table = parse(render(kept, service_cidr=CIDR), TABLE)
    iptables_text = iptables.render(kept, service_cidr=CIDR)
    from tests.agents.proxy_reference import parse_tables, simulate_tables

    iptables_tables = parse_tables(iptables_text)
    for packet in packets_for(kept):
        walks = nft_reference.simulate(table, packet)
        expected = reference(kept, packet, CIDR)
        assert same(outcomes(walks), expected), (packet, outcomes(walks), expected)
        assert same(outcomes(walks), outcomes(simulate_tables(iptables_tables, packet))), packet
        for walk in walks:
            if walk.recorded:
                again = dataclasses.replace(packet, recent=dict.fromkeys(walk.recorded, 1))
                back = outcomes(nft_reference.simulate(table, again))
                assert same(back, {walk.outcome: 1.0}), (packet, walk, back)


bad_rules = st.lists(
    st.builds(
        ServiceRule,
        service=st.sampled_from(["a/b:c", "a/d:e", "z/z:z"]),
        vip=st.sampled_from(["10.250.0.1", "10.250.0.2", "not-an-ip", "10.250.0.1; drop"]),
        port=st.sampled_from([80, 0, 30001, 70000]),
        protocol=st.sampled_from(["TCP", "UDP", "SCTP", "tcp"]),
        backends=st.lists(
            st.tuples(
                st.sampled_from(["192.0.2.2", "192.0.2.3", "bad", "192.0.2.300"]), st.sampled_from([80, 0])
            ),
            max_size=3,
        ).map(tuple),
        node_port=st.sampled_from([0, 30001, 30002, 65536]),
        load_balancer=st.booleans(),
        affinity_seconds=st.sampled_from([0, 60, 86401]),
    ),
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(rules=bad_rules)
def test_vetting_keeps_and_skips_what_the_iptables_proxy_does_with_the_same_words(
    rules: list[ServiceRule],
) -> None:
    vetter = Vetter()
    expected_kept, expected_problems = vet(rules)
    for _ in range(2):  # the second time from what it remembers
        kept, problems = vetter.vet(rules)
        assert problems == expected_problems
        assert sorted(kept, key=rule_order) == expected_kept


def test_table_block_finds_our_table_in_a_listing() -> None:
    listing = "table ip nat {\n\tchain x {\n\t}\n}\ntable ip gitops-services {\n\tchain services {\n\t}\n}\n"
    assert table_block(listing, TABLE) == "table ip gitops-services {\n\tchain services {\n\t}\n}\n"
    assert table_block(listing, "other-services") is None
    assert re.fullmatch(r"[a-z0-9_]+-services", TABLE)


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.one_of(rule_sets, bad_rules), st.lists(st.integers(0, 5), max_size=3)),
        min_size=1,
        max_size=5,
    )
)
def test_patching_the_last_rules_gives_what_vetting_them_all_gives(
    steps: list[tuple[list[ServiceRule], list[int]]],
) -> None:
    """A sync given the last rules with a few objects replaced vets only those; what it
    wants is what vetting every rule would give, and it takes that path only when nothing
    is skipped."""
    proxy = nftables.NftablesProxy(CIDR, prefix="GOTx", route_localnet=False)  # never runs nft here
    rules: list[ServiceRule] = []
    for fresh, replaced in steps:
        if rules:  # keep the last objects, but replace some by others
            rules = list(rules)
            for i, j in zip(replaced, range(len(fresh)), strict=False):
                if i < len(rules):
                    rules[i] = fresh[j]
        else:
            rules = fresh
        kept, problems = vet(rules)
        expected = {rule_key(r): fragment(r) for r in kept}
        patched = proxy._patched(rules)
        if patched is not None:
            assert not problems and patched == expected
        else:
            _, found, wanted = proxy._vetted(rules)
            assert found == problems and wanted == expected


# --- the first write's elements, as netlink messages of our own ------------------------------


def _attributes(data: bytes) -> Iterator[tuple[int, bytes]]:
    at = 0
    while at + 4 <= len(data):
        size, kind = struct.unpack_from("=HH", data, at)
        yield kind & 0x3FFF, data[at + 4 : at + size]
        at += (size + 3) & ~3


def _field(name: str, data: bytes) -> str:
    if name == "ipv4_addr":
        return str(ipaddress.IPv4Address(data[:4]))
    if name == "inet_proto":
        return {6: "tcp", 17: "udp"}[data[0]]
    assert name == "inet_service", name
    return str(int.from_bytes(data[:2], "big"))


def batch_elements(data: bytes, maps: dict[str, str]) -> dict[str, list[str]]:
    """Every element a batch adds, map by map, as `add element` writes it; checks that the
    batch is one transaction of element messages for one table."""
    out: dict[str, list[str]] = {}
    kinds, at = [], 0
    while at < len(data):
        size, kind = struct.unpack_from("=IH", data, at)
        kinds.append(kind)
        attrs = dict(_attributes(data[at + 20 : at + size]))
        at += size
        if kind != (10 << 8) | 12:  # NFT_MSG_NEWSETELEM
            continue
        assert attrs[1] == f"{TABLE}\0".encode()
        name = attrs[2].rstrip(b"\0").decode()
        declared = maps[name].split(";")[0].removeprefix("type ").strip()
        key_types, _, value_type = declared.partition(" : ")
        fields = key_types.split(" . ")
        for _, element in _attributes(attrs[3]):
            parts = dict(_attributes(element))
            key = dict(_attributes(parts[1]))[1]
            width = 4 if len(fields) > 1 else len(key)
            text = " . ".join(_field(f, key[i * width : (i + 1) * width]) for i, f in enumerate(fields))
            assert len(key) == width * len(fields)
            if 6 in parts:  # libnftnl's comment: type 0, length, text, NUL
                assert parts[6][0] == 0 and parts[6][1] == len(parts[6]) - 2 and parts[6][-1] == 0
                text += f' comment "{parts[6][2:-1].decode()}"'
            if value_type:
                value = dict(_attributes(parts[2]))
                if value_type == "verdict":
                    verdict = dict(_attributes(value[2]))
                    code = struct.unpack("!i", verdict[1])[0]
                    word = {0: "drop", -3: "jump", -4: "goto"}[code]
                    chain = verdict.get(2, b"").rstrip(b"\0").decode()
                    text += f" : {word} {chain}".rstrip()
                else:
                    text += f" : {_field(value_type, value[1])}"
            out.setdefault(name, []).append(text)
    assert kinds[0] == 0x10 and kinds[-1] == 0x11 and 0x10 not in kinds[1:-1]  # one batch
    return out


@settings(max_examples=150, deadline=None)
@given(rules=rule_sets)
def test_the_netlink_batch_adds_exactly_the_elements_of_the_nft_transaction(rules: list[ServiceRule]) -> None:
    """Read back, the first write's netlink batch holds every element `render_full` adds,
    with its key, value and comment, in the maps declared for them, and nothing else."""
    items = list(fragments(rules).values())
    maps = layout(items, CIDR).maps
    found = batch_elements(element_batch(TABLE, maps, items).data, maps)
    expected: dict[str, list[str]] = {}
    for line in render_full(items, service_cidr=CIDR, table=TABLE).splitlines():
        if line.startswith("add element "):
            name, entries = line.split()[4], line.split(" { ", 1)[1].rsplit(" }", 1)[0]
            expected[name] = entries.split(", ")
    assert {name: sorted(e) for name, e in found.items()} == {name: sorted(e) for name, e in expected.items()}


def test_netlink_elements_are_encoded_as_nft_encodes_them() -> None:
    """Byte for byte what `nft --debug=mnl add element ...` (nftables 1.0.6) sends."""
    maps = {
        SERVICE_IPS: "type ipv4_addr . inet_proto . inet_service : verdict ;",
        "v": nftables.ENDPOINT_MAP,
        "b": nftables.NODE_ENDPOINT_MAP,
        HAIRPIN: "type ipv4_addr . ipv4_addr ;",
    }
    item = Fragment(
        elements=((SERVICE_IPS, (nftables.Element("10.1.2.5 . tcp . 81", "goto c", "x"),)),),
        picks=(
            nftables.Picks(("v",), "10.249.0.10", ("192.0.2.200",)),
            nftables.Picks(("b",), "30080", ("10.0.0.9",)),
        ),
        hairpin=("1.2.3.4",),
    )
    data = element_batch(TABLE, maps, [item]).data
    verdict_element = bytes.fromhex(
        "38000180 14000180 10000100 0a010205 06000000 00510000"
        " 18000280 14000280 08000100 fffffffc 06000200 63000000 08000600 00027800"
    )
    vip_element = bytes.fromhex("1c000180 0c000180 08000100 0af9000a 0c000280 08000100 c00002c8")
    node_element = bytes.fromhex("1c000180 0c000180 06000100 75800000 0c000280 08000100 0a000009")
    hairpin_element = bytes.fromhex("14000180 10000180 0c000100 01020304 01020304")
    for element in (verdict_element, vip_element, node_element, hairpin_element):
        assert element in data


def test_an_agent_keeps_the_rules_of_unchanged_services_and_the_proxy_sends_nothing_for_them() -> None:
    """A tick whose reply carries the same Services (new but equal JSON, as the server
    sends it) hands the proxy the very rule objects of the last tick, and no transaction is
    sent; one endpoint fewer makes new rules for that Service only, and one transaction
    that names nothing else."""
    node, cluster = NodeName("node0"), "10.244.0.0/16"

    def service(i: int, pods: int) -> ServiceEndpoints:
        port = ServicePort(80, 8080, "TCP", "http")
        endpoints = tuple(
            Endpoint(PodId(f"default/p{i}-{n}"), NodeName(f"node{n}"), f"10.244.{n}.{i}", 8080, "", 0)
            for n in range(pods)
        )
        return ServiceEndpoints("default", f"s{i}", f"10.250.0.{i}", (port,), ((port, endpoints),))

    def reply(*services: ServiceEndpoints) -> list[Any]:
        encoded: list[Any] = json.loads(json.dumps([encode(s) for s in services]))
        return encoded

    memo = ServiceMemo(node)
    first_services, first = memo.update(reply(service(1, 2), service(2, 2), service(3, 2)), cluster)
    assert first == service_rules(first_services, node, cluster)
    services, again = memo.update(reply(service(1, 2), service(2, 2), service(3, 2)), cluster)
    assert all(a is b for a, b in zip(first, again, strict=True))
    assert all(a is b for a, b in zip(first_services, services, strict=True))
    services, fewer = memo.update(reply(service(1, 2), service(2, 1), service(3, 2)), cluster)
    assert [a is b for a, b in zip(again, fewer, strict=True)] == [True, False, True]
    assert fewer == service_rules([service(1, 2), service(2, 1), service(3, 2)], node, cluster)
    assert services[1] == service(2, 1)
    _, elsewhere = memo.update(reply(service(1, 2), service(2, 1), service(3, 2)), "10.245.0.0/16")
    assert not any(a is b for a, b in zip(fewer, elsewhere, strict=True))  # built for the new range

    sent: list[str] = []

    class Recorder:
        description = "recorder"

        def run(self, commands: str) -> str:
            sent.append(commands)
            return ""

    proxy = nftables.NftablesProxy(CIDR, prefix="GOTx", route_localnet=False, recheck_seconds=1e9)
    proxy._nft = Recorder()
    proxy.clock = lambda: 0.0
    assert proxy.sync(first) is True
    sent.clear()
    assert proxy.sync(again) is False
    assert sent == []
    assert proxy.sync(fewer) is True
    [transaction] = [text for text in sent if not text.startswith("list ")]
    assert (
        "10.250.0.2" in transaction and "10.250.0.1 " not in transaction and "10.250.0.3" not in transaction
    )
