"""`IptablesProxy` on the real kernel: chains, idempotence, cleanup, and real TCP traffic to VIPs.

Each test owns a random chain prefix and a service CIDR that no local route covers; a
fixture always cleans up. Traffic goes only to this host's own address: VIPs are DNAT'd to
it or rejected locally, never routed out.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gitops.agents.iptables import IptablesError, IptablesProxy, ServiceRule, service_chain
from tests.conftest import require

CIDR = "10.250.0.0/16"


def require_real_iptables() -> None:
    """Under CI=true missing iptables or root is a failure; elsewhere a skip with the reason."""
    require(os.geteuid() == 0, "root (to program iptables)")
    tools = ("iptables", "iptables-restore", "iptables-save")
    require(all(shutil.which(tool) for tool in tools), ", ".join(tools))
    probe = subprocess.run(
        ["iptables", "-w", "10", "-t", "nat", "-S", "OUTPUT"], capture_output=True, check=False
    )
    require(probe.returncode == 0, f"a working iptables nat table ({probe.stderr.decode().strip()})")


def host_address() -> str:
    """This host's own non-loopback IPv4 address, from `ip -4 -o addr` (sends nothing)."""
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        words = line.split()
        address = ipaddress.IPv4Interface(words[3])
        if not address.ip.is_loopback and words[1] != "docker0":
            return str(address.ip)
    require(False, "a non-loopback IPv4 address on this host")
    raise AssertionError("unreachable: require() failed or skipped")


def save() -> str:
    return subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout


@pytest.fixture
def proxy() -> Iterator[IptablesProxy]:
    require_real_iptables()
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=True).stdout
    for line in routes.split("\n"):
        dest = line.split(" ", 1)[0]
        if dest and dest != "default":
            assert not ipaddress.IPv4Network(dest).overlaps(ipaddress.IPv4Network(CIDR)), line
    prefix = f"GOT{secrets.token_hex(2)}"
    made = IptablesProxy(CIDR, prefix=prefix)
    try:
        made.install()
        yield made
    finally:
        made.cleanup()


@pytest.fixture
def servers() -> Iterator[Callable[[str], tuple[str, int]]]:
    """Start TCP servers on this host's address that answer their own name and close."""
    address = host_address()
    listeners: list[socket.socket] = []

    def serve(listener: socket.socket, name: str) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.sendall(name.encode())

    def start(name: str) -> tuple[str, int]:
        listener = socket.create_server((address, 0))
        listeners.append(listener)
        threading.Thread(target=serve, args=(listener, name), daemon=True).start()
        return address, listener.getsockname()[1]

    yield start
    for listener in listeners:
        listener.close()


def fetch(ip: str, port: int) -> str:
    with socket.create_connection((ip, port), timeout=3) as conn:
        chunks = []
        while chunk := conn.recv(100):
            chunks.append(chunk)
        return b"".join(chunks).decode()


def assert_refused_quickly(ip: str, port: int) -> None:
    started = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((ip, port), timeout=5).close()
    assert time.monotonic() - started < 1.0


def web(
    backends: tuple[tuple[str, int], ...] = (("192.0.2.200", 8080), ("192.0.2.201", 8080)),
) -> ServiceRule:
    return ServiceRule("default/web:http", "10.250.0.10", 80, "TCP", backends)


def test_install_and_sync_create_our_chains(proxy: IptablesProxy) -> None:
    """After install and sync, iptables-save shows the jumps, the chains and the DNAT rules."""
    with capture_logs() as logs:
        assert proxy.sync([web()]) is True
    chain = service_chain(web(), proxy.prefix)
    assert proxy.chains() == {f"{proxy.prefix}-SERVICES", f"{proxy.prefix}-FILTER", chain}
    dump = save()
    lines = dump.splitlines()
    for builtin, target in (
        ("OUTPUT", "SERVICES"),
        ("PREROUTING", "SERVICES"),
        ("OUTPUT", "FILTER"),
        ("FORWARD", "FILTER"),
    ):
        jump = f"-j {proxy.prefix}-{target}"
        assert any(line.startswith(f"-A {builtin} ") and line.endswith(jump) for line in lines), (
            builtin,
            jump,
        )
    assert f"-A {chain} " in dump and "--to-destination 192.0.2.201:8080" in dump
    [synced] = [e for e in logs if e["event"] == "iptables.synced"]
    assert (synced["services"], synced["backends"]) == (1, 2)


def test_install_is_idempotent(proxy: IptablesProxy) -> None:
    proxy.install()
    proxy.install()
    dump = save()
    assert dump.count(f"-j {proxy.prefix}-SERVICES") == 2
    assert dump.count(f"-j {proxy.prefix}-FILTER") == 2
    assert dump.count(f"-A {proxy.prefix}-FILTER -d {CIDR}") == 1


def test_sync_of_identical_rules_is_skipped(proxy: IptablesProxy) -> None:
    assert proxy.sync([web()]) is True
    assert proxy.sync([web()]) is False
    assert proxy.sync([web((("192.0.2.200", 8080),))]) is True


def test_sync_repairs_chains_removed_behind_its_back(proxy: IptablesProxy) -> None:
    """Level-triggered: if someone deletes our jumps and chains, the next sync puts them back."""
    proxy.sync([web()])
    subprocess.run(
        [
            "iptables",
            "-t",
            "nat",
            "-D",
            "OUTPUT",
            "-m",
            "comment",
            "--comment",
            "gitops service portals",
            "-j",
            f"{proxy.prefix}-SERVICES",
        ],
        check=True,
    )
    assert proxy.sync([web()]) is True
    assert f'-A OUTPUT -m comment --comment "gitops service portals" -j {proxy.prefix}-SERVICES' in save()


def test_removing_a_service_removes_its_chain(proxy: IptablesProxy) -> None:
    other = ServiceRule("default/api:8080", "10.250.0.11", 8080, "TCP", (("192.0.2.200", 9000),))
    proxy.sync([web(), other])
    assert service_chain(other, proxy.prefix) in proxy.chains()
    with capture_logs() as logs:
        assert proxy.sync([web()]) is True
    assert service_chain(other, proxy.prefix) not in proxy.chains()
    assert service_chain(web(), proxy.prefix) in proxy.chains()
    assert [e["stale_chains_deleted"] for e in logs if e["event"] == "iptables.synced"] == [1]
    proxy.sync([])
    assert proxy.chains() == {f"{proxy.prefix}-SERVICES", f"{proxy.prefix}-FILTER"}


def test_an_unrenderable_rule_is_skipped_and_every_other_service_is_programmed(proxy: IptablesProxy) -> None:
    """0.1 raised on one bad endpoint and programmed nothing, on every node, every tick."""
    garbage = ServiceRule("default/broken:http", "10.250.0.13", 80, "TCP", (("not-an-address", 80),))
    poisoned = ServiceRule("default/poisoned:http", "10.250.0.14; -j ACCEPT", 80, "TCP", (("192.0.2.9", 80),))
    with capture_logs() as logs:
        assert proxy.sync([web(), garbage, poisoned]) is True
    assert service_chain(web(), proxy.prefix) in proxy.chains()
    assert "--to-destination 192.0.2.201:8080" in save()
    assert len(proxy.skipped) == 2
    assert [e["skipped"] for e in logs if e["event"] == "iptables.rules_skipped"] == [2]
    # The service whose only backend was invalid has none: connections to it are refused.
    assert "default/broken:http has no endpoints" in save()


def test_cleanup_leaves_nothing_behind(proxy: IptablesProxy) -> None:
    proxy.sync([web(), ServiceRule("default/idle:80", "10.250.0.12", 80, "UDP", ())])
    proxy.cleanup()
    proxy.cleanup()
    assert proxy.chains() == set()
    assert proxy.prefix not in save()


def test_a_missing_binary_is_an_iptables_error(proxy: IptablesProxy) -> None:
    broken = IptablesProxy(CIDR, prefix=proxy.prefix, iptables="iptables-does-not-exist")
    with pytest.raises(IptablesError, match="iptables-does-not-exist"):
        broken.sync([web()])


def test_a_refused_restore_raises_with_its_stderr_and_is_retried(proxy: IptablesProxy) -> None:
    """A stale chain still referenced from a chain not ours cannot be deleted: the error says so."""
    old = ServiceRule("default/old:80", "10.250.0.13", 80, "TCP", (("192.0.2.200", 80),))
    proxy.sync([web(), old])
    chain, holder = service_chain(old, proxy.prefix), f"GOX{secrets.token_hex(2)}-HOLD"
    nat = ["iptables", "-w", "10", "-t", "nat"]
    subprocess.run([*nat, "-N", holder], check=True)
    try:
        subprocess.run([*nat, "-A", holder, "-j", chain], check=True)
        with pytest.raises(IptablesError, match=r"iptables-restore --noflush failed: .+"):
            proxy.sync([web()])
        assert chain in proxy.chains()
        subprocess.run([*nat, "-F", holder], check=True)
        assert proxy.sync([web()]) is True
        assert chain not in proxy.chains()
    finally:
        subprocess.run([*nat, "-F", holder], check=False)
        subprocess.run([*nat, "-X", holder], check=False)


def test_connections_to_a_vip_are_spread_over_its_backends(
    proxy: IptablesProxy, servers: Callable[[str], tuple[str, int]]
) -> None:
    """40 connections to VIP:port all succeed, from the host, and both backends answer."""
    rule = web((servers("alpha"), servers("beta")))
    proxy.sync([rule])
    answers = [fetch(rule.vip, rule.port) for _ in range(40)]
    assert set(answers) == {"alpha", "beta"}


def test_vip_without_backends_and_unknown_addresses_are_refused(
    proxy: IptablesProxy, servers: Callable[[str], tuple[str, int]]
) -> None:
    """Nothing in the service CIDR is routed out: no backend, other port, other address: refused."""
    live = web((servers("alpha"),))
    idle = ServiceRule("default/idle:80", "10.250.0.12", 80, "TCP", ())
    proxy.sync([live, idle])
    assert fetch(live.vip, live.port) == "alpha"
    assert_refused_quickly(idle.vip, idle.port)
    assert_refused_quickly(live.vip, 81)
    assert_refused_quickly("10.250.200.1", 80)


def test_the_cidr_is_rejected_as_soon_as_installed(proxy: IptablesProxy) -> None:
    """Fail closed: before the first sync, the whole service CIDR is already refused."""
    assert_refused_quickly("10.250.0.10", 80)


def test_a_backend_change_applies_to_new_connections(
    proxy: IptablesProxy, servers: Callable[[str], tuple[str, int]]
) -> None:
    alpha, beta = servers("alpha"), servers("beta")
    proxy.sync([web((alpha,))])
    assert {fetch("10.250.0.10", 80) for _ in range(5)} == {"alpha"}
    proxy.sync([web((beta,))])
    assert {fetch("10.250.0.10", 80) for _ in range(5)} == {"beta"}
    proxy.sync([web(())])
    assert_refused_quickly("10.250.0.10", 80)


@pytest.fixture
def namespace() -> Iterator[Callable[[str], str]]:
    """A network namespace behind a veth pair, standing in for a local container.

    Its default route is this host, so its traffic to a VIP passes nat PREROUTING and then
    either INPUT (DNAT'd to this host's address) or FORWARD (rejected).
    """
    require(shutil.which("ip") is not None, "the ip command (iproute2)")
    net = ipaddress.IPv4Network("198.51.100.0/30")
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=True).stdout
    require(
        not any(line.split(" ", 1)[0] == str(net) for line in routes.splitlines()),
        f"a free test network ({net} is already routed here)",
    )
    tag = secrets.token_hex(3)
    ns, host_end, ns_end = f"got{tag}", f"gotv{tag}", f"gotp{tag}"
    steps = [
        ["ip", "netns", "add", ns],
        ["ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end],
        ["ip", "link", "set", ns_end, "netns", ns],
        ["ip", "addr", "add", "198.51.100.1/30", "dev", host_end],
        ["ip", "link", "set", host_end, "up"],
        ["ip", "-n", ns, "addr", "add", "198.51.100.2/30", "dev", ns_end],
        ["ip", "-n", ns, "link", "set", ns_end, "up"],
        ["ip", "-n", ns, "link", "set", "lo", "up"],
        ["ip", "-n", ns, "route", "add", "default", "via", "198.51.100.1"],
    ]
    try:
        for step in steps:
            subprocess.run(step, check=True, capture_output=True)

        def run(code: str) -> str:
            done = subprocess.run(
                ["ip", "netns", "exec", ns, "python3", "-c", code],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            )
            return done.stdout

        yield run
    finally:
        subprocess.run(["ip", "link", "del", host_end], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


CLIENT = """
import socket, sys, time
def fetch(ip, port):
    try:
        with socket.create_connection((ip, port), timeout=3) as c:
            return c.recv(100).decode() or "empty"
    except ConnectionRefusedError:
        return "refused"
    except OSError as e:
        return type(e).__name__
started = time.monotonic()
print(" ".join(fetch(*target) for target in {targets!r}), round(time.monotonic() - started, 2))
"""


def test_connections_from_a_local_container_are_dnated_or_refused(
    proxy: IptablesProxy, servers: Callable[[str], tuple[str, int]], namespace: Callable[[str], str]
) -> None:
    """From a namespace routed through this host (nat PREROUTING, filter FORWARD)."""
    require(
        Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1",
        "ip_forward on (off, forwarded packets are dropped before our FORWARD reject)",
    )
    rule = web((servers("alpha"), servers("beta")))
    idle = ServiceRule("default/idle:80", "10.250.0.12", 80, "TCP", ())
    proxy.sync([rule, idle])
    *answers, took = namespace(CLIENT.format(targets=[(rule.vip, rule.port)] * 20)).split()
    assert set(answers) == {"alpha", "beta"}
    *answers, took = namespace(CLIENT.format(targets=[(idle.vip, 80), ("10.250.200.1", 443)])).split()
    assert answers == ["refused", "refused"]
    assert float(took) < 2.0
