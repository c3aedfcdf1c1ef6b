"""The agents' frequent calls on a lean path: `NodeRoute`.

Every agent calls `POST /agent/v1/nodes/{name}/sync` and `/watch` about once a second, so
at thousands of nodes these two routes are most of what the server does. FastAPI's
standard route spent more on each of them than the handler did: solving the dependencies
(the node's token, the body), validating the returned dict against the response model
again, and building a `JSONResponse` (143 µs a call, in process, against 20 µs for a
plain Starlette route; py-spy at 3,000 hollow nodes put the HTTP layer at half the
server's core, the handler itself at 6% of that).

A `NodeRoute` is declared like any FastAPI route, and `/openapi.json` documents it from
the endpoint's signature and the route's response model as it does the others. Calls,
though, are served by `handle`:

- a method other than POST is answered 405, with `Allow: POST`;
- the node's token is the gate's to check (`gitops.api.auth.AgentGate`, in front of every
  `/agent/` path, names the node it checked in the request's state): a call the gate did not
  pass for this node is answered 401;
- the body, which the gate read already, is parsed and validated by the endpoint's request
  model in one `model_validate_json`; what does not fit raises FastAPI's
  `RequestValidationError`, answered 422 by the app's handler as on any other route. As
  on FastAPI's routes, a body is read as JSON only without a `Content-Type` or with a JSON
  one (`application/json`, `application/*+json`); any other is refused 422, saying so;
- the endpoint is called with the node's name and the parsed request, and returns the
  reply as JSON text (`bytes`, or a list of parts to send one after the other: texts shared
  by many replies are not copied into each), or as a dict already in the response model's
  shape, sent as it is (the endpoints build it so; their tests hold them to the model).

Exceptions the endpoint raises (`HTTPException` among them) are answered by the app's
exception handlers as on any other route.

`NodeLane` serves these routes from the gate (`AgentGate`, which has checked the node's
token and read the body), past the app's inner middleware and router. A call waiting on
a long-poll holds every layer it passed through (a coroutine each, with the closures and
objects of each): at 5,000 nodes, 5,000 waiting watches renewed every 25 s, and the
cyclic collector's young collections walked all of those made since the last. A call
the lane does not serve (another method, another path) goes on through the app.

Most of these calls do not reach the app at all. A route may have a quick endpoint
(`node_call(..., quick=...)`): a plain function that answers from memory, or gives None.
`QuickLane` asks it from the server's HTTP protocol (`gitops.api.onewrite`) for a call that
passes the same checks the gate and the route make (the token remembered, the host, the
content type, the request model), and the protocol writes its reply without an ASGI task:
a heartbeat that reports nothing new, and a watch (a future the protocol answers from).
What the quick endpoint leaves, and every call that fails a check, goes to the app as it
came, to be answered there as described above.
"""

from __future__ import annotations

import asyncio
import inspect
import typing
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from gitops.api.auth import GATED_NODE, NODE_PREFIX, AgentGate, loopback_addressed
from gitops.api.onewrite import JOINED, Reply, encode_reply

NodeEndpoint = Callable[[str, Any], Awaitable[Reply]]
# An endpoint's answer before the app (`QuickLane`): the reply, a future of it, or None
# when the call is for the endpoint itself.
QuickEndpoint = Callable[[str, Any], "Reply | asyncio.Future[Reply] | None"]


class NodeRoute(APIRoute):
    """A route `/agent/v1/nodes/{name}/...` whose endpoint is `async (name, request)`,
    served without FastAPI's per-call machinery (see the module docstring)."""

    quick: QuickEndpoint | None = None  # its answer before the app, if any (`QuickLane`)

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        model = typing.get_type_hints(endpoint).get("request")
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise TypeError(f"{path}: the endpoint's `request` parameter must be a Pydantic model")
        self.request_model: type[BaseModel] = model
        self.node_endpoint = typing.cast("NodeEndpoint", endpoint)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            await super().handle(scope, receive, send)  # 405, with `Allow`
            return
        name = scope["path_params"]["name"]
        if scope.get("state", {}).get(GATED_NODE) != name:
            await _send(send, 401, b'{"detail":"invalid node token"}')
            return
        await self.serve(scope, name, await _body(receive), send)

    async def serve(self, scope: Scope, name: str, body: bytes, send: Send) -> None:
        """Answer the node's call, its `body` read already and its token checked."""
        request = scope.get("state", {}).pop(PARSED, None)
        if not isinstance(request, self.request_model):
            request = self.parse(scope.get("headers", ()), body)
        reply = await self.node_endpoint(name, request)
        await _send(send, 200, encode_reply(reply) if isinstance(reply, dict) else reply)

    def parse(self, headers: Iterable[tuple[bytes, bytes]], body: bytes) -> BaseModel:
        """The call's body as the request model validates it, else FastAPI's 422."""
        refused = _not_json(headers)
        if refused is not None:
            wrong = {"type": "content_type", "loc": ("body",), "msg": refused, "input": None}
            raise RequestValidationError([wrong], body=body)
        try:
            return self.request_model.model_validate_json(body)
        except ValidationError as exc:
            errors = exc.errors(include_url=False)
            for error in errors:
                error["loc"] = ("body", *error["loc"])
            raise RequestValidationError(errors, body=body) from None

    def answer(
        self, name: str, headers: list[tuple[bytes, bytes]], body: bytes, state: dict[str, Any]
    ) -> Any:
        """The quick endpoint's answer (`QuickLane`), or None when the call is for `serve`:
        a body it would refuse (422), or one the quick endpoint leaves to the endpoint (the
        request then kept in the call's `state` for `serve`: a report of 30 pods' statuses
        was validated twice)."""
        if self.quick is None:
            return None
        try:
            request = self.parse(headers, body)
        except RequestValidationError:
            return None
        state[PARSED] = request
        return self.quick(name, request)


class NodeLane:
    """The app's `NodeRoute`s, served from the gate (see the module docstring): the gate
    hands it a node's call it passed, with the body it read, and the lane answers it when
    it is a POST to one of them (True), as the route and the app's exception handlers
    would, or leaves it to the app (False)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self._routes: dict[str, NodeRoute] = {}  # by the path's last part (`sync`, `watch`)
        self._seen = -1  # how many routes the app had when they were looked for

    def route(self, action: str) -> NodeRoute | None:
        """The node route `/agent/v1/nodes/{name}/<action>`, if the app has one."""
        routes = self.app.router.routes
        if len(routes) != self._seen:  # routes added since: looked for again
            self._seen = len(routes)
            pattern = NODE_PREFIX + "{name}/"
            self._routes = {}
            for r in routes:
                if isinstance(r, NodeRoute) and r.path.startswith(pattern):
                    last = r.path.removeprefix(pattern)
                    if "/" not in last:
                        self._routes[last] = r
        return self._routes.get(action)

    async def __call__(self, scope: Scope, node: str, body: bytes, receive: Receive, send: Send) -> bool:
        if scope["method"] != "POST":
            return False
        name, _, action = scope["path"].removeprefix(NODE_PREFIX).partition("/")
        route = self.route(action)
        if route is None or name != node:
            return False
        scope["path_params"] = {"name": name}
        try:
            await route.serve(scope, name, body, send)
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise  # to the app's outermost middleware: a 500
            request = Request(scope, receive)
            if inspect.iscoroutinefunction(handler):
                response = await handler(request, exc)
            else:
                response = await run_in_threadpool(handler, request, exc)
            await response(scope, receive, send)
        return True

    def _handler(self, exc: Exception) -> Callable[..., Any] | None:
        """The app's handler of `exc`, as its exception middleware finds it: by the status
        of an `HTTPException`, else by the nearest class (not `Exception`: the app's last
        resort, answered by its outermost middleware)."""
        handlers = self.app.exception_handlers
        if isinstance(exc, HTTPException) and exc.status_code in handlers:
            return handlers[exc.status_code]
        for kind in type(exc).__mro__:
            if kind is not Exception and kind in handlers:
                return handlers[kind]
        return None


class QuickLane:
    """The node routes' quick endpoints, for the server's protocol to answer with before the
    app (`gitops.api.onewrite.OneWriteProtocol`): a POST to a node's route whose token the
    gate remembers (`AgentGate.remembered`), addressed as the app's front lets through, with
    a JSON body the route's request model validates, that the route's quick endpoint answers
    (a heartbeat that reports nothing new, a watch). For anything else `answer` gives None,
    and the protocol hands the call to the app as it came: what it answers there (401, 413,
    422, a sync that reads or writes) is the app's, as before."""

    def __init__(self, gate: AgentGate, lane: NodeLane, *, loopback_only: bool) -> None:
        self.gate = gate
        self.lane = lane
        self.loopback_only = loopback_only  # the app's front is `LoopbackHosts`

    def wants(self, method: bytes, url: bytes) -> bool:
        """Whether a request for `url` may be one to answer (from its first line alone)."""
        return (
            method == b"POST"
            and url.startswith(_NODE_PREFIX)
            and url.count(b"/") == 5  # /agent/v1/nodes/{name}/{action}
            and not any(c in url for c in (b"?", b"%", b"#"))
        )

    def answer(
        self, path: str, headers: list[tuple[bytes, bytes]], body: bytes, state: dict[str, Any]
    ) -> Any:
        """The reply (or a future of it) to the call, or None when it is the app's (with the
        request as validated in its `state`, not validated again: `PARSED`)."""
        if self.loopback_only and not loopback_addressed(headers):
            return None
        node = self.gate.remembered(path, headers)
        if node is None or len(body) > self.gate.sync_limit:
            return None
        route = self.lane.route(path.rpartition("/")[2])
        return None if route is None else route.answer(node, headers, body, state)


_NODE_PREFIX = NODE_PREFIX.encode()
PARSED = "gitops.parsed"  # `scope["state"]` key: the request as `QuickLane` validated it


def node_call(
    app: FastAPI, path: str, *, quick: QuickEndpoint | None = None, **route: Any
) -> Callable[[NodeEndpoint], NodeEndpoint]:
    """Register the decorated endpoint as `POST path` on a `NodeRoute`, ahead of the app's
    other routes; `route` as to `app.post` (the response model and the like, for the
    documentation). With `quick`, calls are answered by it before the app when it answers
    (`QuickLane`), and by the endpoint when it gives None."""

    def register(endpoint: NodeEndpoint) -> NodeEndpoint:
        routes = app.router.routes
        app.router.add_api_route(path, endpoint, methods=["POST"], route_class_override=NodeRoute, **route)
        # First in the router, which tries routes in order: matched without trying the
        # others' patterns (their paths do not overlap: `/agent/v1/nodes/{name}/` and a word).
        routes.insert(0, routes.pop())
        typing.cast("NodeRoute", routes[0]).quick = quick
        return endpoint

    return register


def _not_json(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """Why the request's `Content-Type` says its body is not JSON; None when it is JSON or
    not given (as FastAPI reads a body)."""
    for key, value in headers:
        if key == b"content-type":
            given = value.decode("latin-1")
            kind = given.split(";", 1)[0].strip().lower()
            if kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json")):
                return None
            return f"Content-Type must be application/json, not {given}"
    return None


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _send(send: Send, status: int, body: bytes | list[bytes | memoryview]) -> None:
    parts = [body] if isinstance(body, bytes) else body
    size = sum(map(len, parts))
    if len(parts) > 1 and size <= JOINED:  # one write (a part each was a system call each)
        parts = [b"".join(parts)]
    length = str(size).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", length)],
        }
    )
    for i, part in enumerate(parts):
        await send({"type": "http.response.body", "body": part, "more_body": i < len(parts) - 1})
