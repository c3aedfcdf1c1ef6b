"""`gitops logs`: a container's log, read through its node's agent.

The control plane cannot reach a node; its agent polls. `GET
/api/v1/pods/{namespace}/{name}/logs` (a read: it needs the read token where reads do)
checks the pod, its container and its node, and queues a request for that node in the
`LogHub`. Every sync reply of the node carries the requests it has not answered yet
(`SyncReply.logs`); its agent reads the log from Docker (`gitops.agents.logs`) and posts it
in chunks to `POST /agent/v1/nodes/{node}/logs/{id}`, with the node's token: a node can
answer only requests addressed to it. The API call answers once the first chunk is in
(with the agent's error when it could not read the log: no such run, not started yet) and
then streams the chunks as they come. Following, that lasts until the container ends or
the client goes; then the request is marked cancelled, which the agent learns from the
reply to its next post (it posts at least every 2 s while following) and stops reading.

A request reaches its agent with the node's next sync: the first byte comes about one
sync interval after the call (1 s; less on average).

What is streamed comes from `LogText`: the bytes decoded as UTF-8, the pod's Secret values
(and every desired Secret's) redacted, and control characters other than newline and tab
escaped, so that a log cannot drive the reader's terminal.

Bounds: `MAX_TAIL` lines (also the default), chunks of `MAX_LOG_CHUNK` bytes,
`MAX_PER_NODE` requests open per node (429 beyond), `MAX_BUFFERED` chunks held for a slow
reader (the agent posts again later), `ANSWER_TIMEOUT` seconds for the agent's first
answer (504 naming the node), and a stream whose agent says nothing for
`SILENCE_TIMEOUT` seconds ends cut short (no final chunk: the client sees it broke off).

The requests live in this control plane's memory: with several servers on one database,
the reader and the pod's agent must talk to the same server.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import codecs
import contextlib
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from fastapi import Depends, FastAPI, HTTPException, Path, Query
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from gitops.api.models import LogChunkReply, LogChunkRequest
from gitops.model import Pod
from gitops.redact import Redactor, secret_forms
from gitops.store import Store
from gitops.terminal import escape

log = structlog.get_logger(__name__)

MAX_TAIL = 10_000  # lines of a log, at most and by default
MAX_PER_NODE = 16  # log requests open for one node at once
MAX_BUFFERED = 64  # chunks held for a reader slower than the agent
MAX_LINE = 64 * 2**10  # characters of a line held back while it is incomplete
ANSWER_TIMEOUT = 10.0  # seconds for a node's agent to answer a request
SILENCE_TIMEOUT = 10.0  # seconds a streaming agent may say nothing (it posts every 2 s)
FORGET_CLOSED = 60.0  # seconds a closed request still answers "cancelled" to its agent
MAX_CLOSED = 10_000  # closed requests remembered for that
CUT_NOTE = b"\n[the log was cut: longer than a node sends at once; ask for fewer lines with --tail]\n"
PROBLEM_STATUS = {"NotFound": 404, "Waiting": 400, "Unavailable": 503}  # else 502


def show(text: str) -> str:
    """`text` fit for a terminal: control and format characters escaped (`\\x1b`), save
    newlines and tabs; a CRLF line end is a newline."""
    text = text.replace("\r\n", "\n")
    return "\t".join(escape(part, keep_newlines=True) for part in text.split("\t"))


class LogText:
    """A log's bytes in, text fit to show out: decoded as UTF-8 (a character split between
    chunks is kept whole, bad bytes become U+FFFD), redacted, then escaped (`show`).

    Text is released by whole lines, so a Secret value split between two chunks is still
    found. An incomplete line is released on `flush` (the agent had nothing more for a
    while) or once it is longer than `MAX_LINE`, save its last characters that could be
    the start of a Secret value; `end` releases everything. Pure."""

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        values = redactor.values
        self._pattern = re.compile("|".join(re.escape(v) for v in values)) if values else None
        self._hold = max((len(v) for v in values), default=1) - 1

    def feed(self, data: bytes, *, flush: bool = False) -> str:
        self._pending += self._decoder.decode(data)
        return self._release(flush=flush)

    def end(self) -> str:
        self._pending += self._decoder.decode(b"", final=True)
        return self._release(final=True)

    def _release(self, *, flush: bool = False, final: bool = False) -> str:
        text = self._pending
        cut = len(text) if final else text.rfind("\n") + 1
        if not final and (flush or len(text) - cut > MAX_LINE):
            cut = max(cut, len(text) - self._hold)
            for match in self._pattern.finditer(text) if self._pattern is not None else ():
                if match.start() >= cut:
                    break
                if match.end() > cut:  # a value across the cut: release it whole, redacted
                    cut = match.end()
                    break
        self._pending = text[cut:]
        return show(self.redactor(text[:cut])) if cut else ""


@dataclass
class _Chunk:
    data: bytes
    done: bool = False
    error: str = ""
    problem: str = ""
    cut: bool = False


@dataclass
class LogRequest:
    """A log asked for, open until its reader is done with it."""

    id: str
    node: str
    ask: dict[str, Any]  # what the agent receives (`gitops.api.models.LogRequestModel`)
    loop: asyncio.AbstractEventLoop
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    chunks: deque[_Chunk] = field(default_factory=deque)
    started: bool = False  # its first chunk came: no longer sent to the agent
    next_seq: int = 0


class Busy(Exception):
    """The node has `MAX_PER_NODE` log requests open."""


class NotYours(Exception):
    """No open request of that id for that node (unknown, or another node's)."""


class OutOfOrder(Exception):
    """A chunk came before the one it follows."""


class LogHub:
    """The log requests of this control plane: queued for their node, answered by its
    agent's chunks, read by the API call that opened them. Thread-safe: agents' syncs read
    it from worker threads, chunks and readers on the event loop."""

    def __init__(
        self,
        *,
        max_per_node: int = MAX_PER_NODE,
        max_buffered: int = MAX_BUFFERED,
        answer_timeout: float | None = None,
        silence_timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_per_node = max_per_node
        self.max_buffered = max_buffered
        self.answer_timeout = ANSWER_TIMEOUT if answer_timeout is None else answer_timeout
        self.silence_timeout = SILENCE_TIMEOUT if silence_timeout is None else silence_timeout
        self.clock = clock
        self._lock = threading.Lock()
        self._open: dict[str, LogRequest] = {}
        self._closed: dict[str, tuple[str, float]] = {}  # id -> (node, when): its reader has gone

    def open(self, node: str, ask: dict[str, Any]) -> LogRequest:
        """Queue a request for `node` (called on the event loop, which its reader runs on)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if sum(1 for r in self._open.values() if r.node == node) >= self.max_per_node:
                raise Busy(node)
            rid = secrets.token_urlsafe(12)
            request = LogRequest(rid, node, {"id": rid, **ask}, loop)
            self._open[rid] = request
            return request

    def pending_nodes(self) -> set[str]:
        """The nodes with requests their agents have not started answering."""
        with self._lock:
            return {r.node for r in self._open.values() if not r.started}

    def pending(self, node: str) -> list[dict[str, Any]]:
        """The requests for `node` its agent has not started answering."""
        with self._lock:
            return [dict(r.ask) for r in self._open.values() if r.node == node and not r.started]

    def answer(self, node: str, rid: str, seq: int, chunk: _Chunk) -> LogChunkReply:
        """Take chunk `seq` of request `rid` from `node`'s agent."""
        with self._lock:
            request = self._open.get(rid)
            if request is None or request.node != node:
                closed = self._closed.get(rid)
                if closed is not None and closed[0] == node:
                    return LogChunkReply(cancelled=True)
                raise NotYours(rid)
            if seq < request.next_seq:
                return LogChunkReply()  # posted again after a lost reply: taken already
            if seq > request.next_seq:
                raise OutOfOrder(f"chunk {seq} came before chunk {request.next_seq}")
            keepalive = not chunk.data and not chunk.done
            if len(request.chunks) >= self.max_buffered and not keepalive:
                return LogChunkReply(accepted=False)
            request.started = True
            request.next_seq += 1
            if len(request.chunks) < self.max_buffered:  # a keepalive to a busy reader says nothing new
                request.chunks.append(chunk)
        request.loop.call_soon_threadsafe(request.wake.set)
        return LogChunkReply()

    async def next(self, request: LogRequest, timeout: float) -> _Chunk:
        """The next chunk of `request`; `TimeoutError` when none comes within `timeout`."""
        deadline = request.loop.time() + timeout
        while True:
            with self._lock:
                if request.chunks:
                    return request.chunks.popleft()
                request.wake.clear()
            remaining = deadline - request.loop.time()
            if remaining <= 0:
                raise TimeoutError
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(request.wake.wait(), remaining)

    def close(self, request: LogRequest) -> None:
        """The reader is done: the agent's next post hears `cancelled`."""
        now = self.clock()
        with self._lock:
            if self._open.pop(request.id, None) is None:
                return
            self._closed = {k: v for k, v in self._closed.items() if now - v[1] < FORGET_CLOSED}
            while len(self._closed) >= MAX_CLOSED:  # oldest first: a dict keeps its order
                del self._closed[next(iter(self._closed))]
            self._closed[request.id] = (request.node, now)

    def __len__(self) -> int:
        with self._lock:
            return len(self._open)


class _BrokeOff(Exception):
    """A streamed log cannot go on (its agent went silent, or failed midway)."""


class _LogResponse(StreamingResponse):
    """A streamed log that ends cut short (no final chunk, the connection closed) when it
    breaks off, so that the client cannot take it for the whole log; `on_close` runs
    however it ends (a client gone before the first byte included)."""

    def __init__(self, content: AsyncIterator[bytes], on_close: Callable[[], None], **options: Any) -> None:
        super().__init__(content, **options)
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        except _BrokeOff as exc:
            log.warning("logs.broke_off", reason=str(exc))


def choose_container(pod: Pod, asked: str) -> str:
    """The container of `pod` to read: `asked`, or the pod's only app container. Raises
    400 (several, none asked) or 404 (no such container), listing them as kubectl does."""
    apps = [c.name for c in pod.spec.containers]
    inits = [c.name for c in pod.spec.init_containers]
    choose = f"choose one of: [{' '.join(apps)}]" + (
        f" or one of the init containers: [{' '.join(inits)}]" if inits else ""
    )
    if not asked:
        if len(apps) == 1:
            return apps[0]
        raise HTTPException(400, f"a container name must be specified for pod {pod.id} (-c NAME), {choose}")
    if asked not in apps and asked not in inits:
        raise HTTPException(404, f"container {asked} is not valid for pod {pod.id}; {choose}")
    return asked


def _locate(store: Store, namespace: str, name: str, asked: str, now: float) -> tuple[Pod, str, Redactor]:
    """The pod, the container to read, and the redactor of what it may print; an
    HTTPException saying why the log cannot be read."""
    pod_id = f"{namespace}/{name}"
    pod = next((p for p in store.pods() if p.id == pod_id), None)
    if pod is None:
        raise HTTPException(404, f"pod {pod_id} not found")
    container = choose_container(pod, asked)
    if pod.node is None:
        why = f"{pod.phase}: {pod.reason}" if pod.reason else pod.phase
        raise HTTPException(409, f"pod {pod_id} is not on a node yet ({why}), so it has no log")
    record = next((r for r in store.nodes(now) if r.node.name == pod.node), None)
    if record is None or not record.node.ready:
        why = record.node.reason if record is not None and record.node.reason else "not registered"
        raise HTTPException(
            503, f"node {pod.node} of pod {pod_id} is NotReady ({why}): its agent cannot read the log"
        )
    # The values this pod holds (a Secret changed since still has its old ones) and every desired one.
    redactor = store.redactor(max_age=1.0).merged(sorted(secret_forms(pod.spec.secret_values())))
    return pod, container, redactor


def install_logs(
    app: FastAPI,
    store: Store,
    hub: LogHub,
    *,
    node_token: Callable[..., Any],
    clock: Callable[[], float] = time.time,
) -> None:
    """Add the log route of the read API and the agents' chunk route; `node_token` is the
    dependency that checks a node's token against the `name` in the path."""

    @app.get(
        "/api/v1/pods/{namespace}/{name}/logs",
        response_class=StreamingResponse,
        responses={
            200: {"content": {"text/plain": {}}, "description": "the log, streamed"},
            400: {"description": "a pod of several containers: name one (the answer lists them)"},
            404: {"description": "no such pod, container or run"},
            409: {"description": "the pod is not on a node yet"},
            429: {"description": "too many log requests open for the node"},
            503: {"description": "the pod's node is NotReady"},
            504: {"description": "the node's agent did not answer in time"},
        },
    )
    async def pod_logs(  # noqa: PLR0917 - FastAPI reads the query parameters from the signature
        namespace: str,
        name: str,
        container: str = Query("", max_length=63),
        tail: int | None = Query(None, ge=0, le=MAX_TAIL),
        previous: bool = False,
        follow: bool = False,
        since: int = Query(0, ge=0, le=10**9),
    ) -> StreamingResponse:
        """A container's log as text, read through its node's agent: `container` (needed in
        a pod of several), its last `tail` lines (at most and by default 10000), `previous`
        for the run before the current one, `follow` to keep streaming what it writes,
        `since` seconds back only. Secret values are redacted and control characters other
        than newline and tab escaped. The `X-Gitops-Node` header names the node."""
        pod, chosen, redactor = await run_in_threadpool(_locate, store, namespace, name, container, clock())
        node = str(pod.node)
        ask = {
            "pod": pod.id,
            "container": chosen,
            "previous": previous,
            "tail": MAX_TAIL if tail is None else tail,
            "follow": follow,
            "since": float(since),
        }
        try:
            request = hub.open(node, ask)
        except Busy:
            raise HTTPException(
                429, f"node {node} has {hub.max_per_node} log requests open already; try again when one ends"
            ) from None
        log.info("logs.requested", pod=pod.id, container=chosen, node=node, follow=follow, previous=previous)
        try:
            first = await hub.next(request, hub.answer_timeout)
        except TimeoutError:
            hub.close(request)
            raise HTTPException(
                504,
                f"node {node}'s agent did not answer within {hub.answer_timeout:g}s: is it running, and "
                "syncing (`gitops status` shows its heartbeat)? An agent pulling an image syncs late.",
            ) from None
        except BaseException:  # the client left while waiting
            hub.close(request)
            raise
        if first.done and first.error:
            hub.close(request)
            raise HTTPException(PROBLEM_STATUS.get(first.problem, 502), show(redactor(first.error)))
        return _LogResponse(
            _stream(hub, request, first, LogText(redactor), hub.silence_timeout),
            lambda: hub.close(request),
            media_type="text/plain; charset=utf-8",
            headers={"X-Gitops-Node": node, "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
        )

    @app.post(
        "/agent/v1/nodes/{name}/logs/{request_id}",
        response_model=LogChunkReply,
        responses={
            404: {"description": "no such request for this node"},
            409: {"description": "out of order"},
        },
    )
    async def log_chunk(
        name: str,
        chunk: LogChunkRequest,
        request_id: str = Path(max_length=64),
        _: str = Depends(node_token),
    ) -> LogChunkReply:
        """The next chunk of a log this node was asked for (`LogChunkRequest`); the reply says
        whether to post it again later, or to stop (the reader has gone)."""
        try:
            data = base64.b64decode(chunk.data, validate=True)
        except binascii.Error:
            raise HTTPException(422, "data: expected base64 (the log's bytes)") from None
        taken = _Chunk(data, chunk.done, chunk.error, chunk.problem, chunk.cut)
        try:
            return hub.answer(name, request_id, chunk.seq, taken)
        except NotYours:
            raise HTTPException(404, f"node {name} has no open log request {request_id}") from None
        except OutOfOrder as exc:
            raise HTTPException(409, str(exc)) from None


async def _stream(
    hub: LogHub, request: LogRequest, first: _Chunk, text: LogText, silence: float
) -> AsyncIterator[bytes]:
    """The log's text as its chunks come, until the last; `_BrokeOff` when the agent goes
    silent or fails midway. The request is closed however it ends (the client gone too)."""
    try:
        chunk = first
        while True:
            out = text.feed(chunk.data, flush=not chunk.data)
            if chunk.done:
                out += text.end()
            if out:
                yield out.encode()
            if chunk.done:
                if chunk.error:
                    raise _BrokeOff(f"node {request.node}: {chunk.error}")
                if chunk.cut:
                    yield CUT_NOTE
                return
            try:
                chunk = await hub.next(request, silence)
            except TimeoutError:
                raise _BrokeOff(f"node {request.node}'s agent said nothing for {silence:g}s") from None
    finally:
        hub.close(request)
