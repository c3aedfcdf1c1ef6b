"""The pod network of one node: every pod has an address every pod of every node reaches.

The control plane gives each node a subnet of the cluster's pod range (`--cluster-cidr`,
a /24 per node by default). The agent

- runs its pods on a Docker bridge network of that subnet (`pod_network_name`), the
  bridge's gateway (the subnet's first address) being the node's own address on it, where
  the agent answers DNS;
- routes every other node's subnet through that node's address, as flannel's host-gw mode
  does (`ip route replace SUBNET via NODE proto 103`; the protocol number marks the routes as
  ours, so a route whose node was deleted is found and removed, and no other route is
  touched). A node beyond this node's links is reached through a VXLAN overlay instead
  (`gvx<hash>`, VNI 1, UDP 8472, the subnet's `.0` as the node's tunnel address, a flooding
  entry per remote node, so ARP finds the remote tunnel addresses and no MAC address goes
  through the control plane), as flannel's vxlan backend with DirectRouting does. A route
  that cannot be added is reported, never fatal;
- programs two chains of its own (iptables, one `iptables-restore --noflush` per change):
  `{prefix}-PODNET` in the nat table, jumped to from POSTROUTING, masquerades what pods send
  beyond the cluster's pod range (so the Internet sees the node's address, while traffic
  between pods, on this node or another, keeps both pod addresses); and `{prefix}-PODNET` in
  the filter table, jumped to from FORWARD ahead of Docker's chains, accepts traffic to and
  from this node's pods (Docker would drop new connections into its bridge from other
  nodes, and isolates its bridges from each other).

Docker's own masquerading of the bridge is turned off (`enable_ip_masquerade=false`): it
would hide pod addresses from pods on other nodes.

`render_rules` and `route_changes` are pure; `PodNetwork` runs the commands. Only routes
marked with our protocol and chains named `{prefix}-PODNET` are ever changed or removed.
"""

from __future__ import annotations

import hashlib
import ipaddress
import subprocess
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)

VXLAN_ID = "1"
VXLAN_PORT = "8472"  # flannel's, and Linux's historical VXLAN port
VXLAN_MTU = 1450  # 1500 less the 50 bytes of VXLAN encapsulation
ZERO_MAC = "00:00:00:00:00:00"
ROUTE_PROTOCOL = "103"  # marks the routes the agent adds (iproute2's table lists 0-18, 42, 99, 186-192)
JUMP_COMMENT = "gitops pod network"
_WAIT = ("-w", "10")


class NetworkError(RuntimeError):
    """A command the pod network needs failed; the message carries its stderr."""


def pod_network_name(node: str) -> str:
    """The Docker network of the node's pods (one per node: nodes may share an engine in tests)."""
    return "gitops-pods-" + hashlib.sha256(node.encode()).hexdigest()[:10]


def bridge_name(node: str) -> str:
    """The Linux bridge of that network (interface names hold at most 15 characters)."""
    return "gpod" + hashlib.sha256(node.encode()).hexdigest()[:10]


def gateway(pod_cidr: str) -> str:
    """The node's own address in its pod subnet: the first one."""
    return str(ipaddress.IPv4Network(pod_cidr).network_address + 1)


def chain(prefix: str) -> str:
    return f"{prefix}-PODNET"


def jump_rules(prefix: str) -> list[tuple[str, str, list[str]]]:
    """(table, built-in chain, rule spec) of the jumps into our chains."""
    comment = ["-m", "comment", "--comment", JUMP_COMMENT]
    return [
        ("nat", "POSTROUTING", [*comment, "-j", chain(prefix)]),
        ("filter", "FORWARD", [*comment, "-j", chain(prefix)]),
    ]


def render_rules(pod_cidr: str, cluster_cidr: str, *, prefix: str) -> str:
    """The `iptables-restore --noflush` text that makes our two chains exactly what the
    module doc says (declaring a chain flushes it, so the text is the whole truth)."""
    pods = str(ipaddress.IPv4Network(pod_cidr))
    cluster = str(ipaddress.IPv4Network(cluster_cidr, strict=False))
    name = chain(prefix)
    return "\n".join(
        [
            "*nat",
            f":{name} - [0:0]",
            f'-A {name} -s {pods} -d {cluster} -m comment --comment "pod to pod: no NAT" -j RETURN',
            f'-A {name} -s {pods} -m comment --comment "pods leaving the pod range" -j MASQUERADE',
            "COMMIT",
            "*filter",
            f":{name} - [0:0]",
            f'-A {name} -d {pods} -m comment --comment "to this node\'s pods" -j ACCEPT',
            f'-A {name} -s {pods} -m comment --comment "from this node\'s pods" -j ACCEPT',
            "COMMIT",
            "",
        ]
    )


@dataclass(frozen=True)
class Route:
    subnet: str
    via: str


def route_changes(
    wanted: Sequence[Route], present: Sequence[Route], local_addresses: Collection[str], own_subnet: str
) -> tuple[list[Route], list[Route], list[str]]:
    """(routes to add or replace, routes of ours to delete, what is skipped and why).

    A route through one of this host's own addresses is skipped (that node shares this
    host: its subnet is on a local bridge already), and so is one to our own subnet."""
    skipped: list[str] = []
    keep: dict[str, Route] = {}
    for route in sorted(wanted, key=lambda r: (r.subnet, r.via)):
        if route.subnet == own_subnet:
            continue
        if route.via in local_addresses:
            continue
        if route.subnet in keep and keep[route.subnet] != route:
            skipped.append(
                f"pod subnet {route.subnet} is claimed through {keep[route.subnet].via} and {route.via}; "
                f"kept {keep[route.subnet].via}"
            )
            continue
        keep[route.subnet] = route
    have = {r.subnet: r for r in present}
    add = [r for s, r in sorted(keep.items()) if have.get(s) != r]
    delete = [r for s, r in sorted(have.items()) if s not in keep]
    return add, delete, skipped


def parse_routes(text: str) -> list[Route]:
    """Our routes from `ip -4 -o route show proto 103` (`SUBNET via ADDR dev ... `)."""
    routes = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 3 and words[1] == "via":
            subnet = words[0] if "/" in words[0] else f"{words[0]}/32"
            routes.append(Route(subnet, words[2]))
    return routes


def vxlan_name(prefix: str) -> str:
    return "gvx" + hashlib.sha256(prefix.encode()).hexdigest()[:10]


def tunnel_address(subnet: str) -> str:
    """A node's address on the overlay: its subnet's `.0`, as flannel's VXLAN backend has it."""
    return str(ipaddress.IPv4Network(subnet).network_address)


def split_routes(
    routes: Sequence[Route], connected: Sequence[str], local_addresses: Collection[str], own_subnet: str
) -> tuple[list[Route], list[Route]]:
    """(routes through a node on one of this node's links: host-gw; the others: VXLAN)."""
    links = [ipaddress.IPv4Network(c, strict=False) for c in connected]
    direct: list[Route] = []
    overlay: list[Route] = []
    for route in routes:
        if route.subnet == own_subnet or route.via in local_addresses:
            direct.append(route)  # dropped by route_changes
            continue
        try:
            via = ipaddress.IPv4Address(route.via)
        except ValueError:
            direct.append(route)  # reported by the route command
            continue
        (direct if any(via in link for link in links) else overlay).append(route)
    return direct, overlay


def ports_without_hairpin(ip_details: str) -> list[str]:
    """The bridge ports in `ip -d -o link show master BRIDGE` output whose hairpin is off."""
    ports = []
    for line in ip_details.splitlines():
        words = line.split()
        if len(words) > 1 and "hairpin" in words and words[words.index("hairpin") + 1] == "off":
            ports.append(words[1].rstrip(":").split("@")[0])
    return ports


class PodNetwork:
    """Keeps this node's routes and pod-network chains as the module doc says."""

    def __init__(self, *, prefix: str = "GITOPS", iptables: str = "iptables", ip: str = "ip") -> None:
        self.prefix = prefix
        self.iptables = iptables
        self.ip = ip
        self._rules: str | None = None
        self._vxlan_checked = False
        self.vxlan = vxlan_name(prefix)
        self.problems: tuple[str, ...] = ()  # what the last sync could not do, and why

    def _run(self, args: Sequence[str], *, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(list(args), input=stdin, capture_output=True, text=True, check=False)
        except FileNotFoundError as exc:
            raise NetworkError(f"{args[0]}: not found ({exc})") from None

    def hairpin(self, bridge: str) -> int:
        """Turn hairpin mode on for every port of `bridge` that lacks it (how many): a pod
        whose connection to a VIP is DNAT'd to itself gets its packets back out of the port
        they came in by (kubelet's hairpin-veth mode); the proxy masquerades that case.
        Through netlink (`ip`), so it works in the agent's network namespace."""
        listed = self._run([self.ip, "-d", "-o", "link", "show", "master", bridge])
        changed = 0
        for port in ports_without_hairpin(listed.stdout):
            done = self._run([self.ip, "link", "set", "dev", port, "type", "bridge_slave", "hairpin", "on"])
            changed += done.returncode == 0
        return changed

    def local_addresses(self) -> set[str]:
        done = self._run([self.ip, "-4", "-o", "addr", "show"])
        found = set()
        for line in done.stdout.splitlines():
            words = line.split()
            if "inet" in words:
                found.add(words[words.index("inet") + 1].split("/")[0])
        return found

    def routes(self) -> list[Route]:
        done = self._run([self.ip, "-4", "-o", "route", "show", "proto", ROUTE_PROTOCOL])
        if done.returncode != 0:
            raise NetworkError(f"ip route show failed: {done.stderr.strip()}")
        return parse_routes(done.stdout)

    def sync(
        self,
        pod_cidr: str,
        cluster_cidr: str,
        routes: Sequence[Route],
        *,
        bridge: str = "",
        address: str = "",
    ) -> None:
        """Make the rules and our routes match (through the VXLAN overlay, from this node's
        `address`, for nodes beyond its links), and let the pods of `bridge` reach themselves
        through a VIP (`hairpin`); what cannot be done is in `problems`."""
        problems: list[str] = []
        if bridge:
            self.hairpin(bridge)
        try:
            self._sync_rules(pod_cidr, cluster_cidr)
        except NetworkError as exc:
            problems.append(f"pod network rules: {exc}")
        local = self.local_addresses()
        direct, overlay = split_routes(routes, self.connected(), local, pod_cidr)
        if overlay and not address:
            problems.append("nodes beyond this node's links need the VXLAN overlay, which needs its address")
            overlay = []
        if overlay:
            try:
                self._sync_vxlan(pod_cidr, address, [r.via for r in overlay])
            except NetworkError as exc:
                problems.append(f"VXLAN overlay: {exc}")
                overlay = []
        wanted = [*direct, *(Route(r.subnet, tunnel_address(r.subnet)) for r in overlay)]
        tunneled = {r.subnet for r in overlay}
        add, delete, skipped = route_changes(wanted, self.routes(), local, pod_cidr)
        problems += skipped
        for route in delete:
            done = self._run([self.ip, "route", "del", route.subnet, "proto", ROUTE_PROTOCOL])
            if done.returncode == 0:
                log.info("network.route_deleted", subnet=route.subnet, via=route.via)
        for route in add:
            via = [self.ip, "route", "replace", route.subnet, "via", route.via]
            if route.subnet in tunneled:
                via += ["dev", self.vxlan, "onlink"]
            done = self._run([*via, "proto", ROUTE_PROTOCOL])
            if done.returncode != 0:
                problems.append(f"route to pod subnet {route.subnet} via {route.via}: {done.stderr.strip()}")
            else:
                log.info(
                    "network.route_added", subnet=route.subnet, via=route.via, vxlan=route.subnet in tunneled
                )
        if not overlay:
            self._drop_vxlan()
        if tuple(problems) != self.problems and problems:
            log.warning("network.problems", count=len(problems), first=problems[0])
        self.problems = tuple(problems)

    def connected(self) -> list[str]:
        """The subnets on this node's links (`ip route show scope link`)."""
        done = self._run([self.ip, "-4", "-o", "route", "show", "scope", "link"])
        return [
            line.split()[0] for line in done.stdout.splitlines() if line.split() and "/" in line.split()[0]
        ]

    def _sync_vxlan(self, pod_cidr: str, address: str, remotes: Sequence[str]) -> None:
        """The VXLAN device (VNI 1, UDP 8472 as flannel's), holding `<subnet>.0/32`, with a
        flooding entry per remote node: an ARP for a remote subnet's `.0` reaches every remote
        node, and the one holding it answers; answers are learnt."""
        dev = self.vxlan
        self._vxlan_checked = False  # to be removed again when no node needs it
        if self._run([self.ip, "link", "show", dev]).returncode != 0:
            made = self._run(
                [
                    self.ip,
                    "link",
                    "add",
                    dev,
                    "type",
                    "vxlan",
                    "id",
                    VXLAN_ID,
                    "dstport",
                    VXLAN_PORT,
                    "local",
                    address,
                    "learning",
                ]
            )
            if made.returncode != 0:
                raise NetworkError(f"ip link add {dev} type vxlan: {made.stderr.strip()}")
            self._run([self.ip, "link", "set", dev, "mtu", str(VXLAN_MTU)])
            log.info("network.vxlan_created", device=dev, local=address)
        self._run([self.ip, "addr", "replace", f"{tunnel_address(pod_cidr)}/32", "dev", dev])
        self._run([self.ip, "link", "set", dev, "up"])
        listed = self._run(["bridge", "fdb", "show", "dev", dev]).stdout
        present = {
            w[w.index("dst") + 1]
            for w in (line.split() for line in listed.splitlines())
            if w and w[0] == ZERO_MAC and "dst" in w
        }
        for remote in sorted(set(remotes) - present):
            done = self._run(["bridge", "fdb", "append", ZERO_MAC, "dev", dev, "dst", remote])
            if done.returncode != 0:
                raise NetworkError(f"bridge fdb append {remote}: {done.stderr.strip()}")
        for gone in sorted(present - set(remotes)):
            self._run(["bridge", "fdb", "del", ZERO_MAC, "dev", dev, "dst", gone])

    def _drop_vxlan(self) -> None:
        if self._vxlan_checked:
            return
        self._vxlan_checked = True
        if self._run([self.ip, "link", "show", self.vxlan]).returncode == 0:
            self._run([self.ip, "link", "del", self.vxlan])

    def _sync_rules(self, pod_cidr: str, cluster_cidr: str) -> None:
        text = render_rules(pod_cidr, cluster_cidr, prefix=self.prefix)
        if text == self._rules and self._jumps_present():
            return
        done = self._run([f"{self.iptables}-restore", *_WAIT, "--noflush"], stdin=text)
        if done.returncode != 0:
            done = self._run([f"{self.iptables}-restore", "--noflush"], stdin=text)
        if done.returncode != 0:
            raise NetworkError(f"{self.iptables}-restore failed: {done.stderr.strip()}")
        for table, builtin, spec in jump_rules(self.prefix):
            if self._iptables(table, "-C", builtin, *spec).returncode != 0:
                added = self._iptables(table, "-I", builtin, "1", *spec)
                if added.returncode != 0:
                    raise NetworkError(f"iptables -t {table} -I {builtin}: {added.stderr.strip()}")
        self._rules = text
        log.info("network.rules_synced", pod_cidr=pod_cidr, cluster_cidr=cluster_cidr)

    def _iptables(self, table: str, *args: str) -> subprocess.CompletedProcess[str]:
        return self._run([self.iptables, *_WAIT, "-t", table, *args])

    def _jumps_present(self) -> bool:
        return all(
            self._iptables(table, "-C", builtin, *spec).returncode == 0
            for table, builtin, spec in jump_rules(self.prefix)
        )

    def cleanup(self) -> None:
        """Remove our routes, VXLAN device, jumps and chains; a no-op when nothing is left."""
        for route in self.routes():
            self._run([self.ip, "route", "del", route.subnet, "proto", ROUTE_PROTOCOL])
        self._vxlan_checked = False
        self._drop_vxlan()
        for table, builtin, spec in jump_rules(self.prefix):
            while self._iptables(table, "-D", builtin, *spec).returncode == 0:
                pass
            self._iptables(table, "-F", chain(self.prefix))
            self._iptables(table, "-X", chain(self.prefix))
        self._rules = None
