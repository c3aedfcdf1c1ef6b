"""`NodeRoute`: the agents' frequent calls served without FastAPI's per-call machinery, with
the same answers to what is wrong (405, 401, 422 naming the field) and the same
documentation as a standard route."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient

from gitops.api.agentsync import json_object
from gitops.api.app import create_app
from gitops.api.auth import AgentGate
from gitops.api.models import SyncReply, WatchRequest
from gitops.api.noderoute import node_call
from gitops.store import Store

JOIN = {"X-Gitops-Join-Token": "join-me"}
NODE = {"name": "n1", "address": "192.0.2.10", "cpu_milli": 4000, "memory_bytes": 2**32}


@pytest.fixture
def agent(tmp_path: Path) -> tuple[TestClient, dict[str, str]]:
    client = TestClient(create_app(Store(f"sqlite:///{tmp_path / 's.db'}"), join_token="join-me"))
    token = client.post("/agent/v1/register", json={"node": NODE}, headers=JOIN).json()["token"]
    return client, {"Authorization": f"Bearer {token}"}


def test_a_node_call_answers_only_post(agent: tuple[TestClient, dict[str, str]]) -> None:
    client, auth = agent
    for path in ("/agent/v1/nodes/n1/sync", "/agent/v1/nodes/n1/watch"):
        refused = client.request("PUT", path, json={}, headers=auth)
        assert refused.status_code == 405 and refused.headers["allow"] == "POST", path


def test_a_body_that_is_not_a_json_object_is_refused_saying_so(
    agent: tuple[TestClient, dict[str, str]],
) -> None:
    client, auth = agent
    for body, said in (
        (b"{not json", "(request): Invalid JSON"),
        (b"", "(request): Invalid JSON"),
        (b"[]", "(request): Input should be an object"),
        (b'{"have_pods": 7}', "have_pods: Input should be a valid string"),
    ):
        refused = client.post("/agent/v1/nodes/n1/sync", content=body, headers=auth)
        assert refused.status_code == 422, body
        assert refused.json()["detail"].startswith(said), refused.json()
        assert refused.json()["errors"][0]["loc"][0] == "body"
    refused = client.post("/agent/v1/nodes/n1/watch", json={"timeout": 61}, headers=auth)
    assert refused.status_code == 422 and refused.json()["detail"].startswith("timeout: ")


def test_a_body_is_read_as_json_only_without_a_content_type_or_with_a_json_one(
    agent: tuple[TestClient, dict[str, str]],
) -> None:
    """As FastAPI's routes read a body: any other content type is refused, saying which."""
    client, auth = agent
    sync = "/agent/v1/nodes/n1/sync"
    for kind in ("text/plain", "application/x-www-form-urlencoded", "application/jsonx"):
        refused = client.post(sync, content=b"{}", headers={**auth, "Content-Type": kind})
        assert refused.status_code == 422, kind
        assert refused.json()["detail"] == f"(request): Content-Type must be application/json, not {kind}"
    for kind in ("application/json; charset=utf-8", "Application/JSON", "application/merge-patch+json"):
        taken = client.post(sync, content=b"{}", headers={**auth, "Content-Type": kind})
        assert taken.status_code == 200, kind
    assert client.post("/agent/v1/nodes/n1/watch", content=b'{"timeout": 0}', headers=auth).status_code == 200


def test_a_sync_reply_holds_every_field_of_its_model(agent: tuple[TestClient, dict[str, str]]) -> None:
    client, auth = agent
    first = client.post("/agent/v1/nodes/n1/sync", json={}, headers=auth)
    assert first.headers["content-type"] == "application/json"
    reply = first.json()
    assert set(reply) == set(SyncReply.model_fields)
    again = client.post(
        "/agent/v1/nodes/n1/sync",
        json={"have_pods": reply["pods_version"], "have_services": reply["services_version"]},
        headers=auth,
    ).json()
    assert set(again) == set(SyncReply.model_fields) and again["pods"] is None
    SyncReply.model_validate(again)


def test_the_node_calls_are_documented_as_standard_routes(agent: tuple[TestClient, dict[str, str]]) -> None:
    client, _ = agent
    paths = client.get("/openapi.json").json()["paths"]
    for call, model in (("sync", "SyncRequest"), ("watch", "WatchRequest")):
        operation = paths[f"/agent/v1/nodes/{{name}}/{call}"]["post"]
        assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(model)
        assert [p["name"] for p in operation["parameters"]] == ["name"]
        assert set(operation["responses"]) == {"200", "422"}


def test_a_node_call_the_gate_did_not_pass_for_that_node_is_refused() -> None:
    """The gate checks the token and names the node; without it the route serves no one."""
    app = FastAPI()
    called: list[str] = []

    @node_call(app, "/agent/v1/nodes/{name}/watch")
    async def watch(name: str, request: WatchRequest) -> dict[str, Any]:
        called.append(name)
        return {"name": name}

    bare = TestClient(app)
    assert bare.post("/agent/v1/nodes/n1/watch", json={}).status_code == 401
    gated = FastAPI(routes=app.routes)
    gated.add_middleware(
        AgentGate, join_token="j", node_token_ok=lambda node, token: token == node + "-token"
    )
    client = TestClient(gated)
    assert (
        client.post(
            "/agent/v1/nodes/n1/watch", json={}, headers={"Authorization": "Bearer n2-token"}
        ).status_code
        == 401
    )
    ok = client.post("/agent/v1/nodes/n1/watch", json={}, headers={"Authorization": "Bearer n1-token"})
    assert ok.status_code == 200 and ok.json() == {"name": "n1"} and called == ["n1"]


def test_an_endpoints_exceptions_reach_the_apps_handlers() -> None:
    app = FastAPI()

    @node_call(app, "/agent/v1/nodes/{name}/sync")
    async def sync(name: str, request: WatchRequest) -> bytes:
        raise HTTPException(409, f"{name} is busy")

    app.add_middleware(AgentGate, join_token="j", node_token_ok=lambda _node, _token: True)
    answer = TestClient(app).post("/agent/v1/nodes/n1/sync", json={}, headers={"Authorization": "Bearer t"})
    assert answer.status_code == 409 and answer.json() == {"detail": "n1 is busy"}


def test_an_endpoint_without_a_request_model_is_refused_at_its_declaration() -> None:
    app = FastAPI()

    async def untyped(name: str, request: dict[str, Any]) -> bytes:
        return b"{}"

    with pytest.raises(TypeError, match="must be a Pydantic model"):
        node_call(app, "/agent/v1/nodes/{name}/sync")(untyped)


def test_the_gate_has_the_tokens_read_again_in_the_background_when_due() -> None:
    """A remembered token is taken at once, and when the tokens are due the gate has them
    read again in a background thread, one read at a time, without the call waiting for it."""
    app = FastAPI()

    @node_call(app, "/agent/v1/nodes/{name}/sync")
    async def sync(name: str, request: WatchRequest) -> bytes:
        return b"{}"

    reading, release, reads = threading.Event(), threading.Event(), []

    def renew() -> None:
        reads.append(1)
        reading.set()
        release.wait(10)

    app.add_middleware(
        AgentGate,
        join_token="j",
        node_token_ok=lambda _node, _token: pytest.fail("a remembered token is not read"),
        node_token_remembered=lambda node, token: token == node + "-token",
        tokens_due=lambda: True,
        renew_tokens=renew,
    )
    auth = {"Authorization": "Bearer n1-token"}
    with TestClient(app) as client:
        assert client.post("/agent/v1/nodes/n1/sync", json={}, headers=auth).status_code == 200
        assert reading.wait(10)  # the read runs ...
        for _ in range(3):  # ... and the calls are answered meanwhile, starting no other
            assert client.post("/agent/v1/nodes/n1/sync", json={}, headers=auth).status_code == 200
        assert reads == [1]
        release.set()


def test_a_reply_in_parts_is_sent_part_after_part_with_their_whole_length() -> None:
    """Texts shared by many replies (every Service's, encoded once) go out as they are, each
    a body message of its own, not copied into one reply per agent; a reply of 64 KiB or
    less goes as one body message (one write: a message each was a system call each)."""
    shared = json.dumps([{"name": "web", "endpoints": list(range(20_000))}]).encode()
    assert len(shared) > 64 * 1024
    app = FastAPI()

    @node_call(app, "/agent/v1/nodes/{name}/watch")
    async def watch(name: str, request: WatchRequest) -> list[bytes]:
        return json_object({"changed": True, "node": name}, {"services_changed": shared, "routes": b"null"})

    sent: list[dict[str, Any]] = []

    async def recording(scope: Any, receive: Any, send: Any) -> None:
        async def noted(message: dict[str, Any]) -> None:
            sent.append(message)
            await send(message)

        await gated(scope, receive, noted)

    gated = AgentGate(app, join_token="j", node_token_ok=lambda _node, _token: True)
    answer = TestClient(recording).post(
        "/agent/v1/nodes/n1/watch", json={}, headers={"Authorization": "Bearer t"}
    )
    assert answer.status_code == 200
    assert answer.json() == {
        "changed": True,
        "node": "n1",
        "services_changed": json.loads(shared),
        "routes": None,
    }
    assert int(answer.headers["content-length"]) == len(answer.content)
    bodies = [m for m in sent if m["type"] == "http.response.body"]
    assert any(m["body"] is shared for m in bodies)  # the very text, not a copy
    assert [m.get("more_body", False) for m in bodies] == [True] * (len(bodies) - 1) + [False]
    sent.clear()
    shared = json.dumps([{"name": "web", "endpoints": list(range(1000))}]).encode()
    answer = TestClient(recording).post(
        "/agent/v1/nodes/n1/watch", json={}, headers={"Authorization": "Bearer t"}
    )
    assert answer.json()["services_changed"] == json.loads(shared)
    assert int(answer.headers["content-length"]) == len(answer.content)
    assert [m.get("more_body", False) for m in sent if m["type"] == "http.response.body"] == [False]


def test_json_object_parts_join_to_the_object() -> None:
    for fields, raw in (
        ({}, {}),
        ({"a": 1}, {}),
        ({}, {"b": b"[1]"}),
        ({"a": "x", "b": None}, {"b": b"[1,2]", "c": b"null"}),
    ):
        assert json.loads(b"".join(json_object(fields, raw))) == {
            **fields,
            **{k: json.loads(v) for k, v in raw.items()},
        }


def test_a_waiting_watch_holds_few_objects_for_the_collector(tmp_path: Path) -> None:
    """At 5,000 nodes, 5,000 watches wait at any time, each renewed every 25 s, and the
    cyclic collector's young collections walk every object those made since the last:
    their pauses were what an agent's quiet call waited on. A watch is served from the
    gate (`NodeLane`), in front of FastAPI's layers (`App.front`), and waits on one
    future: through every layer, with `asyncio.wait_for` and `shield`, each waiting watch
    held 80 objects the collector tracks (29 now, this test's own included)."""
    from gitops.model import Node, NodeName

    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.register_node(Node(NodeName("n1"), "192.0.2.10", 4000, 2**32), "tok", now=0.0)
    app = create_app(store, join_token="join-me")
    watches = 200
    watch = app.state.node_watch
    held = {"have_pods": store.pod_cache.node_version("n1"), "have_services": watch.endpoints.version()}
    body = json.dumps({**held, "timeout": 30}).encode()  # nothing moves from these: they wait
    answered: list[int] = []

    def call() -> Any:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/agent/v1/nodes/n1/watch",
            "raw_path": b"/agent/v1/nodes/n1/watch",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"authorization", b"Bearer tok"), (b"content-type", b"application/json")],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 2),
        }
        given = False

        async def receive() -> dict[str, Any]:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # no disconnect
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                answered.append(message["status"])

        return app(scope, receive, send)

    async def run() -> float:
        first = asyncio.ensure_future(call())  # the app's one-time setup (its middleware stack)
        while watch.waiting < 1:
            assert not answered
            await asyncio.sleep(0.01)
        gc.collect()
        before = len(gc.get_objects())
        tasks = [asyncio.ensure_future(call()) for _ in range(watches)]
        while watch.waiting < watches + 1:
            assert not answered
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # the watch's thread has looked: still waiting
        assert watch.waiting == watches + 1 and not answered
        gc.collect()
        each = (len(gc.get_objects()) - before) / watches
        watch.close()
        await asyncio.wait_for(asyncio.gather(first, *tasks), 10)
        return each

    each = asyncio.run(run())
    assert answered == [200] * (watches + 1)
    assert each < 35, each
    store.close()


@pytest.mark.skipif(sys.platform != "linux", reason="a nice value per thread is Linux's")
def test_the_gate_reads_the_tokens_again_in_the_background_handing_the_interpreter_over() -> None:
    """Reading 5,000 nodes' tokens is milliseconds of Python: done in the process's
    background pool, nicer than the worker threads that answer calls (they have the event
    loop's short slice and nice value), and the event loop gets the interpreter within
    0.5 ms meanwhile, not after the 5-ms switch interval (`gitops.handover`)."""
    from gitops.handover import BACKGROUND_NICE, HANDOVER, usual_switch_interval

    app = FastAPI()

    @node_call(app, "/agent/v1/nodes/{name}/sync")
    async def sync(name: str, request: WatchRequest) -> bytes:
        return b"{}"

    read, seen = threading.Event(), []

    def renew() -> None:
        nice = os.getpriority(os.PRIO_PROCESS, 0)
        seen.append((sys.getswitchinterval(), threading.current_thread().name, nice))
        read.set()

    app.add_middleware(
        AgentGate,
        join_token="j",
        node_token_ok=lambda _node, _token: True,
        node_token_remembered=lambda node, token: token == node + "-token",
        tokens_due=lambda: not read.is_set(),
        renew_tokens=renew,
    )
    with TestClient(app) as client:
        auth = {"Authorization": "Bearer n1-token"}
        assert client.post("/agent/v1/nodes/n1/sync", json={}, headers=auth).status_code == 200
        assert read.wait(10)
    process = os.getpriority(os.PRIO_PROCESS, os.getpid())
    assert [(interval, name.split("_")[0], nice) for interval, name, nice in seen] == [
        (HANDOVER, "background", min(19, process + BACKGROUND_NICE))
    ]
    # The handover made it short: outside every holder's block it is longer. (Read when the
    # test began, it was short once in CI: another test's background work was in a block.)
    assert usual_switch_interval() > HANDOVER
