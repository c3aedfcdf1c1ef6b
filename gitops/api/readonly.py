"""Read-only means read-only: GET and HEAD on everything but the agents', hooks' and git paths.

`ReadOnly` is an ASGI middleware in front of every route. A request to a path outside
`WRITE_PREFIXES` (`/agent/`, `/hooks/`, `/git/`) with any method other than GET or HEAD is
answered `405 Method Not Allowed` with `Allow: GET, HEAD` before any route sees it, so a
route added later (by anyone) is read-only without remembering to be. HEAD is served by
the GET route with the body dropped and the headers kept (FastAPI's routes answer only
the methods they declare, and `@app.get` does not declare HEAD).

`/docs` is a self-contained HTML list of the API's operations built from the OpenAPI
document (FastAPI's Swagger UI loads its assets from a CDN, which fails offline);
`/openapi.json` is FastAPI's own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gitops.api.page import CSP, STYLE, esc

WRITE_PREFIXES = ("/agent/", "/hooks/", "/git/")
READ_METHODS = ("GET", "HEAD")
ALLOW = ", ".join(READ_METHODS)


def read_only(path: str) -> bool:
    return not path.startswith(WRITE_PREFIXES)


class ReadOnly:
    """ASGI middleware: 405 for writes to read-only paths, HEAD served by GET."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not read_only(scope["path"]):
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        if method == "GET":
            await self.app(scope, receive, send)
        elif method == "HEAD":
            await self.app({**scope, "method": "GET"}, receive, _without_body(send))
        else:
            body = json.dumps({"detail": f"{method} not allowed: this path is read-only"}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 405,
                    "headers": [
                        (b"allow", ALLOW.encode()),
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})


def _without_body(send: Send) -> Send:
    async def head_send(message: Message) -> None:
        if message["type"] == "http.response.body":
            if message.get("more_body", False):
                return  # swallow the chunks; the last (empty) message ends the response
            message = {"type": "http.response.body", "body": b""}
        await send(message)

    return head_send


def docs_page(spec: Mapping[str, Any]) -> str:
    """The API's operations as plain HTML: method, path, summary, parameters."""
    rows = []
    for path, operations in sorted(spec.get("paths", {}).items()):
        for method, op in operations.items():
            params = ", ".join(
                f"{esc(p.get('name', ''))} ({esc(p.get('in', ''))})" for p in op.get("parameters", [])
            )
            summary = op.get("description") or op.get("summary") or ""
            rows.append(
                f"<tr><td><code>{esc(method.upper())}</code></td><td><code>{esc(path)}</code></td>"
                f"<td>{esc(summary)}</td><td>{params}</td></tr>"
            )
    info = spec.get("info", {})
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(info.get('title', 'API'))} API</title><style>{STYLE}</style></head><body><main>"
        f"<h1>{esc(info.get('title', 'API'))} {esc(info.get('version', ''))}: HTTP API</h1>"
        '<p>The machine-readable description is <a href="/openapi.json">/openapi.json</a> (OpenAPI). '
        "Every path outside <code>/agent/</code>, <code>/hooks/</code> and <code>/git/</code> is "
        "read-only: GET and HEAD; any other method answers 405 with <code>Allow: GET, HEAD</code>. "
        'The status page is at <a href="/">/</a>, Prometheus metrics at <a href="/metrics">/metrics</a>.</p>'
        "<table><thead><tr><th>Method</th><th>Path</th><th>What</th><th>Parameters</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></main></body></html>"
    )


def install_read_only(app: FastAPI) -> None:
    """Add the middleware and the offline `/docs` page."""
    app.add_middleware(ReadOnly)

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(docs_page(app.openapi()), headers={"Content-Security-Policy": CSP})
