"""The agent converges its node on the pods it is given, with an in-memory runtime."""

from __future__ import annotations

import dataclasses
import json
import platform
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from gitops.agents.agent import ARCHES, Agent, AgentConfig, service_rules, well_known_labels
from gitops.agents.iptables import Backend
from gitops.agents.probes import Verdict
from gitops.api.models import SyncRequest
from gitops.codec import encode
from gitops.model import (
    Endpoint,
    MountedFile,
    NodeName,
    ObjectKey,
    Pod,
    PodId,
    PodName,
    ServiceEndpoints,
    ServicePort,
)
from tests.agents.fakes import MemoryRuntime
from tests.servers import free_port
from tests.specs import pod_spec

NODE = NodeName("n1")

# These agents talk to no kernel: their service rules fail to apply, and are reported.
NO_IPTABLES = "/nonexistent/iptables"


def pod(name: str, image: str = "web:1", template: str = "aaa", **spec: object) -> Pod:
    return Pod(
        "default",
        PodName(name),
        ObjectKey("Deployment", "default", "web"),
        template,
        pod_spec(image=image, **spec),
        node=NODE,
    )  # type: ignore[arg-type]


def restarts(rt: MemoryRuntime) -> list[str]:
    """The runs after the first: each restart is a fresh container."""
    return [line for line in rt.log if line.startswith("run ") and "#" in line]


def make_agent(tmp_path: Path, runtime: MemoryRuntime) -> Agent:
    config = AgentConfig(
        iptables=NO_IPTABLES, server="http://127.0.0.1:9", node=NODE, join_token="t", state_dir=tmp_path
    )
    return Agent(config, runtime, clock=lambda: runtime.now)


def test_missing_pods_get_containers_and_running_ones_are_adopted(tmp_path: Path) -> None:
    rt = MemoryRuntime()
    agent = make_agent(tmp_path, rt)
    pods = [pod("a"), pod("b")]
    agent.converge(pods, rt.list(NODE))
    assert rt.log == ["run default/a", "run default/b"]
    fresh = make_agent(tmp_path, rt)  # an agent that restarted
    assert not fresh.converge(pods, rt.list(NODE))
    assert rt.log == ["run default/a", "run default/b"]


def test_containers_of_pods_no_longer_assigned_are_removed(tmp_path: Path) -> None:
    rt = MemoryRuntime()
    agent = make_agent(tmp_path, rt)
    agent.converge([pod("a"), pod("b")], [])
    agent.converge([pod("a")], rt.list(NODE))
    agent.wait_removals()
    assert rt.log[-1] == "remove default/b"
    assert [c.pod for c in rt.list(NODE)] == ["default/a"]


def test_a_container_with_another_template_is_replaced(tmp_path: Path) -> None:
    rt = MemoryRuntime()
    agent = make_agent(tmp_path, rt)
    agent.converge([pod("a", template="aaa")], [])
    agent.converge([pod("a", template="bbb")], rt.list(NODE))
    agent.wait_removals()
    assert sorted(rt.log) == ["remove default/a", "run default/a", "run default/a"]


def test_exited_containers_restart_after_doubling_delays_capped_at_five_minutes(tmp_path: Path) -> None:
    rt = MemoryRuntime()
    agent = make_agent(tmp_path, rt)
    p = pod("a")
    agent.converge([p], [])
    delays = []
    exited_at = None
    for _ in range(2000):
        rt.now += 1
        container = max(rt.list(NODE), key=lambda c: c.restart)
        if container.running:
            rt.exit(p.id, 1)
            exited_at = rt.now
        before = len(restarts(rt))
        agent.converge([p], rt.list(NODE))
        if len(restarts(rt)) > before:
            assert exited_at is not None
            delays.append(rt.now - exited_at)
    assert delays[:7] == [10, 20, 40, 80, 160, 300, 300]


def test_a_container_that_ran_ten_minutes_restarts_after_ten_seconds_again(tmp_path: Path) -> None:
    rt = MemoryRuntime()
    agent = make_agent(tmp_path, rt)
    p = pod("a")
    agent.converge([p], [])
    for _ in range(3):  # three quick crashes: the next delay would be 80 s
        rt.now += 1
        rt.exit(p.id, 1)
        agent.converge([p], rt.list(NODE))
        rt.now += 300
        agent.converge([p], rt.list(NODE))
    rt.now += 601  # then it runs for over ten minutes
    rt.exit(p.id, 1)
    agent.converge([p], rt.list(NODE))
    rt.now += 10
    before = len(restarts(rt))
    agent.converge([p], rt.list(NODE))
    assert len(restarts(rt)) == before + 1


def test_restart_policy_never_leaves_the_pod_failed(tmp_path: Path) -> None:
    rt = MemoryRuntime()
    agent = make_agent(tmp_path, rt)
    p = pod("a", restart_policy="Never")
    agent.converge([p], [])
    rt.exit(p.id, 3)
    rt.now += 100
    assert not agent.converge([p], rt.list(NODE))
    (status,) = agent._statuses(rt.list(NODE), {p.id: p})
    assert (status.phase, status.exit_code, status.reason) == ("Failed", 3, "exited with code 3")


def test_a_missing_image_is_reported_with_a_clear_reason_and_retried_later(tmp_path: Path) -> None:
    rt = MemoryRuntime()
    agent = make_agent(tmp_path, rt)
    p = pod("a", image="nowhere:1", image_pull_policy="Never")
    agent.converge([p], [])
    (status,) = agent._statuses([], {p.id: p})
    assert status.phase == "Pending"
    assert status.reason == "ErrImageNeverPull: image 'nowhere:1' is not present on node n1"
    rt.log.clear()
    agent.converge([p], [])
    assert rt.log == []  # backing off, not hammering
    q = pod("b", image="nowhere:2")
    agent.converge([q], [])
    assert rt.log == ["pull nowhere:2"]
    (status,) = agent._statuses([], {q.id: q})
    assert status.reason == "ErrImagePull: pull of 'nowhere:2' failed: no registry reachable"


def test_files_are_written_and_mounted_read_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rt = MemoryRuntime()
    agent = make_agent(Path("relative-state"), rt)
    p = pod("a", files=(MountedFile("/etc/app/conf", b"x=1", 0o600),))
    agent.converge([p], [])
    ((host, inside),) = [m for m in rt.mounts[PodId("default/a")] if m[1] != "/dev/termination-log"]
    assert inside == "/etc/app/conf"
    assert Path(host).is_absolute()
    assert Path(host).read_bytes() == b"x=1"
    assert Path(host).stat().st_mode & 0o777 == 0o600


def test_service_rules_reach_local_pods_directly_and_remote_pods_by_host_port() -> None:
    port = ServicePort(80, "http", "TCP", "http")
    eps = (
        Endpoint(PodId("default/a"), NODE, "172.17.0.2", 8080, "192.0.2.10", 32001),
        Endpoint(PodId("default/b"), NodeName("n2"), "172.18.0.2", 8080, "192.0.2.11", 32002),
        Endpoint(PodId("default/c"), NodeName("n3"), "172.18.0.3", 8080, "192.0.2.12", 0),
    )
    svc = ServiceEndpoints("default", "web", "10.243.0.7", (port,), ((port, eps),))
    (rule,) = service_rules([svc], NODE)
    assert (rule.vip, rule.port, rule.protocol) == ("10.243.0.7", 80, "TCP")
    assert rule.backends == (Backend("172.17.0.2", 8080, local=True), Backend("192.0.2.11", 32002))
    assert dataclasses.asdict(rule)["service"] == "default/web:http"


def test_a_crashing_container_reports_its_exit_code_and_log_tail_read_once(tmp_path: Path) -> None:
    rt = MemoryRuntime()
    agent = make_agent(tmp_path, rt)
    p = pod("a")
    agent.converge([p], [])
    (container,) = rt.list(NODE)
    rt.logs[container.id] = "starting\npanic: no config\n"
    rt.exit(p.id, 2)
    agent.converge([p], rt.list(NODE))  # the plan accounts for the exit: a 10 s backoff
    for _ in range(3):
        (status,) = agent._statuses(rt.list(NODE), {p.id: p})
    assert status.exit_code == 2
    assert status.reason.startswith("CrashLoopBackOff: exited with code 2; restarting in ")
    assert status.last_log == "starting\npanic: no config\n"
    assert rt.log.count(f"logs {container.id}") == 1


def test_a_terminating_pod_keeps_running_while_endpoints_drain_then_is_stopped_and_reported(
    tmp_path: Path,
) -> None:
    rt = MemoryRuntime()
    agent = make_agent(tmp_path, rt)
    p = pod("a")
    agent.converge([p], [])
    leaving = dataclasses.replace(p, terminating_at=500.0)
    agent.converge([leaving], rt.list(NODE))
    agent.wait_removals()
    assert rt.log == ["run default/a"]  # still serving in-flight requests
    rt.now += agent.config.drain_seconds
    agent.converge([leaving], rt.list(NODE))
    agent.wait_removals()
    assert rt.log[-1] == "remove default/a"
    agent.converge([leaving], rt.list(NODE))
    assert agent._stopped == [PodId("default/a")]
    assert agent._statuses(rt.list(NODE), {leaving.id: leaving}) == []


def test_pod_ports_are_published_on_the_address_the_node_registered_with(tmp_path: Path) -> None:
    def server(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/register"):
            return httpx.Response(200, json={"token": "tok", "service_cidr": "10.243.0.0/16"})
        return httpx.Response(
            200, json={"pods": [encode(pod("a"))], "services": [], "service_cidr": "10.243.0.0/16"}
        )

    rt = MemoryRuntime()
    config = AgentConfig(
        iptables=NO_IPTABLES,
        server="http://gitops.invalid",
        node=NODE,
        join_token="t",
        state_dir=tmp_path,
        address="192.0.2.7",
    )
    agent = Agent(config, rt, clock=lambda: rt.now)
    agent._http = httpx.Client(transport=httpx.MockTransport(server), base_url="http://gitops.invalid")
    agent.tick()
    assert rt.published_on == {"default/a": "192.0.2.7"}


def test_a_node_registers_with_the_labels_kubelet_sets_and_its_own_over_them(tmp_path: Path) -> None:
    sent: list[dict[str, str]] = []

    def server(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content)["node"]["labels"])
        return httpx.Response(200, json={"token": "tok", "service_cidr": "10.243.0.0/16"})

    config = AgentConfig(
        iptables=NO_IPTABLES,
        server="http://gitops.invalid",
        node=NODE,
        join_token="t",
        state_dir=tmp_path,
        address="192.0.2.7",
        labels=(("disk", "ssd"), ("kubernetes.io/arch", "custom")),
        zone="eu-1a",
        region="eu-1",
    )
    agent = Agent(config, MemoryRuntime())
    agent._http = httpx.Client(transport=httpx.MockTransport(server), base_url="http://gitops.invalid")
    agent.register()
    assert sent == [
        {
            "kubernetes.io/hostname": "n1",
            "kubernetes.io/os": platform.system().lower(),
            "kubernetes.io/arch": "custom",
            "topology.kubernetes.io/zone": "eu-1a",
            "topology.kubernetes.io/region": "eu-1",
            "disk": "ssd",
        }
    ]
    assert well_known_labels("n1")["kubernetes.io/arch"] == ARCHES.get(platform.machine(), platform.machine())
    assert "kubernetes.io/hostname" not in well_known_labels("n" * 64)  # too long for a label value


def test_a_pod_whose_container_is_being_killed_is_not_started_again_meanwhile(tmp_path: Path) -> None:
    """A liveness kill that took longer than a tick once made the next tick start run 0 again
    (the pod looked container-less), replacing the container being killed: no restart was
    ever counted."""
    rt = MemoryRuntime(stop_gate=threading.Event())
    agent = make_agent(tmp_path, rt)
    pods = [pod("a")]
    agent.converge(pods, rt.list(NODE))
    agent._verdicts = {
        (PodId("default/a"), "main"): Verdict(ready=False, restart=True, reason="Liveness probe failed")
    }
    agent.converge(pods, rt.list(NODE))  # the kill starts; its SIGTERM takes a while
    rt.now += 1
    agent.converge(pods, rt.list(NODE))  # the next tick, the kill still under way
    assert rt.log == ["run default/a"]
    assert rt.stop_gate is not None
    rt.stop_gate.set()
    agent.wait_removals()
    rt.now += 1
    agent.converge(pods, rt.list(NODE))
    assert "CrashLoopBackOff" in agent._waiting["default/a"]
    rt.now += 10
    agent.converge(pods, rt.list(NODE))
    assert restarts(rt) == ["run default/a #1"]


def test_an_agent_given_several_control_planes_moves_to_the_next_when_one_cannot_be_reached(
    tmp_path: Path,
) -> None:
    unreachable = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    calls: list[str] = []

    def other(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(200, json={"token": "tok", "service_cidr": "10.243.0.0/16"})

    config = AgentConfig(
        iptables=NO_IPTABLES,
        server=f"{unreachable}, http://other.invalid",
        node=NODE,
        join_token="t",
        state_dir=tmp_path,
        address="192.0.2.7",
    )
    agent = Agent(config, MemoryRuntime())
    assert agent.server == unreachable
    agent.loop.once()  # the tick fails to connect: retried later, at the next control plane
    assert agent.loop.failures == 1
    assert agent.server == "http://other.invalid"
    assert str(agent.http.base_url) == "http://other.invalid"
    agent._http = httpx.Client(transport=httpx.MockTransport(other), base_url=agent.server)
    agent.register()
    assert calls == ["/agent/v1/register"]


def test_a_busy_control_plane_s_429_keeps_what_the_agent_holds_and_the_report_goes_again(
    tmp_path: Path,
) -> None:
    """While the controller writes a pass of thousands of pods, a sync that would read or
    write is answered 429 (`gitops.api.app.YIELD_SECONDS`): the agent keeps running what it
    holds, says so once, and sends the same report on its next tick, not as sent already."""
    bodies: list[dict[str, Any]] = []
    busy = [False]

    def server(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/register"):
            return httpx.Response(200, json={"token": "tok", "service_cidr": "10.243.0.0/16"})
        bodies.append(json.loads(request.content))
        if busy[0]:
            return httpx.Response(429, json={"detail": "busy"}, headers={"Retry-After": "1"})
        return httpx.Response(
            200,
            json={
                "pods": [encode(pod("a"))],
                "pods_version": "v1",
                "services": [],
                "services_version": "s1",
                "service_cidr": "10.243.0.0/16",
            },
        )

    rt = MemoryRuntime()
    agent = make_agent(tmp_path, rt)
    agent._http = httpx.Client(transport=httpx.MockTransport(server), base_url="http://gitops.invalid")
    agent.tick()  # a's container runs
    assert rt.log == ["run default/a"]
    busy[0] = True
    with capture_logs() as logs:
        agent.tick()
        agent.tick()
    assert [e["event"] for e in logs if e["event"] == "agent.server_busy"] == ["agent.server_busy"]
    assert rt.log == ["run default/a"]  # nothing stopped or started again for the busy answers
    assert bodies[-1]["statuses"] == bodies[-2]["statuses"] != []  # the report, each tick
    said, calls = bodies[-1]["statuses"], len(bodies)
    busy[0] = False
    agent.tick()
    assert len(bodies) > calls and bodies[calls]["statuses"] == said  # sent again, and taken
    assert rt.log == ["run default/a"]


@pytest.mark.parametrize("takes_edits", [False, True])
def test_the_agent_asks_for_service_edits_only_of_a_control_plane_that_said_it_takes_them(
    tmp_path: Path, takes_edits: bool
) -> None:
    """A control plane of an older release refuses a field it does not know (422), as
    `SyncRequest` does: the agent asks for Services as edits (`endpoint_edits`) only once
    a reply said the control plane takes them."""
    bodies: list[dict[str, Any]] = []
    known = {*SyncRequest.model_fields} - ({"endpoint_edits"} if not takes_edits else set())

    def server(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/register"):
            return httpx.Response(200, json={"token": "tok", "service_cidr": "10.243.0.0/16"})
        body = json.loads(request.content)
        bodies.append(body)
        if set(body) - known:
            return httpx.Response(
                422, json={"detail": [{"loc": ["body", *set(body) - known], "msg": "extra"}]}
            )
        reply = {"pods": [], "pods_version": "v1", "services": [], "services_version": "s1"}
        return httpx.Response(
            200,
            json={
                **reply,
                "service_cidr": "10.243.0.0/16",
                **({"endpoint_edits": True} if takes_edits else {}),
            },
        )

    agent = make_agent(tmp_path, MemoryRuntime())
    agent._http = httpx.Client(transport=httpx.MockTransport(server), base_url="http://gitops.invalid")
    agent.tick()
    agent.tick()  # (not long-polling: every tick calls)
    assert len(bodies) == 2 and "endpoint_edits" not in bodies[0]
    assert bodies[1].get("endpoint_edits", False) is takes_edits
