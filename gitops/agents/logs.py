"""Answering `gitops logs` on a node: a container's log, read from Docker and posted to the
control plane.

The control plane cannot reach a node; its agent polls. A log request waits at the control
plane until the node's agent syncs (about once a second), and every sync reply carries the
requests not answered yet (`SyncReply.logs`). `LogStreams.handle` answers each new one in
a thread of its own, so that a log followed for hours never holds up the agent's tick:

- `pick_run` finds the run asked for among the node's containers: the container's current
  run, or with `previous` the run before it (each run is a Docker container of its own,
  the previous one kept exited for its log);
- a reader thread reads its log from the runtime (`Runtime.logs`);
- the answering thread posts it in chunks of at most `MAX_CHUNK` bytes to
  `POST /agent/v1/nodes/{node}/logs/{id}` with the node's token (`_chunks` cuts them).
  While following, a chunk goes at least every `KEEPALIVE` seconds (empty when the
  container wrote nothing): the control plane knows the agent is still there, and the
  agent learns within that time when the reader has gone, from a reply saying `cancelled`
  (or from a request the control plane no longer knows), and closes the read.

The bytes go as the container wrote them (base64); the control plane decodes, redacts and
escapes them (`gitops.api.logs`), where it does so for everything people read. A read that
does not follow stops after `MAX_READ` bytes (the control plane says the log was cut), and
at most `MAX_STREAMS` logs are read at once: a request beyond that is answered with an
error saying so.
"""

from __future__ import annotations

import base64
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import structlog

from gitops.agents.plan import name_of, runs
from gitops.agents.runtime import ContainerInfo, LogStream, Runtime, RuntimeFailure, RuntimeUnavailable
from gitops.model import NodeName, Pod, PodId

log = structlog.get_logger(__name__)

MAX_CHUNK = 32 * 2**10  # bytes per post: the control plane takes up to gitops.api.models.MAX_LOG_CHUNK
MAX_READ = 16 * 2**20  # bytes of a log read without following
MAX_STREAMS = 16  # logs one agent reads at once
KEEPALIVE = 2.0  # seconds without a post while following
POST_TIMEOUT = 10.0
GIVE_UP = 30.0  # seconds of failing posts after which a read is abandoned
RETRY = 0.2  # seconds before a chunk the control plane could not take yet is posted again
FORGET = 120.0  # seconds a request id is remembered (the control plane re-sends it for 10 s at most)
_AHEAD = 256  # pieces read ahead of the posts


class LogProblem(Exception):
    """Why a log cannot be read; `kind` is one of the chunk's `problem` values."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class LogRequest:
    """A log the control plane asks for (`gitops.api.models.LogRequestModel`)."""

    id: str
    pod: PodId
    container: str
    previous: bool = False
    tail: int | None = None
    follow: bool = False
    since: float = 0.0  # seconds back from now (0: the whole log)

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> LogRequest:
        tail = raw.get("tail")
        return cls(
            id=str(raw["id"]),
            pod=PodId(str(raw["pod"])),
            container=str(raw["container"]),
            previous=bool(raw.get("previous", False)),
            tail=None if tail is None else max(0, int(tail)),
            follow=bool(raw.get("follow", False)),
            since=max(0.0, float(raw.get("since") or 0.0)),
        )


def pick_run(request: LogRequest, containers: Sequence[ContainerInfo], pod: Pod | None) -> ContainerInfo:
    """The run of the container `request` names: its newest, or with `previous` the one
    before it; `LogProblem` when there is none. A container made before containers were
    labelled with their name is the pod's first container (`name_of`); with the pod unknown
    only labelled ones count. Pure."""
    found = [
        c
        for c in runs(containers).get(request.pod, [])
        if (name_of(c, pod) if pod is not None else c.container) == request.container
    ]
    if request.previous:
        if len(found) < 2:
            runs_so_far = "it has run once so far" if found else "it has not started yet"
            raise LogProblem(
                "NotFound",
                f"previous terminated container {request.container} in pod {request.pod} not found "
                f"({runs_so_far})",
            )
        return found[-2]
    if not found:
        raise LogProblem(
            "Waiting", f"container {request.container} in pod {request.pod} is waiting to start (no run yet)"
        )
    return found[-1]


@dataclass(frozen=True)
class _End:
    error: str = ""  # why the read ended early ("" when the log simply ended)


def _put(pieces: queue.Queue[bytes | _End], item: bytes | _End, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            pieces.put(item, timeout=0.2)
            return True
        except queue.Full:
            continue
    return False


def _read(stream: LogStream, pieces: queue.Queue[bytes | _End], stop: threading.Event) -> None:
    """Read `stream` into `pieces` (waiting while they are full), then an `_End`."""
    error = ""
    try:
        for data in stream:
            if data and not _put(pieces, bytes(data), stop):
                return
    except Exception as exc:  # the engine failed, or the stream was closed under us
        error = "" if stop.is_set() else f"reading the log failed: {exc}"
    _put(pieces, _End(error), stop)


def _chunks(
    pieces: queue.Queue[bytes | _End], keepalive: float = KEEPALIVE
) -> Iterator[tuple[bytes, _End | None]]:
    """What `pieces` holds as chunks of at most `MAX_CHUNK` bytes, each as soon as there is
    something to send (an empty one after `keepalive` seconds of nothing); the last one
    comes with the `_End`."""
    buffer = bytearray()
    while True:
        try:
            item = pieces.get_nowait() if buffer else pieces.get(timeout=keepalive)
        except queue.Empty:
            yield bytes(buffer[:MAX_CHUNK]), None
            del buffer[:MAX_CHUNK]
            continue
        if isinstance(item, _End):
            while len(buffer) > MAX_CHUNK:
                yield bytes(buffer[:MAX_CHUNK]), None
                del buffer[:MAX_CHUNK]
            yield bytes(buffer), item
            return
        buffer += item
        while len(buffer) >= MAX_CHUNK:
            yield bytes(buffer[:MAX_CHUNK]), None
            del buffer[:MAX_CHUNK]


class LogStreams:
    """The logs an agent reads for the control plane, one thread each (see the module
    docstring). `stop` (the agent's) ends them all within `KEEPALIVE` seconds."""

    def __init__(
        self,
        node: NodeName,
        runtime: Runtime,
        *,
        server: str,
        token: Callable[[], str],
        pod_of: Callable[[PodId], Pod | None],
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node = node
        self.runtime = runtime
        self.server = server
        self.token = token
        self.pod_of = pod_of
        self.clock = clock
        self._stop = stop or threading.Event()
        self._lock = threading.Lock()
        self._seen: dict[str, float] = {}  # request id -> when it came (monotonic)
        self._open: set[str] = set()  # requests being answered

    @property
    def reading(self) -> int:
        with self._lock:
            return len(self._open)

    def handle(self, requests: Iterable[Mapping[str, Any]]) -> None:
        """Answer each request not seen before in a thread of its own (the control plane
        sends a request again until its first chunk arrives)."""
        now = time.monotonic()
        with self._lock:
            self._seen = {k: t for k, t in self._seen.items() if now - t < FORGET or k in self._open}
        for raw in requests:
            try:
                request = LogRequest.of(raw)
            except (KeyError, TypeError, ValueError):
                log.warning("agent.log_request_malformed", request=str(raw)[:200])
                continue
            with self._lock:
                if request.id in self._seen:
                    continue
                self._seen[request.id] = now
                busy = len(self._open) >= MAX_STREAMS
                if not busy:
                    self._open.add(request.id)
            threading.Thread(
                target=self._answer, args=(request, busy), name=f"logs-{request.id[:8]}", daemon=True
            ).start()

    def _answer(self, request: LogRequest, busy: bool) -> None:
        with httpx.Client(base_url=self.server, timeout=POST_TIMEOUT) as http:
            try:
                if busy:
                    self._post(
                        http,
                        request,
                        0,
                        done=True,
                        problem="Unavailable",
                        error=f"node {self.node} is reading {MAX_STREAMS} logs already; try again shortly",
                    )
                    return
                try:
                    run = pick_run(request, self.runtime.list(self.node), self.pod_of(request.pod))
                    since = self.clock() - request.since if request.since else 0.0
                    stream = self.runtime.logs(run.id, tail=request.tail, follow=request.follow, since=since)
                except LogProblem as exc:
                    self._post(http, request, 0, done=True, problem=exc.kind, error=str(exc))
                    return
                except RuntimeUnavailable as exc:
                    self._post(http, request, 0, done=True, problem="Unavailable", error=str(exc))
                    return
                except RuntimeFailure as exc:
                    self._post(http, request, 0, done=True, problem="Failed", error=str(exc))
                    return
                log.info(
                    "agent.log_reading", pod=request.pod, container=request.container, follow=request.follow
                )
                self._send(http, request, stream)
            except Exception:
                log.exception("agent.log_failed", pod=request.pod, container=request.container)
            finally:
                with self._lock:
                    self._open.discard(request.id)

    def _send(self, http: httpx.Client, request: LogRequest, stream: LogStream) -> None:
        """Post the log of `stream` until it ends, the reader is gone, or the agent stops."""
        pieces: queue.Queue[bytes | _End] = queue.Queue(_AHEAD)
        done = threading.Event()
        threading.Thread(
            target=_read, args=(stream, pieces, done), name=f"logs-read-{request.id[:8]}", daemon=True
        ).start()
        seq, sent, outcome = 1, 0, "the agent stopped"
        try:
            # An empty first chunk at once: the reader has its answer before the container writes.
            if not self._post(http, request, 0):
                outcome = "the agent stopped" if self._stop.is_set() else "the reader has gone"
                return
            for piece, end in _chunks(pieces, KEEPALIVE):
                cut = not request.follow and sent + len(piece) > MAX_READ
                data = piece[: MAX_READ - sent] if cut else piece
                sent += len(data)
                last = cut or end is not None
                error = end.error if end is not None else ""
                problem = "Failed" if error else ""
                if not self._post(http, request, seq, data, done=last, error=error, problem=problem, cut=cut):
                    outcome = "the agent stopped" if self._stop.is_set() else "the reader has gone"
                    return
                seq += 1
                if last:
                    outcome = error or ("cut" if cut else "ended")
                    return
        finally:
            done.set()
            with contextlib.suppress(Exception):
                stream.close()
            log.info(
                "agent.log_done", pod=request.pod, container=request.container, bytes=sent, outcome=outcome
            )

    def _post(
        self,
        http: httpx.Client,
        request: LogRequest,
        seq: int,
        data: bytes = b"",
        *,
        done: bool = False,
        error: str = "",
        problem: str = "",
        cut: bool = False,
    ) -> bool:
        """Post one chunk until the control plane takes it; False when the read should stop
        (the reader is gone, the control plane forgot the request, or the agent stops)."""
        body = {
            "seq": seq,
            "data": base64.b64encode(data).decode("ascii"),
            "done": done,
            "error": error[:2000],
            "problem": problem,
            "cut": cut,
        }
        url = f"/agent/v1/nodes/{self.node}/logs/{request.id}"
        failing_since: float | None = None
        while not self._stop.is_set():
            status, reply, reason = self._try_post(http, url, body)
            if 0 < status < 500:  # answered: no retry
                if status != 200:  # 404: forgotten (or not ours); 401: a new token
                    if status != 404:
                        log.warning("agent.log_refused", pod=request.pod, reason=reason)
                    return False
                if reply.get("cancelled"):
                    return False
                if reply.get("accepted", True):
                    return True
                failing_since = None  # the reader is behind: the same chunk again, shortly
                self._stop.wait(RETRY)
                continue
            failing_since = failing_since or time.monotonic()
            if time.monotonic() - failing_since > GIVE_UP:
                log.warning("agent.log_abandoned", pod=request.pod, reason=reason)
                return False
            self._stop.wait(RETRY * 5)
        return False

    def _try_post(
        self, http: httpx.Client, url: str, body: dict[str, Any]
    ) -> tuple[int, dict[str, Any], str]:
        """(HTTP status, reply, what went wrong) of one post; status 0 when there was no answer."""
        try:
            response = http.post(url, json=body, headers={"Authorization": f"Bearer {self.token()}"})
        except httpx.HTTPError as exc:
            return 0, {}, str(exc) or type(exc).__name__
        if response.status_code != 200:
            return response.status_code, {}, f"HTTP {response.status_code}: {response.text[:200]}"
        try:
            reply = response.json()
        except ValueError:
            return 502, {}, "the control plane's reply is not JSON"
        return 200, reply if isinstance(reply, dict) else {}, ""
