"""The JSON API's answers, all read from the one redacted view (`gitops.api.view`).

`ReadModel` is what every read path uses: the status page renders `view()`, each
`/api/v1/...` route returns one of the methods below, `gitops status` reads those routes,
and `gitops state export` calls `state()`. Each answer comes from the cached view (built
through the store's `Redactor`) or, for what the view does not hold (older events and
revisions, the state snapshot, full previews), from the store through that same redactor;
and every answer passes `Redactor.value` once more on its way out. Adding a route means
adding a method here, which is where redaction happens.

API answers see their own writes: each first asks the cache whether the store changed (a
few aggregate queries) and, if it did, waits up to `wait` seconds (0.3) for the rebuild,
else answers from the last view (with its `built_at`) while the rebuild goes on: a big
cluster's rebuild (about a second per 5,000 pods) never makes a request wait for it. `json()` keeps
each answer rendered to bytes for as long as its view lives, so a thousand clients asking
for 5,000 pods cost one serialisation, not a thousand; and each pod's JSON is kept for as
long as its row is (a view keeps the rows of pods that did not change), so a new view
costs the JSON of the pods that changed.

The pod list is paged as Kubernetes pages lists: `limit` pods at a time, in a stable order
(`name`: by namespace and name; `problems`: pods not running ready first), each page's
`metadata.continue` a token for the next. Tokens page through the list as it was when the
first page was asked for (its `pods_version`, kept a while: the last 16 lists and five
minutes at most, within a memory budget), so a walk sees every pod of that list exactly
once however the pods change meanwhile. A token of a list no longer kept is answered 410
with a token that goes on from the same place in the current list (pods that changed in
between may then be missed or seen twice); one that is not a token at all, 400.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import json
import operator
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Literal

from gitops.api.view import (
    PodRow,
    StatusView,
    ViewCache,
    find_pod,
    logs_url,
    redacted_event,
    redacted_revision,
)
from gitops.codec import encode
from gitops.health import Health
from gitops.preview.state import to_json as state_json
from gitops.redact import Redactor
from gitops.store import Store

PodOrder = Literal["name", "problems"]
PodKey = str | tuple[int, str]  # where a pod is in an order: its id, or (0 if it has a problem else 1, id)

KEPT_LISTS = 16  # pod lists continue tokens page through, at most
KEPT_SECONDS = 300.0  # and for this long at most
MAX_RENDERED = 512  # answers kept rendered per view


class BadContinue(ValueError):
    """A `continue` that is not a token this server gives (400)."""


class ExpiredContinue(Exception):
    """A continue token of a pod list no longer kept (410). `resume` goes on from the same
    place in the current list."""

    def __init__(self, message: str, resume: str) -> None:
        super().__init__(message)
        self.resume = resume


def _healthy(p: PodRow) -> bool:
    return p.ready and p.phase == "Running" and not p.terminating


def pod_key(p: PodRow, order: PodOrder) -> PodKey:
    return p.id if order == "name" else (int(_healthy(p)), p.id)


def continue_token(version: str, order: PodOrder, after: PodKey) -> str:
    """The token of the page after the pod at `after` in list `version` in `order`."""
    raw = json.dumps([version, order, after], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def read_token(token: str) -> tuple[str, PodOrder, PodKey]:
    """The list, order and place a continue token names; `BadContinue` saying why when it
    is not a token at all."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        version, order, after = json.loads(raw)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise BadContinue(
            "continue: not a continue token (pass metadata.continue of the page before, as it is)"
        ) from exc
    if not isinstance(version, str) or order not in ("name", "problems"):
        raise BadContinue(
            "continue: not a continue token (pass metadata.continue of the page before, as it is)"
        )
    if order == "name" and isinstance(after, str):
        return version, "name", after
    if (
        order == "problems"
        and isinstance(after, list)
        and len(after) == 2
        and after[0] in (0, 1)
        and isinstance(after[1], str)
    ):
        return version, "problems", (int(after[0]), after[1])
    raise BadContinue("continue: not a continue token (pass metadata.continue of the page before, as it is)")


class _KeptLists:
    """The pod lists of recent views, by `pods_version`, for continue tokens: at most
    `most` of them, none older than `seconds`, and, since successive lists share the rows
    of the pods that did not change, no more rows of their own in all than four lists' worth
    of the newest."""

    def __init__(self, most: int = KEPT_LISTS, seconds: float = KEPT_SECONDS) -> None:
        self.most, self.seconds = most, seconds
        self._lock = threading.Lock()
        # version -> (when kept, its rows by id, rows not shared with the list kept before it)
        self._lists: OrderedDict[str, tuple[float, tuple[PodRow, ...], int]] = OrderedDict()
        self._orders: dict[tuple[str, PodOrder], tuple[Sequence[PodRow], list[PodKey]]] = {}

    def keep(self, version: str, rows: tuple[PodRow, ...]) -> None:
        now = time.monotonic()
        with self._lock:
            if version in self._lists:
                self._lists.move_to_end(version)
                return
            last = next(reversed(self._lists.values()))[1] if self._lists else ()
            own = len(rows) - sum(map(operator.is_, rows, last))
            self._lists[version] = (now, rows, own)
            while len(self._lists) > 1:
                oldest, (kept_at, first, _) = next(iter(self._lists.items()))
                held = len(first) + sum(o for _, _, o in list(self._lists.values())[1:])
                if (
                    len(self._lists) <= self.most
                    and now - kept_at <= self.seconds
                    and held <= 4 * len(rows) + 1000
                ):
                    break
                del self._lists[oldest]
                for order in ("name", "problems"):
                    self._orders.pop((oldest, order), None)

    def ordered(self, version: str, order: PodOrder) -> tuple[Sequence[PodRow], list[PodKey]] | None:
        """List `version` in `order`, and each pod's key in it; None when it is not kept."""
        with self._lock:
            found = self._lists.get(version)
            if found is None or time.monotonic() - found[0] > self.seconds:
                return None
            done = self._orders.get((version, order))
        if done is not None:
            return done
        rows: Sequence[PodRow] = found[1]
        if order != "name":
            rows = sorted(rows, key=lambda p: pod_key(p, order))
        done = (rows, [pod_key(p, order) for p in rows])
        with self._lock:
            if version in self._lists:
                self._orders[(version, order)] = done
        return done


class ReadModel:
    def __init__(
        self,
        store: Store,
        sources: Sequence[str] = (),
        *,
        clock: Callable[[], float] = time.time,
        ttl: float = 1.0,
        wait: float = 0.3,
        health: Health | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.wait = wait  # how long an answer waits for the view of a store that changed
        self.health = health or Health()
        self.cache = ViewCache(store, sources, clock=clock, ttl=ttl, health=self.health)
        self._lock = threading.Lock()
        self._rendered: dict[tuple[str, tuple[Any, ...]], bytes] = {}
        self._rendered_for = ""
        self._pod_answers: dict[str, tuple[PodRow, Redactor, bytes]] = {}  # pod id -> (row, redactor, JSON)
        self._lists = _KeptLists()

    def view(self) -> StatusView:
        """The page's view: cached, refreshed in the background."""
        return self.cache.get()

    def json(self, name: str, *args: Any) -> bytes:
        """The answer of method `name` (with `args`) as JSON bytes, rendered once per view."""
        return self._memo(
            self._fresh(),
            (name, args),
            lambda: json.dumps(
                getattr(self, name)(*args), ensure_ascii=False, separators=(",", ":")
            ).encode(),
        )

    def _memo(self, view: StatusView, key: tuple[str, tuple[Any, ...]], render: Callable[[], bytes]) -> bytes:
        """`render()`, kept for the life of `view` (at most `MAX_RENDERED` answers per view)."""
        with self._lock:
            if self._rendered_for != view.generation:
                self._rendered, self._rendered_for = {}, view.generation
            found = self._rendered.get(key)
        if found is not None:
            return found
        rendered = render()
        with self._lock:
            if self._rendered_for == view.generation:
                if len(self._rendered) >= MAX_RENDERED:
                    self._rendered.clear()
                self._rendered[key] = rendered
        return rendered

    def _pod_json(self, rows: Sequence[PodRow], view: StatusView) -> list[bytes]:
        """Each pod's answer as JSON, kept while its row and the redactor are the same (rows
        of an older list are redacted with what `view` knows)."""
        known, redact = self._pod_answers, view.redactor
        out = []
        for row in rows:
            found = known.get(row.id)
            if found is None or found[0] is not row or found[1] is not redact:
                data = json.dumps(redact.value(_pod(row)), ensure_ascii=False, separators=(",", ":")).encode()
                found = known[row.id] = (row, redact, data)
            out.append(found[2])
        if len(known) > 2 * len(view.pods) + 1000:  # many pods gone: forget theirs
            current = {row.id for row in view.pods}
            for pod_id in [i for i in list(known) if i not in current]:
                known.pop(pod_id, None)
        return out

    def pod_list(self, *, limit: int = 0, token: str = "", order: PodOrder = "name") -> bytes:
        """The answer of `/api/v1/pods` as JSON bytes. Without `limit` and `token`, every pod in
        `order` as an array (as it always was); else a page of at most `limit` pods (every one
        left when 0) as a Kubernetes list: `{"kind": "PodList", "apiVersion": "v1",
        "metadata": {"resourceVersion", "continue", "remainingItemCount"}, "items"}`, where
        `continue` (absent on the last page) asks for the next page of the same list.
        `BadContinue` for a token that is not one, `ExpiredContinue` for one of a list no
        longer kept."""
        view = self._fresh()
        if not limit and not token:
            self._lists.keep(view.pods_version, view.pods)
            rows = self._ordered(view.pods_version, order)[0]
            return self._memo(
                view,
                ("pods", (order,)),
                lambda: b"[" + b",".join(self._pod_json(rows, view)) + b"]",
            )
        return self._memo(
            view, ("pods", (limit, token, order)), lambda: self._page(view, limit, token, order)
        )

    def _ordered(self, version: str, order: PodOrder) -> tuple[Sequence[PodRow], list[PodKey]]:
        found = self._lists.ordered(version, order)
        assert found is not None  # kept just now
        return found

    def _page(self, view: StatusView, limit: int, token: str, order: PodOrder) -> bytes:
        after: PodKey | None = None
        version = view.pods_version
        if token:
            version, asked, after = read_token(token)
            if asked != order:
                raise BadContinue(f"continue: the token pages in order={asked}, not order={order}")
        else:
            self._lists.keep(version, view.pods)
        found = self._lists.ordered(version, order)
        if found is None:
            assert after is not None
            self._lists.keep(view.pods_version, view.pods)
            raise ExpiredContinue(
                "continue: the list this token pages through is no longer kept (the pods changed "
                "since, or it is older than five minutes); start again without continue, or go on "
                "in the current list with the continue of this answer (pods that changed in between "
                "may be missed or seen twice)",
                continue_token(view.pods_version, order, after),
            )
        rows, keys = found
        start = 0 if after is None else bisect.bisect_right(keys, after)
        end = len(rows) if not limit else min(len(rows), start + limit)
        metadata: dict[str, Any] = {"resourceVersion": version}
        if end < len(rows):
            metadata["continue"] = continue_token(version, order, keys[end - 1])
        metadata["remainingItemCount"] = len(rows) - end
        # Free text of an older list is redacted again with what the current view knows:
        # a value that became a Secret's since is not shown.
        items = self._pod_json(rows[start:end], view)
        head = json.dumps(
            {"kind": "PodList", "apiVersion": "v1", "metadata": metadata}, separators=(",", ":")
        )
        return head[:-1].encode() + b',"items":[' + b",".join(items) + b"]}"

    def _fresh(self) -> StatusView:
        if self.cache.ttl <= 0:
            return self.cache.get()
        try:
            return self.cache.fresh(self.wait)
        except Exception as exc:  # the store cannot be read: the last view, marked as such
            self.health.fail("status view", f"the store cannot be read: {type(exc).__name__}: {exc}")
            view = self.cache.current()
            if view is None:
                raise
            return view

    def problems(self) -> list[dict[str, Any]]:
        """What fails now in this control plane (`gitops.health`), redacted."""
        now = self.clock()
        found = [
            {
                "component": p.component,
                "error": p.error,
                "since": p.since,
                "for_seconds": round(now - p.since, 1),
            }
            for p in self.health.problems()
        ]
        out: list[dict[str, Any]] = self.store.redactor(max_age=5.0).value(found) if found else found
        return out

    @staticmethod
    def _out(view_or_redactor: StatusView | Redactor, value: Any) -> Any:
        redact = view_or_redactor.redactor if isinstance(view_or_redactor, StatusView) else view_or_redactor
        return redact.value(encode(value))

    def status(self) -> dict[str, Any]:
        view = self._fresh()
        applied, rejected = view.last_applied, view.last_rejected
        c = view.counts
        answer = {
            "sources": list(view.sources),
            "last_applied": applied,
            "last_rejected": rejected if rejected and (not applied or rejected.id > applied.id) else None,
            "latest": view.revisions[0] if view.revisions else None,
            "per_source": [
                {
                    "source": row.source,
                    "configured": row.configured,
                    "objects": row.objects,
                    "last_applied": row.last_applied,
                    "last_rejected": row.last_rejected,
                    "error": row.error,
                    "error_since": row.error_since or None,
                }
                for row in view.per_source
            ],
            "counts": {
                "nodes": c.nodes,
                "nodes_ready": c.nodes_ready,
                "pods": c.pods,
                "pods_ready": c.pods_ready,
                "phases": dict(c.phases),
                "objects": c.objects,
                "objects_by_kind": dict(c.kinds),
                "workloads": c.workloads,
                "workloads_by_kind": dict(c.workload_kinds),
                "jobs": c.jobs,
                "jobs_by_condition": dict(c.job_conditions),
                "cronjobs": c.cronjobs,
                "autoscalers": c.autoscalers,
            },
        }
        out: dict[str, Any] = self._out(view, answer)
        out["problems"] = self.problems()
        return out

    def revisions(self, limit: int) -> list[Any]:
        view = self._fresh()
        if limit <= len(view.revisions) or len(view.revisions) < 50:
            records = list(view.revisions[:limit])
        else:
            records = [redacted_revision(r, view.redactor) for r in self.store.revisions(limit=limit)]
        out: list[Any] = self._out(view, records)
        return out

    def nodes(self) -> list[Any]:
        """Nodes with their heartbeat age as of now (read fresh: ages move with the clock)."""
        now = self.clock()
        view = self._fresh()
        answer = [
            {
                **encode(r.node),
                "heartbeat_age": round(now - r.heartbeat_at, 1),
                "registered_at": r.registered_at,
            }
            for r in self.store.nodes(now)
        ]
        out: list[Any] = self._out(view, answer)
        return out

    def pods(self) -> list[Any]:
        """Every pod, by namespace and name, as `/api/v1/pods` lists them."""
        view = self._fresh()
        # Plain JSON values already (no `encode` needed): only the last redaction pass.
        out: list[Any] = view.redactor.value([_pod(p) for p in view.pods])
        return out

    def pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        """One pod as `pods` lists it (its containers, QoS class, log links), or None."""
        view = self._fresh()
        found = find_pod(view, f"{namespace}/{name}")
        if found is None:
            return None
        out: dict[str, Any] = view.redactor.value(_pod(found))
        return out

    def workloads(self) -> list[Any]:
        """Deployments, StatefulSets and DaemonSets (in that order): rollout counters, step and
        state. `deployment` is the object's `namespace/name` whatever its kind (the key of
        the first release, kept); `kind`, `namespace` and `name` say which object it is."""
        view = self._fresh()
        answer = [
            {
                **_named(w.kind, w.name),
                "deployment": w.name,
                "strategy": w.strategy,
                "template_hash": w.template_hash,
                "desired": w.desired,
                "total": w.total,
                "updated": w.updated,
                "ready": w.ready,
                "available": w.available,
                "updated_available": w.updated_available,
                "complete": w.complete,
                "step": w.step,
                "state": w.state,
                "reason": w.reason,
                "history": list(w.history),
                "error": w.error,
                "autoscaler": w.autoscaler or None,
            }
            for w in view.workloads
        ]
        out: list[Any] = self._out(view, answer)
        return out

    def jobs(self) -> list[Any]:
        """Jobs from the sources and those CronJobs started (`owner`), as `kubectl get jobs`
        shows them, with their condition, counters, times and reason."""
        view = self._fresh()
        answer = [
            {
                **_named("Job", j.name),
                "owner": j.owner or None,
                "condition": j.condition,
                "completions": j.completions,
                "wanted": j.wanted,
                "parallelism": j.parallelism,
                "active": j.active,
                "succeeded": j.succeeded,
                "failed": j.failed,
                "started_at": j.started_at,
                "finished_at": j.finished_at,
                "duration": None if j.duration is None else round(j.duration, 1),
                "reason": j.reason,
                "error": j.error,
                "expired": j.expired,
            }
            for j in view.jobs
        ]
        out: list[Any] = self._out(view, answer)
        return out

    def cronjobs(self) -> list[Any]:
        """CronJobs: schedule, zone, when they run next (`next_run`, Unix time; None while
        suspended) and the schedule's next three times, their runs, and why the last pass did
        or did not start one."""
        view = self._fresh()
        answer = [
            {
                **_named("CronJob", c.name),
                "schedule": c.schedule,
                "time_zone": c.time_zone,
                "suspend": c.suspended,
                "concurrency_policy": c.concurrency_policy,
                "last_schedule": c.last_schedule,
                "next_run": c.next_run,
                "next_run_text": c.next_run_text if c.next_run is not None else "",
                "next_runs": list(c.next_runs),
                "active": list(c.active),
                "runs": [
                    {"job": r.name, "scheduled_at": r.scheduled_at, "outcome": r.outcome or None}
                    for r in c.runs
                ],
                "reason": c.reason,
                "error": c.error,
            }
            for c in view.cronjobs
        ]
        out: list[Any] = self._out(view, answer)
        return out

    def autoscalers(self) -> list[Any]:
        """HorizontalPodAutoscalers: target, bounds, the replicas they set, each metric's
        current value against its target, and why the last decision."""
        view = self._fresh()
        answer = [
            {
                **_named("HorizontalPodAutoscaler", a.name),
                "target": {"kind": a.target_kind, "name": a.target_name},
                "min_replicas": a.min_replicas,
                "max_replicas": a.max_replicas,
                "replicas": a.replicas,
                "metrics": [
                    {
                        "name": m.name,
                        "current": m.current,
                        "target": m.target,
                        "proposal": m.proposal,
                        "text": text,
                    }
                    for m, text in zip(a.metrics, a.metric_texts, strict=True)
                ],
                "unsupported": list(a.unsupported),
                "last_scale_at": a.last_scale_at or None,
                "reason": a.reason,
                "error": a.error,
            }
            for a in view.autoscalers
        ]
        out: list[Any] = self._out(view, answer)
        return out

    def services(self) -> list[Any]:
        """Every Service's endpoints, and a LoadBalancer's ingress (the Ready nodes' addresses)."""
        view = self._fresh()
        out: list[Any] = self._out(view, list(view.endpoints))
        ingress = {s.name: list(s.ingress) for s in view.services}
        for service in out:
            service["ingress"] = ingress.get(f"{service['namespace']}/{service['name']}", [])
        return out

    def events(self, limit: int) -> list[Any]:
        view = self._fresh()
        if limit <= len(view.events):
            records = list(view.events[:limit])
        else:
            records = [redacted_event(e, view.redactor) for e in self.store.events(limit=limit)]
        out: list[Any] = self._out(view, records)
        return out

    def state(self) -> dict[str, Any]:
        """The state snapshot for `gitops plan --state`: Secret data, values taken from
        Secrets and log tails out (`gitops.preview.state`), and free text redacted."""
        state = self.store.snapshot(self.clock())
        redact = Redactor.of(state.desired, {v for p in state.pods for v in p.spec.secret_values()})
        out: dict[str, Any] = redact.value(state_json(state))
        return out

    def previews(self) -> list[Any]:
        """Previews of the sources' other branches; `stale` once the cluster has moved on."""
        view = self._fresh()
        out: list[Any] = self._out(view, [_preview(row, full=False) for row in view.previews or ()])
        return out

    def preview(self, ref: str, source: str | None = None) -> dict[str, Any] | None:
        """One preview in full: the JSON report (docs/preview.md) and its Markdown."""
        view = self._fresh()
        for row in view.previews or ():
            if source is not None and row.get("source") != source:
                continue
            if row.get("ref") in (ref, f"refs/heads/{ref}"):
                out: dict[str, Any] = self._out(view, _preview(row, full=True))
                return out
        return None

    def state_version(self) -> str:
        return self.store.snapshot(self.clock()).version


def _named(kind: str, ref: str) -> dict[str, str]:
    """Which object a row is: its kind, namespace and name (`ref` is `namespace/name`)."""
    namespace, _, name = ref.rpartition("/")
    return {"kind": kind, "namespace": namespace, "name": name}


def _pod(p: PodRow) -> dict[str, Any]:
    """A pod's answer: kubectl's READY (`ready_containers`, app containers) and STATUS
    (`status`), and each container, init ones (sidecars among them) first. A pod of one
    container has one, whose status is the pod's own."""
    return {
        "id": p.id,
        "namespace": p.namespace,
        "name": p.name,
        "owner": p.owner_key,
        "image": p.image,
        "template_hash": p.template_hash,
        "node": p.node or None,
        "phase": p.phase,
        "ready": p.ready,
        "reason": p.reason,
        "pod_ip": p.pod_ip,
        "host_ports": [list(h) for h in p.host_ports],
        "restarts": p.restarts,
        "exit_code": p.exit_code,
        "created_at": p.created_at,
        "terminating": p.terminating,
        "last_log": p.last_log,
        "status": p.status,
        "ready_containers": p.ready_containers,
        "qos_class": p.qos_class,
        "logs_url": p.logs_url,
        "containers": [
            {
                "name": c.name,
                "kind": c.kind,
                "image": c.image,
                "state": c.state,
                "ready": c.ready,
                "restarts": c.restarts,
                "exit_code": c.exit_code,
                "reason": c.reason,
                "last_log": c.last_log,
                "logs_url": logs_url(p.namespace, p.name, c.name),
            }
            for c in p.containers
        ],
    }


def _preview(row: Any, *, full: bool) -> dict[str, Any]:
    report = row.get("report") or {}
    summary = {
        "source": row.get("source"),
        "ref": row.get("ref"),
        "base": row.get("base"),
        "head": row.get("head"),
        "computed_at": row.get("computed_at"),
        "state_version": row.get("state_version"),
        "stale": row.get("stale"),
        "status": row.get("status"),
        "exit_code": report.get("exit_code"),
        "counts": report.get("counts", {}),
        "errors": report.get("errors", []),
    }
    if full:
        summary["report"] = report
        summary["markdown"] = row.get("markdown", "")
    return summary
