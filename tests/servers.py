"""Servers of our own on loopback for the tests and the benches: a free port, and a
PostgreSQL server (initdb and pg_ctl, run as `nobody` when we are root: PostgreSQL refuses
to run as root)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pg_bin(name: str) -> str | None:
    """PostgreSQL's program `name`: on the PATH, else in Debian's versioned folder (newest)."""
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    return None


class PostgresServer:
    """A new PostgreSQL cluster in a folder of its own under the system's temporary folder
    (pytest's is private to root), started on a loopback port; `stop` removes it."""

    def __init__(self, prefix: str = "gitops-pg-") -> None:
        initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
        if initdb is None or pg_ctl is None:
            raise FileNotFoundError(
                "initdb and pg_ctl not found: install PostgreSQL (scripts/setup --test does)"
            )
        self.pg_ctl = pg_ctl
        self.base = Path(tempfile.mkdtemp(prefix=prefix))
        self.data = self.base / "data"
        self.run_as: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.base, "nobody")
            self.run_as = ["runuser", "-u", "nobody", "--"]
        try:
            subprocess.run(
                [*self.run_as, initdb, "-D", str(self.data), "-U", "gitops", "--auth=trust", "-E", "UTF8"],
                check=True,
                capture_output=True,
            )
            self.port = free_port()
            options = f"-h 127.0.0.1 -p {self.port} -k {self.base}"
            subprocess.run(
                [
                    *self.run_as,
                    pg_ctl,
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.base / "pg.log"),
                    "-w",
                    "-o",
                    options,
                    "start",
                ],
                check=True,
                capture_output=True,
            )
        except BaseException:
            shutil.rmtree(self.base, ignore_errors=True)
            raise
        self.url = f"postgresql+psycopg2://gitops@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        subprocess.run(
            [*self.run_as, self.pg_ctl, "-D", str(self.data), "-m", "immediate", "stop"],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(self.base, ignore_errors=True)
