"""A response's head and body in one write (`gitops.api.onewrite`): uvicorn wrote them in
two, two system calls and two TCP segments per agent's call."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from gitops.api.onewrite import HeldHead
from gitops.server import ControlPlane
from gitops.store import Store
from tests.api.test_agent_sync_server import register
from tests.servers import free_port

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class Recorded:
    """A transport that keeps what is written to it, and whether it was closed."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


def held(loop: asyncio.AbstractEventLoop) -> tuple[HeldHead, Recorded]:
    recorded = Recorded()
    return HeldHead(recorded, loop), recorded  # type: ignore[arg-type]


def test_a_head_goes_out_with_the_body_that_follows_it() -> None:
    async def main() -> None:
        transport, recorded = held(asyncio.get_running_loop())
        transport.write(HEAD)
        assert recorded.written == []  # held
        transport.write(b"{}")
        assert recorded.written == [HEAD + b"{}"]
        transport.write(b"more")  # not a head: at once
        assert recorded.written == [HEAD + b"{}", b"more"]
        await asyncio.sleep(0)
        assert recorded.written == [HEAD + b"{}", b"more"] and transport.writes == 2

    asyncio.run(main())


def test_a_head_no_write_follows_goes_out_at_the_loops_next_turn_and_before_a_close() -> None:
    async def main() -> None:
        transport, recorded = held(asyncio.get_running_loop())
        transport.write(HEAD)
        await asyncio.sleep(0)  # a streamed body's first part is not there yet
        assert recorded.written == [HEAD]
        transport.write(b"{}")
        assert recorded.written == [HEAD, b"{}"]
        transport.write(HEAD)
        transport.close()
        assert recorded.written == [HEAD, b"{}", HEAD] and recorded.closed
        await asyncio.sleep(0)
        assert recorded.written == [HEAD, b"{}", HEAD]  # not twice

    asyncio.run(main())


def test_a_long_body_goes_in_a_write_of_its_own_after_its_head() -> None:
    async def main() -> None:
        transport, recorded = held(asyncio.get_running_loop())
        body = b"x" * (1 << 20)
        transport.write(HEAD)
        transport.write(body)
        assert recorded.written == [HEAD, body]
        assert transport.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest as the transport has it

    asyncio.run(main())


def test_the_servers_responses_each_go_out_in_one_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through uvicorn on the real server: an agent's register and sync calls on one
    connection, and a page, each one write."""
    made: list[HeldHead] = []
    init = HeldHead.__init__

    def kept(self: HeldHead, *args: Any) -> None:
        init(self, *args)
        made.append(self)

    monkeypatch.setattr(HeldHead, "__init__", kept)
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    plane = ControlPlane(store, [], port=free_port(), controller_interval=3600, settle_seconds=0.0)
    plane.start()
    try:
        token = register(plane.url, plane.join_token)
        with httpx.Client(base_url=plane.url, timeout=10) as client:
            auth = {"Authorization": f"Bearer {token}"}
            for _ in range(3):
                answer = client.post("/agent/v1/nodes/n1/sync", json={}, headers=auth)
                assert answer.status_code == 200 and "pods_version" in answer.json()
            assert client.get("/api/v1/status").status_code == 200
        assert len(made) == 2  # the registration's connection, and the client's
        assert [h.writes for h in made] == [1, 4]
    finally:
        plane.stop()


def test_a_connection_idle_between_an_agents_heartbeats_stays_open(tmp_path: Path) -> None:
    """An agent syncs at least every 10 s between its watches: uvicorn closed a connection
    idle for 5 s, as the agent's client (httpx) drops it, and a call sent as the server
    closed it failed ("Server disconnected without sending a response"). The server keeps
    it longer, so that the client is the one to drop it; and the agent's client keeps it
    too (httpx's own 5 s made each heartbeat open a connection of its own)."""
    import socket
    import time

    from gitops.agents.agent import Agent, AgentConfig
    from tests.agents.fakes import MemoryRuntime

    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    plane = ControlPlane(store, [], port=free_port(), controller_interval=3600, settle_seconds=0.0)
    plane.start()
    ask = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{plane.port}\r\n\r\n".encode()
    config = AgentConfig(server=plane.url, node="n1", join_token="t", state_dir=tmp_path)
    agent = Agent(config, MemoryRuntime())
    ports = []
    try:
        with socket.create_connection(("127.0.0.1", plane.port), timeout=10) as conn:
            for call in range(2):
                if call:
                    time.sleep(6.0)  # idle longer than uvicorn's and httpx's default keep-alive
                conn.sendall(ask)
                answer = conn.recv(65536)
                assert answer.startswith(b"HTTP/1.1 200"), answer[:200]  # b"": closed by the server
                response = agent.http.get("/healthz")
                assert response.status_code == 200
                ports.append(response.extensions["network_stream"].get_extra_info("client_addr")[1])
        assert ports[0] == ports[1]  # the agent's second call on its first connection
    finally:
        agent.http.close()
        plane.stop()


def test_a_connection_idle_past_the_keep_alive_is_closed_and_a_waiting_one_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Idle connections are closed by one sweep (`IdleSweep`) instead of a timer per
    response: one idle past the keep-alive timeout is closed (within a sweep), and one whose
    request is still being answered (a watch waiting) is not."""
    import socket
    import time

    from gitops import server
    from tests.api.test_agent_watch import sync
    from tests.api.test_quick_lane import Reader, watching

    monkeypatch.setattr(server, "KEEP_ALIVE_SECONDS", 0.4)  # swept every 0.1 s
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    plane = ControlPlane(store, [], port=free_port(), controller_interval=3600, settle_seconds=0.0)
    plane.start()
    try:
        token = register(plane.url, plane.join_token)
        held = sync(plane, token)
        with (
            socket.create_connection(("127.0.0.1", plane.port), timeout=10) as idle,
            socket.create_connection(("127.0.0.1", plane.port), timeout=10) as waiting,
        ):
            idle.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{plane.port}\r\n\r\n".encode())
            assert Reader(idle).response()[0] == 200
            started = time.monotonic()
            waiting.sendall(watching(plane, token, held, 1.5))
            assert Reader(idle).closed()  # by the server
            assert time.monotonic() - started < 1.0
            status, _, body = Reader(waiting).response()  # still open: answered at its timeout
            assert status == 200 and b'"changed":false' in body
            assert time.monotonic() - started >= 1.5
    finally:
        plane.stop()


class Idle:
    """A connection as `IdleSweep` sees it: closed by its keep-alive handler."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    def timeout_keep_alive_handler(self) -> None:
        self.closed = True


class Clock:
    """The loop's time and timers, as `IdleSweep` uses them, moved by hand."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[Any] = []

    def time(self) -> float:
        return self.now

    def call_later(self, _delay: float, callback: Any) -> None:
        self.timers.append(callback)


def test_the_sweep_closes_the_connections_idle_past_the_timeout_and_looks_at_no_busy_one() -> None:
    """A sweep closes the connections idle for the keep-alive timeout, oldest first, and no
    other: one that became busy again (a request came) or went away is not looked at, and
    one idle again starts its wait anew. Only the idle connections are kept for it (at
    5,000 nodes, the sweep looked at every connection, each agent's waiting watch among
    them: a stall of the loop every 5 s)."""
    from gitops.api.onewrite import IdleSweep

    clock = Clock()
    sweep = IdleSweep(clock, 4.0)  # type: ignore[arg-type]
    a, b, c, d = (Idle(n) for n in "abcd")
    sweep.went_idle(a)
    clock.now = 1.0
    sweep.went_idle(b)
    sweep.went_idle(c)
    sweep.went_idle(d)
    assert len(clock.timers) == 1  # armed once
    clock.now = 2.0
    sweep.went_idle(a)  # a request, answered: idle again from now
    sweep.busy(c)  # a request in flight
    sweep.busy(d)  # (or gone)
    assert list(sweep.idle) == [b, a]
    clock.now = 5.0
    clock.timers.pop()()
    assert (a.closed, b.closed, c.closed, d.closed) == (False, True, False, False)
    assert list(sweep.idle) == [a] and len(clock.timers) == 1  # armed again for a
    clock.now = 6.0
    clock.timers.pop()()
    assert a.closed and not sweep.idle and not clock.timers  # nothing left to sweep for
