"""The agent's side of `gitops logs`: which run a request reads, how a log is cut into
chunks, and how `LogStreams` answers a control plane (here a small fake one): each request
once, at most `MAX_STREAMS` at a time, a chunk the reader is not ready for posted again,
and the read closed as soon as the control plane says the reader has gone."""

from __future__ import annotations

import base64
import http.server
import json
import queue
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from gitops.agents import logs as agent_logs
from gitops.agents.logs import MAX_CHUNK, LogProblem, LogRequest, LogStreams, _chunks, _End, pick_run
from gitops.agents.runtime import ContainerInfo
from gitops.api.models import MAX_LOG_CHUNK
from gitops.model import Container, NodeName, ObjectKey, Pod, PodId, PodName, PodSpec
from tests.agents.fakes import MemoryRuntime
from tests.conftest import wait_for

NODE = NodeName("n1")
POD = PodId("default/web")


def pod(*names: str) -> Pod:
    spec = PodSpec(containers=tuple(Container(name=n, image="web:1") for n in names))
    return Pod("default", PodName("web"), ObjectKey("Deployment", "default", "web"), "h", spec, node=NODE)


def run(cid: str, container: str, restart: int, *, running: bool = False) -> ContainerInfo:
    return ContainerInfo(
        cid,
        POD,
        "h",
        running,
        None if running else 1,
        "",
        (),
        float(restart),
        0.0,
        restart=restart,
        container=container,
    )


def ask(container: str = "app", **fields: Any) -> LogRequest:
    return LogRequest(id="r1", pod=POD, container=container, **fields)


# --- which run -------------------------------------------------------------------------------


def test_the_current_run_is_the_newest_and_previous_the_one_before() -> None:
    runs = [run("c2", "app", 2, running=True), run("c0", "app", 0), run("c1", "app", 1), run("s0", "side", 0)]
    assert pick_run(ask(), runs, pod("app", "side")).id == "c2"
    assert pick_run(ask(previous=True), runs, pod("app", "side")).id == "c1"
    assert pick_run(ask("side"), runs, pod("app", "side")).id == "s0"


def test_a_container_made_before_runs_were_labelled_is_the_pod_s_first() -> None:
    runs = [run("old", "", 0), run("new", "app", 1, running=True)]
    assert pick_run(ask(previous=True), runs, pod("app", "side")).id == "old"
    with pytest.raises(LogProblem, match="waiting to start"):
        pick_run(ask("side"), runs, pod("app", "side"))


def test_no_run_or_no_previous_run_says_which() -> None:
    with pytest.raises(LogProblem, match="container app in pod default/web is waiting to start") as waiting:
        pick_run(ask(), [], pod("app"))
    assert waiting.value.kind == "Waiting"
    with pytest.raises(
        LogProblem, match=r"previous terminated container app .* \(it has run once so far\)"
    ) as none:
        pick_run(ask(previous=True), [run("c0", "app", 0, running=True)], pod("app"))
    assert none.value.kind == "NotFound"


def test_a_request_is_read_from_what_the_control_plane_sends() -> None:
    raw = {"id": "x", "pod": "default/web", "container": "app", "tail": 5, "follow": True, "since": 30}
    assert LogRequest.of(raw) == LogRequest("x", POD, "app", False, 5, True, 30.0)
    assert LogRequest.of({**raw, "tail": None, "since": -4}).since == 0.0


# --- chunks ----------------------------------------------------------------------------------


def test_a_log_goes_in_chunks_of_at_most_max_chunk_bytes_the_last_with_the_end() -> None:
    pieces: queue.Queue[bytes | _End] = queue.Queue()
    for piece in (b"a" * (MAX_CHUNK - 1), b"bb", b"c" * (2 * MAX_CHUNK)):
        pieces.put(piece)
    pieces.put(_End())
    chunks = list(_chunks(pieces, keepalive=0.01))
    assert all(len(data) <= MAX_CHUNK for data, _ in chunks)
    assert b"".join(data for data, _ in chunks) == b"a" * (MAX_CHUNK - 1) + b"bb" + b"c" * (2 * MAX_CHUNK)
    assert [end for _, end in chunks[:-1]] == [None] * (len(chunks) - 1) and chunks[-1][1] == _End()
    assert MAX_CHUNK <= MAX_LOG_CHUNK, "the control plane takes what the agent sends"


def test_nothing_to_send_for_a_while_is_an_empty_chunk() -> None:
    pieces: queue.Queue[bytes | _End] = queue.Queue()
    chunks = _chunks(pieces, keepalive=0.01)
    assert next(chunks) == (b"", None)
    pieces.put(b"late")
    assert next(chunks) == (b"late", None)


# --- answering a control plane ----------------------------------------------------------------


class FakePlane(http.server.ThreadingHTTPServer):
    """Records the chunks posted to it; answers as `reply(path, body)` says."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.posts: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        self.refuse = 0  # answer `accepted: false` this many times
        self.cancel_after = -1  # answer `cancelled` from this many posts on (-1: never)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def reply(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            if self.refuse:
                self.refuse -= 1
                return {"accepted": False, "cancelled": False}
            self.posts.append((path, body))
            cancelled = 0 <= self.cancel_after <= len(self.posts)
            return {"accepted": True, "cancelled": cancelled}

    def data(self, rid: str = "r1") -> bytes:
        return b"".join(base64.b64decode(b["data"]) for p, b in list(self.posts) if p.endswith(f"/{rid}"))


class Handler(http.server.BaseHTTPRequestHandler):
    server: FakePlane

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.headers["Authorization"] == "Bearer node-token"
        answer = json.dumps(self.server.reply(self.path, body)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def plane() -> Iterator[FakePlane]:
    server = FakePlane()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def runtime() -> MemoryRuntime:
    rt = MemoryRuntime()
    rt.containers["c0"] = (NODE, replace(run("c0", "app", 0, running=True), started_at=rt.now))
    rt.logs["c0"] = "one\ntwo\n"
    return rt


def streams(plane: FakePlane, runtime: MemoryRuntime, stop: threading.Event | None = None) -> LogStreams:
    return LogStreams(
        NODE, runtime, server=plane.url, token=lambda: "node-token", pod_of=lambda _: pod("app"), stop=stop
    )


def request(rid: str = "r1", **fields: Any) -> dict[str, Any]:
    return {"id": rid, "pod": POD, "container": "app", "tail": 10, **fields}


def test_each_request_is_answered_once_however_often_it_comes(
    plane: FakePlane, runtime: MemoryRuntime
) -> None:
    logs = streams(plane, runtime)
    logs.handle([request()])
    logs.handle([request()])
    wait_for(lambda: any(b["done"] for _, b in plane.posts), timeout=10, what="the end of the log")
    assert plane.data() == b"one\ntwo\n"
    assert [b["seq"] for _, b in plane.posts] == list(range(len(plane.posts)))
    assert all(p == "/agent/v1/nodes/n1/logs/r1" for p, _ in plane.posts)
    assert len(runtime.streams) == 1


def test_a_chunk_the_reader_is_not_ready_for_is_posted_again(
    plane: FakePlane, runtime: MemoryRuntime
) -> None:
    plane.refuse = 3
    streams(plane, runtime).handle([request()])
    wait_for(lambda: any(b["done"] for _, b in plane.posts), timeout=10, what="the end of the log")
    assert plane.data() == b"one\ntwo\n"


def test_what_cannot_be_read_is_answered_with_the_reason(plane: FakePlane, runtime: MemoryRuntime) -> None:
    streams(plane, runtime).handle([request(previous=True)])
    (_, answer), *_ = wait_for(lambda: list(plane.posts), timeout=10, what="the answer")
    assert (answer["done"], answer["problem"]) == (True, "NotFound")
    assert "previous terminated container app" in answer["error"]


def test_the_read_stops_when_the_control_plane_says_the_reader_has_gone(
    plane: FakePlane, runtime: MemoryRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent_logs, "KEEPALIVE", 0.05)
    plane.cancel_after = 3
    logs = streams(plane, runtime)
    logs.handle([request(follow=True)])
    wait_for(
        lambda: runtime.streams and runtime.streams[-1].closed.is_set(), timeout=10, what="the read closed"
    )
    wait_for(lambda: logs.reading == 0, timeout=10, what="the thread to end")
    assert plane.data() == b"one\ntwo\n" and not plane.posts[-1][1]["done"], "it followed until told to stop"


def test_the_agent_stopping_ends_its_reads(
    plane: FakePlane, runtime: MemoryRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent_logs, "KEEPALIVE", 0.05)
    stop = threading.Event()
    logs = streams(plane, runtime, stop)
    logs.handle([request(follow=True)])
    wait_for(lambda: plane.posts, timeout=10, what="the first chunk")
    stop.set()
    wait_for(runtime.streams[-1].closed.is_set, timeout=10, what="the read closed")


def test_at_most_max_streams_logs_are_read_at_once(
    plane: FakePlane, runtime: MemoryRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent_logs, "MAX_STREAMS", 2)
    logs = streams(plane, runtime)
    logs.handle([request("a", follow=True), request("b", follow=True), request("c", follow=True)])
    wait_for(lambda: any(p.endswith("/c") for p, _ in plane.posts), timeout=10, what="an answer to the third")
    refused = next(b for p, b in plane.posts if p.endswith("/c"))
    assert refused["problem"] == "Unavailable" and "reading 2 logs already" in refused["error"]
    assert logs.reading == 2
    runtime.exit(POD, 0)  # the followed container ends: so do its reads
    wait_for(lambda: logs.reading == 0, timeout=10, what="the reads to end")
