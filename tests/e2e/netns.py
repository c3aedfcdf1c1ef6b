"""Another node on this machine: a network namespace with its own veth and dockerd.

Every such node hangs off one bridge of the host (`LAN`, `10.251.0.1/24`), so the nodes
share an L2 segment as the pod network's host-gw routes need: the namespace gets
`10.251.0.<10+n>/24` and a default route through the host. Its dockerd has its own data
root, exec root, socket and bridge (`172.31.<n>.1/24`), and is started through `nsenter
--net=...` so it keeps the host's cgroups. Everything is removed on `stop()` (the bridge
and its FORWARD rule with the last node).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

LAN = "gitopse2e0"
LAN_ADDRESS = "10.251.0.1"
# Docker's FORWARD policy is DROP, and frames crossing a bridge pass FORWARD (br_netfilter).
LAN_ACCEPT = ["FORWARD", "-i", LAN, "-o", LAN, "-m", "comment", "--comment", "gitops e2e lan", "-j", "ACCEPT"]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _lan_up() -> None:
    if subprocess.run(["ip", "link", "show", LAN], capture_output=True, check=False).returncode != 0:
        _ip("link", "add", LAN, "type", "bridge")
        _ip("addr", "add", f"{LAN_ADDRESS}/24", "dev", LAN)
        _ip("link", "set", LAN, "up")
    if subprocess.run(["iptables", "-C", *LAN_ACCEPT], capture_output=True, check=False).returncode != 0:
        subprocess.run(
            ["iptables", "-I", *LAN_ACCEPT[:1], "1", *LAN_ACCEPT[1:]], check=True, capture_output=True
        )


def _ended(pid: int) -> bool:
    """Whether process `pid` has exited. The dockerd a test started is this process's child:
    once it exits it is a zombie, which `kill(pid, 0)` still finds, until it is reaped here."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def _lan_down_if_unused() -> None:
    members = subprocess.run(
        ["ip", "-o", "link", "show", "master", LAN], capture_output=True, text=True, check=False
    )
    if members.returncode == 0 and not members.stdout.strip():
        while (
            subprocess.run(["iptables", "-D", *LAN_ACCEPT], capture_output=True, check=False).returncode == 0
        ):
            pass
        subprocess.run(["ip", "link", "del", LAN], capture_output=True, check=False)


@dataclass
class NetnsNode:
    index: int
    root: Path
    # False: the node is off the shared segment, on a link of its own to this host, which
    # routes between them (`10.252.<n>.2/24`): another network, as behind a router.
    on_lan: bool = True

    @property
    def name(self) -> str:
        return f"gitops-n{self.index}"

    @property
    def address(self) -> str:
        return f"10.251.0.{10 + self.index}" if self.on_lan else f"10.252.{self.index}.2"

    @property
    def host_address(self) -> str:
        """The host's address towards the node (on the shared segment, where a control plane
        listens for the nodes; or on the node's own link)."""
        return LAN_ADDRESS if self.on_lan else f"10.252.{self.index}.1"

    def _routed(self, host_if: str, add: bool) -> None:
        for direction in ("-i", "-o"):
            rule = [
                "FORWARD",
                direction,
                host_if,
                "-m",
                "comment",
                "--comment",
                "gitops e2e routed",
                "-j",
                "ACCEPT",
            ]
            if add:
                subprocess.run(["iptables", "-I", rule[0], "1", *rule[1:]], check=True, capture_output=True)
            else:
                while (
                    subprocess.run(["iptables", "-D", *rule], capture_output=True, check=False).returncode
                    == 0
                ):
                    pass

    @property
    def docker_host(self) -> str:
        return f"unix://{self.root}/docker.sock"

    @property
    def nsenter(self) -> list[str]:
        return ["nsenter", f"--net=/var/run/netns/{self.name}"]

    def start(self) -> None:
        self.stop()
        self.root.mkdir(parents=True, exist_ok=True)
        host_if, ns_if = f"gov{self.index}h", f"gov{self.index}n"
        _ip("netns", "add", self.name)
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", self.name)
        if self.on_lan:
            _lan_up()
            _ip("link", "set", host_if, "master", LAN)
        else:
            _lan_up()  # where the control plane listens
            _ip("addr", "add", f"{self.host_address}/24", "dev", host_if)
            self._routed(host_if, add=True)
        _ip("link", "set", host_if, "up")
        _ip("-n", self.name, "addr", "add", f"{self.address}/24", "dev", ns_if)
        _ip("-n", self.name, "link", "set", ns_if, "up")
        _ip("-n", self.name, "link", "set", "lo", "up")
        _ip("-n", self.name, "route", "add", "default", "via", self.host_address)
        self.start_docker()

    def start_docker(self) -> None:
        """Start the node's dockerd (again, after it was stopped) and wait until it answers."""
        log = open(self.root / "dockerd.log", "ab")  # noqa: SIM115 - lives as long as dockerd
        subprocess.Popen(
            [
                *self.nsenter,
                "dockerd",
                "--data-root",
                str(self.root / "data"),
                "--exec-root",
                str(self.root / "exec"),
                "--pidfile",
                str(self.root / "docker.pid"),
                "-H",
                self.docker_host,
                "--bip",
                f"172.31.{self.index}.1/24",
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        env = {**os.environ, "DOCKER_HOST": self.docker_host}
        deadline = time.monotonic() + 60
        while subprocess.run(["docker", "info"], env=env, capture_output=True, check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError(f"dockerd in {self.name} did not start; see {self.root / 'dockerd.log'}")
            time.sleep(0.5)

    def stop(self) -> None:
        pidfile = self.root / "docker.pid"
        if pidfile.exists():
            env = {**os.environ, "DOCKER_HOST": self.docker_host}
            ids = subprocess.run(
                ["docker", "ps", "-aq"], env=env, capture_output=True, text=True, check=False
            )
            if ids.stdout.split():
                subprocess.run(
                    ["docker", "rm", "-f", *ids.stdout.split()], env=env, capture_output=True, check=False
                )
            try:
                pid = int(pidfile.read_text())
                os.kill(pid, signal.SIGTERM)
                for _ in range(300):
                    if _ended(pid):
                        break
                    time.sleep(0.1)
            except (ValueError, ProcessLookupError):
                pass
        # dockerd leaves its data root mounted on itself.
        subprocess.run(["umount", "-l", str(self.root / "data")], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", f"gov{self.index}h"], capture_output=True, check=False)
        if not self.on_lan:
            self._routed(f"gov{self.index}h", add=False)
        _lan_down_if_unused()
        shutil.rmtree(self.root, ignore_errors=True)
