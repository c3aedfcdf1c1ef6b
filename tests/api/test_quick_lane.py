"""The agents' quiet calls answered by the server's protocol before the app
(`gitops.api.onewrite.OneWriteProtocol`, `gitops.api.noderoute.QuickLane`): a heartbeat that
reports nothing new and a watch cost no ASGI task, and anything else reaches the app as it
came, answered there as before."""

from __future__ import annotations

import asyncio
import collections
import gc
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gitops.api.app import App
from gitops.api.models import SyncReply, SyncRequest
from gitops.controller import reconcile_once
from gitops.model import Node, NodeName, Revision
from gitops.server import ControlPlane
from gitops.store import Store
from tests.api.test_agent_sync_server import register
from tests.api.test_agent_watch import held_versions, sync
from tests.conftest import wait_for
from tests.planner.factories import deployment
from tests.servers import free_port


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[ControlPlane]:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    plane = ControlPlane(store, [], port=free_port(), controller_interval=3600, settle_seconds=0.0)
    plane.start()
    yield plane
    plane.stop()


@pytest.fixture
def app_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths of the requests that reach the app (uvicorn's ASGI task)."""
    paths: list[str] = []
    original = App.__call__

    async def counted(self: App, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            paths.append(scope["path"])
        await original(self, scope, receive, send)

    monkeypatch.setattr(App, "__call__", counted)
    return paths


def request(
    plane: ControlPlane,
    path: str,
    body: dict[str, Any] | bytes = b"",
    *,
    token: str = "",
    method: str = "POST",
    headers: dict[str, str] | None = None,
) -> bytes:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    given = {"Host": f"127.0.0.1:{plane.port}", "Content-Length": str(len(data))}
    if token:
        given["Authorization"] = f"Bearer {token}"
    if isinstance(body, dict):
        given["Content-Type"] = "application/json"
    given.update(headers or {})
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in given.items())
    return head.encode() + b"\r\n" + data


class Reader:
    """HTTP/1.1 responses read from a socket, one after the other."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _more(self) -> bytes:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError
        return chunk

    def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._more()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(headers["content-length"])
        while len(self.buffer) < length:
            self.buffer += self._more()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, headers, body

    def closed(self) -> bool:
        try:
            return self._more() == b""
        except EOFError:
            return True


def connect(plane: ControlPlane) -> tuple[socket.socket, Reader]:
    sock = socket.create_connection(("127.0.0.1", plane.port), timeout=10)
    return sock, Reader(sock)


def call(plane: ControlPlane, data: bytes) -> tuple[int, dict[str, str], bytes]:
    sock, reader = connect(plane)
    with sock:
        sock.sendall(data)
        return reader.response()


def node_watch(plane: ControlPlane) -> Any:
    assert plane._server is not None
    return plane._server.config.app.state.node_watch  # type: ignore[union-attr]


def watching(plane: ControlPlane, token: str, held: dict[str, Any], timeout: float) -> bytes:
    """n1's watch, holding what `held` gave."""
    body = {**held_versions(held), "timeout": timeout}
    return request(plane, "/agent/v1/nodes/n1/watch", body, token=token)


def beating(
    plane: ControlPlane, token: str, held: dict[str, Any], headers: dict[str, str] | None = None
) -> bytes:
    """n1's heartbeat that reports nothing new (report r1), holding what `held` gave."""
    body = {**held_versions(held), "report_digest": "r1"}
    return request(plane, "/agent/v1/nodes/n1/sync", body, token=token, headers=headers)


def synced(plane: ControlPlane) -> tuple[str, dict[str, Any]]:
    """A registered node n1 whose agent synced: its token, and what the reply gave."""
    token = register(plane.url, plane.join_token)
    return token, sync(plane, token, report_digest="r1")


def test_a_watch_and_a_quiet_heartbeat_are_answered_without_the_app(
    plane: ControlPlane, app_calls: list[str]
) -> None:
    token, held = synced(plane)
    app_calls.clear()
    waiting, reader = connect(plane)
    with waiting:
        waiting.sendall(watching(plane, token, held, 20))
        wait_for(lambda: node_watch(plane).waiting == 1, what="the watch waiting")
        status, headers, body = call(
            plane,
            beating(plane, token, held),
        )
        assert status == 200 and headers["content-type"] == "application/json"
        assert {"date", "server"} <= set(headers)  # uvicorn's own headers, as on the app's answers
        beat = json.loads(body)
        assert set(beat) == set(SyncReply.model_fields) and beat["report_held"] == "r1"
        assert (beat["pods"], beat["pods_version"]) == (None, held["pods_version"])
        # The node's pods move: the watch is answered.
        plane.store.apply_revision(Revision("git:x", "2" * 40), [deployment(replicas=1)], [], 2.0)
        reconcile_once(plane.store, 3.0)  # a pod bound to n1, the only node
        status, _, body = reader.response()
        answer = json.loads(body)
        assert status == 200 and answer["changed"] is True and answer["pods_version"] != held["pods_version"]
    assert app_calls == []


@pytest.mark.parametrize(
    ("case", "status", "detail"),
    [
        ("a token not the node's", 401, "invalid node token"),
        ("a body that is not JSON", 422, "Content-Type must be application/json"),
        ("a field of the wrong type", 422, "have_pods"),
        ("a host that is not loopback", 403, "answers only on loopback names"),
        ("a report that changed", 200, ""),
    ],
)
def test_a_call_the_protocol_does_not_answer_goes_to_the_app_as_it_came(
    plane: ControlPlane, app_calls: list[str], case: str, status: int, detail: str
) -> None:
    token, held = synced(plane)
    body: dict[str, Any] | bytes = {**held_versions(held), "report_digest": "r1"}
    given: dict[str, str] = {}
    if case == "a token not the node's":
        token = "x" + token
    elif case == "a body that is not JSON":
        body, given = json.dumps(body).encode(), {"Content-Type": "text/plain"}
    elif case == "a field of the wrong type":
        body = {**body, "have_pods": 3}
    elif case == "a host that is not loopback":
        given = {"Host": "rebound.example"}
    else:
        body = {**body, "report_digest": "r2"}
    app_calls.clear()
    got, _, answer = call(plane, request(plane, "/agent/v1/nodes/n1/sync", body, token=token, headers=given))
    assert got == status, answer
    assert detail in answer.decode()
    assert app_calls == ["/agent/v1/nodes/n1/sync"]
    if case == "a field of the wrong type":
        assert json.loads(answer)["errors"][0]["loc"] == ["body", "have_pods"]
    if case == "a report that changed":
        assert json.loads(answer)["report_held"] == "r2"


def test_a_waiting_watch_whose_agent_went_away_waits_no_more(plane: ControlPlane) -> None:
    token, held = synced(plane)
    waiting, _ = connect(plane)
    waiting.sendall(watching(plane, token, held, 30))
    wait_for(lambda: node_watch(plane).waiting == 1, what="the watch waiting")
    waiting.close()
    wait_for(lambda: node_watch(plane).waiting == 0, timeout=5, what="the watch ended")


def test_pipelined_requests_are_answered_in_order_and_a_closing_one_closes(
    plane: ControlPlane, app_calls: list[str]
) -> None:
    """A watch answered by the protocol, then a page and a heartbeat sent behind it on the
    same connection before its answer: answered in the order sent, and the connection the
    last one closes is closed once it is answered."""
    token, held = synced(plane)
    app_calls.clear()
    sock, reader = connect(plane)
    with sock:
        sock.sendall(
            watching(plane, token, held, 0.3)
            + request(plane, "/healthz", method="GET")
            + beating(plane, token, held, {"Connection": "close"})
        )
        first, second, third = reader.response(), reader.response(), reader.response()
        assert first[0] == 200 and json.loads(first[2])["changed"] is False
        assert second[0] == 200 and json.loads(second[2])["status"] == "ok"
        assert (
            third[0] == 200 and third[1]["connection"] == "close" and "pods_version" in json.loads(third[2])
        )
        assert reader.closed()
    assert app_calls == ["/healthz", "/agent/v1/nodes/n1/sync"]  # behind a call in flight: the app's


def test_a_watch_that_fails_is_answered_500_and_its_connection_closed(
    plane: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    token, held = synced(plane)

    def failing(*_: Any, **__: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_exception(RuntimeError("broken"))
        return future

    monkeypatch.setattr(node_watch(plane), "begin", failing)
    sock, reader = connect(plane)
    with sock:
        sock.sendall(watching(plane, token, held, 5))
        status, headers, body = reader.response()
        assert (status, headers["connection"], body) == (500, "close", b"Internal Server Error")
        assert reader.closed()


def test_a_waiting_watch_holds_few_objects_for_the_collector(plane: ControlPlane) -> None:
    """Through the app, each waiting watch was an ASGI task nine coroutines deep, with its
    cycle, events and messages: 25 objects more than a connection idle after a watch, for the
    collector's young collections to walk (measured here), at 5,000 nodes for the 55 s each
    waits. The protocol holds the request, a future and a timer: 7."""
    token, held = synced(plane)
    watches = 200
    body = {**held_versions(held), "timeout": 30}
    sockets = [connect(plane) for _ in range(watches)]
    try:
        for sock, reader in sockets:  # each connection idle after a watch, as an agent's is
            sock.sendall(watching(plane, token, held, 0))
            assert reader.response()[0] == 200
        gc.collect()
        before = len(gc.get_objects())
        for sock, _ in sockets:
            sock.sendall(request(plane, "/agent/v1/nodes/n1/watch", body, token=token))
        wait_for(lambda: node_watch(plane).waiting == watches, what="the watches waiting")
        threading.Event().wait(0.2)  # the watch's thread has looked: still waiting
        assert node_watch(plane).waiting == watches
        gc.collect()
        each = (len(gc.get_objects()) - before) / watches
    finally:
        for sock, _ in sockets:
            sock.close()
    assert each < 10, each


def test_a_connections_quick_calls_leave_nothing_behind(plane: ControlPlane) -> None:
    """An agent's connection serves a heartbeat or a watch every few seconds for as long as
    the agent runs: what a call leaves on it goes when it is answered (each call held the
    one before it, once, and the connection's calls piled up without end)."""
    token, held = synced(plane)
    sock, reader = connect(plane)
    with sock:

        def calls(count: int) -> None:
            for i in range(count):
                sock.sendall(beating(plane, token, held) if i % 2 else watching(plane, token, held, 0))
                assert reader.response()[0] == 200

        def kept() -> collections.Counter[str]:  # what a call makes, by kind
            # The watches answered since the watching thread last looked are its to drop, at
            # its next look (within 50 ms, longer on a loaded machine).
            wait_for(lambda: not node_watch(plane)._new, what="the watch's thread looked")
            gc.collect()
            kinds = {"_Quick", "_Waiter", "Future", "TimerHandle", "RequestResponseCycle", "SyncRequest"}
            return collections.Counter(
                type(o).__name__ for o in gc.get_objects() if type(o).__name__ in kinds
            )

        calls(50)
        before = kept()
        calls(400)
        grown = kept() - before
        assert sum(grown.values()) < 5, grown


def test_a_call_handed_to_the_app_is_validated_once(
    plane: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A report that changed is validated by the protocol's lane, then served by the app
    with that same request: while 150,000 pods came up, every sync's 30 statuses were
    validated twice."""
    token, held = synced(plane)
    validated: list[bytes] = []
    original = SyncRequest.model_validate_json

    def counted(data: bytes, **kwargs: Any) -> SyncRequest:
        validated.append(data)
        return original(data, **kwargs)

    monkeypatch.setattr(SyncRequest, "model_validate_json", counted)
    body = {**held_versions(held), "report_digest": "r2"}
    status, _, answer = call(plane, request(plane, "/agent/v1/nodes/n1/sync", body, token=token))
    assert status == 200 and json.loads(answer)["report_held"] == "r2"
    assert len(validated) == 1


def test_the_routes_of_thousands_of_nodes_reach_an_agent_whole_by_the_app_and_the_protocol(
    tmp_path: Path,
) -> None:
    """Each agent's routes are slices of one text all replies share
    (`SharedEndpoints._routes_json`); past 64 KiB a reply's parts go out in writes of their
    own: by the app (a sync that writes its report) and by the protocol (a watch answered
    when a node joins). Both give the agent every other node's route, its own left out."""
    store = Store(f"sqlite:///{tmp_path / 's.db'}", cluster_cidr="10.0.0.0/12")  # 4,096 subnets
    for i in range(2100):
        node = Node(NodeName(f"m{i:04d}"), f"10.64.{i // 250}.{i % 250 + 1}", 4000, 2**32)
        store.register_node(node, "t", now=1.0)
    plane = ControlPlane(store, [], port=free_port(), controller_interval=3600, settle_seconds=0.0)
    plane.start()
    try:
        token = register(plane.url, plane.join_token)  # n1
        pairs = {r.node.name: [r.node.pod_cidr, r.node.address] for r in store.nodes(1.0)}
        held = sync(plane, token, report_digest="r1", service_deltas=True)
        others = [pair for name, pair in sorted(pairs.items()) if name != "n1"]
        assert len(json.dumps(held["routes"])) > 64 * 1024 and len(others) == 2100
        assert held["routes"] == others
        sock, reader = connect(plane)
        with sock:
            body = {**held_versions(held), "timeout": 30, "service_deltas": True}
            sock.sendall(request(plane, "/agent/v1/nodes/n1/watch", body, token=token))
            wait_for(lambda: node_watch(plane).waiting == 1, what="the watch waiting")
            store.register_node(Node(NodeName("m9999"), "10.65.0.1", 4000, 2**32), "t", now=2.0)
            status, _, answer = reader.response()  # within `routes_every()` (4.2 s here)
        moved = json.loads(answer)
        joined = next(r.node for r in store.nodes(2.0) if r.node.name == "m9999")
        assert status == 200 and moved["changed"] is True
        assert moved["routes"] == [*others, [joined.pod_cidr, joined.address]]
    finally:
        plane.stop()


def test_a_quiet_heartbeat_s_reply_gives_what_the_last_full_reply_did_with_the_node_s_log_requests(
    plane: ControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quiet reply's fields shared by every node are encoded once (`_quiet_text`), the
    node's own added at each call: the same fields as the full reply, with the node's pods
    and Services held (null), its report held, and the log requests waiting for it."""
    token, held = synced(plane)
    assert plane._server is not None
    hub = plane._server.config.app.state.logs  # type: ignore[union-attr]
    expected = {
        **held,
        **dict.fromkeys(("pods", "services", "services_changed", "services_removed", "routes", "claims")),
        "services_from": "",
        "report_held": "r1",
    }
    status, _, body = call(plane, beating(plane, token, held))
    assert status == 200 and json.loads(body) == {**expected, "logs": []}
    asked = [{"id": "q1", "container": "web", "tail": 5, "note": "née"}]
    monkeypatch.setattr(hub, "pending", lambda node: asked if node == "n1" else [])
    status, _, body = call(plane, beating(plane, token, held))
    assert status == 200 and json.loads(body) == {**expected, "logs": asked}
