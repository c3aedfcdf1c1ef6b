"""The agent sync route on a real server: a slow sync never stalls other requests, agents
share one computation of the endpoints, a report like the last costs no write and gets
back only what changed, and an agent refused its name stops."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from sqlalchemy import event

from gitops.agents.agent import Agent, AgentConfig, NodeRefused
from gitops.controller import reconcile_once
from gitops.model import NodeName, Revision
from gitops.planner.services import KeptEndpoints
from gitops.server import ControlPlane
from gitops.store import Store
from tests.agents.fakes import MemoryRuntime
from tests.conftest import wait_for
from tests.planner.factories import deployment, service
from tests.servers import free_port

NODE = {"name": "n1", "address": "192.0.2.10", "cpu_milli": 4000, "memory_bytes": 2**32}

# These agents talk to no kernel: their service rules fail to apply, and are reported.
NO_IPTABLES = "/nonexistent/iptables"


@pytest.fixture
def plane(tmp_path: Path) -> ControlPlane:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.apply_revision(
        Revision("git:x", "1" * 40), [deployment(replicas=2), service("web", {"app": "web"})], [], 1.0
    )
    plane = ControlPlane(store, [], port=free_port(), controller_interval=3600)
    plane.start()
    yield plane
    plane.stop()


def register(url: str, token: str, node: dict[str, object] = NODE) -> str:
    response = httpx.post(
        f"{url}/agent/v1/register", json={"node": node}, headers={"X-Gitops-Join-Token": token}
    )
    assert response.status_code == 200, response.text
    return str(response.json()["token"])


def test_a_slow_sync_does_not_stall_the_server(plane: ControlPlane, monkeypatch: pytest.MonkeyPatch) -> None:
    token = register(plane.url, plane.join_token)
    slow = threading.Event()
    original = plane.store.heartbeats

    def heartbeats(*args: object, **kwargs: object) -> list[bool | Exception]:
        slow.set()
        time.sleep(2.0)  # a store under load
        return original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(plane.store, "heartbeats", heartbeats)
    auth = {"Authorization": f"Bearer {token}"}
    syncing = threading.Thread(
        target=lambda: httpx.post(f"{plane.url}/agent/v1/nodes/n1/sync", json={}, headers=auth, timeout=10)
    )
    syncing.start()
    assert slow.wait(5)
    started = time.monotonic()
    assert httpx.get(f"{plane.url}/healthz", timeout=10).status_code == 200
    waited = time.monotonic() - started
    syncing.join()
    assert waited < 1.0, f"/healthz waited {waited:.2f}s behind a sync"


def test_agents_share_one_computation_of_the_endpoints(
    plane: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    original = KeptEndpoints.update

    def counting(self: KeptEndpoints, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(KeptEndpoints, "update", counting)
    tokens = {f"n{i}": register(plane.url, plane.join_token, {**NODE, "name": f"n{i}"}) for i in range(1, 6)}
    time.sleep(0.6)
    calls.clear()
    for name, token in tokens.items():
        auth = {"Authorization": f"Bearer {token}"}
        answer = httpx.post(f"{plane.url}/agent/v1/nodes/{name}/sync", json={}, headers=auth)
        assert answer.status_code == 200 and len(answer.json()["services"]) == 1
    assert len(calls) <= 1


def _writes(store: Store) -> list[str]:
    """Every write statement sent to the store's database from now on (any thread), but the
    control plane's lease renewals (`gitops.store.lease`), which go on whatever agents do."""
    seen: list[str] = []

    def note(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if statement.lstrip()[:6].upper() in ("INSERT", "UPDATE", "DELETE") and "leases" not in statement:
            seen.append(
                statement.split(maxsplit=1)[0]
                + " "
                + statement.split()[
                    1 if statement.startswith("DELETE") else 2 if statement.startswith("INSERT") else 1
                ]
            )

    event.listen(store.engine, "before_cursor_execute", note)
    return seen


def test_a_report_like_the_last_writes_nothing_and_gets_back_only_versions(plane: ControlPlane) -> None:
    """A second identical report: no write at all (its heartbeat time waits for the
    batch), and null pods and services, as the request holds their versions already. A
    heartbeat batch, when due, is one statement for every node that waited."""
    token = register(plane.url, plane.join_token)
    reconcile_once(plane.store, time.time())  # the Deployment's two pods, bound to n1
    auth = {"Authorization": f"Bearer {token}"}
    url = f"{plane.url}/agent/v1/nodes/n1/sync"
    pods = plane.store.pods(node="n1")
    report = {
        "statuses": [
            {"pod": p.id, "phase": "Running", "ready": True, "pod_ip": f"10.244.0.{i + 2}"}
            for i, p in enumerate(pods)
        ]
    }
    first = httpx.post(url, json=report, headers=auth).json()
    assert len(first["pods"]) == 2 and len(first["services"]) == 1 and first["routes"] == []
    # The reply carries the version of the pods as the report left them.
    have = {"have_pods": first["pods_version"], "have_services": first["services_version"]}
    writes = _writes(plane.store)
    third = httpx.post(url, json={**report, **have}, headers=auth).json()
    assert writes == []
    assert (third["pods"], third["services"], third["routes"]) == (None, None, None)
    assert (third["pods_version"], third["services_version"]) == (have["have_pods"], have["have_services"])
    beat = next(r for r in plane.store.nodes() if r.node.name == "n1").heartbeat_at
    time.sleep(1.1)  # the batch is due: the next call writes it
    httpx.post(url, json={**report, **have}, headers=auth)
    assert writes == ["UPDATE nodes"]
    assert next(r for r in plane.store.nodes() if r.node.name == "n1").heartbeat_at > beat
    # A changed status is written at once, and the node's pods come back with a new version.
    report["statuses"][0]["ready"] = False
    fourth = httpx.post(url, json={**report, **have}, headers=auth).json()
    assert any(w == "UPDATE pods" for w in writes)
    assert fourth["pods_version"] != have["have_pods"] and len(fourth["pods"]) == 2
    assert not [p for p in plane.store.pods(node="n1") if p.pod_ip == "10.244.0.2" and p.ready]


def registered_agent(plane: ControlPlane, tmp_path: Path, node: str, address: str) -> Agent:
    """A real agent of `plane` on no Docker and no kernel, registered."""
    config = AgentConfig(
        iptables=NO_IPTABLES,
        server=plane.url,
        node=NodeName(node),
        join_token=plane.join_token,
        state_dir=tmp_path / "agent",
        address=address,
        capacity=(4000, 2**32),
    )
    agent = Agent(config, MemoryRuntime())
    agent.register()
    return agent


def sync_replies(agent: Agent) -> list[dict[str, Any]]:
    """The replies to `agent`'s sync calls from now on, as it received them."""
    replies: list[dict[str, Any]] = []

    def seen(response: httpx.Response) -> None:
        if response.url.path.endswith("/sync"):
            response.read()
            replies.append(response.json())

    agent.http.event_hooks["response"].append(seen)
    return replies


def test_an_agent_keeps_what_a_reply_leaves_out(plane: ControlPlane, tmp_path: Path) -> None:
    """The real agent names the versions it holds and fills in what the reply leaves out."""
    agent = registered_agent(plane, tmp_path, "n3", "192.0.2.30")
    reconcile_once(plane.store, time.time())  # the Deployment's two pods, bound to n3
    replies = sync_replies(agent)
    for _ in range(4):
        agent.tick()
    assert any(r["pods"] is None and r["services"] is None for r in replies)
    assert sorted(agent._assigned_cache) == sorted(p.id for p in plane.store.pods())
    held = agent._held
    assert len(held["pods"]) == 2 and len(held["services"]) == 1


def test_the_agent_takes_the_services_changed_since_the_version_it_holds(
    plane: ControlPlane, tmp_path: Path
) -> None:
    """After a Service is added, the real agent gets that Service alone and holds every
    Service as a full reply would give them."""
    agent = registered_agent(plane, tmp_path, "n4", "192.0.2.40")
    replies = sync_replies(agent)
    agent.tick()
    assert [s["name"] for s in agent._held["services"]] == ["web"]
    plane.store.apply_revision(
        Revision("git:x", "2" * 40),
        [deployment(replicas=2), service("web", {"app": "web"}), service("api", {"app": "api"})],
        [],
        2.0,
    )
    deadline = time.monotonic() + 10
    while [s["name"] for s in agent._held["services"]] != ["api", "web"] and time.monotonic() < deadline:
        time.sleep(0.2)
        agent.tick()
    delta = replies[-1]
    assert delta["services"] is None and [s["name"] for s in delta["services_changed"]] == ["api"]
    assert delta["services_removed"] == []
    everything = httpx.post(  # as an older agent asks: every Service
        f"{plane.url}/agent/v1/nodes/n4/sync", json={}, headers={"Authorization": f"Bearer {agent._token}"}
    ).json()
    assert agent._held["services"] == everything["services"]
    assert agent._held["services_version"] == everything["services_version"]
    # A tick that skips its call (watching, nothing new) completes the last reply again: the
    # changes it carried are not applied to the version they led to (the agent then held
    # no version and fetched every Service after every delta).
    agent._complete(agent._quiet_reply())
    assert agent._held["services_version"] == everything["services_version"]
    assert agent._held["services"] == everything["services"]


def test_the_agent_takes_a_service_whose_endpoints_moved_as_edits_of_the_one_it_holds(
    plane: ControlPlane, tmp_path: Path
) -> None:
    """When a pod joins a Service, the real agent gets the Service as edits of the one it
    holds (the endpoints it has as runs of them, the new one whole: `gitops.edits`), not
    whole, and then holds every Service as a full reply gives them."""
    agent = registered_agent(plane, tmp_path, "n6", "192.0.2.60")
    reconcile_once(plane.store, time.time())  # the Deployment's two pods, bound to n6

    def endpoints() -> int:
        agent.tick()
        web = [s for s in agent._held.get("services", []) if s["name"] == "web"]
        return len(web[0]["endpoints"][0][1]) if web and web[0]["endpoints"] else 0

    assert wait_for(lambda: endpoints() == 2, timeout=10)
    replies = sync_replies(agent)
    plane.store.apply_revision(
        Revision("git:x", "2" * 40), [deployment(replicas=3), service("web", {"app": "web"})], [], 2.0
    )
    reconcile_once(plane.store, time.time())
    assert wait_for(lambda: endpoints() == 3, timeout=10)
    changed = [s for r in replies for s in r.get("services_changed") or () if s["name"] == "web"]
    assert changed and all("edits" in s and "endpoints" not in s for s in changed), changed
    runs = [part for s in changed for part in s["edits"]["endpoints"][0] if isinstance(part, list)]
    assert runs, changed  # the endpoints the agent held were not sent again
    everything = httpx.post(  # as an older agent asks: every Service, whole
        f"{plane.url}/agent/v1/nodes/n6/sync", json={}, headers={"Authorization": f"Bearer {agent._token}"}
    ).json()
    assert agent._held["services_version"] == everything["services_version"]
    assert agent._held["services"] == everything["services"]


def test_a_watch_answers_a_move_of_the_endpoints_with_edits_to_an_agent_that_takes_them(
    plane: ControlPlane, tmp_path: Path
) -> None:
    """An agent long-polling that takes edits gets a Service whose endpoints moved as edits
    of the one it holds in the watch's answer; the reply had said the server takes them."""
    agent = registered_agent(plane, tmp_path, "n8", "192.0.2.80")
    reconcile_once(plane.store, time.time())
    assert wait_for(
        lambda: agent.tick() or len(agent._held["services"][0]["endpoints"][0][1]) == 2, timeout=10
    )
    tainted = {**NODE, "name": "n9", "taints": [{"key": "watcher", "value": "", "effect": "NoSchedule"}]}
    token = register(plane.url, plane.join_token, tainted)
    held = httpx.post(
        f"{plane.url}/agent/v1/nodes/n9/sync", json={}, headers={"Authorization": f"Bearer {token}"}
    ).json()
    assert held["endpoint_edits"] is True  # the server says it takes them
    answers: list[dict[str, Any]] = []
    watch = threading.Thread(
        target=lambda: answers.append(
            httpx.post(
                f"{plane.url}/agent/v1/nodes/n9/watch",
                json={
                    "have_pods": held["pods_version"],
                    "have_services": held["services_version"],
                    "timeout": 30,
                    "service_deltas": True,
                    "endpoint_edits": True,
                },
                headers={"Authorization": f"Bearer {token}"},
                timeout=40,
            ).json()
        )
    )
    watch.start()
    plane.store.apply_revision(
        Revision("git:x", "2" * 40), [deployment(replicas=3), service("web", {"app": "web"})], [], 2.0
    )
    reconcile_once(plane.store, time.time())
    assert wait_for(
        lambda: agent.tick() or len(agent._held["services"][0]["endpoints"][0][1]) == 3, timeout=10
    )
    watch.join(40)
    [answer] = answers
    assert answer["changed"] is True and answer["services_from"] == held["services_version"]
    [web] = answer["services_changed"]
    assert "edits" in web and "endpoints" not in web, web


def test_service_edits_that_do_not_fit_make_the_agent_fetch_every_service(
    plane: ControlPlane, tmp_path: Path
) -> None:
    """Edits of a Service the agent does not hold as they were made for (another version
    than it says it holds) are not applied: it keeps what it has and asks for every Service."""
    agent = registered_agent(plane, tmp_path, "n7", "192.0.2.70")
    agent.tick()
    held = agent._held["services_version"]
    services = agent._held["services"]
    assert held and [s["name"] for s in services] == ["web"]
    edits = {**services[0], "edits": {"endpoints": [[[0, 5]]], "addresses": [[0, 5]]}}
    del edits["endpoints"], edits["addresses"]
    reply = {"services": None, "services_version": "next", "services_from": held, "services_changed": [edits]}
    with structlog.testing.capture_logs() as logs:
        agent._complete(reply)
    assert [e["event"] for e in logs if e["event"].startswith("agent.service_edits")] == [
        "agent.service_edits_refused"
    ]
    assert agent._held["services_version"] == "" and agent._held["services"] == services
    agent.tick()  # asks for every Service
    assert agent._held["services_version"] == held and agent._held["services"] == services


def test_changes_since_another_version_than_the_one_held_leave_what_the_agent_holds(
    plane: ControlPlane, tmp_path: Path
) -> None:
    """A watch's answer and a sync reply crossing bring changes since another version than
    the one the agent holds: it keeps what it holds, with its version, and asks from there;
    it fetched every Service instead (33 MB at 1,500 Services)."""
    agent = registered_agent(plane, tmp_path, "n10", "192.0.2.100")
    agent.tick()
    held, services = agent._held["services_version"], agent._held["services"]
    assert held and [s["name"] for s in services] == ["web"]
    other = {**services[0], "name": "other"}
    agent._complete(
        {"services": None, "services_version": "v9", "services_from": "v7", "services_changed": [other]}
    )
    assert agent._held["services_version"] == held and agent._held["services"] == services
    replies = sync_replies(agent)
    agent.tick()
    assert replies[-1]["services"] is None and replies[-1]["services_version"] == held  # nothing fetched


def test_an_agent_refused_its_name_stops_and_says_why(plane: ControlPlane, tmp_path: Path) -> None:
    register(plane.url, plane.join_token)  # n1 is registered and Ready
    config = AgentConfig(
        iptables=NO_IPTABLES,
        server=plane.url,
        node=NodeName("n1"),
        join_token=plane.join_token,
        state_dir=tmp_path / "impostor",
        address="203.0.113.66",
        capacity=(1000, 2**30),
    )
    agent = Agent(config, MemoryRuntime())
    with pytest.raises(NodeRefused, match=r"409.*Ready"):
        agent.run()
    assert not (tmp_path / "impostor" / "node-token").exists()


def test_a_restarted_agent_takes_its_own_name_back_with_its_saved_token(
    plane: ControlPlane, tmp_path: Path
) -> None:
    config = AgentConfig(
        iptables=NO_IPTABLES,
        server=plane.url,
        node=NodeName("n7"),
        join_token=plane.join_token,
        state_dir=tmp_path / "agent",
        address="192.0.2.70",
        capacity=(1000, 2**30),
    )
    first = Agent(config, MemoryRuntime())
    first.register()
    saved = (tmp_path / "agent" / "node-token").read_text().strip()
    assert (tmp_path / "agent" / "node-token").stat().st_mode & 0o777 == 0o600
    second = Agent(config, MemoryRuntime())  # the process restarted: the node is still Ready
    assert second.register() != saved


def test_gitops_agent_exits_non_zero_saying_why_when_refused(
    plane: ControlPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gitops import cli

    register(plane.url, plane.join_token)  # n1 is registered and Ready

    def agent(args: object, server: str, token: str, state: Path) -> Agent:
        config = AgentConfig(
            iptables=NO_IPTABLES,
            server=server,
            node=NodeName("n1"),
            join_token=token,
            state_dir=state,
            address="203.0.113.66",
            capacity=(1000, 2**30),
        )
        return Agent(config, MemoryRuntime())

    monkeypatch.setattr(cli, "_agent", agent)
    monkeypatch.setenv("GITOPS_JOIN_TOKEN", plane.join_token)
    assert cli.main(["agent", "--server", plane.url, "--node", "n1", "--state-dir", str(tmp_path)]) == 1
    assert "refused node n1" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="GITOPS_JOIN_TOKEN"):
        cli.main(["agent", "--server", plane.url, "--join-token", plane.join_token])
    # `cli.main` pointed structlog at pytest's captured stream, closed after the test: the
    # control plane's stop (in the fixture, before `_fresh_structlog` resets it) logs.
    structlog.reset_defaults()


def test_a_sync_that_reads_or_writes_waits_while_the_controller_writes_many_pods(
    plane: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the controller writes a pass of thousands of pods it holds its precedence
    (`gitops.loop.Precedence`): an agent's report waits, on the event loop (the server goes
    on answering), until the write is done or the call's patience (`YIELD_SECONDS`) ends."""
    from gitops.api import app as api

    token = register(plane.url, plane.join_token)
    reconcile_once(plane.store, 2.0)  # both pods bound to n1
    auth = {"Authorization": f"Bearer {token}"}
    pods = sorted(p.id for p in plane.store.pods())
    running = [{"pod": p, "phase": "Running", "ready": True, "pod_ip": "10.128.0.5"} for p in pods]
    answered: list[float] = []

    def report(statuses: list[dict[str, Any]]) -> None:
        began = time.monotonic()
        response = httpx.post(
            f"{plane.url}/agent/v1/nodes/n1/sync", json={"statuses": statuses}, headers=auth, timeout=20
        )
        assert response.status_code == 200, response.text
        answered.append(time.monotonic() - began)

    holding = plane.precedence.held()
    holding.__enter__()
    try:
        syncing = threading.Thread(target=report, args=(running,))
        syncing.start()
        time.sleep(0.5)
        assert syncing.is_alive() and not answered  # waiting for the controller's write
        assert httpx.get(f"{plane.url}/healthz", timeout=5).status_code == 200  # the server answers
        assert {p.phase for p in plane.store.pods()} == {"Pending"}  # nothing written yet
    finally:
        holding.__exit__(None, None, None)
    syncing.join(10)
    assert len(answered) == 1 and answered[0] >= 0.5
    assert {p.phase for p in plane.store.pods()} == {"Running"}
    waited = plane.metrics.registry.get_sample_value("gitops_agent_calls_yielded_seconds_total")
    assert waited is not None and 0.4 <= waited <= answered[0]  # what /metrics tells operators
    # The call's whole time in the server, its wait included, is in the agent sync histogram.
    sample = plane.metrics.registry.get_sample_value
    assert sample("gitops_agent_sync_seconds_count") == 1
    assert 0.5 <= (sample("gitops_agent_sync_seconds_sum") or 0.0) <= answered[0]
    assert sample("gitops_agent_sync_seconds_bucket", {"le": "0.25"}) == 0

    # Held longer than a call's patience: answered 429 then (send it again), the report
    # not written, the node's heartbeat kept.
    monkeypatch.setattr(api, "YIELD_SECONDS", 0.3)
    beat_before = plane.store.nodes()[0].heartbeat_at
    with plane.precedence.held():
        began = time.monotonic()
        busy = httpx.post(
            f"{plane.url}/agent/v1/nodes/n1/sync",
            json={"statuses": [{**s, "ready": False} for s in running]},
            headers=auth,
            timeout=20,
        )
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
        assert time.monotonic() - began >= 0.3
    assert {p.ready for p in plane.store.pods()} == {True}
    plane._server.config.app.state.agent_reports.flush()  # type: ignore[union-attr]
    assert plane.store.nodes()[0].heartbeat_at > beat_before
    report([{**s, "ready": False} for s in running])  # sent again: taken
    assert {p.ready for p in plane.store.pods()} == {False}


def test_a_lone_agents_kept_heartbeat_is_written_without_another_call(plane: ControlPlane) -> None:
    """A heartbeat kept in memory was written only by a later call that found the kept ones
    due: a lone agent's waited for its next heartbeat (10 s), so its node's heartbeat looked
    up to 20 s old, and one whose next call failed was never written. A timer on the event
    loop writes them when due."""
    token = register(plane.url, plane.join_token)
    auth = {"Authorization": f"Bearer {token}"}

    def sync() -> int:
        url = f"{plane.url}/agent/v1/nodes/n1/sync"
        return httpx.post(url, json={}, headers=auth, timeout=10).status_code

    assert sync() == 200  # the report, written
    before = time.time()
    assert sync() == 200  # the same report: only its heartbeat, kept in memory
    wait_for(lambda: plane.store.nodes()[0].heartbeat_at >= before, 5, what="the kept heartbeat written")


@pytest.mark.skipif(sys.platform != "linux", reason="a nice value per thread is Linux's")
def test_the_kept_heartbeats_are_written_by_a_background_thread_nicer_than_the_calls_ones(
    plane: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flush is background work: not in a worker thread that answers calls (those have
    the event loop's short slice and nice value, and the woken loop waited behind it for a
    CPU), but in the process's background pool (`gitops.handover.BACKGROUND_POOL`)."""
    from gitops.handover import BACKGROUND_NICE

    reports = plane._server.config.app.state.agent_reports  # type: ignore[union-attr]
    seen: list[tuple[str, int]] = []
    real = reports.flush

    def flush() -> None:
        seen.append((threading.current_thread().name, os.getpriority(os.PRIO_PROCESS, 0)))
        real()

    monkeypatch.setattr(reports, "flush", flush)
    token = register(plane.url, plane.join_token)
    auth = {"Authorization": f"Bearer {token}"}
    url = f"{plane.url}/agent/v1/nodes/n1/sync"
    assert httpx.post(url, json={}, headers=auth, timeout=10).status_code == 200  # the report, written
    before = time.time()
    assert httpx.post(url, json={}, headers=auth, timeout=10).status_code == 200  # its heartbeat, kept
    wait_for(lambda: plane.store.nodes()[0].heartbeat_at >= before, 5, what="the kept heartbeat written")
    process = os.getpriority(os.PRIO_PROCESS, os.getpid())
    assert seen and {name.split("_")[0] for name, _ in seen} == {"background"}
    assert {nice for _, nice in seen} == {process + BACKGROUND_NICE}


def test_a_heartbeat_omits_a_report_the_server_holds(plane: ControlPlane) -> None:
    """An agent that names its report by a digest sends it once: a heartbeat saying the same
    omits it, costs no write and leaves the statuses as they are. Once the node's pods move,
    the server no longer holds it and says so (`report_held` empty), writing nothing of it;
    the report sent whole again is taken."""
    token = register(plane.url, plane.join_token)
    reconcile_once(plane.store, time.time())  # the Deployment's two pods, bound to n1
    auth = {"Authorization": f"Bearer {token}"}
    url = f"{plane.url}/agent/v1/nodes/n1/sync"
    running = [
        {"pod": p.id, "phase": "Running", "ready": True, "pod_ip": f"10.244.0.{i + 2}"}
        for i, p in enumerate(plane.store.pods(node="n1"))
    ]
    older = httpx.post(url, json={"statuses": running}, headers=auth).json()
    assert older["report_held"] == ""  # no digest given (an older agent): none held
    first = httpx.post(url, json={"statuses": running, "report_digest": "r1"}, headers=auth).json()
    assert first["report_held"] == "r1"
    have = {"have_pods": first["pods_version"], "have_services": first["services_version"]}
    omitted = {"report_digest": "r1", "report_omitted": True, **have}
    writes = _writes(plane.store)
    second = httpx.post(url, json=omitted, headers=auth).json()
    assert writes == []
    assert (second["report_held"], second["pods"], second["pods_version"]) == ("r1", None, have["have_pods"])
    assert {(p.phase, p.ready) for p in plane.store.pods(node="n1")} == {("Running", True)}

    # A third replica lands on n1: the report held was one against the pods as they were.
    plane.store.apply_revision(
        Revision("git:x", "2" * 40), [deployment(replicas=3), service("web", {"app": "web"})], [], 2.0
    )
    reconcile_once(plane.store, time.time())
    time.sleep(0.2)  # past the age the server's pods may have (`PodCache.node_view`)
    writes.clear()
    third = httpx.post(url, json=omitted, headers=auth).json()
    assert third["report_held"] == "" and len(third["pods"]) == 3
    assert [w for w in writes if not w.startswith("UPDATE nodes")] == []  # nothing of a report
    assert sorted((p.phase, p.ready) for p in plane.store.pods(node="n1")) == [
        ("Pending", False),
        ("Running", True),
        ("Running", True),
    ]
    whole = {"statuses": running, "report_digest": "r1", "have_pods": third["pods_version"]}
    assert httpx.post(url, json=whole, headers=auth).json()["report_held"] == "r1"
    again = httpx.post(url, json={**omitted, "have_pods": third["pods_version"]}, headers=auth).json()
    assert again["report_held"] == "r1" and again["pods"] is None


@pytest.mark.parametrize(
    "body",
    [
        {"report_omitted": True},
        {"report_omitted": True, "report_digest": "r1", "stopped": ["default/web-1"]},
        {
            "report_omitted": True,
            "report_digest": "r1",
            "statuses": [{"pod": "default/web-1", "phase": "Running", "ready": True}],
        },
    ],
)
def test_an_omitted_report_is_named_and_alone(plane: ControlPlane, body: dict[str, Any]) -> None:
    token = register(plane.url, plane.join_token)
    response = httpx.post(
        f"{plane.url}/agent/v1/nodes/n1/sync", json=body, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 422
    assert "report_omitted needs report_digest, and no statuses or stopped" in response.text


def test_the_agent_sends_its_report_once_and_again_when_the_server_lets_it_go(
    plane: ControlPlane, tmp_path: Path
) -> None:
    """The real agent names its report; once a reply says the server holds it, heartbeats
    omit it. When the server no longer holds it (the node's pods moved), the agent sends it
    whole in the same tick, and the new pod is reported."""
    agent = registered_agent(plane, tmp_path, "n1", "192.0.2.10")
    reconcile_once(plane.store, time.time())  # the Deployment's two pods, bound to n1
    bodies: list[dict[str, Any]] = []

    def sent(request: httpx.Request) -> None:
        if request.url.path.endswith("/sync"):
            bodies.append(json.loads(request.content))

    agent.http.event_hooks["request"].append(sent)
    for _ in range(4):
        agent.tick()
    assert "report_digest" not in bodies[0]  # the server's support is known from its first reply
    assert [b.get("report_omitted", False) for b in bodies[-2:]] == [True, True]
    assert all(b["statuses"] == [] for b in bodies[-2:])
    assert {p.phase for p in plane.store.pods(node="n1")} == {"Running"}
    bodies.clear()
    plane.store.apply_revision(
        Revision("git:x", "2" * 40), [deployment(replicas=3), service("web", {"app": "web"})], [], 2.0
    )
    reconcile_once(plane.store, time.time())
    time.sleep(0.2)  # past the age the server's pods may have (`PodCache.node_view`)
    agent.tick()
    assert [b.get("report_omitted", False) for b in bodies[:2]] == [True, False]
    assert len(bodies[1]["statuses"]) == 2  # the report whole, as the agent knew its pods
    for _ in range(3):
        agent.tick()
    assert [p.phase for p in plane.store.pods(node="n1")] == ["Running"] * 3
