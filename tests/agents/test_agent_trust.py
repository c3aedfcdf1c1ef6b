"""What an agent writes, reports and probes: Secret files only on tmpfs, a pod's Secret values
redacted from what it reports, probes at the pod's own address, skipped rules reported."""

from __future__ import annotations

import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from gitops.agents.agent import Agent, AgentConfig, filesystem_type
from gitops.agents.iptables import ServiceRule
from gitops.agents.probes import real_handler
from gitops.agents.runtime import ContainerInfo
from gitops.codec import encode
from gitops.model import MountedFile, NodeName, ObjectKey, Pod, PodId, PodName, Probe
from tests.agents.fakes import MemoryRuntime
from tests.specs import pod_spec

NODE = NodeName("n1")
SECRET = "s3cret-Value-9931"

# These agents talk to no kernel: their service rules fail to apply, and are reported.
NO_IPTABLES = "/nonexistent/iptables"


def secret_pod(name: str = "a", **spec: Any) -> Pod:
    return Pod(
        "default",
        PodName(name),
        ObjectKey("Deployment", "default", "web"),
        "aaa",
        pod_spec(image="web:1", env=(("TOKEN", SECRET), ("MODE", "prod")), secret_env=("TOKEN",), **spec),
        node=NODE,
    )


@pytest.fixture(autouse=True)
def _shm(tmp_path: Path) -> Iterator[None]:
    yield
    shutil.rmtree(Path("/dev/shm/gitops-test") / tmp_path.name, ignore_errors=True)


def agent(tmp_path: Path, rt: MemoryRuntime, secret_dir: Path | None = None) -> Agent:
    config = AgentConfig(
        iptables=NO_IPTABLES,
        server="http://gitops.invalid",
        node=NODE,
        join_token="t",
        state_dir=tmp_path / "state",
        secret_dir=secret_dir or Path("/dev/shm/gitops-test") / tmp_path.name,
    )
    return Agent(config, rt, clock=lambda: rt.now)


def test_secret_files_live_on_tmpfs_and_config_files_in_the_state_folder(tmp_path: Path) -> None:
    rt = MemoryRuntime()
    a = agent(tmp_path, rt)
    files = (
        MountedFile("/etc/app/token", SECRET.encode(), 0o400, secret=True),
        MountedFile("/etc/app/conf", b"x=1", 0o644),
    )
    p = secret_pod(files=files)
    a.converge([p], [])
    mounts = dict((inside, Path(host)) for host, inside in rt.mounts[p.id])
    assert filesystem_type(mounts["/etc/app/token"]) in ("tmpfs", "ramfs")
    assert mounts["/etc/app/token"].read_bytes() == SECRET.encode()
    assert mounts["/etc/app/conf"].is_relative_to((tmp_path / "state").resolve())
    on_disk = [f.read_bytes() for f in (tmp_path / "state").rglob("*") if f.is_file()]
    assert not any(SECRET.encode() in content for content in on_disk)
    a._forget_files(p.id)
    assert not mounts["/etc/app/token"].exists()


def test_without_a_tmpfs_a_pod_with_secret_files_does_not_start_and_says_why(tmp_path: Path) -> None:
    rt = MemoryRuntime()
    a = agent(tmp_path, rt, secret_dir=tmp_path / "on-disk")
    p = secret_pod(files=(MountedFile("/etc/app/token", SECRET.encode(), 0o400, secret=True),))
    a.converge([p], [])
    assert rt.log == []
    (status,) = a._statuses([], {p.id: p})
    assert status.phase == "Pending"
    assert "must stay off the node's disk" in status.reason and "--secret-dir" in status.reason
    assert not (tmp_path / "on-disk").exists() or not any((tmp_path / "on-disk").iterdir())


def test_what_an_agent_reports_about_a_pod_has_its_secret_values_redacted(tmp_path: Path) -> None:
    rt = MemoryRuntime()
    a = agent(tmp_path, rt)
    p = secret_pod()
    a.converge([p], [])
    (container,) = rt.list(NODE)
    rt.logs[container.id] = f"connecting with token {SECRET}\nfailed\n"
    rt.exit(p.id, 1)
    (status,) = a._statuses(rt.list(NODE), {p.id: p})
    assert SECRET not in status.last_log and "token [redacted]" in status.last_log


def test_probe_output_is_redacted_and_truncated(tmp_path: Path) -> None:
    rt = MemoryRuntime()
    a = agent(tmp_path, rt)
    probe = Probe("exec", command=("check",), period_seconds=1, failure_threshold=1)
    p = secret_pod(readiness_probe=probe)
    rt.exec_results[("check",)] = (1, f"bad token {SECRET} " + "x" * 2000)
    a.converge([p], [])
    a.probe([p], rt.list(NODE))
    verdict = a._verdicts[(p.id, "main")]
    assert SECRET not in verdict.reason and "[redacted]" in verdict.reason
    assert len(verdict.reason) <= 1000


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        _Recorder.seen.append(f"{self.server.server_address[0]}{self.path}")  # type: ignore[str-bytes-safe]
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        return


@pytest.fixture
def two_servers() -> Iterator[tuple[int, int]]:
    """HTTP servers on 127.0.0.2 (the pod) and 127.0.0.3 (somewhere else), same port."""
    pod = http.server.HTTPServer(("127.0.0.2", 0), _Recorder)
    port = pod.server_address[1]
    other = http.server.HTTPServer(("127.0.0.3", port), _Recorder)
    for server in (pod, other):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    _Recorder.seen = []
    yield port, port
    pod.shutdown()
    other.shutdown()


def test_http_probes_go_to_the_pod_unless_the_server_allows_probe_hosts(two_servers: tuple[int, int]) -> None:
    port, _ = two_servers
    container = ContainerInfo("c1", PodId("default/a"), "aaa", True, None, "127.0.0.2", (), 0.0, 0.0)
    probe = Probe("httpGet", port=port, path="/ready", host="127.0.0.3")
    allowed = {"yes": False}
    handle = real_handler(MemoryRuntime(), lambda: allowed["yes"])  # type: ignore[arg-type]
    assert handle(container, probe)[0]
    assert _Recorder.seen == ["127.0.0.2/ready"]
    allowed["yes"] = True
    assert handle(container, probe)[0]
    assert _Recorder.seen == ["127.0.0.2/ready", "127.0.0.3/ready"]


class _FakeProxy:
    def __init__(self, skipped: tuple[str, ...]) -> None:
        self.skipped = skipped
        self.synced: list[list[ServiceRule]] = []

    def sync(self, rules: list[ServiceRule]) -> bool:
        self.synced.append(rules)
        return True


def test_skipped_service_rules_are_reported_with_the_next_heartbeat(tmp_path: Path) -> None:
    sent: list[dict[str, Any]] = []

    def server(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/register"):
            return httpx.Response(200, json={"token": "tok", "service_cidr": "10.243.0.0/16"})
        import json

        sent.append(json.loads(request.content))
        reply = {"pods": [encode(secret_pod())], "services": [], "service_cidr": "10.243.0.0/16"}
        return httpx.Response(200, json=reply)

    rt = MemoryRuntime()
    a = agent(tmp_path, rt)
    a._http = httpx.Client(transport=httpx.MockTransport(server), base_url="http://gitops.invalid")
    a._proxy = _FakeProxy(("service rule 'default/x:http': backend nope:80 skipped",))  # type: ignore[assignment]
    a.tick()
    a.tick()
    assert sent[0]["proxy_problems"] == []
    assert sent[-1]["proxy_problems"] == ["service rule 'default/x:http': backend nope:80 skipped"]


def test_a_probe_path_cannot_name_another_host(two_servers: tuple[int, int]) -> None:
    """An `@` in the path once made the pod's address the URL's user info (an SSRF oracle)."""
    port, _ = two_servers
    container = ContainerInfo("c1", PodId("default/a"), "aaa", True, None, "127.0.0.2", (), 0.0, 0.0)
    handle = real_handler(MemoryRuntime())  # type: ignore[arg-type]
    for path in (f"@127.0.0.3:{port}/admin", f"//127.0.0.3:{port}/admin", "admin"):
        handle(container, Probe("httpGet", port=port, path=path))
    assert all(seen.startswith("127.0.0.2/") for seen in _Recorder.seen), _Recorder.seen


def test_probe_output_is_redacted_before_it_is_cut(tmp_path: Path) -> None:
    """A Secret value straddling the cut must not leave its first half behind."""
    rt = MemoryRuntime()
    a = agent(tmp_path, rt)
    probe = Probe("exec", command=("check",), period_seconds=1, failure_threshold=1)
    p = secret_pod(readiness_probe=probe)
    a._assigned_cache = {p.id: p}
    rt.exec_results[("check",)] = (1, "x" * 270 + f" token={SECRET}")
    a.converge([p], [])
    a.probe([p], rt.list(NODE))
    reason = a._verdicts[(p.id, "main")].reason
    assert not any(SECRET[:n] in reason for n in range(4, len(SECRET) + 1)), reason


def test_a_restarted_agent_reports_no_log_tail_until_it_knows_the_pod(tmp_path: Path) -> None:
    rt = MemoryRuntime()
    first = agent(tmp_path, rt)
    p = secret_pod()
    first.converge([p], [])
    (container,) = rt.list(NODE)
    rt.logs[container.id] = f"token {SECRET}\n"
    rt.exit(p.id, 1)
    restarted = agent(tmp_path, rt)  # knows no pod yet: its first report precedes its first sync
    (status,) = restarted._statuses(rt.list(NODE), {})
    assert status.last_log == ""
    (status,) = restarted._statuses(rt.list(NODE), {p.id: p})
    assert SECRET not in status.last_log and "[redacted]" in status.last_log


def test_a_secret_folder_someone_else_prepared_is_refused(tmp_path: Path) -> None:
    shm = Path("/dev/shm/gitops-test") / tmp_path.name
    shm.mkdir(parents=True, exist_ok=True)
    planted = shm / "elsewhere"
    planted.mkdir()
    (shm / "n1").symlink_to(planted)  # a local user got there first
    rt = MemoryRuntime()
    a = agent(tmp_path, rt, secret_dir=shm / "n1")
    p = secret_pod(files=(MountedFile("/etc/app/token", SECRET.encode(), 0o400, secret=True),))
    a.converge([p], [])
    assert rt.log == []
    (status,) = a._statuses([], {p.id: p})
    assert "is not a folder (a symbolic link?)" in status.reason
    assert not any(planted.iterdir())
