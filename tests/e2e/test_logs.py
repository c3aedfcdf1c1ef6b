"""End to end on one real node: `gitops logs` (a subprocess, as a user runs it) reads a busybox
container's log through the node's agent: the last lines, new lines as they come with
--follow, the run before a crash with --previous; a Secret value it prints is redacted, an
escape sequence is escaped, and what cannot be read says why. Prints the time to first byte."""

from __future__ import annotations

import base64
import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import wait_for
from tests.e2e.cluster import IMAGE, ROOT, Cluster, running_cluster

pytestmark = pytest.mark.docker

TOKEN = "e2e-Log-Secret-" + uuid.uuid4().hex[:8]

MANIFESTS = textwrap.dedent(
    f"""\
    apiVersion: v1
    kind: Secret
    metadata: {{name: talker-creds}}
    data: {{token: {base64.b64encode(TOKEN.encode()).decode()}}}
    ---
    apiVersion: apps/v1
    kind: Deployment
    metadata: {{name: talker}}
    spec:
      replicas: 1
      selector: {{matchLabels: {{app: talker}}}}
      template:
        metadata: {{labels: {{app: talker}}}}
        spec:
          terminationGracePeriodSeconds: 1
          containers:
            - name: main
              image: {IMAGE}
              imagePullPolicy: Never
              command: ["sh", "-c"]
              args:
                - >-
                  echo "hello from talker";
                  echo "token=$TOKEN";
                  printf "\\033[31mred\\033[0m\\tcolumn\\n";
                  i=0; while true; do i=$((i+1)); echo "tick $i"; sleep 0.5; done
              env:
                - name: TOKEN
                  valueFrom: {{secretKeyRef: {{name: talker-creds, key: token}}}}
    ---
    apiVersion: apps/v1
    kind: Deployment
    metadata: {{name: crasher}}
    spec:
      replicas: 1
      selector: {{matchLabels: {{app: crasher}}}}
      template:
        metadata: {{labels: {{app: crasher}}}}
        spec:
          terminationGracePeriodSeconds: 1
          containers:
            - name: main
              image: {IMAGE}
              imagePullPolicy: Never
              command: ["sh", "-c", 'echo "started at $(date +%s)"; sleep 1; exit 3']
    """
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(
        tmp_path_factory.mktemp("logs"), {"apps.yaml": MANIFESTS}, "talker and crasher"
    ) as c:
        wait_for(lambda: pod(c, "talker", ready=True), timeout=120, what="talker ready")
        yield c


def pod(cluster: Cluster, app: str, *, ready: bool = False) -> dict[str, Any] | None:
    return next(
        (
            p
            for p in cluster.api("/api/v1/pods")
            if p["name"].startswith(f"{app}-") and (p["ready"] or not ready) and p["node"]
        ),
        None,
    )


def gitops_logs(cluster: Cluster, *args: str) -> list[str]:
    assert cluster.plane is not None
    return [sys.executable, "-m", "gitops.cli", "logs", *args, "--server", cluster.plane.url]


def run_logs(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    command = gitops_logs(cluster, *args)
    return subprocess.run(command, check=False, capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_the_last_lines_are_read_with_the_secret_redacted_and_the_escape_escaped(cluster: Cluster) -> None:
    talker = pod(cluster, "talker")
    assert talker is not None
    wait_for(lambda: "tick 3" in run_logs(cluster, talker["name"]).stdout, timeout=30, what="a few ticks")
    started = time.monotonic()
    done = run_logs(cluster, talker["name"])
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:3] == ["hello from talker", "token=[redacted]", "\\x1b[31mred\\x1b[0m\tcolumn"]
    assert TOKEN not in done.stdout and "\x1b" not in done.stdout
    assert re.fullmatch(r"tick \d+", lines[-1])
    tail = run_logs(cluster, talker["name"], "--tail", "2")
    assert [re.sub(r"\d+", "N", line) for line in tail.stdout.splitlines()] == ["tick N", "tick N"]
    print(f"`gitops logs {talker['name']}` (a new process) took {took:.2f}s")


def test_the_time_to_first_byte_is_about_one_sync(cluster: Cluster) -> None:
    assert cluster.plane is not None
    talker = pod(cluster, "talker")
    assert talker is not None
    waits = []
    for _ in range(5):
        started = time.monotonic()
        url = f"{cluster.plane.url}/api/v1/pods/default/{talker['name']}/logs"
        with httpx.stream("GET", url, params={"tail": 1}, timeout=30) as response:
            assert response.status_code == 200
            next(response.iter_bytes())
            waits.append(time.monotonic() - started)
    print("time to first byte:", ", ".join(f"{w:.2f}s" for w in waits))
    assert max(waits) < 3.0


def test_following_prints_new_lines_until_interrupted(cluster: Cluster) -> None:
    talker = pod(cluster, "talker")
    assert talker is not None
    started = time.monotonic()
    follower = subprocess.Popen(
        gitops_logs(cluster, talker["name"], "--follow", "--tail", "1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        # As a terminal has it: a suite started in the background (`cmd &`) ignores SIGINT,
        # and its children would inherit that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
    )
    try:
        assert follower.stdout is not None
        first = follower.stdout.readline()
        first_at = time.monotonic() - started
        seen = [first.strip()]
        while len(seen) < 4:
            seen.append(follower.stdout.readline().strip())
        numbers = [int(line.split()[1]) for line in seen]
        assert numbers == list(range(numbers[0], numbers[0] + 4)), seen
        print(f"--follow: first line after {first_at:.2f}s (process start included)")
    finally:
        follower.send_signal(signal.SIGINT)
        follower.wait(timeout=10)
    # The reader has gone: the agent hears it with its next post (within 2 s) and stops reading.
    wait_for(
        lambda: '"outcome": "the reader has gone"' in cluster.log_of().read_text(),
        timeout=10,
        what="the agent to stop following",
    )


def test_the_run_before_a_crash_is_read_with_previous(cluster: Cluster) -> None:
    crashed = wait_for(
        lambda: next(
            (
                p
                for p in cluster.api("/api/v1/pods")
                if p["name"].startswith("crasher-") and p["restarts"] >= 1
            ),
            None,
        ),
        timeout=90,
        what="the crasher's restart",
    )
    previous = run_logs(cluster, crashed["name"], "--previous")
    current = run_logs(cluster, crashed["name"])
    assert previous.returncode == 0 and current.returncode == 0, previous.stderr + current.stderr
    before = int(previous.stdout.split()[-1])
    now = int(current.stdout.split()[-1])
    assert before < now, (previous.stdout, current.stdout)


def test_what_cannot_be_read_says_why(cluster: Cluster) -> None:
    talker = pod(cluster, "talker")
    assert talker is not None
    never = run_logs(cluster, talker["name"], "--previous")
    assert never.returncode == 1
    assert "previous terminated container main" in never.stderr
    other = run_logs(cluster, talker["name"], "-c", "sidecar")
    assert other.returncode == 1
    assert (
        f"container sidecar is not valid for pod default/{talker['name']}; choose one of: [main]"
        in other.stderr
    )
    missing = run_logs(cluster, "nope")
    assert (missing.returncode, missing.stderr.strip()) == (1, "error: pod default/nope not found")
