"""Service virtual IPs, programmed into iptables on each node.

Every Service port has a virtual IP and port (VIP:port) that no interface owns. The node
agent turns the service endpoints it receives into `ServiceRule` values and hands them to
`IptablesProxy.sync`, which makes the kernel match them:

- nat table: `{prefix}-SERVICES` is jumped to from `OUTPUT` (connections made by the host)
  and `PREROUTING` (connections from local containers). It holds one rule per VIP:port
  with backends, jumping to that port's `{prefix}-SVC-{hash16}` chain, which DNATs the
  new connection to one backend, spread evenly kube-proxy style: backend *i* of *n* is
  taken with probability `1/(n-i)` of what reaches it, the last one unconditionally.
- filter table: `{prefix}-FILTER` is jumped to from `OUTPUT` and `FORWARD`. It REJECTs
  (`icmp-port-unreachable`, which a TCP client sees as "connection refused" at once) a
  VIP:port without backends and then every other address of the service CIDR, so a VIP
  is never routed out of the machine. The filter table sees the destination after DNAT,
  so a DNAT'd connection is never rejected.

One bad rule never costs the others: `IptablesProxy.sync` first `vet`s the rules, skipping
a rule whose VIP, port or protocol cannot be programmed (or that claims a VIP:port another
rule holds) and dropping a backend whose address or port cannot, and says what it skipped
(`skipped`), so the agent can report it; everything else is programmed.

`render` is pure: rules in, the complete `iptables-restore --noflush` text out, which
declares (so creates or flushes) our chains, fills them and deletes our chains that are no
longer needed, in one atomic transaction per table. `IptablesProxy` adds the effects:
listing our chains, one `iptables-restore` call per sync, installing and removing the jump
rules. Only chains named `{prefix}-...` are ever created, flushed or deleted; the jump
rules are the only lines we add to built-in chains.

Conntrack: the nat table only sees the first packet of a connection, so a connection keeps
its backend for its lifetime. When a backend disappears its established connections (and
UDP flows, until their conntrack entry expires) keep pointing at it; flushing those
entries is not done here.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import ipaddress
import re
import shlex
import subprocess
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)

TABLES = ("nat", "filter")
PROTOCOLS = ("TCP", "UDP")
MAX_CHAIN_NAME = 28
HASH_LENGTH = 16
JUMP_COMMENT = "gitops service portals"
CIDR_COMMENT = "service CIDR without a service"
_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_COMMENT_UNSAFE = re.compile(r"[^A-Za-z0-9._:/=+@ -]")
_WAIT = ("-w", "10")


class IptablesError(RuntimeError):
    """An iptables command failed; the message carries its stderr."""


@dataclass(frozen=True)
class ServiceRule:
    """One service port: connections to `vip:port` go to one of `backends`."""

    service: str
    """`namespace/name:portname-or-port`, shown in rule comments."""
    vip: str
    port: int
    protocol: str
    """"TCP" or "UDP"."""
    backends: tuple[tuple[str, int], ...]
    """(ip, port) destinations, in the order given."""


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


def filter_chain(prefix: str) -> str:
    """The filter chain jumped to from OUTPUT and FORWARD."""
    return f"{prefix}-FILTER"


def service_chain(rule: ServiceRule, prefix: str) -> str:
    """`{prefix}-SVC-{hash16}`, a pure function of (service, protocol, vip, port)."""
    key = f"{rule.service}\0{rule.protocol.upper()}\0{rule.vip}\0{rule.port}".encode()
    digest = base64.b32encode(hashlib.sha256(key).digest()).decode()
    return f"{prefix}-SVC-{digest[:HASH_LENGTH]}"


def is_ours(chain: str, prefix: str) -> bool:
    return chain.startswith(f"{prefix}-")


def jump_rules(prefix: str) -> list[tuple[str, str, list[str]]]:
    """(table, built-in chain, rule spec) of every rule we put into a built-in chain."""
    comment = ["-m", "comment", "--comment", JUMP_COMMENT]
    return [
        ("nat", "OUTPUT", [*comment, "-j", services_chain(prefix)]),
        ("nat", "PREROUTING", [*comment, "-j", services_chain(prefix)]),
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


def _validate(rule: ServiceRule) -> None:
    where = f"service rule {rule.service!r}"
    try:
        ipaddress.IPv4Address(rule.vip)
        for ip, _ in rule.backends:
            ipaddress.IPv4Address(ip)
    except ValueError as e:
        raise ValueError(f"{where}: {e}; expected dotted-quad IPv4 addresses") from None
    if rule.protocol.upper() not in PROTOCOLS:
        raise ValueError(f"{where}: protocol {rule.protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    for port in (rule.port, *(p for _, p in rule.backends)):
        if not 1 <= port <= 65535:
            raise ValueError(f"{where}: port {port}: expected 1..65535")


def vet(rules: Sequence[ServiceRule]) -> tuple[list[ServiceRule], list[str]]:
    """The rules that can be programmed, and what was skipped and why (one line each).

    A rule with an invalid VIP, port or protocol is skipped whole; an invalid backend is
    dropped from its rule; of two rules for one VIP:port the first (in VIP, port, name
    order) is kept."""
    kept: list[ServiceRule] = []
    problems: list[str] = []
    seen: dict[tuple[str, str, int], str] = {}

    def order(rule: ServiceRule) -> tuple[int, int, str, str]:
        try:
            address = int(ipaddress.IPv4Address(rule.vip))
        except ValueError:
            address = -1
        return (address, rule.port if isinstance(rule.port, int) else -1, str(rule.protocol), rule.service)

    for rule in sorted(rules, key=order):
        backends = []
        for ip, port in rule.backends:
            try:
                ipaddress.IPv4Address(ip)
                if not (isinstance(port, int) and 1 <= port <= 65535):
                    raise ValueError(f"port {port!r}: expected 1..65535")
            except ValueError as exc:
                problems.append(f"service rule {rule.service!r}: backend {ip}:{port} skipped: {exc}")
                continue
            backends.append((ip, port))
        candidate = dataclasses.replace(rule, backends=tuple(backends))
        try:
            _validate(candidate)
        except ValueError as exc:
            problems.append(f"{exc}; rule skipped")
            continue
        key = (candidate.protocol.upper(), candidate.vip, candidate.port)
        if key in seen:
            claim = f"{candidate.vip}:{candidate.port}/{candidate.protocol.upper()}"
            problems.append(
                f"service rules {seen[key]!r} and {candidate.service!r} both claim {claim}; "
                f"{candidate.service!r} skipped"
            )
            continue
        seen[key] = candidate.service
        kept.append(candidate)
    return kept, problems


def probabilities(n: int) -> list[str | None]:
    """Per-rule `--probability` of a chain of n backends; None for the unconditional last."""
    return [f"{1 / (n - i):.10f}" for i in range(n - 1)] + ([None] if n else [])


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
    Raises ValueError for an invalid rule, prefix or CIDR, or two rules for one VIP:port.
    """
    check_prefix(prefix)
    cidr = str(ipaddress.IPv4Network(service_cidr, strict=False))
    top_nat, top_filter = services_chain(prefix), filter_chain(prefix)

    seen: dict[tuple[str, str, int], str] = {}
    ordered = sorted(
        rules, key=lambda r: (ipaddress.IPv4Address(r.vip), r.port, r.protocol.upper(), r.service)
    )
    for rule in ordered:
        _validate(rule)
        key = (rule.protocol.upper(), rule.vip, rule.port)
        if key in seen:
            raise ValueError(
                f"service rules {seen[key]!r} and {rule.service!r} both claim "
                f"{rule.vip}:{rule.port}/{rule.protocol.upper()}; a VIP:port belongs to one service"
            )
        seen[key] = rule.service

    with_backends = [r for r in ordered if r.backends]
    needed = {service_chain(r, prefix) for r in with_backends}
    stale = sorted(
        c for c in set(existing_chains) if is_ours(c, prefix) and c not in needed | {top_nat, top_filter}
    )

    nat = ["*nat", f":{top_nat} - [0:0]"]
    nat += [f":{chain} - [0:0]" for chain in sorted(needed | set(stale))]
    for rule in with_backends:
        proto = rule.protocol.lower()
        chain = service_chain(rule, prefix)
        nat.append(
            f"-A {top_nat} -d {rule.vip}/32 -p {proto} -m {proto} --dport {rule.port} "
            f"-m comment --comment {_comment(rule.service)} -j {chain}"
        )
        n = len(rule.backends)
        for i, ((ip, port), probability) in enumerate(zip(rule.backends, probabilities(n), strict=True)):
            statistic = f" -m statistic --mode random --probability {probability}" if probability else ""
            nat.append(
                f"-A {chain} -m comment --comment {_comment(f'{rule.service} backend {i + 1}/{n}')}"
                f"{statistic} -p {proto} -j DNAT --to-destination {ip}:{port}"
            )
    nat += [f"-X {chain}" for chain in stale]
    nat.append("COMMIT")

    filt = ["*filter", f":{top_filter} - [0:0]"]
    for rule in ordered:
        if rule.backends:
            continue
        proto = rule.protocol.lower()
        filt.append(
            f"-A {top_filter} -d {rule.vip}/32 -p {proto} -m {proto} --dport {rule.port} "
            f"-m comment --comment {_comment(f'{rule.service} has no endpoints')} "
            "-j REJECT --reject-with icmp-port-unreachable"
        )
    filt.append(
        f"-A {top_filter} -d {cidr} -m comment --comment {_comment(CIDR_COMMENT)} "
        "-j REJECT --reject-with icmp-port-unreachable"
    )
    filt.append("COMMIT")
    return "\n".join(nat + filt) + "\n"


def parse_chains(save_output: str, prefix: str) -> set[str]:
    """Our chain names declared in `iptables-save` output."""
    return {
        line[1:].split()[0]
        for line in save_output.splitlines()
        if line.startswith(":") and is_ours(line[1:].split()[0], prefix)
    }


class IptablesProxy:
    """Keeps this node's service chains equal to the rules it is given (see the module doc)."""

    def __init__(self, service_cidr: str, *, prefix: str = "GITOPS", iptables: str = "iptables") -> None:
        self.service_cidr = str(ipaddress.IPv4Network(service_cidr, strict=False))
        self.prefix = check_prefix(prefix)
        self.iptables = iptables
        self._last_applied: str | None = None
        self._restore_wait: tuple[str, ...] | None = None
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
        """Create our top chains, the jump rules into them, and reject the whole CIDR."""
        for table, chain in (("nat", services_chain(self.prefix)), ("filter", filter_chain(self.prefix))):
            if chain not in parse_chains(self._save(table), self.prefix):
                done = self._iptables(table, "-N", chain)
                if done.returncode != 0 and "exists" not in done.stderr:
                    raise IptablesError(f"iptables -t {table} -N {chain} failed: {done.stderr.strip()}")
        reject = reject_cidr_spec(self.service_cidr)
        self._ensure("filter", filter_chain(self.prefix), reject, append=True)
        inserted = sum(self._ensure(table, chain, spec) for table, chain, spec in jump_rules(self.prefix))
        log.info(
            "iptables.installed", prefix=self.prefix, service_cidr=self.service_cidr, jumps_added=inserted
        )

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
        if problems and tuple(problems) != self.skipped:
            log.warning("iptables.rules_skipped", skipped=len(problems), first=problems[0])
        self.skipped = tuple(problems)
        saved = {table: self._save(table) for table in TABLES}
        if not self._jumps_present(saved):
            self.install()
            self._last_applied = None
        nat_chains = parse_chains(saved["nat"], self.prefix)
        text = render(rules, service_cidr=self.service_cidr, prefix=self.prefix, existing_chains=nat_chains)
        needed = {services_chain(self.prefix), *(service_chain(r, self.prefix) for r in rules if r.backends)}
        if text == self._last_applied and needed <= nat_chains:
            log.debug("iptables.unchanged", services=len(rules))
            return False
        self._last_applied = None
        self._restore(text)
        self._last_applied = text
        log.info(
            "iptables.synced",
            services=len(rules),
            with_backends=sum(1 for r in rules if r.backends),
            backends=sum(len(r.backends) for r in rules),
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
        """Remove our jump rules and all our chains; a no-op when nothing is left."""
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
        text = ""
        for table in TABLES:
            if chains[table]:
                ordered = sorted(chains[table])
                text += f"*{table}\n" + "".join(f":{c} - [0:0]\n" for c in ordered)
                text += "".join(f"-X {c}\n" for c in ordered) + "COMMIT\n"
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
