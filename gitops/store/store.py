"""The cluster state in SQL: what git wants, what runs, and what happened.

`Store` is the only place that talks SQL. It turns rows into the frozen values of
`gitops.model` and back, and makes each change one transaction: a validated revision
replaces the desired objects atomically (or is recorded as rejected and changes nothing
else), a plan's pod actions land together with their events, and an agent's report
updates only the pods bound to that agent's node.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import create_engine, delete, event, func, inspect, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from gitops.codec import decode_as, encode, state_version
from gitops.model import (
    ClusterState,
    Manifest,
    Node,
    NodeName,
    ObjectKey,
    Pod,
    PodId,
    PodName,
    PodSpec,
    PodStatus,
    Revision,
    RolloutState,
    SourceLocation,
    Taint,
)
from gitops.store.tables import (
    Base,
    EventRow,
    NodeRow,
    ObjectRow,
    PodRow,
    PreviewRow,
    RevisionRow,
    RolloutRow,
    ServiceRow,
)

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class RevisionRecord:
    id: int
    source: str
    revision: str
    message: str
    author: str
    committed_at: float
    received_at: float
    status: str
    errors: tuple[str, ...]
    warnings: tuple[str, ...]
    summary: Mapping[str, Any]


@dataclass(frozen=True)
class PreviewRecord:
    source: str
    ref: str
    base: str
    head: str
    state_version: str
    computed_at: float
    status: str
    report: Mapping[str, Any]
    markdown: str


@dataclass(frozen=True)
class EventRecord:
    id: int
    time: float
    object: str
    reason: str
    message: str


@dataclass(frozen=True)
class NodeRecord:
    node: Node
    heartbeat_at: float
    registered_at: float


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def add_missing_columns(engine: Engine) -> None:
    """Bring a database made by an older gitops up to date with additive changes: every
    column the tables declare but the database lacks is added (all have defaults)."""
    existing = inspect(engine)
    with engine.begin() as conn:
        for table in Base.metadata.sorted_tables:
            present = {c["name"] for c in existing.get_columns(table.name)}
            for column in table.columns:
                if column.name in present:
                    continue
                kind = column.type.compile(dialect=engine.dialect)
                default = column.server_default.arg if column.server_default is not None else None  # type: ignore[attr-defined]
                clause = f" DEFAULT '{default}'" if isinstance(default, str) else ""
                conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}{clause}'))
                log.info("store.column_added", table=table.name, column=column.name)


def _manifest(row: ObjectRow) -> Manifest:
    return Manifest(
        key=ObjectKey(row.kind, row.namespace, row.name),
        api_version=row.api_version,
        body=row.body,
        location=SourceLocation(row.file, row.line, row.col),
        hash=row.hash,
    )


def _pod(row: PodRow) -> Pod:
    return Pod(
        namespace=row.namespace,
        name=PodName(row.name),
        owner=ObjectKey(row.owner_kind, row.owner_namespace, row.owner_name),
        template_hash=row.template_hash,
        spec=decode_as(PodSpec, row.spec),
        labels=tuple((str(k), str(v)) for k, v in row.labels),
        node=NodeName(row.node) if row.node else None,
        phase=row.phase,  # type: ignore[arg-type]
        ready=row.ready,
        reason=row.reason,
        pod_ip=row.pod_ip,
        host_ports=tuple((int(c), str(p), int(h)) for c, p, h in row.host_ports),
        restarts=row.restarts,
        exit_code=row.exit_code,
        created_at=row.created_at,
        last_log=row.last_log or "",
        terminating_at=row.terminating_at,
        ready_since=row.ready_since or 0.0,
    )


def _node(row: NodeRow, now: float, grace: float) -> Node:
    return Node(
        name=NodeName(row.name),
        address=row.address,
        cpu_milli=row.cpu_milli,
        memory_bytes=row.memory_bytes,
        labels=tuple(sorted(row.labels.items())),
        taints=tuple(Taint(t["key"], t.get("value", ""), t.get("effect", "NoSchedule")) for t in row.taints),  # type: ignore[arg-type]
        ready=now - row.heartbeat_at <= grace,
        max_pods=row.max_pods,
    )


def _revision(row: RevisionRow) -> RevisionRecord:
    return RevisionRecord(
        id=row.id,
        source=row.source,
        revision=row.revision,
        message=row.message,
        author=row.author,
        committed_at=row.committed_at,
        received_at=row.received_at,
        status=row.status,
        errors=tuple(row.errors or ()),
        warnings=tuple(row.warnings or ()),
        summary=row.summary or {},
    )


class Store:
    """Cluster state in SQL (SQLite by default, PostgreSQL by URL)."""

    def __init__(
        self,
        url: str,
        *,
        service_cidr: str = "10.243.0.0/16",
        heartbeat_grace: float = 40.0,
    ) -> None:
        self.url = url
        self.engine = make_engine(url)
        Base.metadata.create_all(self.engine)
        add_missing_columns(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.service_cidr = ipaddress.ip_network(service_cidr)
        self.heartbeat_grace = heartbeat_grace

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    # --- revisions and desired objects -----------------------------------------------

    def last_revision(self, source: str) -> RevisionRecord | None:
        with self.session() as s:
            row = s.scalars(
                select(RevisionRow)
                .where(RevisionRow.source == source)
                .order_by(RevisionRow.id.desc())
                .limit(1)
            ).first()
            return _revision(row) if row else None

    def revisions(self, limit: int = 50) -> list[RevisionRecord]:
        with self.session() as s:
            rows = s.scalars(select(RevisionRow).order_by(RevisionRow.id.desc()).limit(limit))
            return [_revision(r) for r in rows]

    def reject_revision(
        self, revision: Revision, errors: Sequence[str], warnings: Sequence[str], now: float
    ) -> RevisionRecord:
        """Record a revision that failed validation; desired state is left untouched."""
        with self.session() as s:
            row = RevisionRow(
                source=revision.source,
                revision=revision.id,
                message=revision.message,
                author=revision.author,
                committed_at=revision.committed_at,
                received_at=now,
                status="rejected",
                errors=list(errors),
                warnings=list(warnings),
                summary={},
            )
            s.add(row)
            s.add(
                EventRow(
                    time=now,
                    object=f"revision {revision.id[:12]}",
                    reason="RevisionRejected",
                    message=f"{len(errors)} error(s); first: {errors[0] if errors else ''}",
                )
            )
            s.flush()
            return _revision(row)

    def apply_revision(
        self, revision: Revision, manifests: Sequence[Manifest], warnings: Sequence[str], now: float
    ) -> RevisionRecord:
        """Make `manifests` the desired state, in one transaction, and record the revision."""
        with self.session() as s:
            existing = {(r.kind, r.namespace, r.name): r for r in s.scalars(select(ObjectRow))}
            wanted = {(m.key.kind, m.key.namespace, m.key.name): m for m in manifests}
            created, changed, deleted = [], [], []
            for key, m in wanted.items():
                row = existing.get(key)
                if row is None:
                    created.append(str(m.key))
                    row = ObjectRow(kind=m.key.kind, namespace=m.key.namespace, name=m.key.name)
                    s.add(row)
                elif row.hash != m.hash:
                    changed.append(str(m.key))
                row.api_version = m.api_version
                row.body = dict(m.body)
                row.hash = m.hash
                row.file = m.location.file
                row.line = m.location.line
                row.col = m.location.col
                row.revision = revision.id
            for key, row in existing.items():
                if key not in wanted:
                    deleted.append(str(ObjectKey(*key)))
                    s.delete(row)
            self._allocate_vips(s, [m for m in manifests if m.key.kind == "Service"])
            summary = {"created": sorted(created), "changed": sorted(changed), "deleted": sorted(deleted)}
            record = RevisionRow(
                source=revision.source,
                revision=revision.id,
                message=revision.message,
                author=revision.author,
                committed_at=revision.committed_at,
                received_at=now,
                status="applied",
                errors=[],
                warnings=list(warnings),
                summary=summary,
            )
            s.add(record)
            s.add(
                EventRow(
                    time=now,
                    object=f"revision {revision.id[:12]}",
                    reason="RevisionApplied",
                    message=f"{len(created)} created, {len(changed)} changed, {len(deleted)} deleted",
                )
            )
            s.flush()
            return _revision(record)

    def _allocate_vips(self, s: Session, services: Sequence[Manifest]) -> None:
        rows = {(r.namespace, r.name): r for r in s.scalars(select(ServiceRow))}
        wanted = {(m.key.namespace, m.key.name): m for m in services}
        for key, row in rows.items():
            if key not in wanted:
                s.delete(row)
        s.flush()
        used = {r.vip for k, r in rows.items() if k in wanted}
        net = self.service_cidr
        size = net.num_addresses
        for key, m in sorted(wanted.items()):
            if key in rows:
                continue
            requested = str(m.spec.get("clusterIP") or "")
            if (
                requested
                and requested != "None"
                and ipaddress.ip_address(requested) in net
                and requested not in used
            ):
                vip = requested
            else:
                start = int.from_bytes(hashlib.sha256(f"{key[0]}/{key[1]}".encode()).digest()[:8], "big")
                # Skip the network address and the one after it; never hand out broadcast.
                for probe in range(size):
                    offset = 2 + (start + probe) % (size - 3)
                    candidate = str(net.network_address + offset)
                    if candidate not in used:
                        vip = candidate
                        break
                else:
                    raise RuntimeError(f"service range {net} is exhausted")
            used.add(vip)
            s.add(ServiceRow(namespace=key[0], name=key[1], vip=vip))

    def desired(self) -> list[Manifest]:
        with self.session() as s:
            return [_manifest(r) for r in s.scalars(select(ObjectRow))]

    def vips(self) -> dict[ObjectKey, str]:
        with self.session() as s:
            return {ObjectKey("Service", r.namespace, r.name): r.vip for r in s.scalars(select(ServiceRow))}

    # --- nodes ------------------------------------------------------------------------

    def register_node(self, node: Node, token: str, now: float) -> None:
        with self.session() as s:
            row = s.get(NodeRow, node.name)
            if row is None:
                row = NodeRow(name=node.name, registered_at=now)
                s.add(row)
                s.add(
                    EventRow(
                        time=now, object=f"node {node.name}", reason="NodeRegistered", message=node.address
                    )
                )
            row.address = node.address
            row.cpu_milli = node.cpu_milli
            row.memory_bytes = node.memory_bytes
            row.max_pods = node.max_pods
            row.labels = dict(node.labels)
            row.taints = [{"key": t.key, "value": t.value, "effect": t.effect} for t in node.taints]
            row.token_hash = token_digest(token)
            row.heartbeat_at = now

    def node_for_token(self, name: str, token: str) -> bool:
        with self.session() as s:
            row = s.get(NodeRow, name)
            return row is not None and row.token_hash == token_digest(token)

    def nodes(self, now: float | None = None) -> list[NodeRecord]:
        now = time.time() if now is None else now
        with self.session() as s:
            return [
                NodeRecord(_node(r, now, self.heartbeat_grace), r.heartbeat_at, r.registered_at)
                for r in s.scalars(select(NodeRow).order_by(NodeRow.name))
            ]

    def snapshot(self, now: float | None = None) -> ClusterState:
        """The whole state one control-loop pass reads, with its version."""
        now = time.time() if now is None else now
        records = self.nodes(now)
        state = ClusterState(
            desired=tuple(self.desired()),
            pods=tuple(self.pods()),
            nodes=tuple(r.node for r in records),
            not_ready_since={
                r.node.name: r.heartbeat_at + self.heartbeat_grace for r in records if not r.node.ready
            },
            rollouts=self.rollouts(),
        )
        return dataclasses.replace(state, version=state_version(state))

    # --- pods -------------------------------------------------------------------------

    def pods(self, node: str | None = None) -> list[Pod]:
        with self.session() as s:
            query = select(PodRow).order_by(PodRow.id)
            if node is not None:
                query = query.where(PodRow.node == node)
            return [_pod(r) for r in s.scalars(query)]

    def apply_pod_changes(
        self,
        *,
        create: Sequence[tuple[Pod, str]],
        stop: Sequence[tuple[Pod, str]],
        bind: Mapping[PodId, NodeName],
        pending_reasons: Mapping[PodId, str],
        now: float,
        delete_now: Sequence[tuple[Pod, str]] = (),
    ) -> None:
        """Create pods, stop pods (terminating, or deleted outright when `delete_now` or never
        placed), bind pods to nodes, and note why others stay pending."""
        with self.session() as s:
            if delete_now:
                s.execute(delete(PodRow).where(PodRow.id.in_([p.id for p, _ in delete_now])))
                for pod, reason in delete_now:
                    s.add(EventRow(time=now, object=f"pod {pod.id}", reason="Stopped", message=reason))
            for pod, reason in stop:
                row = s.get(PodRow, pod.id)
                if row is None or row.terminating_at is not None:
                    continue
                if row.node is None:
                    s.delete(row)  # never ran anywhere: nothing to drain
                else:
                    # The node's agent drains it: out of every endpoint, then SIGTERM.
                    row.terminating_at = now
                    row.reason = f"Terminating: {reason}"
                    row.updated_at = now
                s.add(EventRow(time=now, object=f"pod {pod.id}", reason="Stopped", message=reason))
            s.flush()
            for pod, reason in create:
                s.add(
                    PodRow(
                        id=pod.id,
                        namespace=pod.namespace,
                        name=pod.name,
                        owner_kind=pod.owner.kind,
                        owner_namespace=pod.owner.namespace,
                        owner_name=pod.owner.name,
                        template_hash=pod.template_hash,
                        spec=encode(pod.spec),
                        labels=[list(kv) for kv in pod.labels],
                        node=pod.node,
                        phase="Pending",
                        ready=False,
                        reason=pod.reason,
                        pod_ip="",
                        host_ports=[],
                        restarts=0,
                        exit_code=None,
                        container_id="",
                        created_at=now,
                        updated_at=now,
                    )
                )
                s.add(EventRow(time=now, object=f"pod {pod.id}", reason="Created", message=reason))
            for pod_id, node in bind.items():
                row = s.get(PodRow, pod_id)
                if row is not None and row.node is None:
                    row.node = node
                    row.reason = f"scheduled on {node}"
                    row.updated_at = now
                    s.add(
                        EventRow(
                            time=now, object=f"pod {pod_id}", reason="Scheduled", message=f"placed on {node}"
                        )
                    )
            for pod_id, why in pending_reasons.items():
                row = s.get(PodRow, pod_id)
                if row is not None and row.node is None and row.reason != why:
                    row.reason = why
                    row.updated_at = now
                    s.add(EventRow(time=now, object=f"pod {pod_id}", reason="Unschedulable", message=why))

    def heartbeat(
        self, node: str, statuses: Sequence[PodStatus], now: float, stopped: Sequence[str] = ()
    ) -> None:
        """Record an agent's heartbeat, the status of the pods bound to its node, and the
        terminating pods it has finished stopping (they are deleted)."""
        with self.session() as s:
            row = s.get(NodeRow, node)
            if row is None:
                return
            row.heartbeat_at = now
            for pod_id in stopped:
                done = s.get(PodRow, pod_id)
                if done is not None and done.node == node and done.terminating_at is not None:
                    s.delete(done)
            for status in statuses:
                pod = s.get(PodRow, status.pod)
                if pod is None or pod.node != node or pod.terminating_at is not None:
                    continue
                before = (pod.phase, pod.ready, pod.reason)
                pod.phase = status.phase
                if status.ready and not pod.ready:
                    pod.ready_since = now
                pod.ready = status.ready
                pod.reason = status.reason
                pod.pod_ip = status.pod_ip
                pod.host_ports = [list(hp) for hp in status.host_ports]
                pod.restarts = max(pod.restarts, status.restarts)
                pod.exit_code = status.exit_code
                pod.container_id = status.container_id
                if status.last_log:
                    pod.last_log = status.last_log
                if before != (pod.phase, pod.ready, pod.reason):
                    pod.updated_at = now
                    message = (
                        status.phase
                        + (" ready" if status.ready else "")
                        + (f": {status.reason}" if status.reason else "")
                    )
                    s.add(
                        EventRow(
                            time=now, object=f"pod {status.pod}", reason="StatusChanged", message=message
                        )
                    )

    # --- rollouts ------------------------------------------------------------------

    def rollouts(self) -> dict[ObjectKey, RolloutState]:
        with self.session() as s:
            return {
                ObjectKey(r.kind, r.namespace, r.name): decode_as(RolloutState, r.state)
                for r in s.scalars(select(RolloutRow))
            }

    def save_rollouts(self, states: Mapping[ObjectKey, RolloutState], now: float) -> None:
        """Store rollout states; drop those of Deployments not in `states`; record changes
        of status as events."""
        with self.session() as s:
            rows = {ObjectKey(r.kind, r.namespace, r.name): r for r in s.scalars(select(RolloutRow))}
            for old_key, old_row in rows.items():
                if old_key not in states:
                    s.delete(old_row)
            for key, state in states.items():
                row = rows.get(key)
                before = decode_as(RolloutState, row.state) if row is not None else None
                if before == state:
                    continue
                if row is None:
                    row = RolloutRow(kind=key.kind, namespace=key.namespace, name=key.name)
                    s.add(row)
                row.state = encode(state)
                if before is None or before.status != state.status or before.target != state.target:
                    message = f"{state.status} {state.target}" + (f": {state.reason}" if state.reason else "")
                    s.add(EventRow(time=now, object=str(key), reason="Rollout", message=message))

    # --- events -----------------------------------------------------------------------

    def add_event(self, obj: str, reason: str, message: str, now: float) -> None:
        with self.session() as s:
            s.add(EventRow(time=now, object=obj, reason=reason, message=message))

    def events(self, limit: int = 100) -> list[EventRecord]:
        with self.session() as s:
            rows = s.scalars(select(EventRow).order_by(EventRow.id.desc()).limit(limit))
            return [EventRecord(r.id, r.time, r.object, r.reason, r.message) for r in rows]

    # --- previews ---------------------------------------------------------------------

    def save_preview(
        self,
        *,
        source: str,
        ref: str,
        base: str,
        head: str,
        state_version: str,
        computed_at: float,
        report: Mapping[str, Any],
        markdown: str,
    ) -> None:
        with self.session() as s:
            row = s.get(PreviewRow, (source, ref))
            if row is None:
                row = PreviewRow(source=source, ref=ref)
                s.add(row)
            row.base, row.head, row.state_version, row.computed_at = base, head, state_version, computed_at
            row.status = str(report.get("status", ""))
            row.report = dict(report)
            row.markdown = markdown

    def previews(self, source: str | None = None) -> list[PreviewRecord]:
        with self.session() as s:
            query = select(PreviewRow).order_by(PreviewRow.source, PreviewRow.ref)
            if source is not None:
                query = query.where(PreviewRow.source == source)
            return [
                PreviewRecord(
                    r.source, r.ref, r.base, r.head, r.state_version,
                    r.computed_at, r.status, r.report, r.markdown,
                )
                for r in s.scalars(query)
            ]

    def forget_previews(self, source: str, keep: set[str]) -> None:
        """Drop the previews of `source`'s refs that are not in `keep` (deleted branches)."""
        with self.session() as s:
            for row in s.scalars(select(PreviewRow).where(PreviewRow.source == source)):
                if row.ref not in keep:
                    s.delete(row)

    # --- cheap summaries (status page, metrics) -------------------------------------

    def change_marker(self) -> tuple[Any, ...]:
        """A cheap fingerprint that moves whenever a revision, a pod, a rollout or an event is
        written (every store change above records an event or touches a pod's `updated_at`) or
        a preview is saved.
        Heartbeat times are left out on purpose: they move every second on a live cluster."""
        with self.session() as s:
            pods = s.execute(select(func.count(PodRow.id), func.max(PodRow.updated_at))).one()
            return (
                s.scalar(select(func.max(EventRow.id))),
                s.scalar(select(func.max(RevisionRow.id))),
                s.scalar(select(func.count(NodeRow.name))),
                s.scalar(select(func.max(PreviewRow.computed_at))),
                *pods,
            )

    def pod_phase_counts(self) -> dict[str, int]:
        with self.session() as s:
            rows = s.execute(select(PodRow.phase, func.count(PodRow.id)).group_by(PodRow.phase))
            return {str(phase): int(n) for phase, n in rows}

    def ready_pod_count(self) -> int:
        with self.session() as s:
            return int(s.scalar(select(func.count(PodRow.id)).where(PodRow.ready.is_(True))) or 0)

    def revision_counts(self) -> dict[str, int]:
        """Recorded revisions by status (`applied`, `rejected`)."""
        with self.session() as s:
            counted = select(RevisionRow.status, func.count(RevisionRow.id)).group_by(RevisionRow.status)
            rows = s.execute(counted)
            return {str(status): int(n) for status, n in rows}
