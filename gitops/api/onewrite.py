"""A response's head and body in one write to its socket: `OneWriteProtocol`.

uvicorn writes a response's status line and headers to the transport as soon as the app
sends `http.response.start`, and its body at the next message: two `send` system calls per
response, each one a TCP segment that wakes the client on its own. At 5,000 nodes the
agents' 630 calls a second are answered with a few hundred bytes each, and those writes
were about 29% of the event loop's time (py-spy, holding the interpreter: uvloop writes
without releasing it, and over loopback the kernel delivers the segment to the client in
the writer's own system call).

`OneWriteProtocol` is uvicorn's httptools protocol with its transport wrapped
(`HeldHead`): a write that begins a response (`HTTP/`) is held, and the next write goes
out with it, in one call (a body of more than 64 KiB in a call of its own, after it). A
head that no write follows in the same turn of the event loop (a streamed body, an app
that waits before its first part) goes out alone at the loop's next turn. Nothing is
reordered, and closing the transport first writes what is held.

It answers the agents' quiet calls itself, before the app (`QuickLane`,
`gitops.api.noderoute`): a heartbeat that reports nothing new and a watch. Through the app
each such call was a task running nine coroutines deep (uvicorn's cycle, its proxy-headers
middleware, the app, the gate, the node lane, the route, the endpoint), with its events and
ASGI messages; at 5,000 nodes the server's event loop spent 0.42 ms of CPU a call, and a
waiting watch held all of those for the 55 s an agent's watch waits, for the collector's
young collections to walk.
When a request's first line may be one (`QuickLane.wants`), the protocol reads its body
itself (`_Quick`, which uvicorn's own code takes for the request's cycle) and asks the lane
for the answer: a reply, written at once (head and body in one write), or a future of one
(a watch: written when it is set, cancelled when the client goes away). When the lane
gives None, or the body grows past `QUICK_BODY`, the request goes on to the app as uvicorn
would have sent it there, with the body read so far.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
from typing import Any, Protocol

import structlog
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

log = structlog.get_logger(__name__)

# A reply to a node's call: JSON text (in parts, sent one after the other; a memoryview is a
# slice of a text many replies share), or a dict to encode as JSON.
Reply = bytes | list[bytes | memoryview] | dict[str, Any]

_HEAD = b"HTTP/"
# Bytes at most worth copying to save a write: a body copied to go with its head (a longer one
# goes in a write of its own), and a node reply's parts joined into one body (`noderoute`).
JOINED = 64 * 1024
QUICK_BODY = 1024 * 1024  # bytes of a body at most that the protocol reads for the quick lane
# The context a watch's answer is written in (the protocol's callback reads no context variable).
NO_CONTEXT = contextvars.Context()
SWEEP_SECONDS = 5.0  # seconds at most between two looks for connections idle too long


def encode_reply(reply: dict[str, Any] | list[Any]) -> bytes:
    return json.dumps(reply, separators=(",", ":"), ensure_ascii=False).encode()


class QuickLane(Protocol):
    """What the protocol asks before the app (`gitops.api.noderoute.QuickLane`)."""

    def wants(self, method: bytes, url: bytes) -> bool: ...

    def answer(
        self, path: str, headers: list[tuple[bytes, bytes]], body: bytes, state: dict[str, Any]
    ) -> Reply | asyncio.Future[Reply] | None:
        """The reply, a future of it, or None: the app's to answer, with the request's
        `state` (its scope's, where the lane may leave what it parsed)."""


class HeldHead:
    """`transport`, holding a response's head until the next write or the loop's next turn
    (see the module docstring)."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held = b""
        self.writes = 0  # writes given to the transport (for tests)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._held and len(data) <= JOINED:
            data, self._held = self._held + bytes(data), b""
        elif self._held:
            self._release()
        elif bytes(data[: len(_HEAD)]) == _HEAD:
            self._held = bytes(data)
            self._loop.call_soon(self._release)
            return
        self.writes += 1
        self._transport.write(data)

    def _release(self) -> None:
        """Write what is held (a head no write followed in its turn)."""
        if self._held:
            held, self._held = self._held, b""
            if not self._transport.is_closing():
                self.writes += 1
                self._transport.write(held)

    def write_now(self, parts: list[bytes | memoryview]) -> None:
        """Write a whole response now: in one write when it is small (`JOINED`), else each
        part in its own (parts shared by many replies are not copied into each)."""
        self._release()
        if sum(map(len, parts)) <= JOINED:
            parts = [b"".join(parts)]
        for part in parts:
            self.writes += 1
            self._transport.write(part)

    def writelines(self, lines: Any) -> None:
        self.write(b"".join(lines))

    def close(self) -> None:
        self._release()
        self._transport.close()

    def write_eof(self) -> None:
        self._release()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held = b""
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return len(self._held) + self._transport.get_write_buffer_size()

    def __getattr__(self, name: str) -> Any:  # the rest as the transport has it
        return getattr(self._transport, name)


class _Nothing:
    def set(self) -> None:
        pass


class _Quick:
    """A request the protocol reads for the quick lane, standing in uvicorn's code for the
    request's cycle (`response_complete`, `disconnected`, `keep_alive`, `message_event`)."""

    message_event = _Nothing()

    def __init__(self, path: str, keep_alive: bool, before: Any) -> None:
        self.path = path
        self.keep_alive = keep_alive
        self.before = before  # the cycle before it (None, or one complete)
        self.body: tuple[bytes, ...] = ()  # its chunks (few: a tuple, which the collector leaves)
        self.size = 0
        self.response_complete = False
        self.disconnected = False
        self.pending: asyncio.Future[Reply] | None = None


class IdleSweep:
    """Closes a server's connections idle for its keep-alive timeout, looking every
    `SWEEP_SECONDS` at most (uvicorn arms a timer per response instead: at 5,000 nodes, 630
    timers a second made and cancelled, each an object kept for the collector to walk until
    the connection's next request). A connection may stay idle up to a sweep longer.

    The idle connections are kept in the order they went idle, so a sweep looks only at
    those it closes and the first it does not. Looking at every connection of the server
    (at 5,000 nodes, one waiting watch each) was a stall of 3-8 ms of the event loop every
    5 s, which the agents' calls arriving meanwhile waited for."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.loop = loop
        self.timeout = timeout
        self.every = min(SWEEP_SECONDS, timeout / 4)
        self.armed = False
        self.idle: dict[Any, float] = {}  # connection -> the loop's time it went idle, oldest first

    def went_idle(self, connection: Any) -> None:
        self.idle.pop(connection, None)  # (to the end: the newest)
        self.idle[connection] = self.loop.time()
        self.arm()

    def busy(self, connection: Any) -> None:
        """The connection is not idle (a request came, or it is gone)."""
        self.idle.pop(connection, None)

    def arm(self) -> None:
        if not self.armed:
            self.armed = True
            self.loop.call_later(self.every, self.sweep)

    def sweep(self) -> None:
        self.armed = False
        since = self.loop.time() - self.timeout
        expired = []
        for connection, at in self.idle.items():
            if at > since:
                break
            expired.append(connection)
        for connection in expired:
            del self.idle[connection]
            connection.timeout_keep_alive_handler()
        if self.idle:
            self.arm()


class OneWriteProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, writing each response's head with its body
    (`HeldHead`), answering the agents' quiet calls before the app (`QuickLane`), and closing
    idle connections from one sweep (`IdleSweep`) rather than a timer per response."""

    transport: HeldHead  # type: ignore[assignment]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        held = HeldHead(transport, self.loop)
        super().connection_made(held)  # type: ignore[arg-type]
        self.lane: QuickLane | None = getattr(self.config.app, "quick_lane", None)
        self.quick: _Quick | None = None
        self._on_answer = self._answered  # one bound method for the connection's every watch
        state = self.server_state
        self.idle_sweep: IdleSweep = getattr(state, "idle_sweep", None) or IdleSweep(
            self.loop, self.timeout_keep_alive
        )
        state.idle_sweep = self.idle_sweep  # type: ignore[attr-defined]

    def _unset_keepalive_if_required(self) -> None:  # data came, or a response is done
        self.idle_sweep.busy(self)
        super()._unset_keepalive_if_required()

    def on_response_complete(self) -> None:
        """As uvicorn's, idle from now on (`IdleSweep`) in place of its keep-alive timer."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self.idle_sweep.went_idle(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.quick is not None and self.quick.pending is not None:
            self.quick.pending.cancel()  # a watch nobody waits for any more
        self.idle_sweep.busy(self)  # (gone: not kept for the sweep)
        super().connection_lost(exc)

    def on_headers_complete(self) -> None:
        lane, cycle = self.lane, self.cycle
        if (
            lane is not None
            and (cycle is None or cycle.response_complete)  # none in flight (pipelined)
            and not self.expect_100_continue
            and not self.root_path
            and lane.wants(self.parser.get_method(), self.url)
            and not self.parser.should_upgrade()
        ):
            keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
            self.quick = _Quick(self.url.decode("ascii"), keep_alive, cycle)
            self.cycle = self.quick  # type: ignore[assignment]
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        quick = self.quick
        if quick is None or self.cycle is not quick:  # type: ignore[comparison-overlap]
            super().on_body(body)
            return
        quick.body += (body,)
        quick.size += len(body)
        if quick.size > QUICK_BODY:  # not a quiet call: the app's
            self._to_app(quick)

    def on_message_complete(self) -> None:
        quick = self.quick
        if quick is None or self.cycle is not quick:  # type: ignore[comparison-overlap]
            super().on_message_complete()
            return
        assert self.lane is not None
        try:
            reply = self.lane.answer(quick.path, self.headers, b"".join(quick.body), self.scope["state"])
        except Exception as exc:  # the app answers it (as it would have)
            log.error("api.quick_failed", path=quick.path, error=repr(exc))
            reply = None
        if reply is None:
            self._to_app(quick)
            super().on_message_complete()
            return
        # The request's scope, headers and body are done with: dropped now, not kept by the
        # connection until its next request (objects the collector would walk meanwhile).
        self.scope, self.headers, quick.body = None, None, ()  # type: ignore[assignment]
        if isinstance(reply, asyncio.Future):
            quick.pending = reply
            reply.add_done_callback(self._on_answer, context=NO_CONTEXT)
        else:
            self._reply(quick, 200, reply)

    def _to_app(self, quick: _Quick) -> None:
        """Hand the request to the app, as uvicorn would have, with its body so far."""
        self.quick = None
        self.cycle = quick.before
        super().on_headers_complete()
        if quick.body:
            super().on_body(b"".join(quick.body))

    def _answered(self, done: asyncio.Future[Reply]) -> None:
        quick = self.quick  # the call `done` answers, if it is still pending
        if quick is None or quick.pending is not done or done.cancelled() or quick.disconnected:
            return
        error = done.exception()
        if error is None:
            self._reply(quick, 200, done.result())
            return
        log.error("api.quick_failed", path=quick.path, error=repr(error))
        quick.keep_alive = False
        self._reply(quick, 500, b"Internal Server Error", kind=b"text/plain; charset=utf-8")

    def _reply(self, quick: _Quick, status: int, reply: Reply, kind: bytes = b"application/json") -> None:
        """Write the response (as uvicorn's cycle would: its default headers, `connection:
        close` when the connection is not kept), and go on to the next request."""
        if isinstance(reply, dict):
            reply = encode_reply(reply)
        parts = [reply] if isinstance(reply, bytes) else reply
        length = str(sum(map(len, parts))).encode()
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [b"content-type: ", kind, b"\r\ncontent-length: ", length, b"\r\n"]
        if not quick.keep_alive:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        quick.body, quick.pending = (), None
        if self.quick is quick:
            self.quick = None
        if self.cycle is quick:  # type: ignore[comparison-overlap]
            self.cycle = None  # type: ignore[assignment]
        if self.transport.is_closing():
            return
        self.transport.write_now([b"".join(head), *parts])
        quick.response_complete = True
        if not quick.keep_alive:
            self.transport.close()
        self.on_response_complete()
