"""Lifecycle hooks: postStart runs once a container has started (not ready until it
succeeds; a failure kills it), preStop runs before a container is stopped, within its grace
period (with an in-memory runtime)."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

from gitops.agents.agent import Agent, AgentConfig
from gitops.model import Container, Hook, NodeName, ObjectKey, Pod, PodName, PodSpec
from tests.agents.fakes import MemoryRuntime

NODE = NodeName("n1")


def pod(**hooks: Hook) -> Pod:
    spec = PodSpec(containers=(Container("app", "web:1", **hooks),), termination_grace_period_seconds=20)  # type: ignore[arg-type]
    return Pod("default", PodName("a"), ObjectKey("Deployment", "default", "web"), "h", spec, node=NODE)


def agent(tmp_path: Path, rt: MemoryRuntime) -> Agent:
    config = AgentConfig(
        iptables="/nonexistent/iptables",
        server="http://127.0.0.1:9",
        node=NODE,
        join_token="t",
        state_dir=tmp_path,
    )
    return Agent(config, rt, clock=lambda: rt.now)


def test_a_container_is_not_ready_until_its_post_start_hook_succeeds(tmp_path: Path) -> None:
    rt = MemoryRuntime(exec_gate=threading.Event())
    p = pod(post_start=Hook("exec", command=("warm-up",)))
    a = agent(tmp_path, rt)
    a.converge([p], [])
    (status,) = a._statuses(rt.list(NODE), {p.id: p})
    assert (status.phase, status.ready, status.reason) == ("Running", False, "waiting for the postStart hook")
    assert rt.execs == [("c0", ("warm-up",))]
    rt.exec_gate.set()  # type: ignore[union-attr]
    threading.Event().wait(0.2)
    (status,) = a._statuses(rt.list(NODE), {p.id: p})
    assert (status.ready, status.reason) == (True, "")


def test_a_failing_post_start_hook_kills_the_container_and_says_why(tmp_path: Path) -> None:
    rt = MemoryRuntime()
    rt.exec_results[("warm-up",)] = (3, "cache unreachable")
    p = pod(post_start=Hook("exec", command=("warm-up",)))
    a = agent(tmp_path, rt)
    a.converge([p], [])
    for _ in range(50):
        if not a._hooks and not a._removing:
            break
        threading.Event().wait(0.05)
    a.wait_removals()
    (info,) = rt.list(NODE)
    assert not info.running
    a.converge([p], rt.list(NODE))
    (status,) = a._statuses(rt.list(NODE), {p.id: p})
    assert status.reason.startswith(
        "CrashLoopBackOff: exited with code 137 (FailedPostStartHook (exec warm-up)"
    )
    assert "cache unreachable" in status.reason


def test_the_pre_stop_hook_runs_before_the_container_is_stopped(tmp_path: Path) -> None:
    rt = MemoryRuntime()
    p = pod(pre_stop=Hook("exec", command=("drain",)))
    a = agent(tmp_path, rt)
    a.converge([p], [])
    leaving = dataclasses.replace(p, terminating_at=rt.now)
    a._assigned_cache = {p.id: leaving}
    a.converge([leaving], rt.list(NODE))
    rt.now += 5  # the drain is over
    a.converge([leaving], rt.list(NODE))
    a.wait_removals()
    assert rt.execs == [("c0", ("drain",))]
    assert rt.log[-1] == "remove default/a"


def test_a_pod_gone_from_the_node_is_removed_without_its_hook(tmp_path: Path) -> None:
    rt = MemoryRuntime()
    p = pod(pre_stop=Hook("exec", command=("drain",)))
    a = agent(tmp_path, rt)
    a.converge([p], [])
    a._assigned_cache = {}  # the control plane no longer lists it: its spec is not known here
    a.converge([], rt.list(NODE))
    a.wait_removals()
    assert rt.execs == []


def test_what_a_container_writes_to_its_termination_message_path_is_its_reason(tmp_path: Path) -> None:
    rt = MemoryRuntime()
    p = pod()
    a = agent(tmp_path, rt)
    a.converge([p], [])
    (path,) = [m.source for m in rt.mounts_of[(p.id, "app")] if m.target == "/dev/termination-log"]
    assert Path(path).read_bytes() == b"" and Path(path).stat().st_mode & 0o777 == 0o666
    Path(path).write_text("config key db.url missing\n")
    rt.exit(p.id, 3)
    (status,) = a._statuses(rt.list(NODE), {p.id: p})
    assert status.reason.endswith("; message: config key db.url missing")


def test_with_fallback_to_logs_a_silent_failure_gives_its_last_log_line(tmp_path: Path) -> None:
    rt = MemoryRuntime()
    spec = PodSpec(
        containers=(Container("app", "web:1", termination_message_policy="FallbackToLogsOnError"),),
        restart_policy="Never",
    )
    p = Pod("default", PodName("a"), ObjectKey("Deployment", "default", "web"), "h", spec, node=NODE)
    a = agent(tmp_path, rt)
    a.converge([p], [])
    (info,) = rt.list(NODE)
    rt.logs[info.id] = "starting\npanic: no database\n"
    rt.exit(p.id, 2)
    (status,) = a._statuses(rt.list(NODE), {p.id: p})
    assert status.reason == "exited with code 2; message: panic: no database"
