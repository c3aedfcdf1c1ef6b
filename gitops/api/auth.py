"""Who may read: open on loopback, a read token everywhere else.

A server listening only on loopback serves its page and read API to anyone on the machine,
as before. Listening on another address, every read (the page, `/api/v1/...`, `/metrics`,
`/openapi.json`, `/docs`) needs the read token, unless the operator chose `--public-read`:

- programs send `Authorization: Bearer <token>` (`gitops status` takes it from
  `GITOPS_READ_TOKEN` or `--read-token-file`);
- a browser opens any page once with `?token=<token>`: the server sets an HttpOnly,
  SameSite=Strict cookie holding it and redirects to the same page without the token in
  the address, so it is not kept in the history or sent on in a Referer.

`/healthz` stays open. The agents' (`/agent/`), hooks' (`/hooks/`) and git (`/git/`)
paths have their own credentials and are not affected. Tokens are compared in constant
time.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable, Iterable
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qsl, urlencode

import structlog
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gitops.api.readonly import read_only
from gitops.handover import in_background, quick_handover

log = structlog.get_logger(__name__)

COOKIE = "gitops_read"
OPEN_PATHS = ("/healthz",)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    """Whether a listen address (or a Host header's host) is this machine's loopback."""
    host = host.strip("[]")
    try:
        return host in LOOPBACK_NAMES or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ReadAuth:
    """ASGI middleware requiring the read token on read-only paths (see the module docstring)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    def _valid(self, given: str) -> bool:
        return bool(given) and hmac.compare_digest(given.encode(), self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not read_only(path) or path in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        given = dict(query).get("token")
        if given is not None and self._valid(given):
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            # The path as the client sent it (still percent-encoded), on this server only:
            # "//host/x" would be another server's address.
            raw = scope.get("raw_path") or path.encode("utf-8")
            location = "/" + raw.decode("latin-1").lstrip("/")
            await _redirect(send, location + (f"?{rest}" if rest else ""), self.token.decode())
            return
        scheme, _, bearer = headers.get("authorization", "").partition(" ")
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except CookieError:  # a malformed cookie header is no cookie
            cookie = SimpleCookie()
        from_cookie = cookie[COOKIE].value if COOKIE in cookie else ""
        if (scheme.lower() == "bearer" and self._valid(bearer)) or self._valid(from_cookie):
            await self.app(scope, receive, send)
            return
        await _unauthorized(send, browser="text/html" in headers.get("accept", ""))


async def _redirect(send: Send, location: str, token: str) -> None:
    cookie = f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
    await send(
        {
            "type": "http.response.start",
            "status": 303,
            "headers": [
                (b"location", location.encode("latin-1")),
                (b"set-cookie", cookie.encode("latin-1")),
                (b"cache-control", b"no-store"),
                (b"referrer-policy", b"no-referrer"),
                (b"content-length", b"0"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b""})


async def _unauthorized(send: Send, *, browser: bool) -> None:
    if browser:
        body = (
            b'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>gitops: read token needed'
            b"</title></head><body><h1>This server needs its read token</h1><p>Open this page once with "
            b"<code>?token=</code> and the read token (the file <code>read-token</code> in the server's "
            b"state folder, or its <code>--read-token-file</code>); your browser then keeps it in a "
            b"cookie.</p></body></html>"
        )
        kind = b"text/html; charset=utf-8"
    else:
        detail = "this server needs its read token: send Authorization: Bearer <token> (GITOPS_READ_TOKEN)"
        body = json.dumps({"detail": detail}).encode()
        kind = b"application/json"
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"www-authenticate", b'Bearer realm="gitops"'),
                (b"content-type", kind),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def host_name(header: str) -> str:
    """The host of a Host header: `[::1]:8080` -> `::1`, `localhost:8080` -> `localhost`."""
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class LoopbackHosts:
    """ASGI middleware for a server whose reads are open because it listens on loopback:
    answer only requests addressed to a loopback name, so that a web page the user visits
    cannot reach it through a DNS name it rebinds to 127.0.0.1 (DNS rebinding)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = _host(scope.get("headers", []))
        if not host or is_loopback(host_name(host)):
            await self.app(scope, receive, send)
            return
        body = json.dumps(
            {
                "detail": f"this server answers only on loopback names, not {host[:100]!r}; "
                "serve it on another address with a read token (--host, --read-token-file)"
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 403,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _host(headers: Iterable[tuple[bytes, bytes]]) -> str:
    host = ""
    for key, value in headers:
        if key.lower() == b"host":
            host = value.decode("latin-1")
    return host


def loopback_addressed(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a request with these headers is one `LoopbackHosts` lets through."""
    host = _host(headers)
    return not host or is_loopback(host_name(host))


JOIN_HEADER = "x-gitops-join-token"


GATED_NODE = "gitops.node"  # `scope["state"]` key: the node whose token the gate checked
NODE_PREFIX = "/agent/v1/nodes/"  # a node's calls: NODE_PREFIX + name + "/" + what


class AgentGate:
    """ASGI middleware in front of `/agent/`: credentials first, then a bounded body.

    A registration must carry the join token in the `X-Gitops-Join-Token` header, a node's
    call (`/agent/v1/nodes/{name}/...`: sync, watch, log chunks) its node's token
    (`Authorization: Bearer`); both are checked before a byte of the body is read, so no
    one without credentials makes the server read or parse anything. A token remembered as
    valid is checked without leaving the event loop, and the tokens are read again in a
    background thread (`gitops.handover.in_background`) before they are forgotten
    (`tokens_due`, `renew_tokens`), the call not waiting for it; the gate names the node it
    checked in the request's state (`GATED_NODE`), so the route need not ask again. Bodies
    are then read up to the route's limit (413 beyond it) and handed to the route: a node's
    call to `node_lane` first (`gitops.api.noderoute.NodeLane`), which answers the node
    routes itself, past the app's inner layers."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        join_token: str,
        node_token_ok: Callable[[str, str], bool],
        node_token_remembered: Callable[[str, str], bool] = lambda _node, _token: False,
        tokens_due: Callable[[], bool] = lambda: False,
        renew_tokens: Callable[[], None] = lambda: None,
        register_limit: int = 64 * 2**10,
        sync_limit: int = 32 * 2**20,
        node_lane: Callable[[Scope, str, bytes, Receive, Send], Awaitable[bool]] | None = None,
    ) -> None:
        self.app = app
        self.node_lane = node_lane
        self.join_token = join_token.encode()
        self.node_token_ok = node_token_ok
        self.node_token_remembered = node_token_remembered
        self.tokens_due = tokens_due
        self.renew_tokens = renew_tokens
        self.renewing: asyncio.Task[None] | None = None
        self.register_limit = register_limit
        self.sync_limit = sync_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/agent/"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        limit = self.register_limit
        node = ""
        if path == "/agent/v1/register":
            given = headers.get(JOIN_HEADER, "").encode()
            if not (given and hmac.compare_digest(given, self.join_token)):
                await _json(send, 401, "invalid join token (send it in the X-Gitops-Join-Token header)")
                return
        elif path.startswith(NODE_PREFIX):
            node = path.removeprefix(NODE_PREFIX).partition("/")[0]
            if self.remembered(path, scope.get("headers", [])) is None:  # asked of the store, then
                scheme, _, token = headers.get("authorization", "").partition(" ")
                valid = scheme.lower() == "bearer" and bool(token)
                if not valid or not await run_in_threadpool(self.node_token_ok, node, token):
                    await _json(send, 401, "invalid node token")
                    return
            scope.setdefault("state", {})[GATED_NODE] = node
            limit = self.sync_limit
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _too_large(send, limit)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _too_large(send, limit)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if node and self.node_lane is not None and await self.node_lane(scope, node, body, receive, send):
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def remembered(self, path: str, headers: Iterable[tuple[bytes, bytes]]) -> str | None:
        """The node a call to `path` (a node's) is from, when its token is one remembered as
        valid (checked on the event loop, as `__call__` checks it first); None otherwise (the
        call is then for `__call__` to check)."""
        if not path.startswith(NODE_PREFIX):
            return None
        authorization = ""
        for key, value in headers:
            if key.lower() == b"authorization":
                authorization = value.decode("latin-1")
        scheme, _, token = authorization.partition(" ")
        node = path.removeprefix(NODE_PREFIX).partition("/")[0]
        if scheme.lower() != "bearer" or not token or not self.node_token_remembered(node, token):
            return None
        self._renew_soon()
        return node

    def _renew_soon(self) -> None:
        """Have the tokens read again in a background thread when they are due (one read at
        a time), without waiting for it."""
        if self.renewing is None and self.tokens_due():
            self.renewing = asyncio.create_task(self._renew())

    async def _renew(self) -> None:
        try:
            await in_background(self._renew_handing_over)  # (nicer than the calls' worker threads)
        except Exception as exc:  # the next call past the memory reads them itself
            log.warning("agent.tokens_not_read", error=str(exc))
        finally:
            self.renewing = None

    def _renew_handing_over(self) -> None:
        """Read the tokens (5,000 nodes' at 5,000 nodes: a few milliseconds of Python) with the
        interpreter handed to the event loop within 0.5 ms (`gitops.handover`), not 5."""
        with quick_handover():
            self.renew_tokens()


async def _json(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _too_large(send: Send, limit: int) -> None:
    body = json.dumps({"detail": f"request bodies here are limited to {limit} bytes"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
