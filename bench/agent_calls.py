"""What one agent call costs the server's app, in process: the quiet sync (a heartbeat that
changes nothing, answered from memory) and a watch answered at once, on the agents' lean
route (`gitops.api.noderoute.NodeRoute`) against the same endpoints on FastAPI's standard
route (dependencies solved per call, the reply validated against the response model); and
a quiet sync carrying 30 pods' measurements (every 15 s from each agent: a third of the
agents' calls) on the lean route, sent as rows (`SyncRequest.measured`, as agents of this
release send them) against the same figures as objects per pod (`usage`, older agents).

    python bench/agent_calls.py [--nodes 200] [--rounds 20] [--pods 30]

Two apps are built by `create_app` on one SQLite store holding `--nodes` registered nodes;
in the baseline app the two node routes are replaced by standard `APIRoute`s of the same
endpoints. Each node keeps one long-poll open on each app, as real agents do, so the quiet
path applies. The calls are made through the apps' whole ASGI stack (the middleware, the
agent gate with the node's token, the router), without a socket: the HTTP server's own
cost (uvicorn, httptools) is the same for both and not measured here. Rounds alternate
between the apps, so a busy machine slows both alike. Prints microseconds per call (the
median round) and the baseline's time over the lean one's, and ends with one JSON line of
the figures.

Then the quiet sync is sent as bytes to the server's HTTP protocol (`OneWriteProtocol`,
a connection per node, its transport only counting what is written): answered by the
quick lane before the app (`gitops.api.onewrite`), against the same protocol with the
lane off, where the call goes on to the app as an ASGI task (`protocol_quick_us`,
`protocol_app_us`). That is the whole of a quiet call's Python in the server but for the
event loop and the socket's system calls.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import logging
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import structlog
import uvicorn
from fastapi import FastAPI
from fastapi.responses import Response
from fastapi.routing import APIRoute
from sqlalchemy import event
from uvicorn.server import ServerState

from gitops.api.app import create_app
from gitops.api.noderoute import NodeRoute
from gitops.api.onewrite import OneWriteProtocol
from gitops.store import Store

JOIN = "bench-join"


def standard_routes(app: FastAPI) -> FastAPI:
    """`app` with its node routes replaced by standard FastAPI routes of the same endpoints."""
    routes = app.router.routes
    for i, route in enumerate(routes):
        if isinstance(route, NodeRoute):
            routes[i] = APIRoute(
                route.path,
                standard_endpoint(route),
                methods=["POST"],
                response_model=route.response_model,
                response_model_exclude_none=route.response_model_exclude_none,
            )
    return app


def standard_endpoint(route: NodeRoute) -> Callable[..., Awaitable[Any]]:
    """The route's endpoint as a standard route takes it: a reply given as JSON text is
    sent as a `Response` (as the endpoints did before `NodeRoute`)."""
    endpoint = route.node_endpoint

    async def standard(name: str, request: Any) -> Any:
        reply = await endpoint(name, request)
        if isinstance(reply, list):
            reply = b"".join(reply)
        return Response(reply, media_type="application/json") if isinstance(reply, bytes) else reply

    standard.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter("name", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str),
            inspect.Parameter(
                "request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=route.request_model
            ),
        ]
    )
    return standard


async def call(
    app: FastAPI, path: str, body: dict[str, Any] | bytes, headers: dict[str, str]
) -> tuple[int, bytes]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(raw)).encode()),
            *((k.lower().encode(), v.encode()) for k, v in headers.items()),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8080),
        "state": {},
    }
    sent = False
    answer: dict[str, Any] = {"status": 0, "body": b""}

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await asyncio.Event().wait()  # the client does not go away
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
        elif message["type"] == "http.response.body":
            answer["body"] += message.get("body", b"")

    await app(scope, receive, send)
    return answer["status"], answer["body"]


async def ok(
    app: FastAPI, path: str, body: dict[str, Any] | bytes, headers: dict[str, str]
) -> dict[str, Any]:
    status, raw = await call(app, path, body, headers)
    if status != 200:
        raise SystemExit(f"{path}: {status} {raw[:300]!r}")
    answer: dict[str, Any] = json.loads(raw)
    return answer


async def run(nodes: int, rounds: int, pods: int) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="gitops-agent-calls-"))
    try:
        return await measure(folder, nodes, rounds, pods)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def measurements(pods: int, versions: dict[str, Any]) -> dict[str, bytes]:
    """A quiet sync's body with `pods` pods' measurements (one container each, as the scale
    bench's agents report), as rows and as objects per pod, encoded before the calls."""
    at = time.time()
    figures = [
        (f"ns-{i % 7}/web-{i:04d}-5d8f7", round(random.uniform(1, 20), 3), random.randrange(8, 24) << 20)
        for i in range(pods)
    ]
    rows = [[pod, at, 15.0, "main", cpu, memory] for pod, cpu, memory in sorted(figures)]
    per_pod = [
        {
            "pod": pod,
            "at": at,
            "window": 15.0,
            "containers": [{"container": "main", "cpu_milli": cpu, "memory_bytes": memory}],
        }
        for pod, cpu, memory in sorted(figures)
    ]
    return {
        "rows": json.dumps({**versions, "measured": rows}).encode(),
        "per_pod": json.dumps({**versions, "usage": per_pod}).encode(),
    }


async def measure(folder: Path, nodes: int, rounds: int, pods: int) -> dict[str, Any]:
    store = Store(f"sqlite:///{folder / 'state.db'}", cluster_cidr="10.64.0.0/10")  # 16,384 nodes
    apps = {
        "lean": create_app(store, join_token=JOIN),
        "standard": standard_routes(create_app(store, join_token=JOIN)),
    }
    held: dict[str, dict[str, Any]] = {}  # node name -> its token and the versions it holds
    lean = apps["lean"]
    for i in range(nodes):
        name = f"node-{i:05d}"
        node = {
            "name": name,
            "address": f"10.{200 + i // 65536}.{i // 256 % 256}.{i % 256}",
            "cpu_milli": 4000,
            "memory_bytes": 8 * 2**30,
        }
        registered = await ok(lean, "/agent/v1/register", {"node": node}, {"X-Gitops-Join-Token": JOIN})
        auth = {"Authorization": f"Bearer {registered['token']}"}
        held[name] = {"auth": auth}
    for name, h in held.items():  # once all are registered: the routes to the others are in the versions
        reply = await ok(lean, f"/agent/v1/nodes/{name}/sync", {}, h["auth"])
        h.update(have_pods=reply["pods_version"], have_services=reply["services_version"])
    # Every node long-polls each app, as agents do: the quiet path answers only those.
    polls = [
        asyncio.create_task(
            call(
                app,
                f"/agent/v1/nodes/{name}/watch",
                {"have_pods": h["have_pods"], "have_services": h["have_services"], "timeout": 60},
                h["auth"],
            )
        )
        for app in apps.values()
        for name, h in held.items()
    ]
    await asyncio.sleep(1.5)  # the watches are waiting and the watch thread has looked
    statements = {"lean": 0, "standard": 0}
    timings: dict[str, dict[str, list[float]]] = {k: {"sync": [], "watch": []} for k in apps}
    counting = ""

    def count(*_: Any) -> None:
        if counting:
            statements[counting] += 1

    event.listen(store.engine, "before_cursor_execute", count)
    for r in range(-1, rounds):  # round -1 warms both apps up (each remembers the reports) untimed
        for kind in ("lean", "standard") if r % 2 == 0 else ("standard", "lean"):
            app = apps[kind]
            counting = kind
            started = time.perf_counter()
            for name, h in held.items():
                versions = {"have_pods": h["have_pods"], "have_services": h["have_services"]}
                beat = await ok(app, f"/agent/v1/nodes/{name}/sync", versions, h["auth"])
                if beat["pods"] is not None or beat["services"] is not None:
                    raise SystemExit(f"{kind}: a quiet sync of {name} was sent what it holds")
            timings[kind]["sync"].append((time.perf_counter() - started) / nodes * 1e6)
            started = time.perf_counter()
            for name, h in held.items():
                versions = {"have_pods": h["have_pods"], "have_services": h["have_services"], "timeout": 0}
                answer = await ok(app, f"/agent/v1/nodes/{name}/watch", versions, h["auth"])
                if answer["changed"]:
                    raise SystemExit(f"{kind}: the watch of {name} saw a change in a quiet cluster")
            if r >= 0:
                timings[kind]["watch"].append((time.perf_counter() - started) / nodes * 1e6)
            else:
                timings[kind]["sync"].pop()
                statements[kind] = 0
            counting = ""
    event.remove(store.engine, "before_cursor_execute", count)
    # The measuring syncs, on the lean app: rows against objects per pod, rounds alternating.
    bodies = {
        name: measurements(pods, {"have_pods": h["have_pods"], "have_services": h["have_services"]})
        for name, h in held.items()
    }
    measuring: dict[str, list[float]] = {"rows": [], "per_pod": []}
    for r in range(-1, rounds):
        for form in ("rows", "per_pod") if r % 2 == 0 else ("per_pod", "rows"):
            started = time.perf_counter()
            for name, h in held.items():
                beat = await ok(lean, f"/agent/v1/nodes/{name}/sync", bodies[name][form], h["auth"])
                if beat["pods"] is not None:
                    raise SystemExit(f"a measuring sync of {name} was sent what it holds")
            if r >= 0:
                measuring[form].append((time.perf_counter() - started) / nodes * 1e6)
    if len(lean.state.agent_reports.measured()) != nodes * pods:
        raise SystemExit("the measurements were not all kept")
    protocol = await through_protocol(lean, held, rounds)
    for app in apps.values():
        app.state.node_watch.close()
    for poll in polls:
        poll.cancel()
    await asyncio.gather(*polls, return_exceptions=True)
    figures: dict[str, Any] = {"nodes": nodes, "rounds": rounds}
    for kind in apps:
        for what in ("sync", "watch"):
            figures[f"{kind}_{what}_us"] = round(statistics.median(timings[kind][what]), 1)
        figures[f"{kind}_sql_statements_per_call"] = round(statements[kind] / (2 * nodes * rounds), 4)
    for what in ("sync", "watch"):
        figures[f"{what}_ratio"] = round(figures[f"standard_{what}_us"] / figures[f"lean_{what}_us"], 2)
    figures["pods_measured"] = pods
    for way in ("quick", "app"):
        figures[f"protocol_{way}_us"] = round(statistics.median(protocol[way]), 1)
    figures["protocol_ratio"] = round(figures["protocol_app_us"] / figures["protocol_quick_us"], 2)
    for form in ("rows", "per_pod"):
        figures[f"measuring_sync_{form}_us"] = round(statistics.median(measuring[form]), 1)
    figures["measuring_ratio"] = round(
        figures["measuring_sync_per_pod_us"] / figures["measuring_sync_rows_us"], 2
    )
    return figures


class CountingTransport(asyncio.Transport):
    """A connection's transport that only counts the writes (`through_protocol`)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, data: Any) -> None:
        self.writes += 1

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        pass


async def through_protocol(
    app: FastAPI, held: dict[str, dict[str, Any]], rounds: int
) -> dict[str, list[float]]:
    """Microseconds a quiet sync takes the server's protocol, fed the request's bytes, per
    round: answered by the quick lane, and with the lane off (through the app, as an ASGI
    task the loop runs). Rounds alternate between the two."""
    config = uvicorn.Config(app, http=OneWriteProtocol, log_level="warning", access_log=False)
    config.load()
    state, loop = ServerState(), asyncio.get_running_loop()
    ways: dict[str, list[tuple[OneWriteProtocol, CountingTransport, bytes]]] = {"quick": [], "app": []}
    for way, connections in ways.items():
        for name, h in held.items():
            protocol = OneWriteProtocol(config=config, server_state=state, app_state={}, _loop=loop)
            transport = CountingTransport()
            protocol.connection_made(transport)
            if way == "app":
                protocol.lane = None
            body = json.dumps({"have_pods": h["have_pods"], "have_services": h["have_services"]}).encode()
            head = (
                f"POST /agent/v1/nodes/{name}/sync HTTP/1.1\r\nhost: 127.0.0.1:8080\r\n"
                f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
                f"authorization: {h['auth']['Authorization']}\r\n\r\n"
            )
            connections.append((protocol, transport, head.encode() + body))
    timings: dict[str, list[float]] = {"quick": [], "app": []}
    for r in range(-1, rounds):
        for way in ("quick", "app") if r % 2 == 0 else ("app", "quick"):
            started = time.perf_counter()
            for protocol, transport, raw in ways[way]:
                before = transport.writes
                protocol.data_received(raw)
                while transport.writes == before:  # (through the app: once its task has run)
                    await asyncio.sleep(0)
            if r >= 0:
                timings[way].append((time.perf_counter() - started) / len(held) * 1e6)
    for connections in ways.values():
        for protocol, _, _ in connections:
            protocol.connection_lost(None)
    return timings


def main() -> None:
    options = argparse.ArgumentParser()
    options.add_argument("--nodes", type=int, default=200)
    options.add_argument("--rounds", type=int, default=20)
    options.add_argument("--pods", type=int, default=30, help="pods measured in each measuring sync")
    args = options.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    figures = asyncio.run(run(args.nodes, args.rounds, args.pods))
    for what in ("sync", "watch"):
        print(
            f"{what:>5}: lean route {figures[f'lean_{what}_us']:7.1f} µs a call, "
            f"standard route (baseline) {figures[f'standard_{what}_us']:7.1f} µs: "
            f"{figures[f'{what}_ratio']:.2f}x"
        )
    print(
        f"a sync with {args.pods} pods' measurements: "
        f"as rows {figures['measuring_sync_rows_us']:7.1f} µs a call, "
        f"as objects per pod (baseline) {figures['measuring_sync_per_pod_us']:7.1f} µs: "
        f"{figures['measuring_ratio']:.2f}x"
    )
    print(
        f"SQL statements per call: lean {figures['lean_sql_statements_per_call']}, "
        f"standard {figures['standard_sql_statements_per_call']} (heartbeats written once a second)"
    )
    print(
        f"a quiet sync through the server's protocol: quick lane {figures['protocol_quick_us']:7.1f} µs "
        f"a call, through the app (baseline) {figures['protocol_app_us']:7.1f} µs: "
        f"{figures['protocol_ratio']:.2f}x"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
