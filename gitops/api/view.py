"""The read model: the cluster as people see it, computed once per store change, shared by all.

A view (`StatusView`) is plain frozen rows ready to render, read from the store (revisions,
nodes, pods, rollouts, the Job, CronJob and autoscaler states, services, events, previews):
requested resources summed per node, rollout counters per Deployment, StatefulSet and
DaemonSet (with the replicas an autoscaler set), each Job's completions and condition
(those CronJobs started too), each CronJob's next runs, each autoscaler's metrics against
their targets, ready endpoints per Service, desired objects per kind (those gitops only
stores, such as RoleBindings, are counted there), each pod's containers with kubectl's
summary of them (`READY` 2/2, `STATUS` such as `Init:0/2`, `CrashLoopBackOff` or
`OOMKilled`) and its QoS class, and every piece of free text (log tails, reasons, event
messages, revision errors, labels) passed through one `Redactor` built from the desired
Secrets and the values pods hold, so no Secret value and no URL credential is in it. The
status page renders this view and the JSON API serialises it (`gitops.api.readmodel`);
nothing people read is built from the store any other way.

`ViewBuilder` builds each view from the one before: pods come from the store's `PodCache`
(which reads only the rows written since), and only what the pods that changed touch is
computed again (their rows, their workloads' statuses, their Services' endpoints). At
5,000 pods a pod that flips its readiness costs a few tens of milliseconds, where reading
and decoding every pod and building every row costs about a second (`build_view` does
that: the uncached path, and the twin incremental views are tested against).

`ViewCache` keeps the last view and serves it to every request. At most once per `ttl`
seconds it asks the store for a cheap change marker (a few aggregate queries) in a
background thread, and rebuilds the view there when the marker moved. A request thread
that wants the interpreter while a rebuild computes waits for it up to the switch interval
(5 ms) each time it handed it over, which it does at every socket read and write: so the
rebuild sleeps a moment between its steps, runs with a switch interval of 0.5 ms, and
rebuilds are spaced at least `pace` times their own duration apart. Heartbeat ages and node
readiness move with the clock alone: when the view is older than `max_age` and nothing
else changed, only the node rows are re-read (a rebuild follows if a node's readiness
flipped, since endpoints depend on it). Requests never wait for a rebuild except the very
first one (and API answers, for a short one: `fresh`); with `ttl <= 0` every request
builds its own view from scratch (the uncached path, kept for the benchmark's baseline).
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import operator
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple
from urllib.parse import quote

import structlog

from gitops.codec import encode
from gitops.handover import background, quick_handover
from gitops.health import Health
from gitops.heap import HEAP
from gitops.model import (
    CronRun,
    CronState,
    JobState,
    Manifest,
    MetricStatus,
    Node,
    ObjectKey,
    Pod,
    PodChange,
    PodSpec,
    ScaleState,
    ServiceEndpoints,
    pod_changes,
)
from gitops.planner import all_endpoints, rollouts
from gitops.planner.autoscale import read_spec
from gitops.planner.cron import describe_time, job_manifest, next_runs
from gitops.planner.job import job_counts
from gitops.planner.rollout import RolloutStatus
from gitops.planner.services import KeptEndpoints
from gitops.redact import Redactor
from gitops.schemas.cron import read_time_zone
from gitops.store import EventRecord, RevisionRecord, Store

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class NodeRow:
    name: str
    address: str
    ready: bool
    heartbeat_at: float
    cpu_requested: int
    cpu_capacity: int
    memory_requested: int
    memory_capacity: int
    pods: int
    max_pods: int
    labels: tuple[tuple[str, str], ...]
    taints: tuple[str, ...]
    reason: str = ""  # why the node is NotReady
    pod_cidr: str = ""  # the node's pod subnet


@dataclass(frozen=True)
class WorkloadRow:
    name: str
    strategy: str
    template_hash: str
    desired: int
    total: int
    updated: int
    ready: int
    available: int
    updated_available: int
    complete: bool
    step: str
    state: str
    reason: str
    history: tuple[str, ...]
    error: str = ""  # why the last pass could not plan or write this workload
    kind: str = "Deployment"  # or StatefulSet, DaemonSet
    autoscaler: str = ""  # namespace/name of the HorizontalPodAutoscaler that sets `desired`


WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")
"""The kinds with a rollout, in the order they are shown."""

JobCondition = Literal["Complete", "Failed", "Suspended", "Running", "Pending"]


@dataclass(frozen=True)
class JobRow:
    """A Job from the source, or one a CronJob started (`owner`), as `kubectl get jobs` shows it."""

    name: str  # namespace/name
    owner: str  # namespace/name of the CronJob that started it; "" for a Job from the source
    condition: JobCondition  # Pending: not seen by the controller yet
    completions: str  # kubectl's COMPLETIONS: "2/3", or "1/work queue" without spec.completions
    done: int  # succeeded pods (indexes, when Indexed)
    wanted: int | None  # spec.completions; None for a work queue
    parallelism: int
    active: int
    succeeded: int
    failed: int  # counted against backoffLimit
    started_at: float | None
    finished_at: float | None
    duration: float | None  # seconds from start to finish (or to the view's time while it runs)
    reason: str
    error: str = ""
    expired: bool = False  # ttlSecondsAfterFinished passed: its pods are gone


@dataclass(frozen=True)
class CronJobRow:
    name: str  # namespace/name
    schedule: str
    time_zone: str  # spec.timeZone, or UTC
    suspended: bool
    concurrency_policy: str
    last_schedule: float | None  # the schedule time of the last run started
    next_runs: tuple[float, ...]  # the schedule's next three times
    next_run_text: str  # the first of them in the CronJob's zone: `2026-12-01 10:05 CET`
    active: tuple[str, ...]  # the Jobs of its runs still running
    runs: tuple[CronRun, ...]  # its runs whose Job exists, oldest first
    reason: str  # why the last pass did or did not start a run
    error: str = ""  # why it cannot run at all (a bad schedule or zone)

    @property
    def next_run(self) -> float | None:
        """When its next run starts; None while it is suspended or its schedule is unreadable."""
        return self.next_runs[0] if self.next_runs and not self.suspended else None

    @property
    def last_run(self) -> CronRun | None:
        return self.runs[-1] if self.runs else None


@dataclass(frozen=True)
class AutoscalerRow:
    name: str  # namespace/name
    target_kind: str
    target_name: str
    min_replicas: int
    max_replicas: int
    replicas: int | None  # what it set its target to; None before its first pass
    metrics: tuple[MetricStatus, ...]  # each metric's current value against its target
    reason: str  # why its last decision
    error: str = ""
    unsupported: tuple[str, ...] = ()  # metrics gitops cannot read, as written
    last_scale_at: float = 0.0

    @property
    def target(self) -> str:
        return f"{self.target_kind}/{self.target_name}"

    @property
    def metric_texts(self) -> tuple[str, ...]:
        """`cpu 83%/60%`: each metric's current value over its target, as kubectl's TARGETS."""
        return tuple(f"{m.name} {m.current}/{m.target}" for m in self.metrics)


ContainerKind = Literal["init", "sidecar", "app"]


class ContainerRow(NamedTuple):
    """One container of a pod as people see it: init containers (sidecars among them) first,
    in the order they start, then the app containers. (A NamedTuple: a view holds one for
    each of thousands of pods, and these are the cheapest frozen values to build.)"""

    name: str
    kind: ContainerKind  # a sidecar is an init container that keeps running beside the app
    image: str
    state: Literal["waiting", "running", "terminated"]
    ready: bool
    restarts: int
    exit_code: int | None
    reason: str  # why it waits or how it ended: `OOMKilled (exit code 137)`, `Completed`, ...
    last_log: str = ""  # tail of the log of its last exit


@dataclass(frozen=True)
class PodRow:
    id: str
    namespace: str
    name: str
    owner: str  # namespace/name of the Deployment
    owner_key: str  # "Deployment namespace/name"
    image: str
    template_hash: str
    host_ports: tuple[tuple[int, str, int], ...]
    exit_code: int | None
    node: str
    phase: str
    ready: bool
    pod_ip: str
    restarts: int
    created_at: float
    reason: str
    last_log: str
    terminating: bool
    labels: tuple[tuple[str, str], ...]
    search: str  # lower-case text the pod filter matches against
    containers: tuple[ContainerRow, ...] = ()
    ready_containers: str = ""  # kubectl's READY: ready app containers / app containers, "2/2"
    status: str = ""  # kubectl's STATUS: `Running`, `Init:1/2`, `CrashLoopBackOff`, `OOMKilled`, ...
    qos_class: str = ""  # Guaranteed, Burstable or BestEffort

    @property
    def logs_url(self) -> str:
        return logs_url(self.namespace, self.name)


@dataclass(frozen=True)
class ServiceRow:
    name: str
    vip: str  # "None" for a headless Service, the target name for an ExternalName one
    ports: tuple[str, ...]
    ready: int
    endpoints: tuple[str, ...]  # "pod on node" of the ready endpoints, first port
    type: str = "ClusterIP"
    ingress: tuple[str, ...] = ()  # a LoadBalancer's: the Ready nodes' addresses


@dataclass(frozen=True)
class SourceRow:
    """One source: the objects it owns, its newest applied revision, and its newest rejected
    one when that is newer (the source is held at its applied revision)."""

    source: str
    configured: bool
    objects: int
    last_applied: RevisionRecord | None
    last_rejected: RevisionRecord | None
    error: str = ""  # why it cannot be read now ("" when it can)
    error_since: float = 0.0


@dataclass(frozen=True)
class Counts:
    nodes: int = 0
    nodes_ready: int = 0
    pods: int = 0
    pods_ready: int = 0
    phases: Mapping[str, int] = field(default_factory=dict)
    workloads: int = 0
    services: int = 0
    objects: int = 0
    kinds: Mapping[str, int] = field(default_factory=dict)  # desired objects per kind, by kind name
    workload_kinds: Mapping[str, int] = field(default_factory=dict)  # Deployment, StatefulSet, DaemonSet
    jobs: int = 0  # CronJobs' runs included
    job_conditions: Mapping[str, int] = field(default_factory=dict)  # jobs per condition
    cronjobs: int = 0
    autoscalers: int = 0


@dataclass(frozen=True)
class StatusView:
    """Everything the status page shows, as of `built_at`, with Secret values redacted."""

    generation: str
    built_at: float
    sources: tuple[str, ...]
    last_applied: RevisionRecord | None
    last_rejected: RevisionRecord | None
    revisions: tuple[RevisionRecord, ...]
    nodes: tuple[NodeRow, ...]
    workloads: tuple[WorkloadRow, ...]
    pods: tuple[PodRow, ...]
    services: tuple[ServiceRow, ...]
    events: tuple[EventRecord, ...]
    counts: Counts
    previews: tuple[Mapping[str, Any], ...] | None  # None: this store keeps no previews
    endpoints: tuple[ServiceEndpoints, ...] = ()  # per Service and port; no free text in them
    per_source: tuple[SourceRow, ...] = ()
    redactor: Redactor = field(default_factory=Redactor)  # what the view was redacted with
    jobs: tuple[JobRow, ...] = ()
    cronjobs: tuple[CronJobRow, ...] = ()
    autoscalers: tuple[AutoscalerRow, ...] = ()
    # Moves when `pods` does (not when only node rows or other parts do): what a continue
    # token of the paged pod list holds on to.
    pods_version: str = ""


_PLAIN = re.compile(r"[A-Za-z0-9._-]*").fullmatch  # DNS names, as validated: nothing to quote


def quoted(part: str) -> str:
    """`part` fit for a URL path or query value: only unreserved characters and %XX escapes."""
    return part if _PLAIN(part) else quote(part, safe="")


def logs_url(namespace: str, name: str, container: str = "") -> str:
    """Where the JSON API serves a pod's logs (a container's, when named)."""
    url = f"/api/v1/pods/{quoted(namespace)}/{quoted(name)}/logs"
    return f"{url}?container={quoted(container)}" if container else url


def find_pod(view: StatusView, pod_id: str) -> PodRow | None:
    """The row of pod `pod_id` (`namespace/name`) in `view` (whose pods are in id order)."""
    i = bisect.bisect_left(view.pods, pod_id, key=operator.attrgetter("id"))
    return view.pods[i] if i < len(view.pods) and view.pods[i].id == pod_id else None


def _own_state(p: Pod) -> Literal["waiting", "running", "terminated"]:
    """The state of a pod's one container, from the pod's own status (an agent reports no
    per-container status for a pod of one container: the pod's is its container's)."""
    if p.phase in ("Succeeded", "Failed"):
        return "terminated"
    if p.phase == "Running" and not p.reason.startswith("CrashLoopBackOff"):
        return "running"
    return "waiting"


def container_rows(p: Pod, redact: Redactor, image: str) -> tuple[ContainerRow, ...]:
    """The containers of `p` as its agent last reported them (redacted), in the order of its
    spec; `image` is its first app container's image, already redacted."""
    spec = p.spec
    kinds: dict[str, ContainerKind] = {
        c.name: "sidecar" if c.restart_policy == "Always" else "init" for c in spec.init_containers
    }
    if not p.containers and not spec.init_containers and len(spec.containers) == 1:
        main = spec.main
        # The scheduler's words (`Unschedulable: ...`, `scheduled on n1`) are the pod's, not
        # its container's: those of an unbound pod, or bound and not reported on yet.
        said = p.node is not None and p.reason != f"scheduled on {p.node}"
        return (
            ContainerRow(
                main.name,
                "app",
                image,
                _own_state(p),
                p.ready,
                p.restarts,
                p.exit_code,
                redact(p.reason) if said else "",
                redact(p.last_log),
            ),
        )
    reported = {s.name: s for s in p.containers}
    rows = []
    for c in spec.all_containers:
        kind = kinds.get(c.name, "app")
        own = image if c is spec.main else redact(c.image)
        s = reported.pop(c.name, None)
        if s is None:  # not reported (yet)
            rows.append(ContainerRow(c.name, kind, own, "waiting", False, 0, None, ""))
        else:
            rows.append(
                ContainerRow(
                    c.name,
                    kind,
                    own,
                    s.state,
                    s.ready,
                    s.restarts,
                    s.exit_code,
                    redact(s.reason),
                    redact(s.last_log),
                )
            )
    for s in reported.values():  # reported, yet not in the spec the store has
        kind = "init" if s.init else "app"
        rows.append(
            ContainerRow(
                s.name,
                kind,
                "",
                s.state,
                s.ready,
                s.restarts,
                s.exit_code,
                redact(s.reason),
                redact(s.last_log),
            )
        )
    return tuple(rows)


# The word that leads a reason, as kubectl shows it: `CrashLoopBackOff: exited with code 1;
# ...`, `OOMKilled (exit code 137)`, `Completed`, `container web: ErrImagePull: ...`; not
# `exited with code 1` nor `Readiness probe failed: ...`.
_REASON_WORD = re.compile(r"(?:(?:init )?container [^ :]+: )?([A-Z][A-Za-z]+)(?=$|:| \()")


def _word(reason: str) -> str:
    if not reason:
        return ""
    found = _REASON_WORD.match(reason)
    return found.group(1) if found else ""


def _ended(c: ContainerRow) -> str:
    word = _word(c.reason)
    if word and word != "Completed":
        return word
    return "Completed" if c.exit_code == 0 else "Error"


def pod_status(p: Pod, containers: Sequence[ContainerRow]) -> tuple[str, str]:
    """kubectl's READY and STATUS columns of a pod (`kubectl get pods`): ready app
    containers of all app containers, and a word for the state of the pod.

    While the pod initialises the status is `Init:N/M` (N of its M init containers, sidecars
    among them, done) or `Init:` and the reason of the one that fails (`Init:Error`,
    `Init:CrashLoopBackOff`); after, the reason of the first app container (or sidecar) that
    waits or ended (`CrashLoopBackOff`, `OOMKilled`, `Error`, `Completed`), else the phase.
    kubectl (1.29 and later) counts started sidecars in READY too; here READY counts the app
    containers alone, and a sidecar's trouble shows in STATUS."""
    apps = [c for c in containers if c.kind == "app"]
    ready = sum(1 for c in apps if c.state == "running" and c.ready)
    if not p.ready and p.reason.startswith("NodeNotReady"):
        # The containers' reports are from before the node was lost: nothing of it is ready now.
        return f"0/{len(apps)}", "Terminating" if p.terminating_at is not None else "NodeNotReady"
    counted = f"{ready}/{len(apps)}"
    if p.terminating_at is not None:
        return counted, "Terminating"
    inits = [c for c in containers if c.kind != "app"]
    started = any(c.state != "waiting" or c.restarts or c.exit_code is not None for c in apps)
    if p.containers and not started:  # reported, and no app container has started yet
        for i, c in enumerate(inits):
            if (c.state == "terminated" and c.exit_code == 0) or (
                c.kind == "sidecar" and c.state == "running"
            ):
                continue
            word = _word(c.reason)
            if c.state == "terminated":
                return counted, f"Init:{_ended(c)}"
            if c.state == "waiting" and word and word != "PodInitializing":
                return counted, f"Init:{word}"
            return counted, f"Init:{i}/{len(inits)}"
    status: str = p.phase
    running = False
    for c in reversed([*apps, *(c for c in inits if c.kind == "sidecar")]):
        word = _word(c.reason)
        if c.state == "waiting" and word:
            status = word
        elif c.state == "terminated":
            status = _ended(c)
        elif c.state == "running" and c.ready:
            running = True
    if status == "Completed" and running:
        status = "Running"
    return counted, status


_generations = itertools.count(1)


def redacted_revision(r: RevisionRecord, redact: Redactor) -> RevisionRecord:
    return dataclasses.replace(
        r,
        source=redact(r.source),
        message=redact(r.message),
        author=redact(r.author),
        errors=tuple(redact(e) for e in r.errors),
        warnings=tuple(redact(w) for w in r.warnings),
    )


def redacted_event(e: EventRecord, redact: Redactor) -> EventRecord:
    return EventRecord(e.id, e.time, redact(e.object), e.reason, redact(e.message))


def _previews(store: Store, redact: Redactor, now: float) -> tuple[Mapping[str, Any], ...] | None:
    reader = getattr(store, "previews", None)
    if not callable(reader):
        return None
    records = reader()
    version = store.snapshot(now).version if records else ""
    rows = []
    for record in records:
        data = encode(record)
        if not isinstance(data, dict):
            continue
        row = redact.value(data)
        row["stale"] = record.state_version != version  # the cluster moved on since
        rows.append(row)
    return tuple(rows)


def _whole(value: object, default: int) -> int:
    """A count from a spec as written, `default` when it is absent or not a count (validation
    refuses such specs; the view must not fail on one that slipped through)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else default


def _job_row(
    job: Manifest, owner: str, state: JobState | None, owned: Sequence[Pod], *, redact: Redactor, now: float
) -> JobRow:
    spec = job.spec
    counts = job_counts(state, owned)
    parallelism = _whole(spec.get("parallelism"), 1)
    # Kubernetes' default: one completion when neither is set; a work queue when only
    # parallelism is (for one pod at a time the planner's work queue is the same thing).
    written = spec.get("completions")
    wanted = _whole(written, 1) if written is not None or spec.get("parallelism") is None else None
    indexed = spec.get("completionMode") == "Indexed"
    done = len(state.succeeded_indexes) if state is not None and indexed else counts["succeeded"]
    condition: JobCondition
    if state is None:
        condition = "Suspended" if spec.get("suspend") is True else "Pending"
    else:
        condition = state.condition or "Running"
    started = state.started_at if state is not None else None
    finished = state.finished_at if state is not None else None
    duration = None if started is None else max(0.0, (now if finished is None else finished) - started)
    return JobRow(
        name=job.key.ref,
        owner=owner,
        condition=condition,
        completions=f"{done}/{wanted if wanted is not None else 'work queue'}",
        done=done,
        wanted=wanted,
        parallelism=parallelism,
        active=counts["active"],
        succeeded=counts["succeeded"],
        failed=counts["failed"],
        started_at=started,
        finished_at=finished,
        duration=duration,
        reason=redact(state.reason) if state is not None else "",
        error=redact(state.error) if state is not None else "",
        expired=state.expired if state is not None else False,
    )


def _cronjob_row(cronjob: Manifest, state: CronState | None, redact: Redactor, now: float) -> CronJobRow:
    spec = cronjob.spec
    zone = str(spec.get("timeZone") or "UTC")
    try:
        zone = read_time_zone(spec.get("timeZone"))
        upcoming = tuple(next_runs(spec, now, 3))
        text = describe_time(upcoming[0], zone) if upcoming else ""
        error = ""
    except ValueError as exc:  # validation refuses it; reported here should one slip through
        upcoming, text, error = (), "", str(exc)
    runs = state.runs if state is not None else ()
    policy = spec.get("concurrencyPolicy")
    return CronJobRow(
        name=cronjob.key.ref,
        schedule=redact(str(spec.get("schedule", ""))),
        time_zone=redact(zone),
        suspended=spec.get("suspend") is True,
        concurrency_policy=policy if isinstance(policy, str) and policy else "Allow",
        last_schedule=state.last_schedule if state is not None else None,
        next_runs=upcoming,
        next_run_text=text,
        active=tuple(r.name for r in runs if not r.outcome),
        runs=runs,
        reason=redact(state.reason) if state is not None else "",
        error=redact(state.error if state is not None and state.error else error),
    )


def _jobs_and_cronjobs(
    desired: Sequence[Manifest],
    kept: Mapping[ObjectKey, Any],
    by_owner: Mapping[ObjectKey, Sequence[Pod]],
    redact: Redactor,
    now: float,
) -> tuple[tuple[JobRow, ...], tuple[CronJobRow, ...]]:
    """The Jobs of the source and those of the CronJobs' runs (which exist only in the
    CronJob's state), and the CronJobs."""
    found: dict[ObjectKey, tuple[Manifest, str]] = {m.key: (m, "") for m in desired if m.key.kind == "Job"}
    cronjobs = []
    for cronjob in sorted((m for m in desired if m.key.kind == "CronJob"), key=lambda m: m.key):
        state = kept.get(cronjob.key)
        state = state if isinstance(state, CronState) else None
        cronjobs.append(_cronjob_row(cronjob, state, redact, now))
        for run in state.runs if state is not None else ():
            try:
                job = job_manifest(cronjob, run)
            except (AttributeError, TypeError):  # a jobTemplate validation would have refused
                continue
            found.setdefault(job.key, (job, cronjob.key.ref))
    jobs = []
    for key in sorted(found):
        job, owner = found[key]
        state = kept.get(key)
        jobs.append(
            _job_row(
                job,
                owner,
                state if isinstance(state, JobState) else None,
                by_owner.get(key, ()),
                redact=redact,
                now=now,
            )
        )
    return tuple(jobs), tuple(cronjobs)


def _autoscaler_row(hpa: Manifest, state: ScaleState | None, redact: Redactor) -> AutoscalerRow:
    spec = hpa.spec
    ref = spec.get("scaleTargetRef")
    ref = ref if isinstance(ref, Mapping) else {}
    metrics: tuple[MetricStatus, ...] = state.metrics if state is not None else ()
    unsupported: tuple[str, ...] = state.unsupported if state is not None else ()
    error = ""
    if state is None:  # not decided on yet: what it will measure, nothing measured
        try:
            read = read_spec(hpa)
            metrics = tuple(MetricStatus(m.name, "unknown", m.target) for m in read.metrics)
            unsupported = read.unsupported
        except ValueError as exc:
            error = str(exc)
    return AutoscalerRow(
        name=hpa.key.ref,
        target_kind=state.target.kind if state is not None else str(ref.get("kind", "")),
        target_name=state.target.name if state is not None else str(ref.get("name", "")),
        min_replicas=_whole(spec.get("minReplicas"), 1),
        max_replicas=_whole(spec.get("maxReplicas"), 0),
        replicas=state.replicas if state is not None else None,
        metrics=tuple(
            MetricStatus(redact(m.name), redact(m.current), redact(m.target), m.proposal) for m in metrics
        ),
        reason=redact(state.reason) if state is not None else "",
        error=redact(state.error if state is not None else error),
        unsupported=tuple(redact(u) for u in unsupported),
        last_scale_at=state.last_scale_at if state is not None else 0.0,
    )


def pod_row(p: Pod, redact: Redactor) -> PodRow:
    """One pod as people see it, redacted. A function of the pod and the redactor alone, so
    a view keeps the rows of the pods that did not change (`ViewBuilder`)."""
    reason = redact(p.reason)
    node = p.node or ""
    image = redact(p.spec.image)
    containers = container_rows(p, redact, image)
    ready_containers, shown = pod_status(p, containers)
    said = " ".join(c.reason for c in containers if c.reason and c.reason not in reason)
    return PodRow(
        id=p.id,
        namespace=p.namespace,
        name=p.name,
        owner=p.owner.ref,
        owner_key=str(p.owner),
        image=image,
        template_hash=p.template_hash,
        host_ports=p.host_ports,
        exit_code=p.exit_code,
        node=node,
        phase=p.phase,
        ready=p.ready,
        pod_ip=p.pod_ip,
        restarts=p.restarts,
        created_at=p.created_at,
        reason=reason,
        last_log=redact(p.last_log),
        terminating=p.terminating_at is not None,
        labels=tuple((k, redact(v)) for k, v in p.labels),
        search=f"{p.id} {node} {p.phase} {shown} {p.pod_ip} {reason} {said}".lower(),
        containers=containers,
        ready_containers=ready_containers,
        status=shown,
        qos_class=p.spec.qos_class,
    )


EVENTS_EVERY = 30.0  # seconds between full reads of the newest events, changed or not

# Tells this process's pod versions from those of another (a server started again).
_INSTANCE = secrets.token_hex(4)


class ViewBuilder:
    """Builds the views of one store, each from the one before.

    A pod's row (`PodRow`) depends on that pod and the redactor alone. With `incremental`,
    pods come from the store's `PodCache`, which reads only the rows written since its last
    read and keeps every other `Pod` object as it was; the builder compares them with the
    pods of its last build (the same object, or an equal one, is the same pod) and computes
    rows only for pods that changed, came, or when the redactor changed (a Secret did).
    What depends on many pods is kept where those pods did not change: a workload's rollout
    status while its pods, its replicas, the desired objects and the nodes are the same
    (one with `minReadySeconds` moves with the clock: computed each time), and a Service's
    endpoints while no pod it may select changed and its VIP, node ports, the desired
    objects and the nodes are the same. So a pod that flips its readiness costs its row,
    its workload and its Services, not the second that reading and decoding 5,000 pod rows
    and building every row take. `pods_version` moves only when the pod rows did.

    A rebuild runs in a background thread of the serving process and holds the interpreter
    while it computes: between its steps (each a few milliseconds at most) it sleeps `pause`
    seconds, so that request threads get the interpreter in between rather than waiting
    behind the whole rebuild.

    Without `incremental`, every pod is read from the store and everything computed: that
    is `build_view`, the slow, obviously-correct twin incremental views are tested against."""

    def __init__(
        self,
        store: Store,
        sources: Sequence[str] = (),
        *,
        incremental: bool = True,
        pause: float = 0.0,
        revision_limit: int = 50,
    ) -> None:
        self.store = store
        self.sources = tuple(sources)
        self.incremental = incremental
        self.pause = pause
        self.revision_limit = revision_limit
        self.rows_built = 0  # pod rows the last build computed (the others it kept)
        self.recomputed: tuple[str, ...] = ()  # workloads and Services the last build computed
        self._redactor: Redactor | None = None
        self._pods: tuple[Pod, ...] = ()  # the pods of the last build, in its order
        self._pod_rows: tuple[PodRow, ...] = ()  # and their rows
        self._pods_version = ""
        self._desired: list[Manifest] | None = None
        self._nodes: list[Node] | None = None  # as statuses and endpoints see them (`_placing`)
        # The newest events: (the newest's id, the redactor, when all were read, the events).
        self._events: tuple[int, Redactor, float, tuple[EventRecord, ...]] | None = None
        # workload -> (the replicas an autoscaler set, its status)
        self._statuses: dict[ObjectKey, tuple[int | None, RolloutStatus]] = {}
        self._endpoints = KeptEndpoints()  # every Service's, kept between builds
        self._tally = _Tally()  # what is summed over the pods of the last build

    def _breathe(self) -> None:
        if self.pause > 0:
            time.sleep(self.pause)

    def _diff(self, pods: Sequence[Pod]) -> tuple[list[PodChange] | None, list[int] | None, list[PodChange]]:
        """`pod_changes` since the last build (the pods read again keep their rows, the tally
        takes the new objects); no list when there is no last build to compare with."""
        if not (self.incremental and self._redactor is not None):
            return None, None, []
        return pod_changes(self._pods, pods)

    def _rows_of(
        self, pods: Sequence[Pod], redact: Redactor, changed: list[PodChange] | None, where: list[int] | None
    ) -> list[PodRow]:
        """A row per pod, in the order of `pods`: the last build's row of a pod that did not
        change, when the redactor did not either; else a new one."""
        if changed is None or redact is not self._redactor:
            self.rows_built = len(pods)
            return [pod_row(p, redact) for p in pods]
        self.rows_built = len(changed)
        if where is not None:
            rows = list(self._pod_rows)
            for i in where:
                rows[i] = pod_row(pods[i], redact)
            return rows
        known = {r.id: r for r in self._pod_rows}
        fresh = {after.id for _, after in changed if after is not None}
        self.rows_built = len(fresh)
        return [pod_row(p, redact) if p.id in fresh else known[p.id] for p in pods]

    def _rollouts(
        self,
        *,
        desired: list[Manifest],
        pods: Sequence[Pod],
        tally: _Tally,
        nodes: list[Node],
        scaled: Mapping[ObjectKey, int],
        changed: list[PodChange] | None,
        now: float,
    ) -> list[RolloutStatus]:
        """`rollouts(desired, pods, ...)`: one status per workload in key order, computing
        again only those that may have moved."""
        rolled = sorted((m for m in desired if m.key.kind in WORKLOAD_KINDS), key=lambda m: m.key)
        if changed is None or desired != self._desired or _placing(nodes) != self._nodes:
            statuses = rollouts(desired, pods, now=now, nodes=nodes, replicas=scaled)
            self.recomputed = tuple(str(m.key) for m in rolled)
            if self.incremental:
                self._statuses = {
                    m.key: (scaled.get(m.key), s) for m, s in zip(rolled, statuses, strict=True)
                }
            return statuses
        kept = self._statuses
        touched = {p.owner for pair in changed for p in pair if p is not None}
        redo = [
            m
            for m in rolled
            if m.key in touched
            or m.key not in kept
            or kept[m.key][0] != scaled.get(m.key)  # an autoscaler set other replicas
            or m.spec.get("minReadySeconds")  # its pods become available with time alone
        ]
        if redo:
            others = [
                m for m in desired if m.key.kind not in WORKLOAD_KINDS
            ]  # ConfigMaps, Secrets among them
            owned = [p for m in redo for p in tally.pods_of(m.key)]
            fresh = rollouts([*others, *redo], owned, now=now, nodes=nodes, replicas=scaled)
            kept = {**kept, **{m.key: (scaled.get(m.key), s) for m, s in zip(redo, fresh, strict=True)}}
        self._statuses = {m.key: kept[m.key] for m in rolled}
        self.recomputed = tuple(str(m.key) for m in redo)
        return [kept[m.key][1] for m in rolled]

    def _endpoints_of(
        self,
        desired: list[Manifest],
        pods: Sequence[Pod],
        nodes: list[Node],
        changed: list[PodChange] | None,
        swapped: list[PodChange],
    ) -> tuple[ServiceEndpoints, ...]:
        """`all_endpoints(desired, ...)`; with `incremental`, computing again only the
        Services the pods that changed, the nodes or their own VIPs and ports moved under
        (`KeptEndpoints`)."""
        vips, node_ports = self.store.vips(), self.store.node_ports()
        if not self.incremental:
            return all_endpoints(desired, vips, pods, nodes, node_ports)
        moved = None if changed is None else [*changed, *swapped]
        endpoints = self._endpoints.update(desired, vips, pods, _placing(nodes), node_ports, changed=moved)
        self.recomputed += tuple(str(key) for key in sorted(self._endpoints.recomputed))
        return endpoints

    def _events_of(self, redact: Redactor) -> tuple[EventRecord, ...]:
        """The 200 newest events, redacted. Events are only ever added: the newest few are
        read, and when they reach back to the newest of the last build (and the redactor is
        the same), they go before what the last build had; all are read again at least
        every `EVENTS_EVERY` seconds all the same."""
        kept = self._events
        if (
            self.incremental
            and kept is not None
            and kept[1] is redact
            and time.monotonic() - kept[2] < EVENTS_EVERY
        ):
            newest = self.store.events(limit=16)
            if not newest or newest[-1].id <= kept[0]:
                added = tuple(redacted_event(e, redact) for e in newest if e.id > kept[0])
                events = (added + kept[3])[:200]
                self._events = (events[0].id if events else 0, redact, kept[2], events)
                return events
        events = tuple(redacted_event(e, redact) for e in self.store.events(limit=200))
        if self.incremental:
            self._events = (events[0].id if events else 0, redact, time.monotonic(), events)
        return events

    def build(self, now: float) -> StatusView:
        """The view of what the store holds now."""
        try:
            return self._build(now)
        except BaseException:
            self._redactor = None  # what is kept may be half updated: the next build starts over
            raise

    def _build(self, now: float) -> StatusView:
        store = self.store
        desired = store.desired()
        self._breathe()
        pods: Sequence[Pod] = store.pod_cache.pods() if self.incremental else store.pods()
        self._breathe()
        changed, where, swapped = self._diff(pods)
        tally = self._tally
        if changed is None:  # everything from scratch
            tally = _Tally()
            for p in pods:
                tally.add(p)
        else:
            for before, after in [*changed, *swapped]:
                if before is not None:
                    tally.add(before, -1)
                if after is not None:
                    tally.add(after)
        # The desired Secrets' values, and those pods still hold from Secrets changed since.
        redact = Redactor.of(desired, {v for s, _ in tally.specs.values() for v in s.secret_values()})
        if self._redactor is not None and self._redactor.values == redact.values:
            redact = self._redactor  # the same: the rows it redacted stay right
        self._breathe()
        rows = self._rows_of(pods, redact, changed, where)
        if where is None and not all(a.id < b.id for a, b in itertools.pairwise(rows)):
            # In id order, whatever order the database sorts text in.
            order = sorted(range(len(rows)), key=lambda i: rows[i].id)
            pods, rows = [pods[i] for i in order], [rows[i] for i in order]
        if len(rows) == len(self._pod_rows) and all(map(operator.is_, rows, self._pod_rows)):
            pod_rows, pods_version = self._pod_rows, self._pods_version
        else:
            pod_rows, pods_version = tuple(rows), f"{_INSTANCE}.{next(_generations)}"
        self._breathe()
        revisions = tuple(redacted_revision(r, redact) for r in store.revisions(limit=self.revision_limit))
        applied = next((r for r in revisions if r.status == "applied"), None)
        rejected = next((r for r in revisions if r.status == "rejected"), None)
        self._breathe()
        records = store.nodes(now)
        self._breathe()
        nodes = tuple(
            NodeRow(
                name=r.node.name,
                address=r.node.address,
                ready=r.node.ready,
                heartbeat_at=r.heartbeat_at,
                cpu_requested=tally.used.get(r.node.name, [0, 0, 0])[0],
                cpu_capacity=r.node.cpu_milli,
                memory_requested=tally.used.get(r.node.name, [0, 0, 0])[1],
                memory_capacity=r.node.memory_bytes,
                pods=tally.used.get(r.node.name, [0, 0, 0])[2],
                max_pods=r.node.max_pods,
                labels=tuple((k, redact(v)) for k, v in r.node.labels),
                taints=tuple(redact(str(t)) for t in r.node.taints),
                reason=redact(r.node.reason),
                pod_cidr=r.node.pod_cidr,
            )
            for r in records
        )
        node_list = [r.node for r in records]
        kept = store.workload_states()
        self._breathe()
        hpas = sorted((m for m in desired if m.key.kind == "HorizontalPodAutoscaler"), key=lambda m: m.key)
        scales = {m.key: s for m in hpas if isinstance(s := kept.get(m.key), ScaleState)}
        scaled = {s.target: s.replicas for s in scales.values()}
        scaled_by = {s.target: key.ref for key, s in scales.items()}
        states = store.rollouts()
        self._breathe()
        rolled = sorted((m for m in desired if m.key.kind in WORKLOAD_KINDS), key=lambda m: m.key)
        # One status per workload in key order, the order of `rolled`.
        statuses = self._rollouts(
            desired=desired, pods=pods, tally=tally, nodes=node_list, scaled=scaled, changed=changed, now=now
        )
        workloads = []
        ordered = sorted(
            zip(rolled, statuses, strict=True),
            key=lambda ms: (WORKLOAD_KINDS.index(ms[0].key.kind), ms[0].key),
        )
        for manifest, status in ordered:
            state = states.get(manifest.key)  # by kind too: a StatefulSet may share a Deployment's name
            workloads.append(
                WorkloadRow(
                    name=status.deployment,
                    strategy=status.strategy,
                    template_hash=status.template_hash,
                    desired=status.desired,
                    total=status.total,
                    updated=status.updated,
                    ready=status.ready,
                    available=status.available,
                    updated_available=status.updated_available,
                    complete=status.complete,
                    step=redact(status.step),
                    state=state.status if state else ("complete" if status.complete else "progressing"),
                    reason=redact(state.reason) if state else "",
                    history=tuple(h for h, _ in state.history) if state else (),
                    error=redact(state.error) if state else "",
                    kind=manifest.key.kind,
                    autoscaler=scaled_by.get(manifest.key, ""),
                )
            )
        by_job = {key: tally.pods_of(key) for key in tally.owned if key.kind == "Job"}
        jobs, cronjobs = _jobs_and_cronjobs(desired, kept, by_job, redact, now)
        autoscalers = tuple(_autoscaler_row(m, scales.get(m.key), redact) for m in hpas)
        self._breathe()

        endpoints = self._endpoints_of(desired, pods, node_list, changed, swapped)
        ingress = tuple(dict.fromkeys(r.node.address for r in records if r.node.ready and r.node.address))
        services = [_service_row(s, ingress) for s in endpoints]
        if self.incremental:
            self._desired, self._nodes = desired, _placing(node_list)
            self._pods, self._pod_rows, self._pods_version, self._redactor = (
                tuple(pods),
                pod_rows,
                pods_version,
                redact,
            )
            self._tally = tally
        self._breathe()

        events = self._events_of(redact)
        self._breathe()
        owned_by: dict[str, int] = {}
        for owner in store.owners().values():
            owned_by[owner] = owned_by.get(owner, 0) + 1
        latest = store.latest_by_source()
        health = store.source_health()
        per_source = []
        for name in sorted(set(self.sources) | set(latest) | {o for o in owned_by if o}):
            last_applied, last_rejected = latest.get(name, (None, None))
            if last_rejected is not None and last_applied is not None and last_rejected.id < last_applied.id:
                last_rejected = None
            per_source.append(
                SourceRow(
                    source=redact(name),
                    configured=name in self.sources,
                    objects=owned_by.get(name, 0),
                    last_applied=redacted_revision(last_applied, redact) if last_applied else None,
                    last_rejected=redacted_revision(last_rejected, redact) if last_rejected else None,
                    error=redact(health[name][0]) if name in health else "",
                    error_since=health[name][1] if name in health else 0.0,
                )
            )
        kinds: dict[str, int] = {}
        for m in desired:
            kinds[m.key.kind] = kinds.get(m.key.kind, 0) + 1
        workload_kinds: dict[str, int] = {}
        for w in workloads:
            workload_kinds[w.kind] = workload_kinds.get(w.kind, 0) + 1
        job_conditions: dict[str, int] = {}
        for j in jobs:
            job_conditions[j.condition] = job_conditions.get(j.condition, 0) + 1
        counts = Counts(
            nodes=len(nodes),
            nodes_ready=sum(1 for n in nodes if n.ready),
            pods=len(pods),
            pods_ready=tally.ready,
            phases=dict(sorted(tally.phases.items())),
            workloads=len(workloads),
            services=len(services),
            objects=len(desired),
            kinds=dict(sorted(kinds.items())),
            workload_kinds=workload_kinds,
            jobs=len(jobs),
            job_conditions=dict(sorted(job_conditions.items())),
            cronjobs=len(cronjobs),
            autoscalers=len(autoscalers),
        )
        return StatusView(
            generation=f"{next(_generations)}-{int(now * 1000):x}",
            built_at=now,
            sources=tuple(redact(s) for s in self.sources),
            last_applied=applied,
            last_rejected=rejected,
            revisions=revisions,
            nodes=nodes,
            workloads=tuple(workloads),
            pods=pod_rows,
            services=tuple(services),
            events=events,
            counts=counts,
            previews=_previews(store, redact, now),
            endpoints=tuple(endpoints),
            redactor=redact,
            per_source=tuple(per_source),
            jobs=jobs,
            cronjobs=cronjobs,
            autoscalers=autoscalers,
            pods_version=pods_version,
        )


class _Tally:
    """What a view sums over its pods, kept up to date pod by pod: the specs they run (for
    the redactor: pods of one template share one), the requests on each node, the pods of
    each owner, the pods per phase and the ready ones."""

    def __init__(self) -> None:
        self.specs: dict[int, tuple[PodSpec, int]] = {}  # id(spec) -> (spec, pods running it)
        self.used: dict[str, list[int]] = {}  # node -> [CPU, memory, pods]
        self.owned: dict[ObjectKey, dict[str, Pod]] = {}  # owner -> its pods by id
        self.phases: dict[str, int] = {}
        self.ready = 0

    def add(self, p: Pod, sign: int = 1) -> None:
        """Count `p` in (`sign` 1) or out (-1)."""
        spec = p.spec
        spec_id = id(spec)
        pods = self.specs.get(spec_id, (spec, 0))[1] + sign
        if pods:
            self.specs[spec_id] = (spec, pods)
        else:
            del self.specs[spec_id]
        if p.node is not None:
            row = self.used.get(p.node)
            if row is None:
                row = self.used[p.node] = [0, 0, 0]
            row[0] += sign * spec.cpu_request_milli
            row[1] += sign * spec.memory_request_bytes
            row[2] += sign
            if not row[2]:
                del self.used[p.node]
        owned = self.owned.get(p.owner)
        if owned is None:
            owned = self.owned[p.owner] = {}
        if sign > 0:
            owned[p.id] = p
        else:
            del owned[p.id]
            if not owned:
                del self.owned[p.owner]
        phase = self.phases.get(p.phase, 0) + sign
        if phase:
            self.phases[p.phase] = phase
        else:
            del self.phases[p.phase]
        self.ready += sign * p.ready

    def pods_of(self, owner: ObjectKey) -> list[Pod]:
        """The pods of `owner`, in id order."""
        owned = self.owned.get(owner, {})
        return [owned[pod_id] for pod_id in sorted(owned)]


def _placing(nodes: Sequence[Node]) -> list[Node]:
    """The nodes as rollout statuses and endpoints see them: without the reason a node is
    NotReady, which moves with the clock (`no heartbeat for 45s`)."""
    return [dataclasses.replace(n, reason="") if n.reason else n for n in nodes]


def _service_row(s: ServiceEndpoints, ingress: tuple[str, ...]) -> ServiceRow:
    first = s.endpoints[0][1] if s.endpoints else ()
    return ServiceRow(
        name=f"{s.namespace}/{s.name}",
        vip="None" if s.headless else s.external_name or s.vip,
        ports=tuple(
            f"{(p.name + ' ') if p.name else ''}{p.port}/{p.protocol} -> {p.target_port}"
            + (f", node port {p.node_port}" if p.node_port else "")
            for p in s.ports
        ),
        # A headless Service without ports still has its pods, for DNS.
        ready=len({e.pod for _, eps in s.endpoints for e in eps} | {a.pod for a in s.addresses if a.ready}),
        endpoints=tuple(f"{e.pod} on {e.node}" for e in first)
        or tuple(f"{a.pod} at {a.ip}" for a in s.addresses),
        type=s.type,
        ingress=ingress if s.type == "LoadBalancer" else (),
    )


def build_view(store: Store, sources: Sequence[str], now: float, *, revision_limit: int = 50) -> StatusView:
    """Read the store once and compute what the page shows, every pod's row from scratch: the
    uncached path (the benchmark's baseline), and the twin incremental views are held to."""
    return ViewBuilder(store, sources, incremental=False, revision_limit=revision_limit).build(now)


class SharedRead:
    """`read()` for many threads at once: each caller gets the answer (or the error) of a
    read that began after it called, as fresh as its own would be, and callers that overlap
    share one read. Twenty API clients asking whether the store changed cost one or two
    reads, not twenty."""

    def __init__(self, read: Callable[[], Any]) -> None:
        self._read = read
        self._lock = threading.Lock()
        self._last: tuple[float, threading.Event, list[Any]] | None = None  # (began, done, [answer, error])

    def __call__(self) -> Any:
        asked = time.monotonic()
        while True:
            with self._lock:
                last = self._last
                mine = last is None or (last[0] < asked and last[1].is_set())
                if mine:
                    last = self._last = (time.monotonic(), threading.Event(), [None, None])
            assert last is not None
            began, done, box = last
            if mine:
                try:
                    box[0] = self._read()
                except BaseException as exc:
                    box[1] = exc
                    raise
                finally:
                    done.set()
                return box[0]
            done.wait()
            if began >= asked:
                if box[1] is not None:
                    raise box[1]
                return box[0]
            # That read began before this call: read again, or share a read begun since.


class ViewCache:
    """The last `StatusView`, refreshed in the background when the store changes."""

    def __init__(
        self,
        store: Store,
        sources: Sequence[str] = (),
        *,
        clock: Callable[[], float] = time.time,
        ttl: float = 1.0,
        max_age: float = 5.0,
        pace: float = 3.0,
        pause: float = 0.002,
        switch: float = 0.0005,
        health: Health | None = None,
    ) -> None:
        self.store = store
        self.health = health or Health()
        self.pace = pace
        self.sources = tuple(sources)
        self.switch = switch  # the interpreter's switch interval while a rebuild runs
        self.builder = ViewBuilder(store, sources, pause=pause)
        self._change_marker = SharedRead(store.change_marker)
        self.clock = clock
        self.ttl = ttl
        self.max_age = max_age
        self._view: StatusView | None = None
        self._marker: object = None
        self._built = 0.0  # time.monotonic() of the last build (or node refresh)
        self._next_build = 0.0  # time.monotonic() before which no full rebuild starts
        self._checked = 0.0  # time.monotonic() of the last change check
        self._lock = threading.Lock()
        self._build_lock = threading.Lock()
        self._refreshing = False
        self._refreshed = threading.Event()  # set when the running background refresh ends
        self._refreshed.set()
        self._build_seconds = 0.0  # how long the last full build took
        self._asked = float("-inf")  # time.monotonic() of the last request for the view

    def _build(self) -> StatusView:
        started = time.monotonic()
        marker = self.store.change_marker()
        # While the rebuild computes, the interpreter lock goes back to a thread that waits
        # for it after 0.5 ms rather than 5: a request hands it over at every socket read
        # and write (a page of 200 pods takes several writes), and would wait that long
        # each time.
        with quick_handover(self.switch):
            view = self.builder.build(self.clock())
        # A view of 5,000 pods is a few hundred thousand objects. Left to the collector,
        # full collections walk them all at random moments and stall requests for 100 ms
        # or more. So what exists is frozen after each build (`gitops.heap`), here in the
        # background thread; a full collection, when due, comes sooner when no request came
        # for a second (100-250 ms at 5,000 pods, it stalls nobody then). When the cluster
        # shrank (a huge scale-up undone), the old view's memory is handed back at once.
        shrank = self._view is not None and len(view.pods) < len(self._view.pods) // 2
        self._view, self._marker, self._built = view, marker, time.monotonic()  # the old one goes
        HEAP.settle(idle=self._built - self._asked > 1.0, shrank=shrank)
        self._build_seconds = self._built - started
        self._next_build = self._built + self.pace * self._build_seconds
        return view

    def _with_fresh_nodes(self, view: StatusView) -> StatusView | None:
        """`view` with its node rows re-read; None when a node came, went or changed readiness."""
        now = self.clock()
        records = self.store.nodes(now)
        old = {n.name: n for n in view.nodes}
        if len(records) != len(old) or any(
            r.node.name not in old or old[r.node.name].ready != r.node.ready for r in records
        ):
            return None
        nodes = tuple(dataclasses.replace(old[r.node.name], heartbeat_at=r.heartbeat_at) for r in records)
        generation = f"{next(_generations)}-{int(now * 1000):x}"
        return dataclasses.replace(view, nodes=nodes, built_at=now, generation=generation)

    def current(self) -> StatusView | None:
        """The cached view without waiting (None when there is none yet or caching is off);
        starts a background refresh when the last check is older than `ttl`."""
        view = self._view
        if view is None or self.ttl <= 0:
            return None
        self._asked = now = time.monotonic()
        if now - self._checked >= self.ttl:
            self._start_refresh(paced=True)
        return view

    def _start_refresh(self, *, paced: bool) -> threading.Event:
        """Start a background refresh unless one runs; the event is set when it ends."""
        with self._lock:
            if not self._refreshing:
                self._refreshing = True
                self._checked = time.monotonic()
                self._refreshed = threading.Event()
                threading.Thread(
                    target=self._refresh, kwargs={"paced": paced}, name="status-view", daemon=True
                ).start()
            return self._refreshed

    def fresh(self, wait: float) -> StatusView:
        """The view of what the store holds now if a rebuild (when one is needed) ends within
        `wait` seconds; else the last view while the rebuild goes on in the background (its
        `built_at` says how old it is). API answers see their own writes this way on any
        cluster whose view builds within `wait`. On a bigger one (the last build took longer)
        nothing waits and rebuilds keep their pace, so that requests are not starved by
        back-to-back rebuilds holding the interpreter."""
        view = self._view
        if view is None or self.ttl <= 0:
            return self.get()
        self._asked = time.monotonic()
        if self._change_marker() == self._marker and time.monotonic() - self._built < self.max_age:
            return view
        if self._build_seconds > wait:
            self._start_refresh(paced=True)
            return view
        self._start_refresh(paced=False).wait(wait)
        return self._view or view

    def get(self) -> StatusView:
        """The cached view, building it first if there is none (or always, caching off)."""
        if self.ttl <= 0:
            return build_view(self.store, self.sources, self.clock())
        view = self.current()
        if view is None:
            with self._build_lock:
                view = self._view or self._build()
                self._checked = time.monotonic()
        return view

    def refresh(self, *, paced: bool = False) -> StatusView:
        """Rebuild if the store changed (only if due when `paced`), or re-read the nodes when
        the view is older than `max_age`; for tests, and callers that must see their own write."""
        with self._build_lock:
            view = self._view
            if view is None:
                return self._build()
            now = time.monotonic()
            if self.store.change_marker() != self._marker:
                if not paced or now >= self._next_build:
                    return self._build()
                return view
            if now - self._built >= self.max_age:
                fresh = self._with_fresh_nodes(view)
                if fresh is None:
                    return self._build()
                self._view, self._built = fresh, time.monotonic()
                return fresh
            return view

    def _refresh(self, *, paced: bool = True) -> None:
        background()  # started from the event loop's thread: its short slice is not for this work
        try:
            self.refresh(paced=paced)
            self.health.ok("status view")
        except Exception as exc:
            # The page keeps the last view, under a banner saying it may be out of date.
            self.health.fail("status view", f"the store cannot be read: {type(exc).__name__}: {exc}")
            log.exception("status_view.refresh_failed")
        finally:
            with self._lock:
                self._refreshing = False
                self._refreshed.set()
