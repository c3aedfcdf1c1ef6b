"""An agent that long-polls its control plane (`AgentConfig.heartbeat_seconds`) syncs only
when it has news, a change of its own to report, or a heartbeat due."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from gitops.agents.agent import TICK_STUCK_SECONDS, Agent, AgentConfig
from gitops.agents.usage import ContainerUsage
from gitops.model import NodeName, PodId, Revision
from gitops.server import ControlPlane
from tests.agents.fakes import MemoryRuntime
from tests.api.test_agent_sync_server import NO_IPTABLES, NODE
from tests.api.test_agent_watch import plane
from tests.planner.factories import service

__all__ = ["plane"]  # the fixture


def watching_agent(
    plane: ControlPlane, tmp_path: Path, *, node: str = "n1", heartbeat_seconds: float = 3.0
) -> Agent:
    """An agent of `plane` with a long-poll heartbeat, on no Docker and no kernel."""
    config = AgentConfig(
        iptables=NO_IPTABLES,
        server=plane.url,
        node=NodeName(node),
        join_token=plane.join_token,
        state_dir=tmp_path / node,
        address=NODE["address"] if node == "n1" else "192.0.2.50",  # type: ignore[arg-type]
        capacity=(4000, 2**32),
        heartbeat_seconds=heartbeat_seconds,
    )
    return Agent(config, MemoryRuntime())


def test_a_watching_agent_calls_only_with_news_a_change_or_a_heartbeat_due(
    plane: ControlPlane, tmp_path: Path
) -> None:
    agent = watching_agent(plane, tmp_path)
    calls: list[str] = []
    original = agent._sync_call

    def counted(*args: Any, **kwargs: Any) -> dict[str, Any]:
        before = agent._sent[1]
        reply = original(*args, **kwargs)
        if agent._sent[1] != before:
            calls.append("sync")
        return reply

    agent._sync_call = counted  # type: ignore[method-assign]
    agent.tick()  # registers, first sync
    agent.tick()  # reports what the first tick found (its proxy cannot program rules here)
    assert agent._last_reply is not None and agent._last_reply["authoritative"] is True
    agent._watching = True  # as when its long-poll is answered
    calls.clear()
    for _ in range(5):
        agent.tick()
    assert calls == []  # nothing to say, nothing new
    agent._news = True  # the long-poll saw something move
    agent.tick()
    assert calls == ["sync"] and agent._news is False
    assert agent._beat is not None
    agent._beat.due = time.monotonic()  # the heartbeat is due
    agent.tick()
    assert calls == ["sync", "sync"]
    agent._watching = False  # the long-poll is down: every tick calls
    agent.tick()
    assert calls == ["sync", "sync", "sync"]


class MeasuredOnce:
    """A sampler whose figures the test sets (`latest`), as a finished pass would."""

    def __init__(self) -> None:
        self.latest: dict[tuple[PodId, str], ContainerUsage] = {}

    def poll(self, containers: Any) -> dict[tuple[PodId, str], ContainerUsage]:
        return self.latest

    def close(self) -> None:
        pass


def test_new_measurements_wait_for_the_heartbeat_and_never_make_a_call_of_their_own(
    plane: ControlPlane, tmp_path: Path
) -> None:
    """A sampler's pass done between heartbeats goes with the next call the agent makes
    anyway, once: at 5,000 nodes the calls made for measurements alone were a fifth of
    the control plane's calls."""
    agent = watching_agent(plane, tmp_path)
    sampler = MeasuredOnce()
    agent._usage = sampler  # type: ignore[assignment]
    sent: list[dict[str, Any]] = []
    post = agent._post_sync

    def recorded(payload: dict[str, Any]) -> httpx.Response:
        sent.append(payload)
        return post(payload)

    agent._post_sync = recorded  # type: ignore[method-assign]
    agent.tick()
    agent.tick()
    agent._watching = True
    agent.tick()  # quiet
    sent.clear()
    pod = PodId("default/web-1")
    sampler.latest = {(pod, "main"): ContainerUsage(12.5, 3 * 2**20, time.time(), 15.0)}
    for _ in range(3):
        agent.tick()
    assert sent == []  # the measurements alone make no call
    assert agent._beat is not None
    agent._beat.due = time.monotonic()  # the heartbeat is due: they go with it
    agent.tick()
    assert [p.get("measured") for p in sent] == [
        [[pod, sampler.latest[pod, "main"].at, 15.0, "main", 12.5, 3 * 2**20]]
    ]
    agent._news = True  # the next call carries no measurements already sent
    agent.tick()
    assert len(sent) == 2 and "measured" not in sent[1]


def test_an_agent_whose_ticks_stopped_stops_watching(plane: ControlPlane, tmp_path: Path) -> None:
    """A watch is a heartbeat to the control plane: an agent whose tick hangs (a Docker call
    that never returns) must not keep its node Ready by watching alone."""
    agent = watching_agent(plane, tmp_path)
    assert not agent._may_watch()  # nothing held yet
    agent.tick()
    assert agent._may_watch()
    agent._ticked_at = time.monotonic() - TICK_STUCK_SECONDS  # no tick began since
    assert not agent._may_watch()
    agent.tick()
    assert agent._may_watch()


def test_the_agent_applies_the_services_a_watch_answer_brought_without_a_call(
    plane: ControlPlane, tmp_path: Path
) -> None:
    """A move of the Services reaches a watching agent in its watch answer: its next tick
    applies the changes with no sync call, and holds what a full reply would give."""
    agent = watching_agent(plane, tmp_path, node="n5", heartbeat_seconds=30.0)
    agent.register()
    calls: list[str] = []
    agent.http.event_hooks["response"].append(lambda r: calls.append(r.url.path))
    agent.tick()
    agent.tick()  # reports what the first tick found
    # Only a Service more. With pods for this node too, the controller's pass (the ticks'
    # reports ask for one) could move them while the Services' version read within the last
    # `SharedEndpoints.ttl` was still the old one, and the watch answered the pods' move
    # alone, without the Services (CI, once, on a loaded machine).
    plane.store.apply_revision(
        Revision("git:x", "2" * 40), [service("web", {"app": "web"}), service("api", {"app": "api"})], [], 2.0
    )
    auth = {"Authorization": f"Bearer {agent._token}"}
    answer = httpx.post(  # what the agent's watch thread asks and gets
        f"{plane.url}/agent/v1/nodes/n5/watch",
        json={
            "have_pods": agent._held["pods_version"],
            "have_services": agent._held["services_version"],
            "timeout": 10,
            "service_deltas": True,
        },
        headers=auth,
        timeout=20,
    ).json()
    assert [s["name"] for s in answer["services_changed"]] == ["api"]
    agent._arrived, agent._watching = answer, True
    calls.clear()
    agent.tick()
    assert calls == []  # no sync call for it
    everything = httpx.post(f"{plane.url}/agent/v1/nodes/n5/sync", json={}, headers=auth).json()
    assert agent._held["services"] == everything["services"]
    assert agent._held["services_version"] == everything["services_version"] == answer["services_version"]


def test_an_agent_heartbeats_as_often_as_its_control_plane_needs(plane: ControlPlane, tmp_path: Path) -> None:
    """The control plane says how often it needs to hear from a quiet agent (a quarter of
    its NotReady grace, 40 s here): an agent set to 30 s syncs after 10 s all the same (one
    heartbeating every 10 s made a 6-s grace flap its node NotReady)."""
    agent = watching_agent(plane, tmp_path, heartbeat_seconds=30.0)
    agent.tick()
    agent.tick()
    assert agent._last_reply is not None and agent._last_reply["heartbeat_seconds"] == 10.0
    agent._watching = True
    said = agent._sent[0]
    agent._may_skip(said)
    assert agent._beat is not None and agent._beat.period == 10.0
    # At most one and a half of the control plane's periods after the last call (a call
    # less than half a period before a beat serves as it), whatever the agent's 30 s.
    assert agent._beat.due <= agent._sent[1] + 15.0
    agent._beat.due = time.monotonic() + 1.0
    assert agent._may_skip(said)
    agent._beat.due = time.monotonic() - 0.5
    assert not agent._may_skip(said)


def test_agents_that_synced_together_for_news_keep_their_heartbeats_apart(
    plane: ControlPlane, tmp_path: Path
) -> None:
    """Every agent syncs at once for a move they all see (or a control plane back from a
    restart): each keeps its heartbeat at its own phase, as drawn when it started. Counting
    a period from the last call instead, 5,000 agents would heartbeat in one burst from
    then on."""
    agents = [watching_agent(plane, tmp_path, node=f"n{i}", heartbeat_seconds=10.0) for i in (1, 2, 3)]
    for agent in agents:
        agent.tick()
        agent.tick()
        agent._watching = True
        agent.tick()  # quiet: no call, its heartbeat's phase drawn
    due = [agent._beat.due for agent in agents if agent._beat is not None]
    assert len(set(due)) == 3
    for agent in agents:  # the long-poll saw news: each syncs at once
        agent._news = True
        agent.tick()
        assert agent._news is False
    # Each heartbeat where it was, or (the call less than half a period before it served as
    # it) one period on: the phases stay apart.
    after = [agent._beat.due for agent in agents if agent._beat is not None]
    assert [round(a - d, 6) in (0.0, 10.0) for a, d in zip(after, due, strict=True)] == [True] * 3
    assert len({round(d % 10.0, 6) for d in after}) == 3
