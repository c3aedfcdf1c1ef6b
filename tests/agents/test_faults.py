"""Faults between an agent and its runtime or its control plane, on a real server with an
in-memory runtime: an engine that stops and comes back, a control plane that lost its state."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gitops.agents.agent import Agent, AgentConfig
from gitops.model import NodeName, Revision
from gitops.server import ControlPlane
from gitops.store import Store
from tests.agents.fakes import MemoryRuntime
from tests.conftest import wait_for
from tests.planner.factories import deployment, service
from tests.servers import free_port

# These agents talk to no kernel: their service rules fail to apply, and are reported.
NO_IPTABLES = "/nonexistent/iptables"


class FakeProxy:
    skipped: tuple[str, ...] = ()

    def sync(self, rules: object) -> bool:
        return False


def make_agent(plane: ControlPlane, tmp_path: Path, runtime: MemoryRuntime) -> Agent:
    config = AgentConfig(
        iptables=NO_IPTABLES,
        server=plane.url,
        node=NodeName("n1"),
        join_token=plane.join_token,
        state_dir=tmp_path / "agent",
        address="192.0.2.10",
        capacity=(4000, 2**33),
    )
    agent = Agent(config, runtime, clock=lambda: runtime.now)
    agent._proxy = FakeProxy()  # type: ignore[assignment]
    return agent


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[ControlPlane]:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.apply_revision(
        Revision("git:x", "1" * 40),
        [deployment("web", replicas=2, image="web:1"), service("web", {"app": "web"})],
        [],
        1.0,
    )
    plane = ControlPlane(store, [], port=free_port(), controller_interval=3600, settle_seconds=0)
    plane.start()
    yield plane
    plane.stop()


def converge(plane: ControlPlane, agent: Agent, runtime: MemoryRuntime, ticks: int = 3) -> None:
    """Ticks of the agent, each after a pass of the plane's own controller."""
    assert plane.controller is not None
    for _ in range(ticks):
        plane.controller.wake()
        time.sleep(0.3)
        agent.tick()
        agent.wait_removals()
        runtime.now += 1


def test_a_stopped_engine_makes_the_node_not_ready_at_once_and_its_return_restarts_without_backoff(
    plane: ControlPlane, tmp_path: Path
) -> None:
    runtime = MemoryRuntime(now=time.time())
    agent = make_agent(plane, tmp_path, runtime)
    converge(plane, agent, runtime)
    assert [p.ready for p in plane.store.pods()] == [True, True]

    runtime.down = True  # the engine stops: its containers die with it
    for pod in plane.store.pods():
        runtime.exit(pod.id, 143)
    agent.tick()  # one tick, not 40 s of missing heartbeats
    (node,) = plane.store.nodes()
    assert not node.node.ready and node.node.reason.startswith(
        "container runtime: the Docker engine cannot be reached"
    )
    assert {p.ready for p in plane.store.pods()} == {False}
    assert all(p.reason.startswith("NodeNotReady: ") for p in plane.store.pods())
    (web,) = httpx.get(f"{plane.url}/api/v1/services").json()
    assert [eps for _, eps in web["endpoints"]] == [[]]  # out of the endpoints

    runtime.now += 30
    runtime.down = False  # the engine is back
    agent.tick()
    agent.wait_removals()
    runs = [line for line in runtime.log if line.startswith("run ")]
    assert runs[-2:] == [f"run {p.id} #1" for p in sorted(plane.store.pods(), key=lambda p: p.id)]  # at once
    agent.tick()
    (node,) = plane.store.nodes()
    assert node.node.ready and node.node.reason == ""
    assert all(p.ready for p in plane.store.pods())
    assert {s.backoff for s in agent._memory.values()} == {0}  # the outage was no crash


def test_a_control_plane_that_lost_its_state_adopts_the_running_containers(
    plane: ControlPlane, tmp_path: Path
) -> None:
    runtime = MemoryRuntime(now=time.time())
    agent = make_agent(plane, tmp_path, runtime)
    converge(plane, agent, runtime)
    before = {c.pod: c.id for c in runtime.list(NodeName("n1"))}
    assert len(before) == 2

    # The database is lost; a new control plane reads the same source.
    fresh = Store(f"sqlite:///{tmp_path / 'new.db'}")
    fresh.apply_revision(
        Revision("git:x", "1" * 40),
        [deployment("web", replicas=2, image="web:1"), service("web", {"app": "web"})],
        [],
        1.0,
    )
    second = ControlPlane(fresh, [], port=free_port(), controller_interval=0.2, settle_seconds=1.0)
    second.start()
    try:
        agent.config = dataclasses.replace(agent.config, server=second.url, join_token=second.join_token)
        agent._http = None
        agent._token = ""
        (tmp_path / "agent" / "node-token").unlink()
        for _ in range(6):
            agent.tick()
            agent.wait_removals()
            runtime.now += 1
            time.sleep(0.3)
        wait_for(
            lambda: len(fresh.pods()) == 2 and all(p.ready for p in fresh.pods()), 10, what="pods adopted"
        )
        assert {p.id for p in fresh.pods()} == set(before)
        assert {c.pod: c.id for c in runtime.list(NodeName("n1"))} == before  # nothing recreated
        assert [line for line in runtime.log if line.startswith(("run", "remove"))] == [
            f"run {p}" for p in sorted(before)
        ]
        assert {e.reason for e in fresh.events(limit=100)} >= {"Adopted"}
    finally:
        second.stop()


def test_the_controller_waits_for_every_known_node_to_offer_its_containers_once_sources_are_read(
    plane: ControlPlane, tmp_path: Path
) -> None:
    runtime = MemoryRuntime(now=time.time())
    agent = make_agent(plane, tmp_path, runtime)
    converge(plane, agent, runtime)
    plane.stop()

    # The same store (n1 known) under a new control plane whose sources are not read yet.
    read = [False]
    again = ControlPlane(plane.store, [], port=free_port(), controller_interval=3600, settle_seconds=60)
    again.sources_read = lambda: read[0]  # type: ignore[method-assign]
    again.start()
    try:
        agent.config = dataclasses.replace(agent.config, server=again.url)
        agent._http = None
        agent.tick()
        read[0] = True
        assert not again.settled()  # n1 reported before its containers could be adopted
        agent.tick()
        assert again.settled()
    finally:
        again.stop()


def test_a_control_plane_that_started_without_nodes_waits_the_settle_time_whoever_reports(
    tmp_path: Path,
) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    plane = ControlPlane(store, [], port=free_port(), controller_interval=3600, settle_seconds=60)
    plane.start()
    try:
        runtime = MemoryRuntime(now=time.time())
        agent = make_agent(plane, tmp_path, runtime)
        agent.tick()
        agent.tick()
        assert [r.node.name for r in store.nodes()] == ["n1"]
        assert not plane.settled()  # other agents of a lost store may still be on their way back
        plane._started -= 60
        assert plane.settled()
    finally:
        plane.stop()
