"""hostPath volumes on a node: bind-mounted from the node (read-only when the mount says
so), made for DirectoryOrCreate and FileOrCreate, checked for the other types, and refused,
whatever the pod says, outside the folders the control plane allows (symbolic links
resolved); a refusal is a start failure with its reason (with an in-memory runtime)."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import httpx
import pytest

from gitops.agents.agent import Agent, AgentConfig
from gitops.codec import encode
from gitops.model import Container, NodeName, ObjectKey, Pod, PodName, PodSpec, Volume, VolumeMount
from tests.agents.fakes import MemoryRuntime

NODE = NodeName("n1")


def pod(path: Path | str, kind: str = "", *, read_only: bool = False, sub_path: str = "") -> Pod:
    mount = VolumeMount("host", "/host", read_only=read_only, sub_path=sub_path)
    spec = PodSpec(
        containers=(Container("main", "web:1", mounts=(mount,)),),
        volumes=(Volume("host", host_path=str(path), host_path_type=kind),),  # type: ignore[arg-type]
    )
    return Pod(
        "default", PodName("logs-1"), ObjectKey("Deployment", "default", "logs"), "h1", spec, node=NODE
    )


def agent(tmp_path: Path, rt: MemoryRuntime, *allowed: Path | str) -> Agent:
    config = AgentConfig(
        iptables="/nonexistent/iptables",
        server="http://gitops.invalid",
        node=NODE,
        join_token="t",
        state_dir=tmp_path / "state",
    )
    a = Agent(config, rt, clock=lambda: rt.now)
    a.allow_host_paths = tuple(str(p) for p in allowed)
    return a


def start(a: Agent, rt: MemoryRuntime, p: Pod) -> str:
    """Converge once; the pod's reason (empty when its container started)."""
    a.converge([p], rt.list(NODE))
    (status,) = a._statuses(rt.list(NODE), {p.id: p})
    return status.reason


def mounted(rt: MemoryRuntime, p: Pod) -> list[tuple[str, str, bool, bool]]:
    """The container's mount of its host path (at /host), among its others."""
    return [
        (m.source, m.target, m.read_only, m.volume)
        for m in rt.mounts_of[(p.id, "main")]
        if m.target == "/host"
    ]


@pytest.mark.parametrize("read_only", [False, True])
def test_an_allowed_folder_is_bind_mounted_read_only_when_the_mount_says_so(
    tmp_path: Path, read_only: bool
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    rt = MemoryRuntime()
    p = pod(logs, "Directory", read_only=read_only)
    assert start(agent(tmp_path, rt, tmp_path), rt, p) == ""
    assert rt.log == ["run default/logs-1"]
    assert mounted(rt, p) == [(str(logs), "/host", read_only, False)]  # a bind mount, not a volume


def test_directory_or_create_makes_the_folder_and_its_parents(tmp_path: Path) -> None:
    rt = MemoryRuntime()
    folder = tmp_path / "a" / "b"
    p = pod(folder, "DirectoryOrCreate")
    assert start(agent(tmp_path, rt, tmp_path), rt, p) == ""
    assert folder.is_dir() and stat.S_IMODE(folder.stat().st_mode) == 0o755 & ~_umask()
    assert mounted(rt, p)[0][0] == str(folder)


def test_file_or_create_makes_an_empty_file_in_a_folder_that_exists(tmp_path: Path) -> None:
    rt = MemoryRuntime()
    file = tmp_path / "app.log"
    p = pod(file, "FileOrCreate")
    assert start(agent(tmp_path, rt, tmp_path), rt, p) == ""
    assert file.is_file() and file.read_bytes() == b""
    assert stat.S_IMODE(file.stat().st_mode) == 0o644 & ~_umask()


def test_file_or_create_does_not_make_the_folder_of_the_file(tmp_path: Path) -> None:
    rt = MemoryRuntime()
    missing = tmp_path / "nowhere" / "app.log"
    reason = start(agent(tmp_path, rt, tmp_path), rt, pod(missing, "FileOrCreate"))
    assert reason == (
        f"CreateContainerError: hostPath {missing}: cannot make the file, "
        f"its folder {missing.parent} does not exist"
    )
    assert not missing.parent.exists()


def test_the_empty_type_checks_nothing_and_makes_a_missing_folder_as_container_runtimes_do(
    tmp_path: Path,
) -> None:
    rt = MemoryRuntime()
    file = tmp_path / "present"
    file.write_text("x")
    assert start(agent(tmp_path, rt, tmp_path), rt, pod(file)) == ""
    rt2 = MemoryRuntime()
    assert start(agent(tmp_path, rt2, tmp_path), rt2, pod(tmp_path / "made")) == ""
    assert (tmp_path / "made").is_dir()


@pytest.mark.parametrize(
    ("kind", "what"),
    [
        ("Directory", "a directory"),
        ("DirectoryOrCreate", "a directory"),
        ("Socket", "a socket"),
        ("CharDevice", "a character device"),
        ("BlockDevice", "a block device"),
    ],
)
def test_a_type_that_does_not_match_what_is_there_is_a_start_failure(
    tmp_path: Path, kind: str, what: str
) -> None:
    rt = MemoryRuntime()
    file = tmp_path / "x"
    file.write_text("x")
    assert (
        start(agent(tmp_path, rt, tmp_path), rt, pod(file, kind))
        == f"CreateContainerError: hostPath {file} is not {what}"
    )
    assert rt.log == []  # nothing started


def test_file_and_file_or_create_find_a_folder_is_not_a_file(tmp_path: Path) -> None:
    for kind in ("File", "FileOrCreate"):
        rt = MemoryRuntime()
        reason = start(agent(tmp_path, rt, tmp_path), rt, pod(tmp_path, kind))
        assert reason == f"CreateContainerError: hostPath {tmp_path} is not a file"


def test_a_type_that_does_not_make_what_is_missing_says_so(tmp_path: Path) -> None:
    rt = MemoryRuntime()
    missing = tmp_path / "gone"
    reason = start(agent(tmp_path, rt, tmp_path), rt, pod(missing, "Directory"))
    assert (
        reason == f"CreateContainerError: hostPath {missing} does not exist (type Directory does not make it)"
    )


def test_sockets_and_character_devices_are_mounted_when_they_are_what_the_type_says(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        rt = MemoryRuntime()
        assert start(agent(tmp_path, rt, tmp_path), rt, pod(path, "Socket")) == ""
    rt = MemoryRuntime()
    p = pod("/dev/null", "CharDevice", read_only=True)
    assert start(agent(tmp_path, rt, "/dev/null"), rt, p) == ""
    assert mounted(rt, p) == [("/dev/null", "/host", True, False)]


def test_a_host_path_outside_the_allowed_folders_is_refused_whatever_the_pod_says(tmp_path: Path) -> None:
    """Defence in depth: the control plane refuses such a revision, but the agent mounts
    nothing it was not told it may (an older control plane tells it nothing)."""
    for allowed in ((), (str(tmp_path / "logs"),), (str(tmp_path / "lo"),)):
        rt = MemoryRuntime()
        reason = start(agent(tmp_path, rt, *allowed), rt, pod(tmp_path / "logs2", "DirectoryOrCreate"))
        shown = ", ".join(allowed) or "none"
        assert reason == (
            f"CreateContainerError: hostPath {tmp_path / 'logs2'} is not under a folder the control plane "
            f"allows (allowed: {shown})"
        )
        assert rt.log == []
        assert not (tmp_path / "logs2").exists()  # nothing made either


def test_dot_dot_cannot_climb_out_of_an_allowed_folder(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    rt = MemoryRuntime()
    reason = start(
        agent(tmp_path, rt, tmp_path / "logs"), rt, pod(f"{tmp_path}/logs/../secrets", "DirectoryOrCreate")
    )
    assert "is not under a folder the control plane allows" in reason
    assert not (tmp_path / "secrets").exists()


def test_a_symbolic_link_cannot_lead_out_of_an_allowed_folder(tmp_path: Path) -> None:
    logs, secrets = tmp_path / "logs", tmp_path / "secrets"
    logs.mkdir()
    secrets.mkdir()
    (logs / "link").symlink_to(secrets)
    rt = MemoryRuntime()
    reason = start(agent(tmp_path, rt, logs), rt, pod(logs / "link" / "new", "DirectoryOrCreate"))
    assert reason == (
        f"CreateContainerError: hostPath {logs}/link/new leads to {secrets}/new (a symbolic link), "
        f"which is not under a folder the control plane allows (allowed: {logs})"
    )
    assert not (secrets / "new").exists()


def test_a_symbolic_link_within_the_allowed_folders_is_followed(tmp_path: Path) -> None:
    (tmp_path / "logs" / "2024").mkdir(parents=True)
    (tmp_path / "logs" / "current").symlink_to(tmp_path / "logs" / "2024")
    rt = MemoryRuntime()
    p = pod(tmp_path / "logs" / "current", "Directory")
    assert start(agent(tmp_path, rt, tmp_path / "logs"), rt, p) == ""
    assert mounted(rt, p)[0][0] == str(tmp_path / "logs" / "2024")


def test_a_sub_path_is_a_folder_of_the_host_path_made_when_missing(tmp_path: Path) -> None:
    rt = MemoryRuntime()
    p = pod(tmp_path, "Directory", sub_path="app/one")
    assert start(agent(tmp_path, rt, tmp_path), rt, p) == ""
    assert mounted(rt, p) == [(str(tmp_path / "app" / "one"), "/host", False, False)]
    assert (tmp_path / "app" / "one").is_dir()


def test_a_sub_path_cannot_leave_its_host_path(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "out").symlink_to(tmp_path)
    for sub_path in ("../x", "out/x"):
        rt = MemoryRuntime()
        reason = start(agent(tmp_path, rt, tmp_path / "logs"), rt, pod(tmp_path / "logs", sub_path=sub_path))
        assert (
            reason == f"CreateContainerError: subPath {sub_path!r} of hostPath {tmp_path / 'logs'} leaves it"
        )
    assert not (tmp_path / "x").exists()


def test_the_allowed_folders_come_with_each_sync_reply(tmp_path: Path) -> None:
    allowed: list[str] = [str(tmp_path)]
    p = pod(tmp_path / "made", "DirectoryOrCreate")

    def server(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/register"):
            return httpx.Response(200, json={"token": "tok", "service_cidr": "10.243.0.0/16"})
        reply = {"pods": [encode(p)], "services": [], "service_cidr": "10.243.0.0/16"}
        return httpx.Response(200, json={**reply, "allow_host_paths": allowed} if allowed else reply)

    rt = MemoryRuntime()
    a = agent(tmp_path, rt)
    a._http = httpx.Client(transport=httpx.MockTransport(server), base_url="http://gitops.invalid")
    a.tick()
    assert a.allow_host_paths == (str(tmp_path),)
    assert rt.log == ["run default/logs-1"]
    allowed.clear()  # a control plane that does not send them allows none
    a.tick()
    assert not a.allow_host_paths


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
