"""`IptablesProxy` on the real kernel: chains, idempotence, cleanup, and real traffic to
VIPs, node ports and LoadBalancer ports, over TCP and UDP.

Each test owns a random chain prefix and a service CIDR that no local route covers; a
fixture always cleans up. Traffic stays on this host: to its own address, or to network
namespaces behind veth pairs standing in for a pod and for a machine elsewhere; VIPs are
DNAT'd there or rejected locally, never routed out.
"""

from __future__ import annotations

import dataclasses
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

from gitops.agents.iptables import (
    ROUTE_LOCALNET,
    Backend,
    IptablesError,
    IptablesProxy,
    ServiceRule,
    endpoint_chain,
    service_chain,
    static_nat_chains,
)
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
    # The host's route_localnet is left alone here; `localnet` below sets it for its tests.
    made = IptablesProxy(CIDR, prefix=prefix, route_localnet=False)
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
    seps = {endpoint_chain(web(), b, proxy.prefix) for b in web().backends}
    statics = set(static_nat_chains(proxy.prefix))
    assert proxy.chains() == {*statics, f"{proxy.prefix}-FILTER", chain, *seps}
    dump = save()
    lines = dump.splitlines()
    for builtin, target in (
        ("OUTPUT", "SERVICES"),
        ("PREROUTING", "SERVICES"),
        ("POSTROUTING", "POSTROUTING"),
        ("INPUT", "FILTER"),
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
    assert dump.count(f"-j {proxy.prefix}-POSTROUTING") == 1
    assert dump.count(f"-j {proxy.prefix}-FILTER") == 3
    assert dump.count(f"-A {proxy.prefix}-FILTER -d {CIDR}") == 1


def test_sync_of_identical_rules_is_skipped(proxy: IptablesProxy) -> None:
    assert proxy.sync([web()]) is True
    assert proxy.sync([web()]) is False
    assert proxy.sync([web((("192.0.2.200", 8080),))]) is True


def test_unchanged_rules_within_the_recheck_time_read_nothing_and_later_are_repaired(
    proxy: IptablesProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent syncs every second: unchanged endpoints cost no iptables-save, and the
    chains are still read (and repaired) every `recheck_seconds`."""
    clock = {"now": 100.0}
    proxy.recheck_seconds, proxy.clock = 10.0, lambda: clock["now"]
    assert proxy.sync([web()]) is True
    saves: list[str] = []
    real_save = proxy._save
    monkeypatch.setattr(proxy, "_save", lambda table: saves.append(table) or real_save(table))
    jump = ["-m", "comment", "--comment", "gitops service portals", "-j", f"{proxy.prefix}-SERVICES"]
    subprocess.run(["iptables", "-t", "nat", "-D", "OUTPUT", *jump], check=True)
    clock["now"] += 9
    assert proxy.sync([web()]) is False and saves == []  # not noticed yet
    clock["now"] += 2
    assert proxy.sync([web()]) is True and saves  # read again, and repaired
    assert proxy.sync([web((("192.0.2.200", 8080),))]) is True  # a change applies at once
    assert f'-A OUTPUT -m comment --comment "gitops service portals" -j {proxy.prefix}-SERVICES' in save()


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
    # Its SVC chain and the SEP chain of its one backend.
    assert [e["stale_chains_deleted"] for e in logs if e["event"] == "iptables.synced"] == [2]
    proxy.sync([])
    assert proxy.chains() == {*static_nat_chains(proxy.prefix), f"{proxy.prefix}-FILTER"}


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
    exposed = ServiceRule(
        "default/lb:http", "10.250.0.13", 18080, "TCP", (("192.0.2.200", 80),), 31080, True, 60, True, True
    )
    proxy.sync([web(), ServiceRule("default/idle:80", "10.250.0.12", 80, "UDP", (), 31053), exposed])
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


# --- node ports, LoadBalancer ports, masquerading, affinity, UDP -----------------------------

TEST_NET = ipaddress.IPv4Network("198.51.100.8/29")  # a pod and a machine elsewhere, /30 each
POD_HOST_END, POD = "198.51.100.13", "198.51.100.14"
PEER_HOST_END, PEER = "198.51.100.9", "198.51.100.10"

SERVER = """
import socket, sys
listener = socket.create_server(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    conn, peer = listener.accept()
    with conn:
        conn.sendall(f"{sys.argv[2]} {peer[0]}".encode())
"""

ASK = """
import socket, sys
ip, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
try:
    with socket.create_connection((ip, port), timeout=timeout) as c:
        print(c.recv(100).decode() or "empty")
except ConnectionRefusedError:
    print("refused")
except TimeoutError:
    print("timeout")
except OSError as e:
    print(type(e).__name__)
"""


class Namespace:
    """A network namespace behind a veth pair: `host_end` on this host, `address` inside,
    its default route through this host; so its traffic passes our chains as a pod's or
    another machine's would."""

    def __init__(self, host_end: str, address: str) -> None:
        tag = secrets.token_hex(3)
        self.name, self.veth = f"gon{tag}", f"gonv{tag}"
        self.address, self.host_end = address, host_end
        self.servers: list[subprocess.Popen[str]] = []
        peer = f"gonp{tag}"
        steps = [
            ["ip", "netns", "add", self.name],
            ["ip", "link", "add", self.veth, "type", "veth", "peer", "name", peer],
            ["ip", "link", "set", peer, "netns", self.name],
            ["ip", "addr", "add", f"{host_end}/30", "dev", self.veth],
            ["ip", "link", "set", self.veth, "up"],
            ["ip", "-n", self.name, "addr", "add", f"{address}/30", "dev", peer],
            ["ip", "-n", self.name, "link", "set", peer, "up"],
            ["ip", "-n", self.name, "link", "set", "lo", "up"],
            ["ip", "-n", self.name, "route", "add", "default", "via", host_end],
        ]
        for step in steps:
            subprocess.run(step, check=True, capture_output=True)

    def serve(self, port: int, name: str) -> None:
        """A TCP server inside that answers its name and the address it sees the client at."""
        server = subprocess.Popen(
            ["ip", "netns", "exec", self.name, "python3", "-c", SERVER, str(port), name],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.servers.append(server)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"

    def ask(self, ip: str, port: int, timeout: float = 3.0) -> str:
        """Connect from inside; what the server said, or "refused" / "timeout"."""
        done = subprocess.run(
            ["ip", "netns", "exec", self.name, "python3", "-c", ASK, ip, str(port), str(timeout)],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return done.stdout.strip()

    def remove(self) -> None:
        for server in self.servers:
            server.kill()
            server.wait()
        subprocess.run(["ip", "link", "del", self.veth], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)


def ask_here(ip: str, port: int, timeout: float = 3.0) -> str:
    try:
        with socket.create_connection((ip, port), timeout=timeout) as conn:
            return conn.recv(100).decode() or "empty"
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"


@pytest.fixture
def pod_and_peer(proxy: IptablesProxy) -> Iterator[tuple[Namespace, Namespace]]:
    """A pod (a namespace this host forwards to) and a machine elsewhere (a namespace that
    reaches this host's address). This host forwards between them: a rule of the test's
    own lets its test network through FORWARD (Docker's policy drops), removed afterwards."""
    require(shutil.which("ip") is not None, "the ip command (iproute2)")
    require(
        Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1",
        "ip_forward on (off, forwarded packets are dropped)",
    )
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=True).stdout
    destinations = [
        line.split()[0] for line in routes.splitlines() if line and not line.startswith("default")
    ]
    taken = [d for d in destinations if ipaddress.IPv4Network(d).overlaps(TEST_NET)]
    require(not taken, f"a free test network ({TEST_NET} is already routed here: {taken})")
    accept = [
        [
            "FORWARD",
            "-s",
            str(TEST_NET),
            "-m",
            "comment",
            "--comment",
            f"test {proxy.prefix}",
            "-j",
            "ACCEPT",
        ],
        [
            "FORWARD",
            "-d",
            str(TEST_NET),
            "-m",
            "comment",
            "--comment",
            f"test {proxy.prefix}",
            "-j",
            "ACCEPT",
        ],
    ]
    made: list[Namespace] = []
    try:
        for rule in accept:
            subprocess.run(["iptables", "-w", "10", "-I", *rule], check=True)
        made.append(Namespace(POD_HOST_END, POD))
        made.append(Namespace(PEER_HOST_END, PEER))
        yield made[0], made[1]
    finally:
        for namespace in made:
            namespace.remove()
        for rule in accept:
            subprocess.run(["iptables", "-w", "10", "-D", *rule], capture_output=True, check=False)


def node_port_rule(backends: tuple[Backend, ...], *, external_local: bool = False) -> ServiceRule:
    return ServiceRule(
        "default/web:http", "10.250.0.10", 80, "TCP", backends, node_port=31080, external_local=external_local
    )


def test_a_node_port_reaches_a_pod_for_a_machine_elsewhere_masqueraded(
    proxy: IptablesProxy, pod_and_peer: tuple[Namespace, Namespace]
) -> None:
    """externalTrafficPolicy Cluster: the pod sees this node's address (so that the reply
    comes back through the node that DNAT'd); the VIP still answers too."""
    pod, peer = pod_and_peer
    pod.serve(8080, "pod")
    proxy.sync([node_port_rule((Backend(POD, 8080),))])
    assert peer.ask(PEER_HOST_END, 31080) == f"pod {POD_HOST_END}"
    assert ask_here(host_address(), 31080) == f"pod {POD_HOST_END}"
    assert ask_here("10.250.0.10", 80).startswith("pod ")


def test_external_traffic_policy_local_keeps_the_client_address(
    proxy: IptablesProxy, pod_and_peer: tuple[Namespace, Namespace]
) -> None:
    pod, peer = pod_and_peer
    pod.serve(8080, "pod")
    proxy.sync([node_port_rule((Backend(POD, 8080, local=True),), external_local=True)])
    assert peer.ask(PEER_HOST_END, 31080) == f"pod {PEER}"


def test_external_traffic_policy_local_without_a_local_pod_drops_but_serves_the_node(
    proxy: IptablesProxy, pod_and_peer: tuple[Namespace, Namespace]
) -> None:
    """A machine elsewhere gets no answer (dropped, as kube-proxy does); the node itself
    still reaches the pod, masqueraded."""
    pod, peer = pod_and_peer
    pod.serve(8080, "pod")
    proxy.sync([node_port_rule((Backend(POD, 8080, local=False),), external_local=True)])
    assert peer.ask(PEER_HOST_END, 31080, timeout=1.0) == "timeout"
    assert ask_here(host_address(), 31080) == f"pod {POD_HOST_END}"


def test_a_load_balancer_answers_its_port_on_the_node(
    proxy: IptablesProxy, pod_and_peer: tuple[Namespace, Namespace]
) -> None:
    """Without a cloud, as k3s's servicelb: the Service port answers on the node's addresses."""
    pod, peer = pod_and_peer
    pod.serve(8080, "pod")
    lb = ServiceRule("default/lb:http", "10.250.0.11", 18080, "TCP", (Backend(POD, 8080),), 31081, True)
    proxy.sync([lb])
    assert peer.ask(PEER_HOST_END, 18080) == f"pod {POD_HOST_END}"
    assert peer.ask(PEER_HOST_END, 31081) == f"pod {POD_HOST_END}"
    proxy.sync([dataclasses.replace(lb, backends=())])
    assert peer.ask(PEER_HOST_END, 18080) == "refused"


def test_a_pod_reaches_itself_through_its_service(
    proxy: IptablesProxy, pod_and_peer: tuple[Namespace, Namespace]
) -> None:
    """Hairpin: without masquerading the pod would receive a packet from its own address
    on its interface, which the kernel drops."""
    pod, _ = pod_and_peer
    pod.serve(8080, "pod")
    proxy.sync([ServiceRule("default/web:http", "10.250.0.10", 80, "TCP", (Backend(POD, 8080, True),))])
    assert pod.ask("10.250.0.10", 80) == f"pod {POD_HOST_END}"


@pytest.fixture
def localnet(proxy: IptablesProxy) -> Iterator[IptablesProxy]:
    """The proxy with `route_localnet` as agents run it; the host's setting is put back after."""
    path = Path("/proc/sys") / ROUTE_LOCALNET
    before = path.read_text()
    proxy.route_localnet = True
    try:
        proxy.install()
        yield proxy
    finally:
        path.write_text(before)


def test_a_node_port_answers_on_loopback(
    localnet: IptablesProxy, pod_and_peer: tuple[Namespace, Namespace]
) -> None:
    """127.0.0.1:nodePort reaches the pod: route_localnet lets the packet leave loopback,
    and it is masqueraded (the pod cannot answer 127.0.0.1)."""
    pod, _ = pod_and_peer
    pod.serve(8080, "pod")
    assert Path("/proc/sys", ROUTE_LOCALNET).read_text().strip() == "1"
    localnet.sync([node_port_rule((Backend(POD, 8080, local=True),))])
    assert ask_here("127.0.0.1", 31080) == f"pod {POD_HOST_END}"
    # With the Local policy too: this node's own traffic is masqueraded and served.
    localnet.sync([node_port_rule((Backend(POD, 8080, local=False),), external_local=True)])
    assert ask_here("127.0.0.1", 31080) == f"pod {POD_HOST_END}"


def test_install_sets_route_localnet_or_says_why_not(proxy: IptablesProxy, tmp_path: Path) -> None:
    (tmp_path / ROUTE_LOCALNET).parent.mkdir(parents=True)
    (tmp_path / ROUTE_LOCALNET).write_text("0\n")
    IptablesProxy(CIDR, prefix=proxy.prefix, sysctl_dir=tmp_path).install()
    assert (tmp_path / ROUTE_LOCALNET).read_text().strip() == "1"
    broken = IptablesProxy(CIDR, prefix=proxy.prefix, sysctl_dir=tmp_path / "missing")
    broken.install()
    broken.sync([web()])
    assert broken.skipped == (
        "node ports do not answer on 127.0.0.1: cannot set net.ipv4.conf.all.route_localnet=1 "
        f"([Errno 2] No such file or directory: '{tmp_path / 'missing' / ROUTE_LOCALNET}')",
    )


def test_client_ip_affinity_keeps_a_client_on_one_backend(
    proxy: IptablesProxy, servers: Callable[[str], tuple[str, int]]
) -> None:
    backends = (servers("alpha"), servers("beta"))
    proxy.sync([dataclasses.replace(web(backends), affinity_seconds=60)])
    answers = {fetch("10.250.0.10", 80) for _ in range(20)}
    assert len(answers) == 1
    proxy.sync([web(backends)])  # without affinity, connections spread again
    assert {fetch("10.250.0.10", 80) for _ in range(40)} == {"alpha", "beta"}


def test_internal_traffic_policy_local_uses_local_backends_only(
    proxy: IptablesProxy, servers: Callable[[str], tuple[str, int]]
) -> None:
    (ip, alpha), (_, beta) = servers("alpha"), servers("beta")
    rule = web((Backend(ip, alpha, local=True), Backend(ip, beta, local=False)))
    proxy.sync([dataclasses.replace(rule, internal_local=True)])
    assert {fetch("10.250.0.10", 80) for _ in range(20)} == {"alpha"}
    proxy.sync([dataclasses.replace(rule, internal_local=True, backends=(Backend(ip, beta),))])
    assert ask_here("10.250.0.10", 80, timeout=1.0) == "timeout"  # dropped, as kube-proxy does


def test_udp_service_ports_work_as_tcp_ones_do(proxy: IptablesProxy) -> None:
    """A datagram to VIP:port reaches the backend and its reply comes back from the VIP; a
    UDP node port answers on the node's address; a UDP port without backends is refused."""
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind((host_address(), 0))
    port = echo.getsockname()[1]

    def answer() -> None:
        for _ in range(2):
            data, peer = echo.recvfrom(100)
            echo.sendto(b"echo " + data, peer)

    threading.Thread(target=answer, daemon=True).start()
    dns = ServiceRule("kube/dns:dns", "10.250.0.53", 53, "UDP", ((host_address(), port),), node_port=31053)
    idle = ServiceRule("kube/idle:dns", "10.250.0.54", 53, "UDP", ())
    proxy.sync([dns, idle])
    try:
        for target in (("10.250.0.53", 53), (host_address(), 31053)):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.settimeout(3)
                client.connect(target)
                client.send(b"hello")
                assert client.recv(100) == b"echo hello"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(3)
            client.connect(("10.250.0.54", 53))
            # Rejected on its way out of this host: the send itself fails (EPERM).
            with pytest.raises(PermissionError):
                client.send(b"anyone?")
    finally:
        echo.close()
