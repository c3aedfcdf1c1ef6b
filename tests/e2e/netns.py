"""A second node on this machine: a network namespace with its own veth and dockerd.

The namespace gets `10.251.<n>.2/24`, the host side of the veth `10.251.<n>.1/24`, and a
default route through the host. Its dockerd has its own data root, exec root, socket and
bridge (`172.31.<n>.1/24`), and is started through `nsenter --net=...` so it keeps the
host's cgroups. Everything is removed on `stop()`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@dataclass
class NetnsNode:
    index: int
    root: Path

    @property
    def name(self) -> str:
        return f"gitops-n{self.index}"

    @property
    def address(self) -> str:
        return f"10.251.{self.index}.2"

    @property
    def host_address(self) -> str:
        return f"10.251.{self.index}.1"

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
        _ip("addr", "add", f"{self.host_address}/24", "dev", host_if)
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
                    os.kill(pid, 0)
                    time.sleep(0.1)
            except (ValueError, ProcessLookupError):
                pass
        # dockerd leaves its data root mounted on itself.
        subprocess.run(["umount", "-l", str(self.root / "data")], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", f"gov{self.index}h"], capture_output=True, check=False)
        shutil.rmtree(self.root, ignore_errors=True)
