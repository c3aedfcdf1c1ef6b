"""Push webhooks from GitHub, GitLab and Gitea: verified, deduplicated, matched to sources.

`POST /hooks/github`, `/hooks/gitlab` and `/hooks/gitea` take a push event and wake the
sync service of every source that deploys the pushed repository and branch, so a push
reaches the cluster in seconds instead of at the next poll.

- **Verified first.** Nothing in a hook is read before its signature or token checks out:
  GitHub's `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>`, Gitea's (and
  Forgejo's) `X-Gitea-Signature: <hex HMAC-SHA256>`, GitLab's `X-Gitlab-Token: <secret>`,
  all compared in constant time. Bad or missing: 401, nothing synced. Without a configured
  secret the hooks are disabled (403): unsigned hooks are never accepted.
- **Replays are answered, not acted on.** A delivery id seen before (`X-GitHub-Delivery`,
  `X-Gitea-Delivery`, `X-Gitlab-Event-UUID`), or a body seen before (the delivery id is not
  covered by the signature), answers 200 "duplicate".
- **Floods do not pile up.** A hook only sets the sync service's wake-up event; however
  many arrive during a sync, at most one more sync follows it, and each sync re-reads the
  branch head (level-triggered), never the commit named in the hook.
- **Validated next.** A verified body is parsed into `PushEvent` (Pydantic, documented in
  `/openapi.json`): a body that is not JSON or whose `ref` or repository URLs have the
  wrong type is answered 422 naming the field. Providers' many other fields are ignored.
- **Matching.** The payload's repository URLs (HTTPS, SSH, scp-like) and each source's URL
  are normalised to `host/owner/repo` (lower case, no credentials, port or `.git`); the
  pushed `ref` must be `refs/heads/<the source's branch>`. Anything else is answered 202
  "ignored" with the reason.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import Headers

from gitops.api.models import field_errors
from gitops.sync.previews import BranchPreviews
from gitops.sync.service import SyncService

log = structlog.get_logger(__name__)

Provider = Literal["github", "gitlab", "gitea"]
PROVIDERS: tuple[Provider, ...] = ("github", "gitlab", "gitea")

# GitHub caps webhook payloads at 25 MB; nothing legitimate is larger.
MAX_BODY_BYTES = 25 * 2**20
REMEMBERED_DELIVERIES = 10_000

_URL_KEYS = (
    "clone_url",
    "ssh_url",
    "git_url",
    "html_url",
    "svn_url",
    "url",
    "git_http_url",
    "git_ssh_url",
    "http_url",
    "web_url",
    "homepage",
)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


# --- the request ---------------------------------------------------------------------------

Url = Field(default=None, max_length=2048)


class RepositoryModel(BaseModel):
    """Where a push event names the pushed repository (GitHub and Gitea: `repository`;
    GitLab: `project` and `repository`); only the URLs are read."""

    model_config = ConfigDict(extra="ignore")

    clone_url: str | None = Url
    ssh_url: str | None = Url
    git_url: str | None = Url
    html_url: str | None = Url
    svn_url: str | None = Url
    url: str | None = Url
    git_http_url: str | None = Url
    git_ssh_url: str | None = Url
    http_url: str | None = Url
    web_url: str | None = Url
    homepage: str | None = Url


class PushEvent(BaseModel):
    """The part of a GitHub, GitLab or Gitea push event gitops reads."""

    model_config = ConfigDict(extra="ignore")

    ref: str | None = Field(default=None, max_length=1024, description="refs/heads/BRANCH for a branch push")
    repository: RepositoryModel | None = None
    project: RepositoryModel | None = None


# --- verification -------------------------------------------------------------------------


def _hmac_hex(secret: bytes, body: bytes) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(provider: Provider, headers: Headers, body: bytes, secret: bytes) -> str | None:
    """None when the hook is authentic; otherwise what is wrong, for the sender."""
    if provider == "github":
        given = headers.get("x-hub-signature-256", "")
        if not given:
            return "missing X-Hub-Signature-256 header (set a secret on the GitHub webhook)"
        expected = "sha256=" + _hmac_hex(secret, body)
        ok = hmac.compare_digest(given.strip().lower().encode(), expected.encode())
        return None if ok else "X-Hub-Signature-256 does not match the body and the configured secret"
    if provider == "gitea":
        given = headers.get("x-gitea-signature") or headers.get("x-forgejo-signature") or ""
        if not given:
            return "missing X-Gitea-Signature header (set a secret on the Gitea webhook)"
        ok = hmac.compare_digest(given.strip().lower().encode(), _hmac_hex(secret, body).encode())
        return None if ok else "X-Gitea-Signature does not match the body and the configured secret"
    given = headers.get("x-gitlab-token", "")
    if not given:
        return "missing X-Gitlab-Token header (set a secret token on the GitLab webhook)"
    ok = hmac.compare_digest(given.encode(), secret)
    return None if ok else "X-Gitlab-Token is not the configured secret"


def delivery_id(provider: Provider, headers: Headers) -> str:
    names = {
        "github": ("x-github-delivery",),
        "gitea": ("x-gitea-delivery", "x-forgejo-delivery"),
        "gitlab": ("x-gitlab-event-uuid",),
    }[provider]
    return next((headers[n] for n in names if headers.get(n)), "")


def event_name(provider: Provider, headers: Headers) -> str:
    names = {
        "github": ("x-github-event",),
        "gitea": ("x-gitea-event", "x-forgejo-event"),
        "gitlab": ("x-gitlab-event",),
    }[provider]
    return next((headers[n] for n in names if headers.get(n)), "")


def is_push(provider: Provider, event: str) -> bool:
    return event == "Push Hook" if provider == "gitlab" else event == "push"


class Deliveries:
    """The most recent delivery ids and body digests seen, thread-safe and bounded."""

    def __init__(self, size: int = REMEMBERED_DELIVERIES) -> None:
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def first_time(self, keys: Iterable[str]) -> bool:
        """Remember `keys`; False when any of them was seen before."""
        keys = [k for k in keys if k]
        with self._lock:
            fresh = not any(k in self._seen for k in keys)
            for k in keys:
                self._seen[k] = None
                self._seen.move_to_end(k)
            while len(self._seen) > self._size:
                self._seen.popitem(last=False)
        return fresh


# --- matching -----------------------------------------------------------------------------


def normalise_url(url: str) -> str:
    """`https://user@GitHub.com:443/Org/Repo.git/` and `git@github.com:org/repo` -> `github.com/org/repo`.

    Local paths stay paths (without a trailing `/` or `.git`); they only match themselves.
    """
    url = url.strip()
    if _SCHEME.match(url):
        parts = urlsplit(url)
        host, path = (parts.hostname or ""), parts.path
    else:
        head, sep, tail = url.partition(":")
        if sep and "/" not in head:  # scp-like: [user@]host:path
            host, path = head.rpartition("@")[2], tail
        else:
            return url.rstrip("/").removesuffix(".git").rstrip("/")
    path = path.strip("/").removesuffix(".git").rstrip("/")
    return f"{host}/{path}".lower() if host else path


def repository_urls(payload: dict[str, Any]) -> set[str]:
    """Every URL the payload gives for the pushed repository, normalised."""
    urls = set()
    for section in ("repository", "project"):
        block = payload.get(section)
        if isinstance(block, dict):
            for key in _URL_KEYS:
                value = block.get(key)
                if isinstance(value, str) and value:
                    urls.add(normalise_url(value))
    return urls


def _display(urls: set[str]) -> str:
    remote = sorted(u for u in urls if not u.startswith("/"))
    return remote[0] if remote else (sorted(urls)[0] if urls else "(no repository URL in the payload)")


@dataclass(frozen=True)
class Match:
    syncs: tuple[SyncService, ...]
    reason: str  # why nothing matched, when `syncs` is empty


def match(payload: dict[str, Any], syncs: Sequence[SyncService]) -> Match:
    ref = payload.get("ref")
    urls = repository_urls(payload)
    if not isinstance(ref, str) or not ref.startswith("refs/heads/"):
        return Match((), f"{ref!r} is not a branch; only branch pushes are synced")
    branch = ref.removeprefix("refs/heads/")
    same_repo = [
        s
        for s in syncs
        if isinstance(getattr(s.source, "url", None), str) and normalise_url(s.source.url) in urls  # type: ignore[attr-defined]
    ]
    if not same_repo:
        return Match((), f"no source deploys {_display(urls)}")
    hits = tuple(s for s in same_repo if getattr(s.source, "branch", None) == branch)
    if not hits:
        deployed = sorted({str(getattr(s.source, "branch", "?")) for s in same_repo})
        return Match((), f"push to {branch}; the sources of {_display(urls)} deploy {', '.join(deployed)}")
    return Match(hits, "")


# --- HTTP ---------------------------------------------------------------------------------


async def _read_body(request: Request, limit: int) -> bytes | None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _answer(status: int, outcome: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"status": outcome, "message": message, **extra}, status_code=status)


def webhook_router(
    secret: bytes | None,
    syncs: Callable[[], Sequence[SyncService]],
    previews: Callable[[], Sequence[BranchPreviews]] = tuple,
    *,
    max_body: int = MAX_BODY_BYTES,
    follower: Callable[[], str] = str,
) -> APIRouter:
    """The `/hooks/{provider}` endpoints; `syncs` gives the current sync services, and
    `previews` the branch previews a push to another branch of their repository refreshes.
    `follower` says why this control plane does not sync ("" while it leads): a push sent
    to a follower is answered 503 with that, so the sender can send it to the leader (which
    also finds the push at its next poll)."""
    router = APIRouter()
    seen = Deliveries()

    schema = PushEvent.model_json_schema(ref_template="#/components/schemas/{model}")
    extra = {
        "requestBody": {
            "required": True,
            "description": "the provider's push event, signed (see docs/push.md)",
            "content": {"application/json": {"schema": {k: v for k, v in schema.items() if k != "$defs"}}},
        }
    }

    @router.post("/hooks/{provider}", tags=["webhooks"], openapi_extra=extra)
    async def hook(provider: str, request: Request) -> JSONResponse:
        if provider not in PROVIDERS:
            return _answer(404, "unknown", f"no webhook for {provider!r}; use one of {', '.join(PROVIDERS)}")
        kind: Provider = provider
        if not secret:
            return _answer(
                403,
                "disabled",
                "webhooks are disabled: start the server with --webhook-secret-file to accept signed hooks",
            )
        body = await _read_body(request, max_body)
        if body is None:
            return _answer(413, "too large", f"webhook bodies are limited to {max_body} bytes")
        problem = verify(kind, request.headers, body, secret)
        if problem is not None:
            log.warning(
                "webhook.unauthorized",
                provider=kind,
                reason=problem,
                client=request.client.host if request.client else "",
            )
            return _answer(401, "unauthorized", problem)
        following = follower()  # before deliveries are remembered: a retry is not a duplicate
        if following:
            log.info("webhook.not_leader", provider=kind, reason=following)
            return _answer(503, "not leader", following)
        delivery = delivery_id(kind, request.headers)
        keys = [f"{kind}:delivery:{delivery}" if delivery else "", f"body:{hashlib.sha256(body).hexdigest()}"]
        if not seen.first_time(keys):
            log.info("webhook.duplicate", provider=kind, delivery=delivery)
            return _answer(200, "duplicate", "this delivery was already received; nothing to do")
        event = event_name(kind, request.headers)
        if kind == "github" and event == "ping":
            return _answer(200, "pong", "webhook configured; push events will trigger a sync")
        if not is_push(kind, event):
            what = f"event {event or '(none)'!r} is not a push; only pushes are synced"
            return _answer(202, "ignored", what)
        try:
            payload = json.loads(body)
        except ValueError:
            return _answer(422, "invalid", "the body is not JSON; set the webhook's content type to JSON")
        try:
            PushEvent.model_validate(payload)
        except ValidationError as exc:
            errors = [dict(e) for e in exc.errors()]
            return _answer(422, "invalid", f"not a push event: {field_errors(errors)}")
        found = match(payload, syncs())
        if not found.syncs:
            urls = repository_urls(payload)
            ref = payload.get("ref")
            refreshed = [p for p in previews() if normalise_url(p.source.url) in urls]
            if refreshed and isinstance(ref, str):
                for p in refreshed:
                    p.trigger()
                log.info("webhook.previewing", provider=kind, delivery=delivery, ref=ref)
                why = f"{found.reason}; previews of this repository are refreshed"
                return _answer(202, "previewing", why)
            log.info("webhook.ignored", provider=kind, delivery=delivery, reason=found.reason)
            return _answer(202, "ignored", found.reason)
        for sync in found.syncs:
            sync.trigger()
        log.info(
            "webhook.triggered",
            provider=kind,
            delivery=delivery,
            ref=payload.get("ref"),
            sources=[s.source.name for s in found.syncs],
        )
        return _answer(
            200,
            "triggered",
            f"sync of {len(found.syncs)} source(s) started",
            sources=len(found.syncs),
        )

    return router
