"""End to end with `gitops up`: a Secret used as an env var and a file, printed by a container
to its log, by a crashing container's last words and by a failing exec readiness probe, is
in no page, API route, `/metrics`, `gitops status`, `gitops state export`, `gitops plan`,
server log or file of the state folder; its file lives on tmpfs."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from gitops.api.page import PAGES
from tests.conftest import docker_available, iptables_available, require, wait_for
from tests.e2e.cluster import IMAGE, ROOT, build_image, git
from tests.servers import free_port

pytestmark = pytest.mark.docker

PASSWORD = "Sup3r-S3cret-Pa55w0rd-" + uuid.uuid4().hex[:8]
CIDR = "10.250.9.0/24"


def manifests(replicas: int = 1) -> str:
    encoded = base64.b64encode(PASSWORD.encode()).decode()
    return textwrap.dedent(
        f"""\
        apiVersion: v1
        kind: Secret
        metadata: {{name: db-creds}}
        data: {{password: {encoded}}}
        ---
        apiVersion: apps/v1
        kind: Deployment
        metadata: {{name: leaky}}
        spec:
          replicas: {replicas}
          selector: {{matchLabels: {{app: leaky}}}}
          template:
            metadata: {{labels: {{app: leaky}}}}
            spec:
              terminationGracePeriodSeconds: 1
              containers:
                - name: app
                  image: {IMAGE}
                  imagePullPolicy: Never
                  command: ["sh", "-c"]
                  args: ['echo "starting with password=$PASSWORD"; cat /etc/db/password; exec sleep 3600']
                  env:
                    - name: PASSWORD
                      valueFrom: {{secretKeyRef: {{name: db-creds, key: password}}}}
                  volumeMounts: [{{name: creds, mountPath: /etc/db}}]
                  readinessProbe:
                    exec:
                      command: ["sh", "-c", 'echo "cannot log in as admin with $PASSWORD"; exit 1']
                    periodSeconds: 1
                    failureThreshold: 1
              volumes:
                - name: creds
                  secret: {{secretName: db-creds}}
        ---
        apiVersion: apps/v1
        kind: Deployment
        metadata: {{name: crashy}}
        spec:
          replicas: 1
          selector: {{matchLabels: {{app: crashy}}}}
          template:
            metadata: {{labels: {{app: crashy}}}}
            spec:
              terminationGracePeriodSeconds: 1
              containers:
                - name: app
                  image: {IMAGE}
                  imagePullPolicy: Never
                  command: ["sh", "-c", 'echo "fatal: the password $PASSWORD was refused"; exit 3']
                  env:
                    - name: PASSWORD
                      valueFrom: {{secretKeyRef: {{name: db-creds, key: password}}}}
        ---
        apiVersion: v1
        kind: Service
        metadata: {{name: leaky}}
        spec:
          selector: {{app: leaky}}
          ports: [{{port: 80, targetPort: 8080}}]
        """
    )


def forms(value: str) -> list[str]:
    return [value, base64.b64encode(value.encode()).decode(), json.dumps(value)[1:-1]]


class Up:
    """`gitops up` as a process, with its state folder, log and read API."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.folder = tmp / "manifests"
        self.state = tmp / "state"
        self.log = tmp / "server.log"
        self.node = "sec-" + uuid.uuid4().hex[:6]
        self.prefix = "GS" + uuid.uuid4().hex[:4].upper()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "gitops.cli", *args]

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.command(
                    "up",
                    str(self.folder),
                    "--state-dir",
                    str(self.state),
                    "--port",
                    str(self.port),
                    "--node",
                    self.node,
                    "--chain-prefix",
                    self.prefix,
                    "--service-cidr",
                    CIDR,
                ),
                stdout=log,
                stderr=log,
                cwd=ROOT,
            )

    def run(self, *args: str) -> str:
        done = subprocess.run(self.command(*args), capture_output=True, text=True, cwd=ROOT, check=False)
        assert done.returncode in (0, 2), done.stderr
        return done.stdout + done.stderr

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)
        subprocess.run(
            self.command("down", "--node", self.node, "--chain-prefix", self.prefix, "--service-cidr", CIDR),
            capture_output=True,
            cwd=ROOT,
            check=False,
        )


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    require(docker_available(), "a running Docker engine")
    require(iptables_available(), "iptables (as root)")
    build_image()
    up = Up(tmp_path_factory.mktemp("secrets"))
    up.folder.mkdir()
    (up.folder / "app.yaml").write_text(manifests())
    git(up.folder, "init", "-q", "-b", "main")
    git(up.folder, "add", "-A")
    git(up.folder, "commit", "-q", "-m", "leaky app")
    git(up.folder, "checkout", "-q", "-b", "more")
    (up.folder / "app.yaml").write_text(manifests(replicas=2))
    git(up.folder, "commit", "-q", "-am", "two leaky pods")
    git(up.folder, "checkout", "-q", "main")
    up.start()
    try:
        yield up
    finally:
        up.stop()


def pods(up: Up) -> dict[str, Any]:
    try:
        answer = httpx.get(f"{up.url}/api/v1/pods", timeout=5).json()
    except httpx.HTTPError:
        return {}
    return {p["owner"]: p for p in answer}


def test_a_secret_value_printed_everywhere_appears_nowhere_it_could_be_read(up: Up) -> None:
    leaky = wait_for(
        lambda: (
            (p := pods(up).get("Deployment default/leaky"))
            and p["phase"] == "Running"
            and "Readiness probe failed" in p["reason"]
            and p
        ),
        timeout=90,
        what="the leaky pod running and failing its readiness probe",
    )
    crashy = wait_for(
        lambda: (p := pods(up).get("Deployment default/crashy")) and "was refused" in p["last_log"] and p,
        timeout=90,
        what="the crashing pod's last log",
    )
    # The value really was printed: by the container, the crash and the probe.
    client = docker.from_env()
    (container,) = client.containers.list(
        filters={"label": [f"gitops.node={up.node}", "gitops.pod=" + leaky["id"]]}
    )
    assert PASSWORD in container.logs().decode()
    assert PASSWORD in container.exec_run(["sh", "-c", 'echo "$PASSWORD"']).output.decode()
    assert "[redacted]" in leaky["reason"] and "[redacted]" in crashy["last_log"]

    seen: dict[str, str] = {}
    with httpx.Client(base_url=up.url, timeout=10) as http:
        spec = http.get("/openapi.json").json()
        routes = [p for p in spec["paths"] if p.startswith("/api/v1/") and "{" not in p]
        for path in [*(p for p, _ in PAGES), *routes, "/metrics", "/openapi.json", "/docs", "/pods?q=leaky"]:
            answer = http.get(path)
            assert answer.status_code == 200, path
            seen[path] = answer.text
        seen["events"] = http.get("/api/v1/events?limit=1000").text
    seen["gitops status"] = up.run("status", "--server", up.url)
    assert "leaky" in seen["gitops status"]
    seen["state export"] = up.run("state", "export", "--server", up.url)
    seen["state export --db"] = up.run(
        "state", "export", "--db", f"sqlite:///{up.state / 'gitops.db'}", "--state-dir", str(up.state)
    )
    for fmt in ("text", "markdown", "json"):
        seen[f"gitops plan {fmt}"] = up.run(
            "plan",
            "--repo",
            str(up.folder),
            "--base",
            "main",
            "--head",
            "more",
            "--state",
            up.url,
            "--format",
            fmt,
        )
    assert "leaky" in seen["gitops plan text"]
    seen["server log"] = up.log.read_text(errors="replace")
    assert "agent.started" in seen["server log"]

    for where, text in seen.items():
        for form in forms(PASSWORD):
            assert form not in text, f"the Secret value is in {where}"

    files = [f for f in up.state.rglob("*") if f.is_file()]
    assert any(f.name == "gitops.db" for f in files) and any(f.name == "secret.key" for f in files)
    for f in files:
        content = f.read_bytes()
        for form in forms(PASSWORD):
            assert form.encode() not in content, f"the Secret value is in {f}"

    shm = Path("/dev/shm/gitops") / up.node
    assert any(PASSWORD.encode() == f.read_bytes() for f in shm.rglob("*") if f.is_file())


def test_the_state_folder_and_its_secrets_are_private(up: Up) -> None:
    assert up.state.stat().st_mode & 0o777 == 0o700
    for name in ("gitops.db", "secret.key", "join-token"):
        assert (up.state / name).stat().st_mode & 0o777 == 0o600, name
    assert os.stat(Path("/dev/shm/gitops") / up.node).st_mode & 0o777 == 0o700
