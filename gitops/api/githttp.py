"""Hosted manifest repositories over git's smart HTTP protocol, through `git http-backend`.

`/git/NAME.git/...` is handed to `git http-backend`, git's own CGI program, so clone, fetch
and push behave exactly as with any git server (protocol v0/v1/v2, gzip request bodies).
Each request runs the CGI program in a worker thread (never on the event loop) with the
request body buffered (at most `MAX_REQUEST_BYTES`), and its `Status:` and headers become
the HTTP response.

Every request needs the push token as the password of HTTP Basic authentication (any user
name): `git clone http://gitops:TOKEN@host:8080/git/NAME.git`. Reads need it too, since a
manifest repository can name images, hosts and internal settings. A missing or wrong
token answers 401 with `WWW-Authenticate: Basic realm="gitops"`, so git asks its credential
helper or the user.

Validation happens inside git: the repository's `pre-receive` hook
(`gitops.sync.prereceive`) refuses an invalid revision of the deployed branch, and its
output reaches the pusher as `remote: ...` lines. When a push moved the deployed branch,
`on_push` is called after every push request completes: the server syncs that source at
once and refreshes the previews of its other branches.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import anyio.to_thread
import structlog
from fastapi import APIRouter, Request, Response

from gitops.sync.hosted import HostedRepo

log = structlog.get_logger(__name__)

MAX_REQUEST_BYTES = 64 * 2**20
REALM = 'Basic realm="gitops"'
BACKEND_TIMEOUT = 300.0
_DROPPED_HEADERS = {"status", "content-length", "transfer-encoding", "connection"}


@dataclass(frozen=True)
class CgiResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


def parse_cgi(output: bytes) -> CgiResponse:
    """Split a CGI program's output into status, headers and body."""
    ends = [(i, len(sep)) for sep in (b"\r\n\r\n", b"\n\n") if (i := output.find(sep)) >= 0]
    if not ends:
        return CgiResponse(502, (), b"git http-backend sent no header block\n")
    at, length = min(ends)
    status = 200
    headers = []
    for raw in output[:at].decode("latin-1").splitlines():
        name, sep, value = raw.partition(":")
        if not sep:
            continue
        name, value = name.strip(), value.strip()
        if name.lower() == "status":
            code = value.split(" ", 1)[0]
            status = int(code) if code.isdigit() else 502
        elif name.lower() not in _DROPPED_HEADERS:
            headers.append((name, value))
    return CgiResponse(status, tuple(headers), output[at + length :])


def password_of(authorization: str) -> tuple[str, str] | None:
    """(user, password) of an HTTP Basic `Authorization` header, or None."""
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def _unauthorized(message: str) -> Response:
    return Response(
        message + "\n",
        status_code=401,
        headers={"WWW-Authenticate": REALM},
        media_type="text/plain",
    )


def run_backend(repo: HostedRepo, environ: dict[str, str], body: bytes) -> CgiResponse:
    """Run `git http-backend` for one request (blocking: call it from a worker thread)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(environ)
    env["GIT_PROJECT_ROOT"] = str(repo.root)
    env["GIT_HTTP_EXPORT_ALL"] = "1"
    try:
        result = subprocess.run(
            ["git", "http-backend"],
            input=body,
            env=env,
            capture_output=True,
            timeout=BACKEND_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        log.warning("git.backend_timeout", repo=repo.name, seconds=BACKEND_TIMEOUT)
        return CgiResponse(504, (), b"git http-backend took too long\n")
    if result.stderr:
        log.info("git.backend_stderr", repo=repo.name, stderr=result.stderr.decode(errors="replace")[-2000:])
    return parse_cgi(result.stdout)


def git_router(
    repos: Sequence[HostedRepo],
    token: str,
    on_push: Callable[[HostedRepo], None],
    *,
    max_request: int = MAX_REQUEST_BYTES,
) -> APIRouter:
    """`/git/NAME.git/...` for each hosted repository, guarded by `token`."""
    router = APIRouter()
    by_name = {r.name: r for r in repos}

    @router.api_route("/git/{repository}/{rest:path}", methods=["GET", "POST"], include_in_schema=False)
    async def git_http(repository: str, rest: str, request: Request) -> Response:
        credentials = password_of(request.headers.get("authorization", ""))
        if credentials is None:
            return _unauthorized("authentication required: use the push token as the password")
        user, password = credentials
        if not token or not hmac.compare_digest(password.encode(), token.encode()):
            log.warning("git.unauthorized", client=request.client.host if request.client else "")
            return _unauthorized("wrong push token")
        repo = by_name.get(repository.removesuffix(".git"))
        if repo is None:
            return Response(
                f"no hosted repository {repository!r}; this server hosts: "
                f"{', '.join(f'{n}.git' for n in sorted(by_name)) or 'none'}\n",
                status_code=404,
                media_type="text/plain",
            )
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_request:
            return Response(f"request bodies are limited to {max_request} bytes\n", status_code=413)
        chunks = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_request:
                return Response(f"request bodies are limited to {max_request} bytes\n", status_code=413)
            chunks.append(chunk)
        body = b"".join(chunks)
        environ = {
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REQUEST_METHOD": request.method,
            "PATH_INFO": f"/{repo.name}.git/{rest}",
            "QUERY_STRING": request.url.query,
            "CONTENT_TYPE": request.headers.get("content-type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": user or "gitops",
            "REMOTE_ADDR": request.client.host if request.client else "",
        }
        if encoding := request.headers.get("content-encoding"):
            environ["HTTP_CONTENT_ENCODING"] = encoding
        if protocol := request.headers.get("git-protocol"):
            environ["GIT_PROTOCOL"] = protocol
        receiving = request.method == "POST" and rest == "git-receive-pack"
        before = await anyio.to_thread.run_sync(repo.head) if receiving else None
        response = await anyio.to_thread.run_sync(run_backend, repo, environ, body)
        if receiving:
            after = await anyio.to_thread.run_sync(repo.head)
            if after != before and after is not None:
                log.info(
                    "git.pushed",
                    repo=repo.name,
                    branch=repo.branch,
                    old=(before or "")[:12],
                    new=after[:12],
                    user=user,
                )
            # Level-triggered: the deployed branch is synced if it moved, previews of other
            # branches are refreshed if they did; nothing happens twice.
            on_push(repo)
        return Response(response.body, status_code=response.status, headers=dict(response.headers))

    return router
