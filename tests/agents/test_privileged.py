"""Privileged containers and the host's PID and IPC namespaces run only where the server
allows them: the node checks again what validation already refused."""

from __future__ import annotations

from pathlib import Path

from gitops.agents.agent import Agent, AgentConfig
from gitops.agents.runtime import _security_options
from gitops.model import Container, NodeName, ObjectKey, Pod, PodName, PodSpec, SecurityContext
from tests.agents.fakes import MemoryRuntime

NODE = NodeName("n1")
PRIVILEGED = Container("tool", "web:1", security=SecurityContext(privileged=True))


def agent(tmp_path: Path, rt: MemoryRuntime, *, allowed: bool) -> Agent:
    config = AgentConfig(
        iptables="/nonexistent/iptables",
        server="http://127.0.0.1:9",
        node=NODE,
        join_token="t",
        state_dir=tmp_path,
    )
    a = Agent(config, rt, clock=lambda: rt.now)
    a.allow_privileged = allowed
    return a


def pod(spec: PodSpec) -> Pod:
    return Pod("default", PodName("a"), ObjectKey("Deployment", "default", "a"), "h", spec, node=NODE)


def test_a_node_refuses_a_privileged_pod_the_server_does_not_allow(tmp_path: Path) -> None:
    rt = MemoryRuntime()
    p = pod(PodSpec(containers=(PRIVILEGED,)))
    a = agent(tmp_path, rt, allowed=False)
    a.converge([p], [])
    assert rt.list(NODE) == []
    (status,) = a._statuses([], {p.id: p})
    assert status.reason == (
        "CreateContainerError: the pod is privileged or uses the host's namespaces, "
        "which the server does not allow"
    )
    host_pid = pod(PodSpec(containers=(Container("tool", "web:1"),), host_pid=True))
    assert host_pid.spec.privileged


def test_an_allowed_privileged_pod_runs_privileged(tmp_path: Path) -> None:
    rt = MemoryRuntime()
    agent(tmp_path, rt, allowed=True).converge([pod(PodSpec(containers=(PRIVILEGED,)))], [])
    assert len(rt.list(NODE)) == 1
    assert _security_options(PRIVILEGED)["privileged"] is True
    assert "privileged" not in _security_options(Container("plain", "web:1"))
