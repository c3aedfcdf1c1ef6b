"""`gitops logs` through a real control plane and a real agent (on a `MemoryRuntime`): a log
is read with tail, previous and follow, Secret values are redacted and escape sequences
escaped, the agent stops reading when the reader goes, and what cannot be read says why
(a container that is not in the pod, a node that does not answer, a node answering
another node's request). `LogText` and `LogHub` are also tested on their own."""

from __future__ import annotations

import asyncio
import base64
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

import gitops.api.logs as logs_module
from gitops.agents.agent import Agent, AgentConfig
from gitops.api.logs import LogHub, LogText, NotYours, OutOfOrder, _Chunk, show
from gitops.model import Manifest, NodeName, PodId, Revision
from gitops.redact import Redactor
from gitops.server import ControlPlane
from gitops.store import Store
from tests.agents.fakes import MemoryRuntime
from tests.conftest import wait_for
from tests.planner.factories import deployment, manifest, secret
from tests.servers import free_port

NODE = NodeName("n1")
SECRET = "hunter2-Secret-Value"
# A line the server or the agent in this process logged (structlog's console format).
OWN_LOG = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[\w+ *\] ")
NO_IPTABLES = "/nonexistent/iptables"  # these agents talk to no kernel
ENV = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}}]


def several() -> Manifest:
    """A Deployment of a pod with two app containers and an init container."""
    return manifest(
        "Deployment",
        "multi",
        spec={
            "replicas": 1,
            "selector": {"matchLabels": {"app": "multi"}},
            "template": {
                "metadata": {"labels": {"app": "multi"}},
                "spec": {
                    "initContainers": [{"name": "setup", "image": "web:1"}],
                    "containers": [{"name": "app", "image": "web:1"}, {"name": "sidecar", "image": "web:1"}],
                },
            },
        },
    )


def new_plane(tmp_path: Path, **options: Any) -> ControlPlane:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.apply_revision(
        Revision("git:x", "1" * 40),
        [secret("creds", token=SECRET), deployment("web", replicas=1, env=ENV), several()],
        [],
        1.0,
    )
    plane = ControlPlane(store, [], port=free_port(), controller_interval=0.2, settle_seconds=0, **options)
    plane.start()
    return plane


@dataclass
class Running:
    """A control plane and one agent (node n1) on a `MemoryRuntime`."""

    plane: ControlPlane
    runtime: MemoryRuntime
    agent: Agent

    def pod(self, deployment_name: str) -> PodId:
        return placed_pod(self.plane, deployment_name)

    def run_of(self, pod: PodId, run: int = 0) -> str | None:
        """The id of run `run` of the pod's (first) container if it runs."""
        return next(
            (
                cid
                for cid, (_, info) in list(self.runtime.containers.items())
                if info.pod == pod and info.restart == run and info.running
            ),
            None,
        )

    def container(self, pod: PodId, run: int = 0) -> str:
        """The id of run `run` of the pod's (first) container, once it runs."""
        return wait_for(lambda: self.run_of(pod, run), timeout=20, what=f"run {run} of {pod}")

    def logs_url(self, pod: PodId) -> str:
        return f"{self.plane.url}/api/v1/pods/{pod}/logs"


def placed_pod(plane: ControlPlane, deployment_name: str) -> PodId:
    """The id of the pod of `deployment_name`, once it is on a node."""
    prefix = f"default/{deployment_name}-"
    return wait_for(
        lambda: next(
            (p.id for p in plane.store.pods() if p.id.startswith(prefix) and p.node is not None), None
        ),
        timeout=20,
        what=f"a pod of {deployment_name} on a node",
    )


def start(tmp_path: Path, interval: float = 0.2) -> Running:
    plane = new_plane(tmp_path)
    runtime = MemoryRuntime()
    config = AgentConfig(
        iptables=NO_IPTABLES,
        server=plane.url,
        node=NODE,
        join_token=plane.join_token,
        state_dir=tmp_path / "agent",
        address="192.0.2.10",
        capacity=(4000, 2**32),
        interval=interval,
    )
    agent = Agent(config, runtime, clock=lambda: runtime.now)  # crash backoffs pass when told
    agent.start()
    return Running(plane, runtime, agent)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    setup = start(tmp_path)
    yield setup
    setup.agent.stop()
    setup.plane.stop()


def register(plane: ControlPlane, name: str, address: str) -> str:
    node = {"name": name, "address": address, "cpu_milli": 4000, "memory_bytes": 2**32}
    answer = httpx.post(
        f"{plane.url}/agent/v1/register",
        json={"node": node},
        headers={"X-Gitops-Join-Token": plane.join_token},
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["token"])


# --- through a real agent ---------------------------------------------------------------


def test_a_log_is_read_with_tail_through_the_pod_s_node_and_its_first_byte_comes_within_a_sync(
    tmp_path: Path,
) -> None:
    """With the agent's usual 1 s interval, the first byte comes within about one sync."""
    setup = start(tmp_path, interval=1.0)
    try:
        pod = setup.pod("web")
        cid = setup.container(pod)
        setup.runtime.logs[cid] = "one\ntwo\nthree\nfour\n"
        started = time.monotonic()
        params = {"tail": 2, "since": 60}
        with httpx.stream("GET", setup.logs_url(pod), params=params, timeout=30) as response:
            chunks = response.iter_bytes()
            first = next(chunks)
            waited = time.monotonic() - started
            rest = first + b"".join(chunks)
        assert response.status_code == 200
        assert rest.decode() == "three\nfour\n"
        assert response.headers["x-gitops-node"] == NODE
        read = setup.runtime.streams[-1]
        assert (read.tail, read.since) == (2, setup.runtime.now - 60), "the last 2 lines of the last minute"
        print(f"time to first byte: {waited:.3f}s (agent interval 1.0s)")
        assert waited < 2.5, f"the first byte took {waited:.2f}s"
    finally:
        setup.agent.stop()
        setup.plane.stop()


def test_the_previous_run_s_log_is_read_with_previous(running: Running) -> None:
    pod = running.pod("web")
    first = running.container(pod)
    running.runtime.logs[first] = "run 0 crashed: no config\n"
    answer = httpx.get(running.logs_url(pod), params={"previous": True}, timeout=30)
    assert answer.status_code == 404
    assert "previous terminated container main" in answer.json()["detail"]
    running.runtime.exit(pod, 1)

    def restarted() -> str | None:
        running.runtime.now += 5  # the crash backoff passes
        return running.run_of(pod, 1)

    second = wait_for(restarted, timeout=20, what="the restart")
    running.runtime.logs[second] = "run 1 up\n"
    assert httpx.get(running.logs_url(pod), params={"previous": True}, timeout=30).text == (
        "run 0 crashed: no config\n"
    )
    assert httpx.get(running.logs_url(pod), timeout=30).text == "run 1 up\n"


def test_following_streams_new_lines_and_the_agent_stops_reading_when_the_client_goes(
    running: Running,
) -> None:
    pod = running.pod("web")
    cid = running.container(pod)
    running.runtime.logs[cid] = "old\nlast\n"
    with httpx.stream(
        "GET", running.logs_url(pod), params={"follow": True, "tail": 1}, timeout=30
    ) as response:
        chunks = response.iter_text()
        assert next(chunks) == "last\n"
        running.runtime.logs[cid] += "new line\n"
        assert next(chunks) == "new line\n"
        stream = running.runtime.streams[-1]
        assert stream.follow and not stream.closed.is_set()
    # The client is gone: the agent hears it in the reply to its next post (within 2 s).
    wait_for(stream.closed.is_set, timeout=10, what="the agent to stop reading")


def test_following_ends_when_the_container_ends(running: Running) -> None:
    pod = running.pod("web")
    cid = running.container(pod)
    running.runtime.logs[cid] = "working\n"
    with httpx.stream("GET", running.logs_url(pod), params={"follow": True}, timeout=30) as response:
        chunks = response.iter_text()
        assert next(chunks) == "working\n"
        running.runtime.logs[cid] += "done, exiting\n"
        time.sleep(0.3)
        running.runtime.exit(pod, 0)
        assert "".join(chunks) == "done, exiting\n"  # and the response ends


def test_secret_values_are_redacted_and_escape_sequences_escaped(running: Running) -> None:
    pod = running.pod("web")
    cid = running.container(pod)
    running.runtime.logs[cid] = (
        f"connecting with {SECRET}\n"
        "\x1b]0;owned\x07\x1b[31mred\x1b[0m\tcolumn\r\n"
        "\u202eevil\n"
        f"as base64: {base64.b64encode(SECRET.encode()).decode()}\n"
    )
    text = httpx.get(running.logs_url(pod), timeout=30).text
    assert SECRET not in text and base64.b64encode(SECRET.encode()).decode() not in text
    assert text == (
        "connecting with [redacted]\n"
        "\\x1b]0;owned\\x07\\x1b[31mred\\x1b[0m\tcolumn\n"
        "\\u202eevil\n"
        "as base64: [redacted]\n"
    )


def test_a_container_not_in_the_pod_is_a_404_listing_its_containers(running: Running) -> None:
    pod = running.pod("multi")
    answer = httpx.get(running.logs_url(pod), params={"container": "nope"}, timeout=30)
    assert answer.status_code == 404
    assert answer.json()["detail"] == (
        f"container nope is not valid for pod {pod}; choose one of: [app sidecar] "
        "or one of the init containers: [setup]"
    )
    several = httpx.get(running.logs_url(pod), timeout=30)
    assert several.status_code == 400
    assert "a container name must be specified" in several.json()["detail"]
    assert "[app sidecar]" in several.json()["detail"]
    missing = httpx.get(f"{running.plane.url}/api/v1/pods/default/nope/logs", timeout=30)
    assert (missing.status_code, missing.json()["detail"]) == (404, "pod default/nope not found")


def test_a_container_that_has_not_started_says_so(running: Running) -> None:
    """The init container runs (in a MemoryRuntime it never ends): the app waits its turn."""
    pod = running.pod("multi")
    wait_for(
        lambda: any(
            i.pod == pod and i.container == "setup" for _, i in list(running.runtime.containers.values())
        ),
        timeout=20,
        what="the init container",
    )
    answer = httpx.get(running.logs_url(pod), params={"container": "app"}, timeout=30)
    assert answer.status_code == 400
    assert "waiting to start" in answer.json()["detail"]


def test_the_cli_prints_the_log_and_says_why_it_cannot(
    running: Running, capsys: pytest.CaptureFixture[str]
) -> None:
    from gitops import cli

    pod = running.pod("web")
    cid = running.container(pod)
    running.runtime.logs[cid] = f"a\tb\x1b[2J {SECRET}\nsecond\n"
    name = pod.split("/")[1]
    capsys.readouterr()  # what the server and the agent logged so far
    assert cli.main(["logs", name, "--server", running.plane.url, "--tail", "5"]) == 0
    # The server and the agent run in this process and log to the same stdout meanwhile.
    printed = [line for line in capsys.readouterr().out.splitlines(True) if not OWN_LOG.match(line)]
    assert "".join(printed) == "a\tb\\x1b[2J [redacted]\nsecond\n"
    assert cli.main(["logs", name, "-c", "other", "--server", running.plane.url]) == 1
    assert "container other is not valid" in capsys.readouterr().err


# --- without an agent: the protocol and its errors ------------------------------------------


@pytest.fixture
def plane(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ControlPlane]:
    monkeypatch.setattr(logs_module, "ANSWER_TIMEOUT", 1.5)
    monkeypatch.setattr(logs_module, "SILENCE_TIMEOUT", 1.0)
    plane = new_plane(tmp_path)
    yield plane
    plane.stop()


def pending(plane: ControlPlane, node: str, token: str) -> list[dict[str, Any]]:
    answer = httpx.post(
        f"{plane.url}/agent/v1/nodes/{node}/sync", json={}, headers={"Authorization": f"Bearer {token}"}
    )
    assert answer.status_code == 200, answer.text
    return list(answer.json()["logs"])


def test_a_node_that_does_not_answer_is_a_timeout_naming_the_node(plane: ControlPlane) -> None:
    register(plane, "n1", "192.0.2.10")
    pod = placed_pod(plane, "web")
    started = time.monotonic()
    answer = httpx.get(f"{plane.url}/api/v1/pods/{pod}/logs", timeout=30)
    assert answer.status_code == 504
    assert answer.json()["detail"].startswith("node n1's agent did not answer within 1.5s")
    assert time.monotonic() - started < 5


def test_a_node_cannot_answer_another_node_s_request(plane: ControlPlane) -> None:
    token1 = register(plane, "n1", "192.0.2.10")
    pod = placed_pod(plane, "web")
    token2 = register(plane, "n2", "192.0.2.11")
    result: dict[str, httpx.Response] = {}
    reader = threading.Thread(
        target=lambda: result.update(answer=httpx.get(f"{plane.url}/api/v1/pods/{pod}/logs", timeout=30))
    )
    reader.start()
    (request,) = wait_for(lambda: pending(plane, "n1", token1), timeout=5, what="the request in n1's sync")
    assert (request["pod"], request["container"], request["tail"]) == (pod, "main", 10_000)
    assert pending(plane, "n2", token2) == []
    chunk = {"seq": 0, "data": base64.b64encode(b"forged by n2\n").decode(), "done": True}
    as_n2 = httpx.post(
        f"{plane.url}/agent/v1/nodes/n2/logs/{request['id']}",
        json=chunk,
        headers={"Authorization": f"Bearer {token2}"},
    )
    assert as_n2.status_code == 404
    n2_as_n1 = httpx.post(
        f"{plane.url}/agent/v1/nodes/n1/logs/{request['id']}",
        json=chunk,
        headers={"Authorization": f"Bearer {token2}"},
    )
    assert n2_as_n1.status_code == 401
    chunk["data"] = base64.b64encode(b"from n1\n").decode()
    as_n1 = httpx.post(
        f"{plane.url}/agent/v1/nodes/n1/logs/{request['id']}",
        json=chunk,
        headers={"Authorization": f"Bearer {token1}"},
    )
    assert as_n1.json() == {"accepted": True, "cancelled": False}
    reader.join(10)
    assert (result["answer"].status_code, result["answer"].text) == (200, "from n1\n")
    again = httpx.post(
        f"{plane.url}/agent/v1/nodes/n1/logs/{request['id']}",
        json={**chunk, "seq": 1},
        headers={"Authorization": f"Bearer {token1}"},
    )
    assert again.json()["cancelled"], "the reader is done: the agent is told to stop"


def test_an_agent_that_goes_silent_midway_cuts_the_stream_short(plane: ControlPlane) -> None:
    token = register(plane, "n1", "192.0.2.10")
    pod = placed_pod(plane, "web")
    got: list[bytes] = []
    errors: list[Exception] = []

    def read() -> None:
        try:
            with httpx.stream(
                "GET", f"{plane.url}/api/v1/pods/{pod}/logs?follow=true", timeout=30
            ) as response:
                got.extend(response.iter_bytes())
        except httpx.HTTPError as exc:
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    (request,) = wait_for(lambda: pending(plane, "n1", token), timeout=5, what="the request")
    chunk = {"seq": 0, "data": base64.b64encode(b"started\n").decode()}
    url = f"{plane.url}/agent/v1/nodes/n1/logs/{request['id']}"
    assert httpx.post(url, json=chunk, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    reader.join(10)
    assert b"".join(got) == b"started\n"
    assert errors and isinstance(errors[0], httpx.RemoteProtocolError), "the client sees the stream broke off"


def test_a_pod_not_on_a_node_yet_says_so(plane: ControlPlane) -> None:
    pod = wait_for(lambda: next((p.id for p in plane.store.pods() if p.id.startswith("default/web-")), None))
    answer = httpx.get(f"{plane.url}/api/v1/pods/{pod}/logs", timeout=30)
    assert answer.status_code == 409
    assert "is not on a node yet" in answer.json()["detail"]


def test_malformed_chunks_are_refused_naming_the_field(plane: ControlPlane) -> None:
    token = register(plane, "n1", "192.0.2.10")
    auth = {"Authorization": f"Bearer {token}"}
    url = f"{plane.url}/agent/v1/nodes/n1/logs/whatever"
    assert httpx.post(url, json={"seq": 0, "data": "not base64!"}, headers=auth).status_code == 422
    assert httpx.post(url, json={"seq": -1}, headers=auth).status_code == 422
    assert httpx.post(url, json={"seq": 0}, headers=auth).status_code == 404
    assert httpx.post(url, json={"seq": 0}).status_code == 401


def test_reads_of_a_log_need_the_read_token_where_reads_do(tmp_path: Path) -> None:
    plane = new_plane(tmp_path, read_token="read-me")
    try:
        answer = httpx.get(f"{plane.url}/api/v1/pods/default/web/logs", timeout=30)
        assert answer.status_code == 401
        authorised = httpx.get(
            f"{plane.url}/api/v1/pods/default/web/logs",
            headers={"Authorization": "Bearer read-me"},
            timeout=30,
        )
        assert authorised.status_code == 404  # past the token: there is no such pod
    finally:
        plane.stop()


# --- LogText and LogHub on their own -------------------------------------------------------


def test_a_secret_value_split_between_chunks_is_still_redacted() -> None:
    text = LogText(Redactor.of_values([SECRET]))
    data = f"token {SECRET} end\nnext {SECRET}".encode()
    out = "".join(text.feed(data[i : i + 3]) for i in range(0, len(data), 3)) + text.end()
    assert out == "token [redacted] end\nnext [redacted]"


def test_an_incomplete_line_is_released_on_flush_save_what_may_start_a_value() -> None:
    """A prompt without a newline shows when the agent has nothing more (its keepalive),
    except its end, which could be the start of a Secret value still to come."""
    text = LogText(Redactor.of_values([SECRET]))
    prompt = "x" * 60 + " password: "
    assert text.feed(prompt.encode()) == ""
    shown = text.feed(b"", flush=True)
    assert 0 < len(shown) < len(prompt) and prompt.startswith(shown)
    rest = text.feed(SECRET[:7].encode(), flush=True) + text.feed(f"{SECRET[7:]} ok\n".encode())
    assert shown + rest + text.end() == prompt + "[redacted] ok\n"


def test_a_character_split_between_chunks_stays_whole_and_bad_bytes_are_replaced() -> None:
    text = LogText(Redactor())
    snowman = "☃\n".encode()
    assert text.feed(snowman[:1]) + text.feed(snowman[1:]) == "☃\n"
    assert text.feed(b"\xff\n") == "\ufffd\n"


def test_only_newlines_and_tabs_are_kept() -> None:
    assert show("a\tb\nc\x1b[1m\x00\x7f\r\x85\u2028") == "a\tb\nc\\x1b[1m\\x00\\x7f\\x0d\\x85\\u2028"
    assert show("windows\r\nline") == "windows\nline"


def test_a_hub_bounds_requests_per_node_and_chunks_held_for_a_slow_reader() -> None:
    async def scenario() -> None:
        hub = LogHub(max_per_node=2, max_buffered=2)
        first = hub.open("n1", {"pod": "default/a"})
        hub.open("n1", {"pod": "default/b"})
        with pytest.raises(logs_module.Busy):
            hub.open("n1", {"pod": "default/c"})
        hub.open("n2", {"pod": "default/d"})  # another node has room
        assert [r["pod"] for r in hub.pending("n1")] == ["default/a", "default/b"]
        assert hub.answer("n1", first.id, 0, _Chunk(b"x")).accepted
        assert hub.answer("n1", first.id, 0, _Chunk(b"x")).accepted, "a chunk posted again is taken once"
        assert [r["pod"] for r in hub.pending("n1")] == ["default/b"], "a started request is not sent again"
        assert hub.answer("n1", first.id, 1, _Chunk(b"y")).accepted
        assert not hub.answer("n1", first.id, 2, _Chunk(b"z")).accepted, "two chunks held: post again later"
        assert hub.answer("n1", first.id, 2, _Chunk(b"")).accepted, "a keepalive is always taken"
        with pytest.raises(OutOfOrder):
            hub.answer("n1", first.id, 9, _Chunk(b"z"))
        with pytest.raises(NotYours):
            hub.answer("n2", first.id, 3, _Chunk(b"z"))
        assert (await hub.next(first, 1)).data == b"x"
        assert hub.answer("n1", first.id, 3, _Chunk(b"z")).accepted
        hub.close(first)
        assert hub.answer("n1", first.id, 4, _Chunk(b"")).cancelled
        with pytest.raises(NotYours):
            hub.answer("n2", first.id, 4, _Chunk(b""))

    asyncio.run(scenario())
