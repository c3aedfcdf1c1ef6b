"""HTTP: the agents' endpoints and the read-only JSON API.

`/agent/v1/...` is how node agents register (with the cluster's join token, receiving a
per-node token) and sync (heartbeat plus pod statuses in, the node's pods and all service
endpoints out). A node token only ever reads and writes its own node. Requests are
Pydantic models (`gitops.api.models`): anything malformed is answered 422 naming the field,
and never reaches the store. A registration under the name of a node that is Ready is
refused (409) unless it presents that node's current token.

A sync that changes nothing for an agent that long-polls (most calls of a quiet cluster)
is answered on the event loop from memory: no read, no write, no worker thread. Any other
runs in a worker thread, reads only the node's own pods, shares one computation of every
Service's endpoints among all agents (`SharedEndpoints`), and wakes the controller only
when a report changed a pod. A report like the last one costs no write, and what the agent
holds already is not sent again (`gitops.api.agentsync`). Sync and watch calls, every
agent's about once a second, are served on a lean route (`gitops.api.noderoute`): the body
parsed by its model in one step, the reply sent as built, from the gate that checked the
node's token, past the app's inner layers.

`/api/v1/...` is read-only (GET and HEAD) and comes from the one redacted read model
(`gitops.api.readmodel`), as does the status page (`gitops.api.page`); a container's log
is streamed from what its node's agent posts (`gitops.api.logs`). `/metrics`,
`/openapi.json` and `/docs` are read-only too: every path outside `/agent/`, `/hooks/`
and `/git/` answers 405 to anything but GET and HEAD (`gitops.api.readonly`).
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
import time
import typing
from collections.abc import Callable, Mapping, Sequence
from json.encoder import encode_basestring
from typing import Annotated, Any

import structlog
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from gitops.api.agentsync import (
    AgentReports,
    NodeWatch,
    Part,
    SharedEndpoints,
    json_object,
    kept_measurements,
    report_digest,
)
from gitops.api.auth import GATED_NODE, JOIN_HEADER, AgentGate, LoopbackHosts, ReadAuth
from gitops.api.logs import LogHub, install_logs
from gitops.api.models import (
    RegisterReply,
    RegisterRequest,
    SyncReply,
    SyncRequest,
    WatchReply,
    WatchRequest,
    address_problem,
    field_errors,
)
from gitops.api.noderoute import NodeLane, QuickLane, node_call
from gitops.api.onewrite import Reply, encode_reply
from gitops.api.page import install_status_page
from gitops.api.readmodel import BadContinue, ExpiredContinue, PodOrder, ReadModel
from gitops.api.readonly import install_read_only
from gitops.handover import in_background
from gitops.health import Health
from gitops.loop import Precedence
from gitops.metrics import CONTENT_TYPE, Metrics
from gitops.model import ContainerStatus, Node, NodeName, PodId, PodStatus, Taint
from gitops.store import NodeNameTaken, PodRangeExhausted, Report, Store

log = structlog.get_logger(__name__)
# Seconds old the pods and Services a heartbeat is answered from memory against may be
# (`NodeWatch` reads them at least every second while agents wait).
QUIET_MAX_AGE = 2.0
# Seconds at most an agent's sync call that reads or writes waits while the controller
# decides or writes a pass of many pod changes (`gitops.loop.Precedence`), within the
# agent's 30 s; then it is answered 429 (send it again). Calls let through after their
# wait at 5,000 nodes took a third of the core from a pass writing 150,000 pods.
YIELD_SECONDS = 20.0


class App(FastAPI):
    """The app, with the gate and what guards it in front of FastAPI's own layers (`front`):
    a node's sync and watch are answered from the gate (`gitops.api.noderoute.NodeLane`),
    and a call waiting on a long-poll holds only the layers it went through, a coroutine
    each with its closures. At 5,000 nodes FastAPI's five outer ones (its error, telemetry
    and body-size middleware among them) were a fifth of what each waiting watch held for
    the collector to walk. Everything else goes on through FastAPI as it came; an exception
    the front itself raises is answered 500 by the server, as FastAPI's outermost layer
    would. The quiet ones among the nodes' calls do not come here: the server's protocol
    answers them from `quick_lane` (`gitops.api.onewrite`)."""

    front: ASGIApp | None = None
    quick_lane: QuickLane | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.front is None or scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        if self.root_path:
            scope["root_path"] = self.root_path
        await self.front(scope, receive, send)

    async def behind(self, scope: Scope, receive: Receive, send: Send) -> None:
        """FastAPI's own layers: what `front` calls to go on."""
        await FastAPI.__call__(self, scope, receive, send)


async def _bearer(authorization: str = Header(default="")) -> str:
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
    endpoints_cache_seconds: float = 0.5,
    allow_probe_hosts: bool = False,
    allow_host_paths: Sequence[str] = (),
    allow_privileged: bool = False,
    read_token: str | None = None,
    loopback_nodes: bool = True,
    loopback_only: bool = False,
    authoritative: Callable[[], bool] = lambda: True,
    on_sync: Callable[[str], None] = lambda _: None,
    adopting: Callable[[], bool] = lambda: True,
    health: Health | None = None,
    leadership: Callable[[], Mapping[str, Any]] = lambda: {"leader": True},
    precedence: Precedence | None = None,
) -> FastAPI:
    """The app; with `read_token`, reads need it (`gitops.api.auth`), else they are open.
    `loopback_nodes` lets nodes register a loopback address (a server on loopback, whose
    agents can only be on its own machine); `loopback_only` answers only requests addressed
    to loopback names (open reads on loopback, safe from DNS rebinding). `authoritative` says
    whether the control plane knows every pod yet (after a start it has read all its
    sources, and heard from its agents): until then agents keep containers it did not assign
    to them; `adopting` says whether it knows what is desired yet (reported containers
    are adopted then). `leadership` says whether this control plane leads and who does,
    for `/api/v1/status` (`gitops.server.ControlPlane.leadership`). Agents' calls that read
    or write the store wait while `precedence` is held (the controller deciding or writing
    thousands of pods goes first), and are answered 429 if it still is after
    `YIELD_SECONDS`; heartbeats that report nothing new are answered from memory meanwhile."""
    # No Swagger UI or ReDoc: they load their assets from a CDN. /docs is ours, offline.
    # No OpenTelemetry: gitops exports Prometheus metrics (`/metrics`). FastAPI would look for
    # OpenTelemetry providers at every request (9% of an agent's quiet sync call).
    app = App(
        title="gitops",
        version="0.2.0",
        docs_url=None,
        redoc_url=None,
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    install_read_only(app)
    lane = NodeLane(app)
    gate = AgentGate(
        app.behind,
        join_token=join_token,
        node_token_ok=store.node_for_token,
        node_token_remembered=store.node_token_remembered,
        tokens_due=store.tokens_due,
        renew_tokens=store.renew_tokens,
        node_lane=lane,  # the sync and watch routes, answered from the gate
    )
    # Their quiet calls, answered by the server's protocol before the app (`gitops.api.onewrite`).
    app.quick_lane = QuickLane(gate, lane, loopback_only=loopback_only and not read_token)
    # The read token, or loopback names only, are asked before the gate, as before anything.
    app.front = gate
    if read_token:
        app.front = ReadAuth(gate, token=read_token)
    elif loopback_only:
        app.front = LoopbackHosts(gate)
    health = health or Health()
    reads = ReadModel(store, sources, clock=clock, ttl=page_cache_seconds, health=health)
    install_status_page(app, reads.cache, health)
    observed = metrics or Metrics()
    observed.watch_store(store, clock)
    observed.watch_health(health)
    endpoints = SharedEndpoints(store, clock, ttl=endpoints_cache_seconds)
    reports = app.state.agent_reports = AgentReports(store)
    observed.watch_usage(reports.measured)  # every pod's, as this control plane's agents reported it
    proxy_problems: dict[str, tuple[str, ...]] = {}
    ranges = (str(store.service_cidr), str(store.cluster_cidr))  # fixed when the store is opened
    app.state.read_model = reads
    logs = app.state.logs = LogHub()  # `gitops logs` requests, answered by the pods' agents
    yielding = precedence or Precedence()
    watch = app.state.node_watch = NodeWatch(store, endpoints, logs.pending_nodes, precedence=yielding)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        return JSONResponse(
            {"detail": field_errors(errors), "errors": [_jsonable(e) for e in errors]}, status_code=422
        )

    @app.get("/metrics", include_in_schema=False)
    def prometheus() -> Response:
        return Response(observed.render(), media_type=CONTENT_TYPE)

    @app.get("/metrics/resource", include_in_schema=False)
    def prometheus_resource() -> Response:
        # Sent as it is made (its parts made in a worker thread, one after the other).
        return StreamingResponse(observed.render_resource(), media_type=CONTENT_TYPE)

    async def node_token(name: str, request: Request, token: str = Depends(_bearer)) -> str:
        # `AgentGate` checked it before the body was read, as it does for every node's path.
        checked = request.scope.get("state", {}).get(GATED_NODE) == name
        if not checked and not await run_in_threadpool(store.node_for_token, name, token):
            raise HTTPException(401, "invalid node token")
        return name

    install_logs(app, store, logs, node_token=node_token, clock=clock)

    @app.post(
        "/agent/v1/register",
        response_model=RegisterReply,
        responses={401: {"description": "wrong join token"}, 409: {"description": "the name is taken"}},
    )
    def register(
        request: RegisterRequest,
        authorization: str = Header(default=""),
        join: str = Header(default="", alias=JOIN_HEADER),
    ) -> RegisterReply:
        """Register a node (or register it again) and receive its node token. The cluster's
        join token is the `X-Gitops-Join-Token` header (checked before the body is read)."""
        if not hmac.compare_digest(join.encode(), join_token.encode()):
            raise HTTPException(401, "invalid join token")
        n = request.node
        node = Node(
            name=NodeName(n.name),
            address=n.address,
            cpu_milli=n.cpu_milli,
            memory_bytes=n.memory_bytes,
            labels=tuple(sorted(n.labels.items())),
            taints=tuple(Taint(t.key, t.value, t.effect) for t in n.taints),
            max_pods=n.max_pods,
        )
        problem = address_problem(n.address, str(store.service_cidr), loopback_ok=loopback_nodes)
        if problem is not None:
            raise HTTPException(422, f"node.address: {problem}")
        scheme, _, presented = authorization.partition(" ")
        token = secrets.token_urlsafe(32)
        try:
            pod_cidr = store.register_node(
                node,
                token,
                clock(),
                presented=presented if scheme.lower() == "bearer" else "",
                subnet_hint=n.pod_cidr,
            )
        except NodeNameTaken as exc:
            log.warning("agent.refused", node=node.name, address=node.address, reason=str(exc))
            raise HTTPException(409, str(exc)) from exc
        except PodRangeExhausted as exc:
            log.error("agent.refused", node=node.name, address=node.address, reason=str(exc))
            raise HTTPException(422, str(exc)) from exc
        except IntegrityError as exc:  # two first registrations of one name at once
            raise HTTPException(409, f"node {node.name} is being registered by another agent") from exc
        log.info("agent.registered", node=node.name, address=node.address)
        on_report()
        return RegisterReply(
            token=token,
            service_cidr=str(store.service_cidr),
            cluster_cidr=str(store.cluster_cidr),
            pod_cidr=pod_cidr,
        )

    def quiet_sync(name: str, request: SyncRequest, digest: str = "") -> bytes | None:
        """The reply to a heartbeat that reports nothing new, from memory (`_unchanged`), its
        measurements and heartbeat kept; None when the call must read or write. The server's
        protocol answers with it before the app (`gitops.api.onewrite`)."""
        began = time.perf_counter()
        reply = _unchanged(name, request, digest or _digest(request))
        if reply is not None:
            kept = kept_measurements(request)
            if kept is not None:
                reports.keep_usage(name, kept)
            beat(name)
            observed.agent_sync.observe(time.perf_counter() - began)
        return reply

    @node_call(app, "/agent/v1/nodes/{name}/sync", response_model=SyncReply, quick=quiet_sync)
    async def agent_sync(name: str, request: SyncRequest) -> bytes | list[Part]:
        """Heartbeat and pod statuses in; this node's pods and every Service's endpoints out."""
        digest = _digest(request)
        reply = quiet_sync(name, request, digest)
        if reply is not None:
            return reply
        began = time.perf_counter()
        try:
            if yielding.holding:  # the controller decides or writes thousands of pods: it goes first
                paused = time.monotonic()
                free = await yielding.pause(YIELD_SECONDS)  # on the event loop: no worker thread waits
                observed.agent_calls_yielded.inc(time.monotonic() - paused)
                if not free:
                    # Still writing: the node is alive, and its report is to come again
                    # (as Kubernetes' API Priority and Fairness answers a full queue).
                    beat(name)
                    raise HTTPException(
                        429,
                        "the controller is writing a pass of many pods; send the report again",
                        headers={"Retry-After": "1"},
                    )
            return await run_in_threadpool(_sync, name, request, digest)
        finally:
            keep_due()  # it may have kept a heartbeat
            observed.agent_sync.observe(time.perf_counter() - began)

    def _digest(request: SyncRequest) -> str:
        # Reports compare by the agent's digest when it gives one (no digest made of 30
        # statuses at each heartbeat), else by the server's own.
        return f"agent:{request.report_digest}" if request.report_digest else report_digest(request)

    flushing: set[asyncio.Future[None]] = set()
    due_timer: list[asyncio.TimerHandle] = []  # the one pending `keep_due` timer, if any

    def beat(name: str) -> None:
        """Keep the node's heartbeat in memory; when the kept ones are due, have them written
        in a worker thread, the call not waiting for it (`AgentReports`). Waiting, the call
        that found them due (one a second) and those that came while the thread was handed
        the write waited for the database and the interpreter: the p99 of quiet calls at
        5,000 nodes was 15-50 ms in the server against a p50 of 0.1 ms."""
        if reports.beat(name, clock()):
            write_kept()
        keep_due()

    def write_kept() -> None:
        writing = in_background(reports.flush)  # (nicer than the calls' worker threads)
        flushing.add(writing)
        writing.add_done_callback(flushing.discard)
        writing.add_done_callback(lambda _: keep_due())  # kept again if the write failed

    def keep_due() -> None:
        """Have the kept heartbeats written when due even if no call comes to find them due
        (on the event loop; one timer at a time, which at thousands of agents finds them
        already written by a call)."""
        if not due_timer:
            left = reports.overdue()
            if left == 0.0:
                write_kept()
            elif left != float("inf"):
                due_timer.append(asyncio.get_running_loop().call_later(left, due))

    def due() -> None:
        due_timer.clear()
        keep_due()

    def _unchanged(name: str, request: SyncRequest, digest: str) -> bytes | None:
        """The reply to a heartbeat that says what the node's last report said and holds what
        the last reply gave, from memory, on the event loop (most calls of a quiet cluster);
        None when the call must read or write (`_sync`, in a worker thread). Only for an agent
        that long-polls: the pods and Services it compares with are those `NodeWatch` keeps
        fresh while agents wait, at most `QUIET_MAX_AGE` seconds old, and a change since
        reaches the agent through its watch."""
        if request.stopped or request.proxy_problems or proxy_problems.get(name):
            return None
        if not watch.watched(name, within=QUIET_MAX_AGE):
            return None
        cache = store.pod_cache
        # While the controller decides or writes thousands of pods, the watch does not read
        # (`NodeWatch`): what it last read is what agents get until the write is done.
        max_age = float("inf") if yielding.holding else QUIET_MAX_AGE
        services_version = endpoints.cached_version(max_age)
        if services_version != request.have_services or cache.age() >= max_age:
            return None
        pods_version = cache.node_version(name)
        if pods_version != request.have_pods or not reports.unchanged(name, digest, pods_version):
            return None
        if adopting() and not request.runtime_error:
            on_sync(name)
        # (`gitops_proxy_rules_skipped` for the node is 0 already: `_sync`, which wrote the
        # report this one repeats, set it with `proxy_problems`, empty here. Set again at each
        # call, its labels' lookup was 2% of the replica's event loop at 5,000 nodes.)
        return _quiet_text(name, pods_version, services_version, request.report_digest)

    # The fields every quiet reply shares (`_quiet_text`), as JSON text without its closing
    # brace, for the values they have now: (services' version, authoritative, the
    # heartbeat grace) -> text.
    quiet_head: dict[tuple[str, bool, float], bytes] = {}

    def _quiet_text(name: str, pods_version: str, services_version: str, report_held: str) -> bytes:
        """`_reply`'s text for a quiet heartbeat: what every node's quiet reply shares encoded
        once while it holds, then the node's own fields. Encoding the whole reply at each call
        was a tenth of the replica's event loop at 5,000 nodes (py-spy, docs/scale.md)."""
        shared = (services_version, authoritative(), store.heartbeat_grace)
        head = quiet_head.get(shared)
        if head is None:
            fields = _reply(name, "", services_version)
            for own in ("pods_version", "report_held", "logs"):
                del fields[own]
            head = encode_reply(fields)[:-1]
            quiet_head.clear()
            quiet_head[shared] = head
        pending = logs.pending(name)
        return b"".join(
            (
                head,
                b',"pods_version":',
                encode_basestring(pods_version).encode(),
                b',"report_held":',
                encode_basestring(report_held).encode(),
                b',"logs":',
                encode_reply(pending) if pending else b"[]",
                b"}",
            )
        )

    def _reply(
        name: str,
        pods_version: str,
        services_version: str,
        *,
        claims: list[str] | None = None,
        report_held: str = "",
    ) -> dict[str, Any]:
        """A sync reply with the pods, the Services and the routes left null (as held): every
        field of `SyncReply` (sent as it is: `gitops.api.noderoute`)."""
        return {
            "pods": None,
            "pods_version": pods_version,
            "services": None,
            "services_version": services_version,
            "services_from": "",
            "services_changed": None,
            "services_removed": None,
            "service_cidr": ranges[0],
            "cluster_cidr": ranges[1],
            "routes": None,
            "allow_probe_hosts": allow_probe_hosts,
            "allow_host_paths": list(allow_host_paths),
            "allow_privileged": allow_privileged,
            "authoritative": authoritative(),
            # How often this control plane needs to hear from the agent: a quarter of the
            # grace before it counts the node NotReady (Kubernetes' node status every 10 s
            # against a 40 s grace).
            "heartbeat_seconds": store.heartbeat_grace / 4,
            "logs": logs.pending(name),
            # The claims whose volumes this node keeps; any other claim volume of ours it
            # deletes. Null with `pods` (the pods' version covers them).
            "claims": claims,
            "report_held": report_held,
            "endpoint_edits": True,  # it takes `SyncRequest.endpoint_edits`
        }

    def _sync(name: str, request: SyncRequest, digest: str) -> list[Part]:
        """A sync that reads or writes: the report written (unless it is the last one again),
        and what the agent does not hold yet."""
        statuses = [
            PodStatus(
                pod=PodId(s.pod),
                phase=s.phase,
                ready=s.ready,
                reason=s.reason,
                pod_ip=s.pod_ip,
                host_ports=tuple((c, p, h) for c, p, h in s.host_ports),
                restarts=s.restarts,
                exit_code=s.exit_code,
                container_id=s.container_id,
                last_log=s.last_log,
                template_hash=s.template_hash,
                owner=s.owner,
                containers=tuple(ContainerStatus(**c.model_dump()) for c in s.containers),
            )
            for s in request.statuses
        ]
        now = clock()
        adopt = adopting()
        pods_version, ids, pods = store.pod_cache.node_view(name)
        changed = False
        same = not request.stopped and reports.unchanged(name, digest, pods_version)
        # A report not sent again that this server no longer holds as the node's last (its
        # pods moved since, or the server restarted): nothing to write; the node is alive,
        # and the reply's empty `report_held` has the agent send it whole.
        unheard = request.report_omitted and not same
        if same or unheard:  # only the heartbeat time is new
            if reports.beat(name, now):
                reports.flush()
        else:
            report = Report(
                name,
                tuple(statuses),
                now,
                tuple(request.stopped),
                runtime_error=request.runtime_error,
                adopt=adopt,
            )
            changed, written_at = reports.write(report)
            pods_version, ids, pods = store.pod_cache.node_view(name, read_after=written_at)
            known = set(ids)
            if adopt and any(s.pod not in known for s in statuses):
                reports.forget(name)  # containers of pods not here: adopted once their owner wants them
            else:
                reports.written(name, digest, pods_version)
        kept = kept_measurements(request)
        if kept is not None:  # written with the heartbeats
            reports.keep_usage(name, kept)
            if reports.beat(name, now):
                reports.flush()
        if changed:
            on_report()
        if adopt and not request.runtime_error and not unheard:
            on_sync(name)  # its containers are known now: adopted, or not wanted
        _note_proxy_problems(name, tuple(request.proxy_problems), now)
        # The Services' part is JSON text encoded once for every agent holding what this one
        # holds (`SharedEndpoints.reply_parts`), the pods' joined from texts the pod cache
        # keeps; only the rest is encoded for this call.
        services_version, raw = endpoints.reply_parts(
            request.have_services, name, deltas=request.service_deltas, edits=request.endpoint_edits
        )
        same_pods = request.have_pods == pods_version
        held = bool(request.report_digest) and reports.unchanged(name, digest, pods_version)
        fields = _reply(
            name,
            pods_version,
            services_version,
            claims=None if same_pods else sorted(store.pod_cache.claims(name)),
            report_held=request.report_digest if held else "",
        )
        return json_object(fields, raw if same_pods else {**raw, "pods": pods})

    def watch_begin(name: str, request: WatchRequest) -> asyncio.Future[Reply]:
        """The watch, as a future of its answer (`NodeWatch.begin`), its heartbeat kept. The
        server's protocol answers with it before the app (`gitops.api.onewrite`)."""
        beat(name)
        answer = watch.begin(
            name,
            request.have_pods,
            request.have_services,
            request.timeout,
            deltas=request.service_deltas,
            edits=request.endpoint_edits,
        )
        return typing.cast("asyncio.Future[Reply]", answer)  # a `WatchAnswer` is a `Reply`

    @node_call(
        app,
        "/agent/v1/nodes/{name}/watch",
        response_model=WatchReply,
        response_model_exclude_none=True,
        quick=watch_begin,
    )
    async def agent_watch(name: str, request: WatchRequest) -> Reply:
        """Long-poll: answered once the node's pods or the Services move from the versions
        the agent holds, or a log request waits for it; else after `timeout` seconds.

        A watch is a heartbeat too (kept in memory, written with the others' in one
        statement), as a kubelet's Lease renewal is apart from its status updates: an agent
        whose sync calls queue behind others' report writes (3,000 nodes while 30,000 pods
        come up: minutes) is still alive, and its node must not go NotReady and lose its
        pods for the server's slowness.

        To an agent that takes deltas, an answer for a move of the Services carries the
        Services changed since the version it holds (as a sync reply would, text encoded
        once): every move otherwise cost every agent a watch answer and a sync call."""
        return await watch_begin(name, request)

    def _note_proxy_problems(node: str, reported: tuple[str, ...], now: float) -> None:
        """Rules a node's proxy skipped: an event when they change, a metric, a log line."""
        problems: tuple[str, ...] = ()
        if reported:
            redact = store.redactor(max_age=1.0)
            problems = tuple(redact(p) for p in reported)
        observed.proxy_rules_skipped.labels(node=node).set(len(problems))
        if proxy_problems.get(node, ()) == problems:
            return
        proxy_problems[node] = problems
        if problems:
            log.warning("agent.proxy_skipped_rules", node=node, rules=len(problems), first=problems[0])
            message = f"{len(problems)} service rule(s) skipped; first: {problems[0]}"
            store.add_event(f"node {node}", "ProxyRulesSkipped", message, now)
        else:
            store.add_event(f"node {node}", "ProxyRulesProgrammed", "every service rule is programmed", now)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    def rendered(name: str, *args: Any) -> Response:
        return Response(reads.json(name, *args), media_type="application/json")

    @app.get("/api/v1/status")
    def status() -> dict[str, Any]:
        """Sources, the last applied and rejected revisions, counts, what fails now, and
        whether this control plane leads (and who does)."""
        return {**reads.status(), **leadership()}

    @app.get("/api/v1/revisions")
    def revisions(limit: int = 50) -> Response:
        return rendered("revisions", max(0, min(limit, 1000)))

    @app.get("/api/v1/nodes")
    def nodes() -> list[Any]:
        return reads.nodes()

    @app.get(
        "/api/v1/pods",
        responses={
            400: {"description": "`continue` is not a continue token"},
            410: {"description": "the list the token pages through is no longer kept; `continue` goes on"},
        },
    )
    def pods(
        limit: Annotated[int, Query(ge=0, description="at most this many pods, a page (0: every pod)")] = 0,
        token: Annotated[
            str,
            Query(alias="continue", max_length=2000, description="`metadata.continue` of the page before"),
        ] = "",
        order: Annotated[
            PodOrder, Query(description="`name`, or `problems` first (pods not running ready)")
        ] = "name",
    ) -> Response:
        """Every pod: phase, readiness, node, reason, containers (never env values or file
        contents). With `limit` (or `continue`), one page of the list, Kubernetes style: `{kind,
        apiVersion, metadata: {resourceVersion, continue, remainingItemCount}, items}`, where
        `continue` (absent on the last page) asks for the next page of the same list."""
        try:
            return Response(
                reads.pod_list(limit=limit, token=token, order=order), media_type="application/json"
            )
        except ExpiredContinue as exc:
            return JSONResponse({"detail": str(exc), "continue": exc.resume}, status_code=410)
        except BadContinue as exc:
            return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.get("/api/v1/pods/{namespace}/{name}")
    def pod(namespace: str, name: str) -> dict[str, Any]:
        """One pod as `/api/v1/pods` lists it, with its containers; 404 when there is none."""
        found = reads.pod(namespace, name)
        if found is None:
            raise HTTPException(404, f"no pod {namespace}/{name}")
        return found

    @app.get("/api/v1/workloads")
    def workloads() -> Response:
        """Deployments, StatefulSets and DaemonSets: rollout counters, step, state and reason."""
        return rendered("workloads")

    @app.get("/api/v1/jobs")
    def jobs() -> Response:
        """Jobs, those CronJobs started among them: condition, completions, counters, times, reason."""
        return rendered("jobs")

    @app.get("/api/v1/cronjobs")
    def cronjobs() -> Response:
        """CronJobs: schedule, zone, suspend, next run (Unix time) and the next three, runs, reason."""
        return rendered("cronjobs")

    @app.get("/api/v1/autoscalers")
    def autoscalers() -> Response:
        """HorizontalPodAutoscalers: target, min and max, replicas, each metric against its target."""
        return rendered("autoscalers")

    @app.get("/api/v1/services")
    def services() -> Response:
        return rendered("services")

    @app.get("/api/v1/events")
    def events(limit: int = 100) -> Response:
        return rendered("events", max(0, min(limit, 1000)))

    @app.get("/api/v1/state")
    def state() -> dict[str, Any]:
        """The cluster state as a snapshot for `gitops plan --state` (no Secret values)."""
        return reads.state()

    @app.get("/api/v1/previews")
    def previews() -> Response:
        """Previews of the sources' other branches; `stale` once the cluster has moved on."""
        return rendered("previews")

    @app.get("/api/v1/previews/{ref:path}")
    def preview(ref: str, source: str | None = None) -> dict[str, Any]:
        """One preview in full: the JSON report (docs/preview.md) and its Markdown."""
        found = reads.preview(ref, source)
        if found is None:
            raise HTTPException(404, f"no preview of {ref}")
        return found

    @app.exception_handler(ValueError)
    async def value_error(_: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    return app


def _jsonable(error: Any) -> dict[str, Any]:
    return {
        "loc": list(error.get("loc", ())),
        "msg": str(error.get("msg", "")),
        "type": error.get("type", ""),
    }
