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
for 5,000 pods cost one serialisation, not a thousand.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from gitops.api.view import PodRow, StatusView, ViewCache, logs_url, redacted_event, redacted_revision
from gitops.codec import encode
from gitops.health import Health
from gitops.preview.state import to_json as state_json
from gitops.redact import Redactor
from gitops.store import Store


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

    def view(self) -> StatusView:
        """The page's view: cached, refreshed in the background."""
        return self.cache.get()

    def json(self, name: str, *args: Any) -> bytes:
        """The answer of method `name` (with `args`) as JSON bytes, rendered once per view."""
        view = self._fresh()
        key = (name, args)
        with self._lock:
            if self._rendered_for != view.generation:
                self._rendered, self._rendered_for = {}, view.generation
            found = self._rendered.get(key)
        if found is not None:
            return found
        value = getattr(self, name)(*args)
        rendered = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
        with self._lock:
            if self._rendered_for == view.generation:
                self._rendered[key] = rendered
        return rendered

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

    def pods(self, limit: int = 0) -> list[Any]:
        """Every pod, or (with `limit`) the first `limit`, those with a problem first (not
        ready, not running, terminating), then by name."""
        view = self._fresh()
        rows = list(view.pods)
        if limit:
            rows = sorted(rows, key=lambda p: (p.ready and p.phase == "Running" and not p.terminating, p.id))
            rows = rows[:limit]
        # Plain JSON values already (no `encode` needed): only the last redaction pass.
        out: list[Any] = view.redactor.value([_pod(p) for p in rows])
        return out

    def pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        """One pod as `pods` lists it (its containers, QoS class, log links), or None."""
        view = self._fresh()
        pod_id = f"{namespace}/{name}"
        found = next((p for p in view.pods if p.id == pod_id), None)
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
