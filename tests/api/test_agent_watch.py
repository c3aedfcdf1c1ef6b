"""Agents' long-poll (`POST /agent/v1/nodes/{name}/watch`, `gitops.api.agentsync.NodeWatch`)
on a real server: answered as soon as the node's pods, the Services or a log request
moves, else after its timeout; and an agent that watches syncs only when it has news, a
change of its own to report, or a heartbeat due."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from gitops.api.agentsync import NodeWatch, SharedEndpoints
from gitops.api.models import SyncReply
from gitops.controller import reconcile_once
from gitops.model import Node, NodeName, PodStatus, Revision
from gitops.server import ControlPlane
from gitops.store import Store
from tests.api.test_agent_sync_server import register
from tests.conftest import wait_for
from tests.planner.factories import deployment, service
from tests.servers import free_port


@pytest.fixture
def plane(tmp_path: Path) -> ControlPlane:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.apply_revision(Revision("git:x", "1" * 40), [service("web", {"app": "web"})], [], 1.0)
    plane = ControlPlane(store, [], port=free_port(), controller_interval=3600, settle_seconds=0.0)
    plane.start()
    yield plane
    plane.stop()


def sync(plane: ControlPlane, token: str, **body: Any) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {token}"}
    answer: dict[str, Any] = httpx.post(
        f"{plane.url}/agent/v1/nodes/n1/sync", json=body, headers=auth, timeout=10
    ).json()
    return answer


def held_versions(held: dict[str, Any]) -> dict[str, str]:
    """The versions a sync's reply gave, as the next call sends them."""
    return {"have_pods": held["pods_version"], "have_services": held["services_version"]}


def watch(plane: ControlPlane, token: str, held: dict[str, Any], timeout: float) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.post(
        f"{plane.url}/agent/v1/nodes/n1/watch",
        json={**held_versions(held), "timeout": timeout},
        headers={"Authorization": f"Bearer {token}"},
        timeout=timeout + 10,
    ).json()
    return answer


def test_a_watch_waits_while_nothing_moves_and_answers_at_once_when_the_nodes_pods_do(
    plane: ControlPlane,
) -> None:
    token = register(plane.url, plane.join_token)
    held = sync(plane, token)
    started = time.monotonic()
    quiet = watch(plane, token, held, timeout=0.5)
    assert quiet["changed"] is False and time.monotonic() - started >= 0.5
    answers: list[dict[str, Any]] = []
    waiting = threading.Thread(target=lambda: answers.append(watch(plane, token, held, timeout=20)))
    waiting.start()
    wait_for(lambda: plane._server.config.app.state.node_watch.waiting == 1, what="the watch waiting")  # type: ignore[union-attr]
    plane.store.apply_revision(
        Revision("git:x", "2" * 40), [deployment(replicas=2), service("web", {"app": "web"})], [], 2.0
    )
    reconcile_once(plane.store, 3.0)  # two pods bound to n1, the only node
    waiting.join(10)
    (answer,) = answers
    assert answer["changed"] is True and answer["pods_version"] != held["pods_version"]
    fresh = sync(plane, token, have_pods=held["pods_version"], have_services=held["services_version"])
    assert len(fresh["pods"]) == 2 and fresh["pods_version"] == answer["pods_version"]


def test_a_watch_behind_already_is_answered_at_once(plane: ControlPlane) -> None:
    token = register(plane.url, plane.join_token)
    held = sync(plane, token)
    answer = watch(plane, token, {**held, "services_version": "an older one"}, timeout=20)
    assert answer["changed"] is True and answer["services_version"] == held["services_version"]


def test_a_watch_is_answered_when_a_log_request_waits_for_its_node(plane: ControlPlane) -> None:
    token = register(plane.url, plane.join_token)
    held = sync(plane, token)
    hub = plane._server.config.app.state.logs  # type: ignore[union-attr]
    answers: list[dict[str, Any]] = []
    waiting = threading.Thread(target=lambda: answers.append(watch(plane, token, held, timeout=20)))
    waiting.start()
    wait_for(lambda: plane._server.config.app.state.node_watch.waiting == 1, what="the watch waiting")  # type: ignore[union-attr]

    async def ask() -> None:  # as `gitops logs` does, on the server's event loop
        hub.open("n1", {"pod": "default/web-1", "container": "app"})

    asyncio.run(ask())
    waiting.join(10)
    assert answers and answers[0]["changed"] is True and answers[0]["logs"] is True


@contextmanager
def watching(plane: ControlPlane) -> Iterator[tuple[str, dict[str, Any]]]:
    """A registered node n1 whose agent synced (its token and what it holds) and now
    long-polls (3 s), so that its heartbeats are answered from memory."""
    token = register(plane.url, plane.join_token)
    held = sync(plane, token)
    waiting = threading.Thread(target=lambda: watch(plane, token, held, timeout=3))
    waiting.start()
    wait_for(lambda: plane._server.config.app.state.node_watch.waiting == 1, what="the watch waiting")  # type: ignore[union-attr]
    try:
        yield token, held
    finally:
        waiting.join(10)


@contextmanager
def statements_of(store: Store) -> Iterator[list[str]]:
    """The SQL statements the store runs in the block."""
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(store.engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(store.engine, "before_cursor_execute", count)


def test_a_watching_agents_heartbeat_that_changes_nothing_reads_and_writes_nothing(
    plane: ControlPlane,
) -> None:
    with watching(plane) as (token, held):
        with statements_of(plane.store) as statements:
            beat = sync(plane, token, **held_versions(held))
        assert beat["pods"] is None and beat["services"] is None and beat["claims"] is None
        assert set(beat) == set(SyncReply.model_fields)  # answered from memory, in the reply's shape
        assert (beat["pods_version"], beat["services_version"]) == (
            held["pods_version"],
            held["services_version"],
        )
        assert statements == []
        before = plane.store.nodes()[0].heartbeat_at
        time.sleep(1.1)  # the heartbeat times kept in memory are written once a second
        sync(plane, token, **held_versions(held))
        wait_for(
            lambda: plane.store.nodes()[0].heartbeat_at > before, timeout=5, what="the heartbeat written"
        )


def test_a_watching_agents_measurements_are_kept_from_its_quiet_heartbeat_without_a_statement(
    plane: ControlPlane,
) -> None:
    """A heartbeat answered from memory that carries its pods' use (every 15 s from a real
    agent) keeps it as it came, validated, for `/metrics/resource`; nothing is read or
    written for it (no autoscaler scales the pods)."""
    usage = [
        {
            "pod": f"default/web-{i}",
            "at": 99.0,
            "window": 15.0,
            "containers": [
                {"container": "main", "cpu_milli": 250.5 + i, "memory_bytes": 2**20},
                {"container": "proxy", "cpu_milli": 1.25, "memory_bytes": 3 * 2**20},
            ],
        }
        for i in range(2)
    ]
    with watching(plane) as (token, held), statements_of(plane.store) as statements:
        beat = sync(plane, token, usage=usage, **held_versions(held))
    assert beat["pods"] is None and statements == []  # answered from memory
    metrics = httpx.get(f"{plane.url}/metrics/resource", timeout=10).text
    for i in range(2):
        main = f'{{container="main",namespace="default",pod="web-{i}"}}'
        proxy = f'{{container="proxy",namespace="default",pod="web-{i}"}}'
        assert f"gitops_container_cpu_usage_millicores{main} {250.5 + i}" in metrics
        assert f"gitops_container_cpu_usage_millicores{proxy} 1.25" in metrics
        assert f"gitops_container_memory_working_set_bytes{proxy} 3.145728e+06" in metrics


def test_a_node_path_with_a_wrong_token_is_refused_before_its_body_is_read(plane: ControlPlane) -> None:
    register(plane.url, plane.join_token)
    for path in ("watch", "sync", "logs/some-request"):
        answer = httpx.post(
            f"{plane.url}/agent/v1/nodes/n1/{path}",
            content=b"{not json",
            headers={"Authorization": "Bearer wrong", "Content-Type": "application/json"},
            timeout=10,
        )
        assert answer.status_code == 401 and answer.json()["detail"] == "invalid node token", path


def test_a_stopping_server_answers_the_waiting_watches_instead_of_waiting_for_them(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    plane = ControlPlane(store, [], port=free_port(), controller_interval=3600, settle_seconds=0.0)
    plane.start()
    token = register(plane.url, plane.join_token)
    held = sync(plane, token)
    answers: list[dict[str, Any]] = []
    waiting = threading.Thread(target=lambda: answers.append(watch(plane, token, held, timeout=60)))
    waiting.start()
    wait_for(lambda: plane._server.config.app.state.node_watch.waiting == 1, what="the watch waiting")  # type: ignore[union-attr]
    looking = plane._server.config.app.state.node_watch._thread  # type: ignore[union-attr]
    stopping = threading.Thread(target=plane.stop)
    stopping.start()
    stopping.join(20)  # the server's shutdown waits at most 10 s for its requests
    waiting.join(20)
    assert not stopping.is_alive() and not waiting.is_alive()
    looking.join(5)  # and the thread that looked for the watches' news is gone with it
    assert not looking.is_alive()
    assert answers == [
        {
            "changed": False,
            "pods_version": held["pods_version"],
            "services_version": held["services_version"],
            "logs": False,
        }
    ]


def test_a_watch_is_a_heartbeat(plane: ControlPlane) -> None:
    """An agent whose sync calls queue behind other nodes' report writes still long-polls:
    its watches keep the node's heartbeat (written with the others', in one statement), so
    the node does not go NotReady and lose its pods for the server's slowness."""
    token = register(plane.url, plane.join_token)

    def beat() -> float:
        return next(r.heartbeat_at for r in plane.store.nodes() if r.node.name == "n1")

    registered = beat()
    time.sleep(0.05)
    watch(plane, token, {"pods_version": "", "services_version": ""}, timeout=0)
    time.sleep(1.1)  # the buffered heartbeats are due: the next call has them written
    watch(plane, token, {"pods_version": "", "services_version": ""}, timeout=0)
    wait_for(lambda: beat() > registered, timeout=5, what="the heartbeat written")


def test_a_watch_answer_for_a_move_of_the_services_carries_what_changed(plane: ControlPlane) -> None:
    """Every move of the Services cost every agent a watch answer and a sync call: to an
    agent that takes deltas, the answer carries the Services changed since its version."""
    token = register(plane.url, plane.join_token)
    held = sync(plane, token, service_deltas=True)
    plane.store.apply_revision(
        Revision("git:x", "2" * 40), [service("web", {"app": "web"}), service("api", {"app": "api"})], [], 2.0
    )
    request = {**held_versions(held), "timeout": 10, "service_deltas": True}
    auth = {"Authorization": f"Bearer {token}"}
    answer = httpx.post(f"{plane.url}/agent/v1/nodes/n1/watch", json=request, headers=auth, timeout=20).json()
    assert answer["changed"] is True and answer["services_version"] != held["services_version"]
    assert answer["services_from"] == held["services_version"]
    assert [s["name"] for s in answer["services_changed"]] == ["api"] and answer["services_removed"] == []
    assert answer["pods_version"] == held["pods_version"]
    # An agent that does not take deltas is told only that something moved.
    plain = watch(plane, token, held, timeout=10)
    assert plain["changed"] is True and plain.get("services_changed") is None


def test_a_heartbeat_with_nothing_new_is_answered_from_memory_while_the_controller_writes_many_pods(
    plane: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the controller holds its precedence the watch does not read the store, so what
    it last read ages; a heartbeat that reports nothing new is still answered at once from
    it (not made to wait for the write, then told 429), and the node stays alive."""
    from gitops.api import app as api

    monkeypatch.setattr(api, "YIELD_SECONDS", 3.0)
    token = register(plane.url, plane.join_token)
    held = sync(plane, token)
    versions = held_versions(held)
    waiting = threading.Thread(target=lambda: watch(plane, token, held, timeout=15))
    waiting.start()
    wait_for(lambda: plane._server.config.app.state.node_watch.waiting == 1, what="the watch waiting")  # type: ignore[union-attr]
    sync(plane, token, **versions)  # the same report again: its digest is the one written
    with plane.precedence.held():
        time.sleep(2.5)  # past QUIET_MAX_AGE since the watch last read
        began = time.monotonic()
        answer = httpx.post(
            f"{plane.url}/agent/v1/nodes/n1/sync",
            json=versions,
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        took = time.monotonic() - began
    assert answer.status_code == 200 and took < 1.0
    assert answer.json()["pods"] is None and answer.json()["pods_version"] == held["pods_version"]
    waiting.join(20)


def three_nodes(tmp_path: Path, poll: float) -> tuple[Store, dict[str, str], SharedEndpoints, NodeWatch]:
    """A store with a pod on each of three nodes (by node), its Services and a watch."""
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    for name in ("n1", "n2", "n3"):
        store.register_node(Node(NodeName(name), "192.0.2.10", 4000, 2**32), "t", now=1.0)
    store.apply_revision(Revision("git:x", "1" * 40), [deployment(replicas=3)], [], 1.0)
    reconcile_once(store, 2.0)  # a pod on each node
    on = {str(p.node): p.id for p in store.pods()}
    endpoints = SharedEndpoints(store, clock=time.time, ttl=0.0)
    return store, on, endpoints, NodeWatch(store, endpoints, set, poll=poll)


def test_a_look_compares_only_new_waiters_and_those_of_nodes_that_moved(tmp_path: Path) -> None:
    """Each look walks the waiters of the nodes whose pods moved and those new since the
    last look, not every waiting agent (5,000 of them, 20 looks a second)."""
    store, on, endpoints, watch = three_nodes(tmp_path, poll=0.2)
    compared: list[str] = []
    original = store.pod_cache.node_version

    def counted(node: str) -> str:
        compared.append(node)
        return original(node)

    store.pod_cache.node_version = counted  # type: ignore[method-assign]

    async def main() -> dict[str, Any]:
        services = endpoints.version()
        nodes = ("n1", "n2", "n3")
        waits = {n: asyncio.create_task(watch.wait(n, original(n), services, timeout=20)) for n in nodes}
        while sorted(compared) != ["n1", "n2", "n3"]:  # each new waiter compared once
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # looks that find nothing new compare nothing
        assert sorted(compared) == ["n1", "n2", "n3"]
        compared.clear()
        await asyncio.to_thread(store.heartbeat, "n2", [PodStatus(on["n2"], "Running", True)], 3.0)
        answer = await asyncio.wait_for(waits["n2"], 10)
        assert set(compared) == {"n2"} and not waits["n1"].done() and not waits["n3"].done()
        watch.close()
        await asyncio.gather(waits["n1"], waits["n3"])
        return answer

    assert asyncio.run(main())["changed"] is True
    store.close()


def test_an_agent_that_begins_to_wait_is_compared_without_a_read_of_the_store(tmp_path: Path) -> None:
    """About 90 watches begin a second at 5,000 nodes: each is compared with the state the
    watch last read (its versions came from a reply made from it), and the store is read
    only when this process wrote or every `poll` seconds."""
    store, on, endpoints, watch = three_nodes(tmp_path, poll=600)  # no read for other processes' writes here
    cache, reads, compared = store.pod_cache, [], []
    refresh, node_version = cache.refresh, cache.node_version

    def counted_refresh() -> None:
        reads.append(1)
        refresh()

    def counted_version(node: str) -> str:
        compared.append(node)
        return node_version(node)

    cache.refresh = counted_refresh  # type: ignore[method-assign]
    cache.node_version = counted_version  # type: ignore[method-assign]

    async def until(what: Any) -> None:
        while not what():
            await asyncio.sleep(0.02)

    async def main() -> None:
        services = endpoints.version()
        first = asyncio.create_task(watch.wait("n1", node_version("n1"), services, timeout=20))
        await asyncio.wait_for(until(lambda: compared == ["n1"]), 10)
        assert len(reads) == 1  # the watch's first look reads
        later = {
            n: asyncio.create_task(watch.wait(n, node_version(n), services, timeout=20)) for n in ("n2", "n3")
        }
        await asyncio.wait_for(until(lambda: sorted(compared) == ["n1", "n2", "n3"]), 10)
        behind = await asyncio.wait_for(watch.wait("n2", "an older version", services, timeout=20), 10)
        assert behind["changed"] is True and behind["pods_version"] == node_version("n2")
        assert len(reads) == 1 and not first.done() and not any(t.done() for t in later.values())
        # A write of this process: read, and the node's waiter answered.
        await asyncio.to_thread(store.heartbeat, "n3", [PodStatus(on["n3"], "Running", True)], 3.0)
        answer = await asyncio.wait_for(later["n3"], 10)
        assert answer["changed"] is True and len(reads) == 2
        watch.close()
        await asyncio.gather(first, later["n2"])

    asyncio.run(main())
    store.close()


def test_a_look_computes_with_the_interpreter_handed_over_within_half_a_millisecond(tmp_path: Path) -> None:
    """uvloop lets go of the interpreter at each poll of its sockets; a look computing in
    Python took it, and each of the API's callbacks then waited a whole switch interval
    (5 ms) to get it back (`gitops.handover`)."""
    import sys

    from gitops.handover import HANDOVER

    store, _, endpoints, watch = three_nodes(tmp_path, poll=600)
    seen: list[float] = []
    refresh = store.pod_cache.refresh

    def noted() -> None:
        seen.append(sys.getswitchinterval())
        refresh()

    store.pod_cache.refresh = noted  # type: ignore[method-assign]
    before = sys.getswitchinterval()

    async def main() -> None:
        waiting = asyncio.create_task(watch.wait("n1", "an older version", endpoints.version(), timeout=20))
        assert (await asyncio.wait_for(waiting, 10))["changed"] is True

    asyncio.run(main())
    assert seen and all(interval == HANDOVER for interval in seen) and before > HANDOVER
    # Given back once the look ends (the answer is sent from within it: wait for its end).
    deadline = time.monotonic() + 10
    while sys.getswitchinterval() != before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sys.getswitchinterval() == before
    watch.close()
    store.close()
