"""SQL tables of the cluster state: desired objects, revisions, nodes, pods, services, events.

Portable SQLAlchemy types only (JSON, String, Float, ...) so the same tables serve SQLite
(the default, in WAL mode) and PostgreSQL. Sizes and counts that can pass 2**31 (bytes of
memory, ids of tables that only grow) are 64-bit on PostgreSQL; SQLite's integers are
64-bit anyway, and its autoincrementing keys must be declared INTEGER to be row ids.

These classes describe the newest schema; a database gets there through the migrations
in `gitops/store/migrations/` (`gitops.store.migrate`), never through `create_all`. A
change here needs a migration beside it; `tests/store/test_migrations.py` checks that the
two agree.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, Integer, String, Text, false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


# A growing id: BIGINT on PostgreSQL, INTEGER (the 64-bit row id) on SQLite.
GrowingId = BigInteger().with_variant(Integer(), "sqlite")


class RevisionRow(Base):
    __tablename__ = "revisions"

    id: Mapped[int] = mapped_column(GrowingId, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(512), index=True)
    revision: Mapped[str] = mapped_column(String(128))
    message: Mapped[str] = mapped_column(Text, default="")
    author: Mapped[str] = mapped_column(String(512), default="")
    committed_at: Mapped[float] = mapped_column(Float, default=0.0)
    received_at: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16))  # applied | rejected
    errors: Mapped[list[str]] = mapped_column(JSON, default=list)
    warnings: Mapped[list[str]] = mapped_column(JSON, default=list)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ObjectRow(Base):
    __tablename__ = "objects"

    kind: Mapped[str] = mapped_column(String(64), primary_key=True)
    namespace: Mapped[str] = mapped_column(String(253), primary_key=True)
    name: Mapped[str] = mapped_column(String(253), primary_key=True)
    api_version: Mapped[str] = mapped_column(String(64))
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    hash: Mapped[str] = mapped_column(String(64))
    file: Mapped[str] = mapped_column(String(1024))
    line: Mapped[int] = mapped_column(Integer)
    col: Mapped[int] = mapped_column(Integer)
    revision: Mapped[str] = mapped_column(String(128))
    # The source that declared the object; only a revision of that source changes or prunes it.
    source: Mapped[str] = mapped_column(String(512), index=True, server_default="")


class NodeRow(Base):
    __tablename__ = "nodes"

    name: Mapped[str] = mapped_column(String(253), primary_key=True)
    address: Mapped[str] = mapped_column(String(64))
    cpu_milli: Mapped[int] = mapped_column(BigInteger)
    memory_bytes: Mapped[int] = mapped_column(BigInteger)
    max_pods: Mapped[int] = mapped_column(Integer, default=110)
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    taints: Mapped[list[dict[str, str]]] = mapped_column(JSON, default=list)
    token_hash: Mapped[str] = mapped_column(String(64))  # sha256 of the node's token, never the token
    registered_at: Mapped[float] = mapped_column(Float)
    heartbeat_at: Mapped[float] = mapped_column(Float)
    # Why the node's container runtime cannot be reached ("" when it can), and since when.
    runtime_error: Mapped[str] = mapped_column(Text, server_default="")
    runtime_error_since: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The node's pod subnet, a slice of the cluster's pod range; None until given.
    pod_cidr: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True, index=True)


class ClaimRow(Base):
    """A PersistentVolumeClaim's volume: the node it is on, from the first pod that used it."""

    __tablename__ = "claims"

    id: Mapped[str] = mapped_column(String(512), primary_key=True)  # namespace/name
    node: Mapped[str] = mapped_column(String(253), index=True)
    bound_at: Mapped[float] = mapped_column(Float)
    # The claim left git and its StorageClass says Retain: the volume stays on its node, and
    # a claim of the same name added again finds it there.
    released: Mapped[bool] = mapped_column(Boolean, default=False)


class PodRow(Base):
    __tablename__ = "pods"

    id: Mapped[str] = mapped_column(String(512), primary_key=True)
    namespace: Mapped[str] = mapped_column(String(253), index=True)
    name: Mapped[str] = mapped_column(String(253))
    owner_kind: Mapped[str] = mapped_column(String(64))
    owner_namespace: Mapped[str] = mapped_column(String(253))
    owner_name: Mapped[str] = mapped_column(String(253))
    template_hash: Mapped[str] = mapped_column(String(64))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    labels: Mapped[list[list[str]]] = mapped_column(JSON, default=list)
    node: Mapped[str | None] = mapped_column(String(253), index=True, nullable=True)
    phase: Mapped[str] = mapped_column(String(16), default="Pending")
    ready: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str] = mapped_column(Text, default="")
    pod_ip: Mapped[str] = mapped_column(String(64), default="")
    host_ports: Mapped[list[list[Any]]] = mapped_column(JSON, default=list)
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    container_id: Mapped[str] = mapped_column(String(128), default="")
    last_log: Mapped[str] = mapped_column(Text, default="", server_default="")
    terminating_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    ready_since: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    containers: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list, server_default="[]")
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    # The wall clock of the last insert or update of the row, whatever `now` its writer was
    # given (`updated_at`): what `gitops.store.podcache` reads changes since.
    written_at: Mapped[float] = mapped_column(
        Float, default=time.time, onupdate=time.time, server_default="0", index=True
    )


class ServiceRow(Base):
    __tablename__ = "services"

    namespace: Mapped[str] = mapped_column(String(253), primary_key=True)
    name: Mapped[str] = mapped_column(String(253), primary_key=True)
    vip: Mapped[str] = mapped_column(String(64), unique=True)
    # NodePort and LoadBalancer Services: {"<port>/<protocol>": node port}.
    node_ports: Mapped[dict[str, int]] = mapped_column(JSON, default=dict, server_default="{}")


class RolloutRow(Base):
    __tablename__ = "rollouts"

    kind: Mapped[str] = mapped_column(String(64), primary_key=True)
    namespace: Mapped[str] = mapped_column(String(253), primary_key=True)
    name: Mapped[str] = mapped_column(String(253), primary_key=True)
    state: Mapped[dict[str, Any]] = mapped_column(JSON)


class WorkloadStateRow(Base):
    """What the controller remembers of a Job, a CronJob or a HorizontalPodAutoscaler between
    passes (`JobState`, `CronState`, `ScaleState`), keyed by the object."""

    __tablename__ = "workload_states"

    kind: Mapped[str] = mapped_column(String(64), primary_key=True)
    namespace: Mapped[str] = mapped_column(String(253), primary_key=True)
    name: Mapped[str] = mapped_column(String(253), primary_key=True)
    state: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[float] = mapped_column(Float)


class UsageRow(Base):
    """A pod's containers' CPU and memory use, as its agent last measured them."""

    __tablename__ = "pod_usage"

    pod: Mapped[str] = mapped_column(String(512), primary_key=True)  # namespace/name
    node: Mapped[str] = mapped_column(String(253), index=True)
    at: Mapped[float] = mapped_column(Float)
    # [{"container": name, "cpu_milli": float, "memory_bytes": int}]
    containers: Mapped[list[dict[str, Any]]] = mapped_column(JSON)


class EventRow(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(GrowingId, primary_key=True, autoincrement=True)
    time: Mapped[float] = mapped_column(Float, index=True)
    object: Mapped[str] = mapped_column(String(512))
    reason: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)


class PreviewRow(Base):
    """The preview of one branch (or pull-request ref) of a source."""

    __tablename__ = "previews"

    source: Mapped[str] = mapped_column(String(512), primary_key=True)
    ref: Mapped[str] = mapped_column(String(512), primary_key=True)
    base: Mapped[str] = mapped_column(String(128))
    head: Mapped[str] = mapped_column(String(128))
    state_version: Mapped[str] = mapped_column(String(64))
    computed_at: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16))  # error | changes | no changes
    report: Mapped[dict[str, Any]] = mapped_column(JSON)
    markdown: Mapped[str] = mapped_column(Text)


class MetaRow(Base):
    """Facts about the database itself, such as which key its Secret values are sealed with."""

    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class SourceHealthRow(Base):
    """A source that cannot be read: the error, since when, and when it was last tried."""

    __tablename__ = "source_health"

    source: Mapped[str] = mapped_column(String(512), primary_key=True)
    error: Mapped[str] = mapped_column(Text)
    since: Mapped[float] = mapped_column(Float)
    checked_at: Mapped[float] = mapped_column(Float)


class LeaseRow(Base):
    """Who leads the control planes sharing this database (`gitops.store.lease`): the
    holder, the epoch that fences its writes (one more at each change of holder), until
    when it holds (the database's clock, seconds since the epoch), and what the leader
    knows that the others serve by (whether its sources are read, whether it is settled)."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(512))
    epoch: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[float] = mapped_column(Float)
    acquired_at: Mapped[float] = mapped_column(Float)
    sources_read: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    settled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class SerialRow(Base):
    """A count per table whose rows readers keep in memory, moved in the same transaction as
    every write of those rows (`gitops.store.serials`): a reader that finds it where it was
    reads nothing else. `nodes` moves at every change of a node's row but its heartbeat,
    `pods` only at a delete of pod rows (inserts and updates stamp `PodRow.written_at`)."""

    __tablename__ = "serials"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    serial: Mapped[int] = mapped_column(BigInteger)


class PodDeletionRow(Base):
    """The pod rows deleted lately, each with the wall clock of its delete: written by a
    trigger on `pods` (migration 0012), so that every delete leaves one, whatever statement
    or release made it. Readers keeping the pods in memory (`gitops.store.podcache`) drop
    those deleted since their last read, as they read the rows written since by their
    `written_at`, instead of reading every id. Deletes older than `DELETIONS_KEPT` seconds
    are removed by the next transaction that deletes pods."""

    __tablename__ = "pod_deletions"

    id: Mapped[str] = mapped_column(String(512), primary_key=True)
    deleted_at: Mapped[float] = mapped_column(Float, index=True)


DELETIONS_KEPT = 600.0  # seconds a pod's delete is kept in `pod_deletions`
