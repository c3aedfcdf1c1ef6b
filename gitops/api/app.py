"""HTTP: the agents' endpoints and the read-only JSON API.

`/agent/v1/...` is how node agents register (with the cluster's join token, receiving a
per-node token) and sync (heartbeat plus pod statuses in, the node's pods and all service
endpoints out). A node token only ever reads and writes its own node.

`/api/v1/...` is read-only (GET and HEAD) and never returns a Secret value: pod specs are
summarised without environment values or file contents. The status page (`gitops.api.page`),
`/metrics` (`gitops.metrics`), `/openapi.json` and `/docs` are read-only too: every path
outside `/agent/`, `/hooks/` and `/git/` answers 405 to anything but GET and HEAD
(`gitops.api.readonly`).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse, Response

from gitops.api.page import install_status_page
from gitops.api.readonly import install_read_only
from gitops.api.redaction import pod_summary, secret_values
from gitops.api.view import ViewCache
from gitops.codec import decode_as, encode
from gitops.metrics import CONTENT_TYPE, Metrics
from gitops.model import Node, NodeName, PodStatus, Taint
from gitops.planner import all_endpoints, rollouts
from gitops.preview.state import to_json as state_json
from gitops.store import PreviewRecord, Store

log = structlog.get_logger(__name__)


def _bearer(authorization: str = Header(default="")) -> str:
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(401, "missing bearer token")
    return token


def create_app(
    store: Store,
    *,
    join_token: str,
    sources: Sequence[str] = (),
    on_report: Callable[[], None] = lambda: None,
    clock: Callable[[], float] = time.time,
    metrics: Metrics | None = None,
    page_cache_seconds: float = 1.0,
) -> FastAPI:
    # No Swagger UI or ReDoc: they load their assets from a CDN. /docs is ours, offline.
    app = FastAPI(title="gitops", version="0.1.0", docs_url=None, redoc_url=None)
    install_read_only(app)
    install_status_page(app, ViewCache(store, sources, clock=clock, ttl=page_cache_seconds))
    observed = metrics or Metrics()
    observed.watch_store(store, clock)

    @app.get("/metrics", include_in_schema=False)
    def prometheus() -> Response:
        return Response(observed.render(), media_type=CONTENT_TYPE)

    def node_token(name: str, token: str = Depends(_bearer)) -> str:
        if not store.node_for_token(name, token):
            raise HTTPException(401, "invalid node token")
        return name

    @app.post("/agent/v1/register")
    async def register(request: Request) -> dict[str, Any]:
        body = await request.json()
        if not hmac.compare_digest(str(body.get("join_token", "")), join_token):
            raise HTTPException(401, "invalid join token")
        n = body.get("node") or {}
        try:
            node = Node(
                name=NodeName(str(n["name"])),
                address=str(n["address"]),
                cpu_milli=int(n["cpu_milli"]),
                memory_bytes=int(n["memory_bytes"]),
                labels=tuple(sorted((str(k), str(v)) for k, v in (n.get("labels") or {}).items())),
                taints=tuple(
                    Taint(str(t["key"]), str(t.get("value", "")), t.get("effect", "NoSchedule"))
                    for t in n.get("taints") or ()
                ),
                max_pods=int(n.get("max_pods", 110)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise HTTPException(422, f"invalid node description: {exc}") from exc
        token = secrets.token_urlsafe(32)
        store.register_node(node, token, clock())
        log.info("agent.registered", node=node.name, address=node.address)
        on_report()
        return {"token": token, "service_cidr": str(store.service_cidr)}

    @app.post("/agent/v1/nodes/{name}/sync")
    async def agent_sync(name: str, request: Request, _: str = Depends(node_token)) -> dict[str, Any]:
        body = await request.json()
        statuses = [decode_as(PodStatus, s) for s in body.get("statuses") or []]
        now = clock()
        store.heartbeat(name, statuses, now, stopped=[str(p) for p in body.get("stopped") or []])
        if statuses or body.get("stopped"):
            on_report()
        all_pods = store.pods()
        pods = [p for p in all_pods if p.node == name]
        services = all_endpoints(store.desired(), store.vips(), all_pods, [r.node for r in store.nodes(now)])
        return {
            "pods": [encode(p) for p in pods],
            "services": [encode(s) for s in services],
            "service_cidr": str(store.service_cidr),
        }

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/v1/status")
    def status() -> dict[str, Any]:
        revisions = store.revisions(limit=200)
        applied = next((r for r in revisions if r.status == "applied"), None)
        rejected = next((r for r in revisions if r.status == "rejected"), None)
        # Counted in SQL: reading 5,000 pods to count them made this route take 0.6 s.
        phases = store.pod_phase_counts()
        nodes = store.nodes(clock())
        return {
            "sources": list(sources),
            "last_applied": encode(applied) if applied else None,
            "last_rejected": encode(rejected)
            if rejected and (not applied or rejected.id > applied.id)
            else None,
            "latest": encode(revisions[0]) if revisions else None,
            "counts": {
                "nodes": len(nodes),
                "nodes_ready": sum(1 for n in nodes if n.node.ready),
                "pods": sum(phases.values()),
                "pods_ready": store.ready_pod_count(),
                "phases": phases,
                "objects": len(store.desired()),
            },
        }

    @app.get("/api/v1/revisions")
    def revisions(limit: int = 50) -> list[Any]:
        return [encode(r) for r in store.revisions(limit=min(limit, 1000))]

    @app.get("/api/v1/nodes")
    def nodes() -> list[Any]:
        now = clock()
        return [
            {
                **encode(r.node),
                "heartbeat_age": round(now - r.heartbeat_at, 1),
                "registered_at": r.registered_at,
            }
            for r in store.nodes(now)
        ]

    @app.get("/api/v1/pods")
    def pods() -> list[Any]:
        hidden = secret_values(store.desired())
        return [pod_summary(p, hidden) for p in store.pods()]

    @app.get("/api/v1/workloads")
    def workloads() -> list[Any]:
        states = {k.ref: s for k, s in store.rollouts().items()}
        result = []
        for status in rollouts(store.desired(), store.pods(), now=clock()):
            state = states.get(status.deployment)
            result.append(
                {
                    **encode(status),
                    "state": state.status if state else "progressing",
                    "reason": state.reason if state else "",
                    "history": [h for h, _ in state.history] if state else [],
                }
            )
        return result

    @app.get("/api/v1/services")
    def services() -> list[Any]:
        now = clock()
        eps = all_endpoints(store.desired(), store.vips(), store.pods(), [r.node for r in store.nodes(now)])
        return [encode(s) for s in eps]

    @app.get("/api/v1/events")
    def events(limit: int = 100) -> list[Any]:
        return [encode(e) for e in store.events(limit=min(limit, 1000))]

    @app.get("/api/v1/state")
    def state() -> dict[str, Any]:
        """The cluster state as a snapshot for `gitops plan --state` (no Secret values)."""
        return state_json(store.snapshot(clock()))

    def _preview(record: PreviewRecord, version: str, *, full: bool) -> dict[str, Any]:
        report = record.report
        summary = {
            "source": record.source,
            "ref": record.ref,
            "base": record.base,
            "head": record.head,
            "computed_at": record.computed_at,
            "state_version": record.state_version,
            "stale": record.state_version != version,
            "status": record.status,
            "exit_code": report.get("exit_code"),
            "counts": report.get("counts", {}),
            "errors": report.get("errors", []),
        }
        if full:
            summary["report"] = report
            summary["markdown"] = record.markdown
        return summary

    @app.get("/api/v1/previews")
    def previews() -> list[Any]:
        """Previews of the sources' other branches; `stale` once the cluster has moved on."""
        version = store.snapshot(clock()).version
        return [_preview(p, version, full=False) for p in store.previews()]

    @app.get("/api/v1/previews/{ref:path}")
    def preview(ref: str, source: str | None = None) -> dict[str, Any]:
        """One preview in full: the JSON report (docs/preview.md) and its Markdown."""
        for record in store.previews(source):
            if record.ref in (ref, f"refs/heads/{ref}"):
                return _preview(record, store.snapshot(clock()).version, full=True)
        raise HTTPException(404, f"no preview of {ref}")

    @app.exception_handler(ValueError)
    async def value_error(_: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    return app
