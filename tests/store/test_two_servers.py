"""Two `gitops serve` started at the same moment on one empty PostgreSQL database both come
up (0.1 raced on creating the tables and the second crashed with a duplicate-table error)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from gitops.store import SecretKeys
from tests.e2e.cluster import ROOT
from tests.servers import free_port

CONFIGMAP = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: shared}\ndata: {a: '1'}\n"


def test_two_servers_started_together_on_one_empty_postgresql_both_come_up(
    postgres_database: str, tmp_path: Path
) -> None:
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "c.yaml").write_text(CONFIGMAP)
    ports = [free_port(), free_port()]
    logs = [tmp_path / f"serve-{i}.log" for i in range(2)]
    command = [
        sys.executable,
        "-m",
        "gitops.cli",
        "serve",
        "--db",
        postgres_database,
        "--dir",
        str(tmp_path / "manifests"),
    ]
    # Servers of one cluster share its secret key (and so can read each other's sealed values).
    shared = ["--secret-key-file", str(tmp_path / "cluster.key"), "--join-token-file", str(tmp_path / "join")]
    (tmp_path / "join").write_text("join-token-for-both\n")
    subprocess.run(
        [*command[:3], "validate", str(tmp_path / "manifests")], cwd=ROOT, check=True, capture_output=True
    )

    SecretKeys.from_file(tmp_path / "cluster.key")
    processes = [
        subprocess.Popen(
            [*command, *shared, "--port", str(port), "--state-dir", str(tmp_path / f"state-{i}")],
            stdout=open(log, "wb"),  # noqa: SIM115 - closed with the process
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        for i, (port, log) in enumerate(zip(ports, logs, strict=True))
    ]
    try:
        deadline = time.monotonic() + 60
        up: set[int] = set()
        while time.monotonic() < deadline and len(up) < 2:
            for port, process in zip(ports, processes, strict=True):
                assert process.poll() is None, [log.read_text() for log in logs]
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                        up.add(port)
                except httpx.HTTPError:
                    pass
            time.sleep(0.2)
        assert up == set(ports), [log.read_text() for log in logs]
        for port in ports:
            status = httpx.get(f"http://127.0.0.1:{port}/api/v1/status", timeout=5).json()
            assert status["counts"]["objects"] in (0, 1)
        assert sum("store.migrated" in log.read_text() for log in logs) == 1
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=20)
