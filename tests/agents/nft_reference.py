"""A reader of the nftables proxy's transaction, run by hand on one new connection.

`simulate` does for `gitops.agents.nftables.render_full` text what
`tests.agents.proxy_reference.simulate` does for the iptables proxy's: it reads the table
(its chains, map and set declarations, and elements) and walks the first packet of a
connection through it as the kernel would (nat prerouting or output into `services`, the
filter chain on the address after DNAT, then `masquerading`), branching on every
`numgen random` verdict map. It knows only the statements the renderer may write and fails
on anything else, so that a rule it does not understand can never pass unread. Its results
are `proxy_reference.Outcome`s, so the nftables rules can be compared with the slow twin
(`proxy_reference.reference`) and with the iptables proxy's rules on the same Services.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from tests.agents.proxy_reference import Outcome, Packet, Walk

MASQ = 0x4000


@dataclass
class Table:
    """Our table as the transaction leaves it."""

    chains: dict[str, list[str]] = field(default_factory=dict)
    declarations: dict[str, str] = field(default_factory=dict)  # map or set -> its body
    elements: dict[str, dict[str, str]] = field(default_factory=dict)  # -> key (no comment) -> value


_DECLARATION = re.compile(r"^\t(map|set) (\S+) \{ (.*) \}$")
_ELEMENTS = re.compile(r"^add element ip (\S+) (\S+) \{ (.*) \}$")
_COMMENT = re.compile(r' comment "[^"]*"')


def parse(text: str, table: str) -> Table:
    """The table a `render_full` transaction (re)creates."""
    lines = text.splitlines()
    assert lines[:3] == [f"add table ip {table}", f"delete table ip {table}", f"table ip {table} {{"], lines[
        :3
    ]
    out = Table()
    chain = ""
    i = 3
    while lines[i] != "}":
        line = lines[i]
        i += 1
        if declared := _DECLARATION.match(line):
            out.declarations[declared[2]] = declared[3]
            out.elements[declared[2]] = {}
        elif line.startswith("\tchain ") and line.endswith(" {"):
            chain = line.split()[1]
            out.chains[chain] = []
        elif line.startswith("\t\t"):
            rule = line.strip()
            if not rule.startswith("type "):  # the base chain's hook
                out.chains[chain].append(rule)
        else:
            assert line == "\t}", line
    for line in lines[i + 1 :]:
        added = _ELEMENTS.match(line)
        assert added and added[1] == table, line
        for entry in added[3].split(", "):
            key, _, value = entry.rpartition(" : ") if " : " in entry else (entry, "", "")
            out.elements[added[2]][_COMMENT.sub("", key)] = value
    return out


@dataclass(frozen=True)
class _State:
    dnat: tuple[str, int] | None = None
    mark: int = 0
    recorded: frozenset[str] = frozenset()  # affinity sets this connection's client was added to


@dataclass(frozen=True)
class _Where:
    table: Table
    packet: Packet
    dst: str  # after DNAT
    dst_local: bool


@functools.cache
def _in(address: str, cidr: str) -> bool:
    return ipaddress.IPv4Address(address) in ipaddress.IPv4Network(cidr, strict=False)


_CLAUSE = re.compile(
    r"(?P<vip_vmap>ip daddr \. meta l4proto \. th dport vmap @(?P<vm>\S+))"
    r"|(?P<port_vmap>meta l4proto \. th dport vmap @(?P<pm>\S+))"
    r"|(?P<fib>fib (?P<fib_of>saddr|daddr) type local)"
    r"|(?P<proto>meta l4proto (?P<l4>tcp|udp))"
    r"|(?P<dnat_map>dnat ip to (?P<by>ip daddr|tcp dport|udp dport) map @(?P<dm>\S+) : (?P<dm_port>\d+))"
    r"|(?P<dnat_to>dnat ip to (?P<to_ip>[\d.]+):(?P<to_port>\d+))"
    r"|(?P<numgen>numgen random mod (?P<n>\d+) vmap \{ (?P<choices>[^}]*) \})"
    r"|(?P<go>(?P<how>goto|jump) (?P<target>\S+))"
    r"|(?P<sticky>ip saddr @(?P<ss>aff-\S+))"
    r"|(?P<update>update @(?P<us>\S+) \{ ip saddr \})"
    r"|(?P<mark_or>meta mark set meta mark \| 0x4000)"
    r"|(?P<mark_xor>meta mark set meta mark \^ 0x4000)"
    r"|(?P<unmarked>meta mark & 0x4000 == 0)"
    r"|(?P<hairpin>ip saddr \. ip daddr @hairpin)"
    r"|(?P<ct_dnat>ct status (?P<ct_not>! )?dnat)"
    r"|(?P<ct_new>ct state != \{ established, related \})"
    r"|(?P<daddr>ip daddr (?P<d_net>\d[\d./]*))"
    r"|(?P<saddr_not>ip saddr != (?P<s_net>\d[\d./]*))"
    r"|(?P<verdict>return|drop|masquerade|reject with icmp type port-unreachable)"
)


def _timeout(table: Table, name: str) -> int:
    found = re.search(r"timeout (\d+)s", table.declarations[name])
    assert found and "flags dynamic,timeout" in table.declarations[name], table.declarations[name]
    return int(found[1])


def _verdict_of(value: str) -> tuple[str, str]:
    """A verdict map's value: ("goto", chain) or ("drop", "")."""
    if value == "drop":
        return ("drop", "")
    how, chain = value.split()
    assert how == "goto", value
    return ("goto", chain)


Step = tuple[float, _State, tuple[str, str]]  # chance, state, (action, argument)


def _rule(where: _Where, rule: str, state: _State) -> Iterator[Step]:
    """The ways `rule` can end: ("next", "") when it does not match (or ends without a
    verdict), ("goto"|"jump", chain), ("dnat", ""), ("drop"|"reject"|"return"|"masquerade", "")."""
    packet, table = where.packet, where.table
    text = _COMMENT.sub("", rule)
    position = 0
    while position < len(text):
        clause = _CLAUSE.match(text, position)
        assert clause, f"the simulator does not know {text[position:]!r} in {rule!r}"
        position = clause.end() + 1
        kind = clause.lastgroup
        if kind == "vip_vmap":
            value = table.elements[clause["vm"]].get(
                f"{where.dst} . {packet.protocol.lower()} . {packet.dport}"
            )
            if value is None:
                continue
            yield 1.0, state, _verdict_of(value)
            return
        if kind == "port_vmap":
            value = table.elements[clause["pm"]].get(f"{packet.protocol.lower()} . {packet.dport}")
            if value is None:
                continue
            yield 1.0, state, _verdict_of(value)
            return
        if kind == "fib":
            if not (packet.src_local if clause["fib_of"] == "saddr" else where.dst_local):
                yield 1.0, state, ("next", "")
                return
        elif kind == "proto":
            if clause["l4"] != packet.protocol.lower():
                yield 1.0, state, ("next", "")
                return
        elif kind == "dnat_map":
            key = where.dst if clause["by"] == "ip daddr" else str(packet.dport)
            assert clause["by"] == "ip daddr" or clause["by"].startswith(packet.protocol.lower())
            value = table.elements[clause["dm"]].get(key)
            if value is None:
                yield 1.0, state, ("next", "")
                return
            yield 1.0, replace(state, dnat=(value, int(clause["dm_port"]))), ("dnat", "")
            return
        elif kind == "dnat_to":
            yield 1.0, replace(state, dnat=(clause["to_ip"], int(clause["to_port"]))), ("dnat", "")
            return
        elif kind == "numgen":
            choices = dict(c.split(" : ") for c in clause["choices"].split(", "))
            n = int(clause["n"])
            assert sorted(int(k) for k in choices) == list(range(n)), choices
            for value in choices.values():
                yield 1 / n, state, _verdict_of(value)
            return
        elif kind == "go":
            yield 1.0, state, (clause["how"], clause["target"])
            return
        elif kind == "sticky":
            age = packet.recent.get(clause["ss"])
            if age is None or age >= _timeout(table, clause["ss"]):
                yield 1.0, state, ("next", "")
                return
        elif kind == "update":
            assert clause["us"] in table.declarations, clause["us"]
            state = replace(state, recorded=state.recorded | {clause["us"]})
        elif kind == "mark_or":
            state = replace(state, mark=state.mark | MASQ)
        elif kind == "mark_xor":
            state = replace(state, mark=state.mark ^ MASQ)
        elif kind == "unmarked":
            if state.mark & MASQ:
                yield 1.0, state, ("next", "")
                return
        elif kind == "hairpin":
            if f"{packet.src} . {where.dst}" not in table.elements["hairpin"]:
                yield 1.0, state, ("next", "")
                return
        elif kind == "ct_dnat":
            if (state.dnat is not None) == bool(clause["ct_not"]):
                yield 1.0, state, ("next", "")
                return
        elif kind == "ct_new":
            pass  # the first packet of a connection: neither established nor related
        elif kind == "daddr":
            if not _in(where.dst, clause["d_net"]):
                yield 1.0, state, ("next", "")
                return
        elif kind == "saddr_not":
            if _in(packet.src, clause["s_net"]):
                yield 1.0, state, ("next", "")
                return
        else:
            assert kind == "verdict", kind
            word = clause["verdict"].split()[0]
            assert position >= len(text), f"a statement after {word!r} in {rule!r}"
            yield 1.0, state, (word, "")
            return
    yield 1.0, state, ("next", "")


def _walk(where: _Where, chain: str, state: _State) -> Iterator[tuple[float, _State, str]]:
    """(chance, state, how it ended) of every way through `chain`: "" at its end (or a
    `return`), else "dnat", "drop", "reject" or "masquerade"."""
    branches = [(1.0, state)]
    for rule in where.table.chains[chain]:
        following: list[tuple[float, _State]] = []
        for chance, current in branches:
            for p, after, (action, target) in _rule(where, rule, current):
                if action == "next":
                    following.append((chance * p, after))
                elif action in ("goto", "jump"):
                    for q, end, how in _walk(where, target, after):
                        if how:
                            yield chance * p * q, end, how
                        elif action == "jump":
                            following.append((chance * p * q, end))
                        else:  # the end of a chain gone to ends this one
                            yield chance * p * q, end, ""
                elif action == "return":
                    yield chance * p, after, ""
                else:
                    yield chance * p, after, action
        branches = [b for b in following if b[0] > 0]
    for chance, current in branches:
        yield chance, current, ""


def simulate(table: Table, packet: Packet) -> dict[Walk, float]:
    """What the table does with `packet`: every outcome with its probability, and the
    affinity sets its client was added to."""
    for base, target in (
        ("nat-prerouting", "services"),
        ("nat-output", "services"),
        ("nat-postrouting", "masquerading"),
        ("filter-input", "filter"),
        ("filter-forward", "filter"),
        ("filter-output", "filter"),
    ):
        assert table.chains[base] == [f"jump {target}"], (base, table.chains[base])
    out: dict[Walk, float] = defaultdict(float)
    for chance, state, how in _walk(
        _Where(table, packet, packet.dst, packet.dst_local), "services", _State()
    ):
        assert how in ("", "dnat"), how
        if state.dnat is not None:
            after = _Where(table, packet, state.dnat[0], False)  # backends are not this node's addresses here
        else:
            after = _Where(table, packet, packet.dst, packet.dst_local)
        ((p, _, filtered),) = _walk(after, "filter", state)
        assert p == 1.0
        if filtered:
            assert filtered in ("reject", "drop"), filtered
            out[Walk(Outcome(filtered), frozenset())] += chance
            continue
        if state.dnat is None:
            assert not state.mark, "a connection marked for masquerading was never DNAT'd"
            out[Walk(Outcome("accept"), frozenset())] += chance
            continue
        ((p, left, posted),) = _walk(after, "masquerading", state)
        assert posted in ("masquerade", ""), posted
        assert not left.mark & MASQ, "the mark outlives postrouting"
        outcome = Outcome("dnat", state.dnat, posted == "masquerade", bool(state.recorded))
        out[Walk(outcome, state.recorded)] += chance * p
    return dict(out)
