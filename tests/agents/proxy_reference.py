"""The slow, obviously-correct twin of the service proxy, and a reader of its iptables text.

`reference` says, in plain Python and from the specification only (it shares no helper
with `gitops.agents.iptables`), what should become of one new connection on a node given
the service rules: DNAT'd to which backends with which probabilities, masqueraded or not,
remembered for session affinity or not; or rejected, dropped, or let through untouched.

`simulate` finds out what the rendered `iptables-restore` text actually does with that
connection: it walks our nat chains as the kernel would (the first packet of a connection:
nat OUTPUT or PREROUTING into `{prefix}-SERVICES`, then the filter chain on the address
after DNAT, then `{prefix}-POSTROUTING`), branching on every `-m statistic` rule. It knows
only the matches and targets `render` may use and fails on anything else, so that a rule
it does not understand can never pass unread. Property tests check that both agree.
"""

from __future__ import annotations

import functools
import ipaddress
import shlex
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from gitops.agents.iptables import Backend, ServiceRule

NODE_ADDRESS = "192.0.2.1"  # this node's address in the tests
LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")


@dataclass(frozen=True)
class Packet:
    """The first packet of a new connection as the node sees it."""

    src: str
    dst: str
    protocol: str  # "TCP" or "UDP"
    dport: int
    src_local: bool = False  # the source is an address of this node (the host connects)
    dst_local: bool = False  # the destination is an address of this node
    recent: Mapping[str, int] = field(default_factory=dict)  # `recent` lists holding src: name -> age (s)


class Outcome(NamedTuple):
    verdict: str  # "dnat", "reject", "drop" or "accept" (untouched)
    to: tuple[str, int] | None = None
    masquerade: bool = False
    remembered: bool = False  # the DNAT records the client for session affinity


Distribution = dict[Outcome, float]


def _spread(rule: ServiceRule, backends: Sequence[Backend], masquerade: bool, src: str) -> Distribution:
    """Each backend equally likely; masqueraded when asked, or when the client is the backend."""
    out: Distribution = defaultdict(float)
    for ip, port, _ in backends:
        out[Outcome("dnat", (ip, port), masquerade or src == ip, bool(rule.affinity_seconds))] += 1 / len(
            backends
        )
    return dict(out)


def reference(rules: Sequence[ServiceRule], packet: Packet, service_cidr: str) -> Distribution:
    """What should happen to `packet` (whose client sticks to no backend yet) under `rules`,
    which must be valid and claim each VIP:port and each port on the node once."""
    for rule in rules:
        if rule.protocol.upper() != packet.protocol.upper():
            continue
        everyone = list(rule.backends)
        local = [b for b in everyone if b.local]
        if packet.dst == rule.vip and packet.dport == rule.port:
            if not everyone:
                return {Outcome("reject"): 1.0}
            chosen = local if rule.internal_local else everyone
            if not chosen:
                return {Outcome("drop"): 1.0}  # internalTrafficPolicy Local, no local backend
            return _spread(rule, chosen, False, packet.src)
        on_the_node = {rule.node_port} if rule.node_port else set()
        if rule.load_balancer:
            on_the_node.add(rule.port)
        if packet.dst_local and packet.dport in on_the_node:
            if not everyone:
                return _untaken(packet, Outcome("reject"))
            if not rule.external_local or packet.src_local:
                return _spread(rule, everyone, True, packet.src)  # the reply must come back here
            if not local:
                return _untaken(packet, Outcome("drop"))  # externalTrafficPolicy Local, none local
            return _spread(rule, local, False, packet.src)  # the client's address is kept
    if ipaddress.IPv4Address(packet.dst) in ipaddress.IPv4Network(service_cidr):
        return {Outcome("reject"): 1.0}
    return _untaken(packet, Outcome("accept"))


def _untaken(packet: Packet, otherwise: Outcome) -> Distribution:
    """A connection no rule DNAT'd: to loopback from elsewhere it is dropped, whatever else."""
    src, dst = ipaddress.IPv4Address(packet.src), ipaddress.IPv4Address(packet.dst)
    if dst in LOOPBACK and src not in LOOPBACK:
        return {Outcome("drop"): 1.0}
    return {otherwise: 1.0}


# --- the iptables-restore text, run by hand -----------------------------------------------


@dataclass(frozen=True)
class _State:
    dnat: tuple[str, int] | None = None
    marked: bool = False
    recorded: frozenset[str] = frozenset()  # `recent` lists this connection was added to


class Walk(NamedTuple):
    outcome: Outcome
    recorded: frozenset[str]


def parse_tables(text: str) -> dict[str, dict[str, list[list[str]]]]:
    """table -> chain -> rules (the words after `-A CHAIN`), from `iptables-restore` text."""
    tables: dict[str, dict[str, list[list[str]]]] = {}
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:]
            tables[table] = {}
        elif line.startswith(":"):
            tables[table].setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            words = shlex.split(line)
            tables[table].setdefault(words[1], []).append(words[2:])
        else:
            assert line == "COMMIT" or line.startswith("-X "), line
    return tables


@functools.cache
def _in(address: str, cidr: str) -> bool:
    return ipaddress.IPv4Address(address) in ipaddress.IPv4Network(cidr, strict=False)


class _Rule(NamedTuple):
    matches: list[tuple[bool, str, list[str]]]  # (negated, option, its arguments)
    target: str
    target_args: list[str]


_ARITY = {
    "-s": 1,
    "-d": 1,
    "-p": 1,
    "-m": 1,
    "--dport": 1,
    "--comment": 1,
    "--dst-type": 1,
    "--src-type": 1,
    "--mode": 1,
    "--probability": 1,
    "--name": 1,
    "--mask": 1,
    "--rsource": 0,
    "--rcheck": 0,
    "--seconds": 1,
    "--reap": 0,
    "--set": 0,
    "--mark": 1,
    "--ctstate": 1,
}


def _read(words: list[str]) -> _Rule:
    return _read_cached(tuple(words))


@functools.cache
def _read_cached(words: tuple[str, ...]) -> _Rule:
    matches: list[tuple[bool, str, list[str]]] = []
    i, negate = 0, False
    while i < len(words):
        word = words[i]
        if word == "!":
            negate, i = True, i + 1
            continue
        if word == "-j":
            return _Rule(matches, words[i + 1], list(words[i + 2 :]))
        if word not in _ARITY:
            raise AssertionError(f"the simulator does not know {word!r} in {words}")
        n = _ARITY[word]
        matches.append((negate, word, list(words[i + 1 : i + 1 + n])))
        negate, i = False, i + 1 + n
    raise AssertionError(f"a rule without a target: {words}")


@dataclass(frozen=True)
class _Where:
    """A table's chains and the packet walking them; `dst` is its destination after DNAT."""

    chains: Mapping[str, list[list[str]]]
    packet: Packet
    dst: str
    dst_local: bool


def _matches(rule: _Rule, where: _Where, state: _State) -> Iterator[tuple[float, _State]]:
    """The way the rule's matches can come out true, with its probability (a statistic
    match), and the state after the match (`recent --set` adds the client)."""
    packet = where.packet
    chance, recorded, recent_name = 1.0, set(state.recorded), ""
    options = {option for _, option, _ in rule.matches}
    for negated, option, args in rule.matches:
        value = args[0] if args else ""
        if option in ("-m", "--comment", "--mode", "--mask", "--rsource", "--reap", "--seconds"):
            if option == "-m":
                assert value in (
                    "tcp",
                    "udp",
                    "comment",
                    "addrtype",
                    "statistic",
                    "recent",
                    "mark",
                    "conntrack",
                )
            continue
        if option == "--name":
            recent_name = value
            continue
        if option == "-s":
            ok = _in(packet.src, value)
        elif option == "-d":
            ok = _in(where.dst, value)
        elif option == "-p":
            ok = value == packet.protocol.lower()
        elif option == "--dport":
            ok = int(value) == packet.dport
        elif option == "--dst-type":
            assert value == "LOCAL"
            ok = where.dst_local
        elif option == "--src-type":
            assert value == "LOCAL"
            ok = packet.src_local
        elif option == "--probability":
            chance *= float(value)
            ok = True
        elif option == "--rcheck":
            assert "--reap" in options and recent_name
            seconds = int(next(a[0] for _, o, a in rule.matches if o == "--seconds"))
            age = packet.recent.get(recent_name)
            ok = age is not None and age <= seconds
        elif option == "--set":
            recorded.add(recent_name)
            ok = True
        elif option == "--mark":
            assert value == "0x4000/0x4000"
            ok = state.marked
        elif option == "--ctstate":
            assert value == "RELATED,ESTABLISHED,DNAT"
            ok = state.dnat is not None  # a new connection: in state DNAT or in none of them
        else:  # pragma: no cover - _read refuses unknown options
            raise AssertionError(option)
        if ok == negated:
            return
    yield chance, replace(state, recorded=frozenset(recorded))


def _walk(where: _Where, chain: str, state: _State) -> Iterator[tuple[float, _State, str]]:
    """(probability, state, verdict) of every way through `chain`; verdict "" when the
    chain ends without a terminal target, "RETURN" when it returns."""
    branches = [(1.0, state)]
    for words in where.chains[chain]:
        rule = _read(words)
        following: list[tuple[float, _State]] = []
        for chance, current in branches:
            taken = 0.0
            for p, matched in _matches(rule, where, current):
                taken += p
                yield from _target(where, rule, matched, chance * p, following)
            if taken < 1.0:
                following.append((chance * (1 - taken), current))
        branches = [b for b in following if b[0] > 0]
    for chance, current in branches:
        yield chance, current, ""


def _target(
    where: _Where, rule: _Rule, state: _State, chance: float, following: list[tuple[float, _State]]
) -> Iterator[tuple[float, _State, str]]:
    """Where a matched rule sends the packet; a non-terminal outcome goes to `following`."""
    target, args = rule.target, rule.target_args
    if target in where.chains:
        for p, after, verdict in _walk(where, target, state):
            if verdict and verdict != "RETURN":
                yield chance * p, after, verdict
            else:
                following.append((chance * p, after))
    elif target == "RETURN":
        yield chance, state, "RETURN"
    elif target == "MARK":
        assert args in (["--or-mark", "0x4000"], ["--xor-mark", "0x4000"]), args
        following.append((chance, replace(state, marked=args[0] == "--or-mark")))
    elif target == "DNAT":
        assert args[0] == "--to-destination"
        ip, port = args[1].rsplit(":", 1)
        yield chance, replace(state, dnat=(ip, int(port))), "DNAT"
    elif target == "MASQUERADE":
        assert not args
        yield chance, state, "MASQUERADE"
    elif target == "REJECT":
        assert args == ["--reject-with", "icmp-port-unreachable"], args
        yield chance, state, "REJECT"
    elif target == "DROP":
        assert not args
        yield chance, state, "DROP"
    else:
        raise AssertionError(f"the simulator does not know target {target!r}")


def simulate(text: str, packet: Packet, prefix: str = "GITOPS") -> dict[Walk, float]:
    """What the rendered rules do with `packet`: every outcome with its probability, and
    which `recent` lists it was recorded in."""
    return simulate_tables(parse_tables(text), packet, prefix)


def simulate_tables(
    tables: Mapping[str, Mapping[str, list[list[str]]]], packet: Packet, prefix: str = "GITOPS"
) -> dict[Walk, float]:
    nat, filt = tables["nat"], tables["filter"]
    out: dict[Walk, float] = defaultdict(float)
    for chance, state, verdict in _walk(
        _Where(nat, packet, packet.dst, packet.dst_local), f"{prefix}-SERVICES", _State()
    ):
        assert verdict in ("", "DNAT"), verdict  # nothing but DNAT ends the walk in SERVICES
        if state.dnat is not None:
            after = _Where(filt, packet, state.dnat[0], False)  # backends are not this node's addresses here
        else:
            after = _Where(filt, packet, packet.dst, packet.dst_local)
        ((p, _, filtered),) = _walk(after, f"{prefix}-FILTER", state)
        assert p == 1.0
        if filtered:
            assert filtered in ("REJECT", "DROP"), filtered
            out[Walk(Outcome(filtered.lower()), frozenset())] += chance
            continue
        if state.dnat is None:
            assert not state.marked, "a connection marked for masquerading was never DNAT'd"
            out[Walk(Outcome("accept"), frozenset())] += chance
            continue
        ((p, left, posted),) = _walk(replace(after, chains=nat), f"{prefix}-POSTROUTING", state)
        assert posted in ("MASQUERADE", "RETURN"), posted
        assert not left.marked, "the mark outlives POSTROUTING"
        outcome = Outcome("dnat", state.dnat, posted == "MASQUERADE", bool(state.recorded))
        out[Walk(outcome, state.recorded)] += chance * p
    return dict(out)


def outcomes(walks: Mapping[Walk, float]) -> Distribution:
    out: Distribution = defaultdict(float)
    for walk, p in walks.items():
        out[walk.outcome] += p
    return dict(out)


def same(a: Mapping[Outcome, float], b: Mapping[Outcome, float]) -> bool:
    keys = set(a) | set(b)
    return all(abs(a.get(k, 0.0) - b.get(k, 0.0)) < 1e-9 for k in keys)
