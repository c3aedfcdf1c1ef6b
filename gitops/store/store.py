"""The cluster state in SQL: what git wants, what runs, and what happened.

`Store` is the only place that talks SQL. It turns rows into the frozen values of
`gitops.model` and back, and makes each change one transaction: a validated revision
replaces its source's desired objects atomically (or is refused, and changes nothing), a
plan's pod actions land together with their events, and an agent's report updates only
the pods bound to that agent's node.

- **Ownership.** Every object records the source that declared it. A revision of a source
  creates, changes and prunes that source's objects only; declaring an object another
  source owns refuses the revision (the first owner keeps it), and so does a revision that
  would delete every object of its source (unless the source allows empty revisions).
- **Sealed at rest.** Secret manifests and every pod spec value taken from a Secret are
  stored sealed (`SecretKeys`); they are opened on read, and a Secret's hash and value
  digests are keyed (`gitops.keyed`). Free text that agents report (reasons, log tails) is
  redacted before it is written.
- **Schema.** The database is migrated to the newest schema at start (`gitops.store.migrate`).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import ipaddress
import itertools
import json
import socket
import sqlite3
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from operator import itemgetter
from typing import TYPE_CHECKING, Any, cast

import structlog
from sqlalchemy import (
    Table,
    Text,
    bindparam,
    case,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, defer, sessionmaker

from gitops.codec import decode_as, encode, state_version
from gitops.keyed import seal as seal_manifest
from gitops.keyed import secret_data
from gitops.model import (
    ClusterState,
    ContainerStatus,
    ContainerUsage,
    CronState,
    JobState,
    Manifest,
    Node,
    NodeName,
    ObjectKey,
    Pod,
    PodId,
    PodName,
    PodSpec,
    PodStatus,
    PodUsage,
    Revision,
    RolloutState,
    ScaleState,
    ServicePort,
    SourceLocation,
    Taint,
    canonical_json,
)
from gitops.planner.autoscale import autoscaled
from gitops.planner.plan import adoptable, configs_of
from gitops.planner.podspec import ConfigIndex, resolve_template
from gitops.planner.services import EXPOSED, needs_vip, port_key, service_ports, service_type
from gitops.planner.statefulset import claim_fates
from gitops.redact import Redactor, secret_forms, truncate
from gitops.schemas.checks import NODE_PORTS as NODE_PORT_RANGE
from gitops.store import serials
from gitops.store.keys import SecretKeyError, SecretKeys, is_sealed
from gitops.store.migrate import current as current_revision
from gitops.store.migrate import head as head_revision
from gitops.store.migrate import migrate
from gitops.store.rows import all_rows
from gitops.store.states import STATE_TYPES, state_event
from gitops.store.tables import (
    DELETIONS_KEPT,
    ClaimRow,
    EventRow,
    MetaRow,
    NodeRow,
    ObjectRow,
    PodDeletionRow,
    PodRow,
    PreviewRow,
    RevisionRow,
    RolloutRow,
    SerialRow,
    ServiceRow,
    SourceHealthRow,
    UsageRow,
    WorkloadStateRow,
)

log = structlog.get_logger(__name__)

MAX_REASON = 2000
MAX_LOG = 8000
KEY_CHECK = "key_check"
APPLY_LOCK = 0x6769746F7073_01  # a PostgreSQL advisory lock of our own: one revision applies at a time
SEALED_LEGACY = "sealed_legacy"


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
class Report:
    """One agent's report (see `Store.heartbeat`)."""

    node: str
    statuses: tuple[PodStatus, ...]
    now: float
    stopped: tuple[str, ...] = ()
    runtime_error: str = ""
    adopt: bool = False


@dataclass(frozen=True)
class NodeRecord:
    node: Node
    heartbeat_at: float
    registered_at: float
    not_ready_since: float | None = None  # when it became NotReady (None while Ready)


class Refused(Exception):
    """A valid revision the store will not apply as things stand; `errors` say why, for
    people. The same revision may apply later without changing (another source gives up
    an object, Services free addresses, the source is allowed to be empty), so its sync
    tries it again."""

    def __init__(self, errors: Sequence[str]) -> None:
        super().__init__(errors[0] if errors else "refused")
        self.errors = tuple(errors)


class NodeNameTaken(Exception):
    """A registration under the name of a node that is Ready, without that node's token."""


class PodRangeExhausted(Exception):
    """Every pod subnet of the cluster's pod range is held by a registered node."""


def check_ranges(service_cidr: str, cluster_cidr: str, node_mask: int) -> None:
    """Raise ValueError, saying why, unless the service and pod ranges can serve together."""
    services = ipaddress.ip_network(service_cidr, strict=False)
    pods = ipaddress.ip_network(cluster_cidr, strict=False)
    if pods.version != 4 or services.version != 4:
        raise ValueError("--cluster-cidr and --service-cidr: expected IPv4 ranges")
    if services.overlaps(pods):
        raise ValueError(f"--cluster-cidr {pods} overlaps --service-cidr {services}; give ranges apart")
    if not pods.prefixlen <= node_mask <= 28:
        raise ValueError(
            f"--cluster-cidr {pods}: a node's pod subnet is a /{node_mask}, which must lie inside it "
            "(and hold at least 16 addresses)"
        )


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


if TYPE_CHECKING:
    from gitops.store.lease import Lease
    from gitops.store.podcache import PodCache

# Seconds a node token that matched is trusted without asking the database: longer than
# agents' heartbeats (10 s), so that a quiet node's call reads nothing. A token another
# control plane replaced (the node registered again there) is still taken that long here.
TOKEN_MEMORY = 60.0
_SUBNET_PROBES = 32  # subnets looked up one by one before the whole range is read
_INSERT_BATCH = 5000  # rows per multi-row INSERT (each batch is one executemany)
_IN_CHUNK = 500  # ids per IN (...) list
# What `Store.nodes` reads of every node, the JSON ones as text (compared as text; decoded
# only when it changed).
NODE_COLUMNS = (
    NodeRow.name,
    NodeRow.address,
    NodeRow.cpu_milli,
    NodeRow.memory_bytes,
    NodeRow.max_pods,
    sql_cast(NodeRow.labels, Text),
    sql_cast(NodeRow.taints, Text),
    NodeRow.pod_cidr,
    NodeRow.runtime_error,
    NodeRow.runtime_error_since,
    NodeRow.heartbeat_at,
    NodeRow.registered_at,
)
_WRITES = frozenset({"INSERT", "UPDATE", "DELETE"})
# `Connection.info` key: the connection's transaction deleted pod rows (`Store._note_statement`).
_DELETED_PODS = "gitops.deleted_pods"


def _chunks(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    """`ids` in lists of at most `_IN_CHUNK`, one `IN (...)` each."""
    for start in range(0, len(ids), _IN_CHUNK):
        yield ids[start : start + _IN_CHUNK]


SpecKey = tuple[str, str, str, str, str]
# New pod rows with their JSON columns given as JSON text already (`spec_text`,
# `labels_text`), what those columns store on SQLite and PostgreSQL alike, and every column
# given: a row's Python-side defaults (`[]` made JSON, the clock read) cost per row.
_INSERT_PODS = insert(cast(Table, PodRow.__table__)).values(
    spec=bindparam("spec_text", type_=Text),
    labels=bindparam("labels_text", type_=Text),
    host_ports=bindparam("empty_list", type_=Text),
    containers=bindparam("empty_list", type_=Text),
)
_INSERT_EVENTS = insert(cast(Table, EventRow.__table__))  # Core: no ORM bookkeeping per row
# A node's heartbeat time, never moved back (`Store.record_heartbeats`).
_HEARTBEAT = (
    update(cast(Table, NodeRow.__table__))
    .where(NodeRow.__table__.c.name == bindparam("node"))
    .values(
        heartbeat_at=case(
            (NodeRow.__table__.c.heartbeat_at < bindparam("at"), bindparam("at")),
            else_=NodeRow.__table__.c.heartbeat_at,
        )
    )
)

# `Store.change_marker`'s one statement: a scalar subquery for each part, so that each
# maximum is one step down its index (as one SELECT of the pods' count and maximum, SQLite
# read every row for the maximum: 122 ms at 150,000 pods, against 12 ms).
_CHANGE_MARKER = select(
    *(
        part.scalar_subquery()
        for part in (
            select(func.count()).select_from(WorkloadStateRow),
            select(func.max(WorkloadStateRow.updated_at)),
            select(func.max(EventRow.id)),
            select(func.max(RevisionRow.id)),
            select(func.count(NodeRow.name)),
            select(func.max(PreviewRow.computed_at)),
            select(SerialRow.serial).where(SerialRow.name == "pods"),
            select(func.max(PodRow.written_at)),
        )
    )
)


def spec_key(row: Any) -> SpecKey:
    """What names a pod row's spec: a Deployment's replicas share their spec (its template
    hash names it); other kinds' pods each have their own (a StatefulSet's claims, a
    DaemonSet's node, a Job's completion index)."""
    own = "" if row.owner_kind == "Deployment" else row.name
    return (row.owner_kind, row.owner_namespace, row.owner_name, row.template_hash, own)


# A pod row's JSON columns, each as its `Pod` field (`Store.pod_from_row`).
_POD_COLUMN_VALUES: dict[str, Callable[[Any], Any]] = {
    "labels": lambda value: tuple((str(k), str(v)) for k, v in value),
    "host_ports": lambda value: tuple((int(c), str(p), int(h)) for c, p, h in value),
    "containers": lambda value: tuple(decode_as(ContainerStatus, c) for c in value or ()),
}
# Those columns selected as their JSON text (no decoding per row; PostgreSQL's driver
# would decode a JSON column itself), for `pod_from_row`.
POD_TEXT_COLUMNS = {
    name: sql_cast(cast(Table, PodRow.__table__).c[name], Text).label(name) for name in _POD_COLUMN_VALUES
}


_ADOPTION = "gitops_adoption"  # Session.info key: an `_Adoption` for the transaction's reports


@dataclass
class _Adoption:
    """What adopting reported containers reads, read once in a transaction: the desired
    workloads, their configs, and each workload's pods as adoptions add to them."""

    workloads: dict[ObjectKey, Manifest]
    configs: ConfigIndex
    owned: dict[ObjectKey, list[Pod]] = dataclasses.field(default_factory=dict)


IMMEDIATE = "gitops_sqlite_immediate"  # an execution option: the transaction begins IMMEDIATE
LONG_WRITE = 2.0  # seconds: a SQLite write transaction holding the write lock longer is logged
IDLE_IN_TRANSACTION = 15.0  # seconds a PostgreSQL session may sit in a transaction without a statement


def _sqlite_begin(conn: Any) -> None:
    """Begin transactions ourselves (the driver's own BEGIN is off): IMMEDIATE for writers."""
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(IMMEDIATE) else "BEGIN")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # no implicit BEGIN: `_sqlite_begin` says which
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA secure_delete=ON")  # deleted rows are overwritten, not left in free pages
    cursor.close()


def make_engine(url: str, *, read_only: bool = False) -> Engine:
    if url.startswith("sqlite"):
        path = make_url(url).database
        if read_only and path and path != ":memory:":
            # Opened read-only by SQLite itself: not even the journal mode is changed.
            def connect() -> sqlite3.Connection:
                return sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, timeout=30)

            return create_engine("sqlite://", creator=connect)
        # As many pooled connections as threads that may use them at once (the API's 40
        # workers, the controller, the syncs): a connection opened past the pool is closed
        # again after each use, and opening one (its pragmas) costs more than its query.
        pooled: dict[str, Any] = {"pool_size": 48, "max_overflow": 16} if path and path != ":memory:" else {}
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **pooled)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    # A session left open by a process that stopped (SIGSTOP, a hung thread) loses its
    # connection and its locks after this long: a leader's lease can pass on (gitops.store.lease).
    options = f"-c idle_in_transaction_session_timeout={int(IDLE_IN_TRANSACTION * 1000)}"
    return create_engine(url, pool_pre_ping=True, connect_args={"options": options})


def _node(row: NodeRow, now: float, grace: float) -> Node:
    reason = _not_ready_reason(now - row.heartbeat_at, grace, row.runtime_error)
    return Node(
        name=NodeName(row.name),
        address=row.address,
        cpu_milli=row.cpu_milli,
        memory_bytes=row.memory_bytes,
        labels=tuple(sorted(row.labels.items())),
        taints=_taints(row.taints),
        ready=not reason,
        max_pods=row.max_pods,
        reason=reason,
        pod_cidr=row.pod_cidr or "",
    )


# Rows of a table of states, by key: (the row's text, its JSON, the state it holds).
_Seen = dict[ObjectKey, tuple[str, Any, Any]]


def _as_read(seen: _Seen | None, encoded: Mapping[ObjectKey, Any]) -> bool:
    """Whether states in their stored form (`encoded`) are the rows as last read (`seen`,
    None when not read since the last write): then writing them would write nothing. A no-op
    pass over 1,500 Deployments loaded their 1,500 rows under the write lock to write none.
    Only the leader writes states, and each of its passes reads them before it writes them."""
    return (
        seen is not None
        and seen.keys() == encoded.keys()
        and all(value == seen[key][1] for key, value in encoded.items())
    )


def _node_from(name: str, key: tuple[Any, ...]) -> Node:
    """A node from its row's columns as `Store.nodes` keys them, and why it is NotReady."""
    address, cpu, memory, max_pods, labels, taints, cidr, reason = key
    return Node(
        name=NodeName(name),
        address=address,
        cpu_milli=cpu,
        memory_bytes=memory,
        labels=tuple(sorted(json.loads(labels).items())),
        taints=_taints(json.loads(taints)),
        ready=not reason,
        max_pods=max_pods,
        reason=reason,
        pod_cidr=cidr or "",
    )


@dataclass(frozen=True)
class _PassNodes:
    """What `Store.node_states` last gave, and from what."""

    rows: Sequence[Sequence[Any]]  # the kept rows (`NODE_COLUMNS`) it was made of
    silent: Mapping[str, float]  # name -> heartbeat, of the nodes past the grace then
    nodes: tuple[Node, ...]
    since: Mapping[NodeName, float]
    places: Mapping[str, int]  # name -> its place in `rows` and `nodes`


def _rollout(_kind: str, stored: Any) -> RolloutState:
    return decode_as(RolloutState, stored)


def _state(kind: str, stored: Any) -> Any:
    return decode_as(STATE_TYPES[kind], stored) if kind in STATE_TYPES else None


def _taints(taints: list[dict[str, str]]) -> tuple[Taint, ...]:
    return tuple(Taint(t["key"], t.get("value", ""), t.get("effect", "NoSchedule")) for t in taints)  # type: ignore[arg-type]


def _not_ready_reason(silent_for: float, grace: float, runtime_error: str) -> str:
    """Why a node is NotReady ("" when it is Ready)."""
    if silent_for > grace:
        return f"no heartbeat for {silent_for:.0f}s"
    return f"container runtime: {runtime_error}" if runtime_error else ""


def _not_ready_since(row: NodeRow, grace: float) -> float:
    """When a NotReady node became so: its runtime failed, or its heartbeat stopped."""
    return _since(row.heartbeat_at, grace, row.runtime_error, row.runtime_error_since)


def _since(heartbeat_at: float, grace: float, runtime_error: str, runtime_error_since: float | None) -> float:
    if runtime_error and runtime_error_since is not None:
        return runtime_error_since
    return heartbeat_at + grace


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


NODE_PORTS = range(NODE_PORT_RANGE[0], NODE_PORT_RANGE[1] + 1)


@dataclass(frozen=True)
class _PortClaim:
    """A port a Service takes on every node: (number, protocol), and why."""

    service: tuple[str, str]
    number: int
    protocol: str
    what: str  # "nodePort" or "LoadBalancer port"
    port: str  # the Service port it leads to, `port_key`


def _allocate_node_ports(
    services: Mapping[tuple[str, str], Manifest],
    held: Mapping[tuple[str, str], Mapping[str, int]],
    owners: Mapping[tuple[str, str], str],
    source: str,
) -> dict[tuple[str, str], dict[str, int]]:
    """The node ports of every Service (`port_key` -> node port; empty unless NodePort or
    LoadBalancer), given those they `held` so far; raises `Refused` naming both Services
    when a Service of `source` claims a port on the nodes that another one holds.

    A Service keeps its node port for a port as long as that port stays and it asks for no
    other. Claims in effect before this revision (kept node ports, and every claim of other
    sources' Services) are settled first; then this source's new claims (asked node ports,
    LoadBalancer ports); then each port that asks for none gets the first free one from a
    start that depends on the Service and port only, preferring the node port its
    other-protocol twin (53/TCP beside 53/UDP) has."""
    kept: dict[tuple[str, str], dict[str, int]] = {key: {} for key in services}
    settled: list[_PortClaim] = []
    new: list[_PortClaim] = []
    pending: list[tuple[tuple[str, str], ServicePort]] = []
    for key in sorted(services):
        m = services[key]
        if service_type(m) not in EXPOSED:
            continue
        ours = owners.get(key, source) == source
        for p in service_ports(m):
            name = port_key(p)
            before = held.get(key, {}).get(name)
            if before is not None and p.node_port in (0, before):
                kept[key][name] = before
                settled.append(_PortClaim(key, before, p.protocol, "nodePort", name))
            elif p.node_port:
                kept[key][name] = p.node_port
                (new if ours else settled).append(_PortClaim(key, p.node_port, p.protocol, "nodePort", name))
            else:
                pending.append((key, p))
            if service_type(m) == "LoadBalancer":
                claim = _PortClaim(key, p.port, p.protocol, "LoadBalancer port", name)
                (new if ours else settled).append(claim)
    taken: dict[tuple[int, str], _PortClaim] = {}
    for claim in settled:  # in effect already: a clash among them is not this source's to fix
        taken.setdefault((claim.number, claim.protocol), claim)
    refusals = []
    for claim in new:
        first = taken.setdefault((claim.number, claim.protocol), claim)
        if first is claim or (first.service == claim.service and first.port == claim.port):
            continue
        holder = services[first.service]
        m = services[claim.service]
        role = f" as its {first.what}" if first.what != claim.what else ""
        refusals.append(
            f"{m.location}: {m.key}: {claim.what} {claim.number}/{claim.protocol} (port {claim.port}) is "
            f"already used by {holder.key} ({holder.location}, source {owners.get(first.service) or '-'})"
            f"{role}; a port on the nodes leads to one Service"
        )
    if refusals:
        raise Refused(refusals)
    for key, p in pending:
        twins = [n for k, n in kept[key].items() if k.split("/")[0] == str(p.port)]
        start = int.from_bytes(
            hashlib.sha256(f"{key[0]}/{key[1]}/{port_key(p)}".encode()).digest()[:8], "big"
        )
        candidates = itertools.chain(
            twins, (NODE_PORTS[(start + i) % len(NODE_PORTS)] for i in range(len(NODE_PORTS)))
        )
        number = next((n for n in candidates if (n, p.protocol) not in taken), None)
        if number is None:
            m = services[key]
            raise Refused(
                [
                    f"{m.location}: {m.key}: no node port is free for port {port_key(p)}: every one of "
                    f"{NODE_PORTS[0]}-{NODE_PORTS[-1]}/{p.protocol} is taken; remove NodePort or "
                    "LoadBalancer Services"
                ]
            )
        kept[key][port_key(p)] = number
        taken[number, p.protocol] = _PortClaim(key, number, p.protocol, "nodePort", port_key(p))
    return kept


class Store:
    """Cluster state in SQL (SQLite by default, PostgreSQL by URL).

    `keys` seal Secret values; without them the store makes a key that lives as long as the
    process, which suits in-memory databases and tests. A database sealed with one key
    refuses to open with another.
    """

    def __init__(
        self,
        url: str,
        *,
        keys: SecretKeys | None = None,
        service_cidr: str = "10.243.0.0/16",
        cluster_cidr: str = "10.244.0.0/16",
        node_cidr_mask: int = 24,
        heartbeat_grace: float = 40.0,
        read_only: bool = False,
    ) -> None:
        check_ranges(service_cidr, cluster_cidr, node_cidr_mask)
        self.url = url
        self.read_only = read_only
        self.engine = make_engine(url, read_only=read_only)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.keys = keys or SecretKeys.generate()
        self.service_cidr = ipaddress.ip_network(service_cidr)
        self.cluster_cidr = ipaddress.IPv4Network(cluster_cidr, strict=False)
        self.node_cidr_mask = node_cidr_mask
        self.heartbeat_grace = heartbeat_grace
        self._redactor: tuple[Any, Redactor] = (object(), Redactor())
        self._redactor_lock = threading.Lock()
        self._redactor_checked = float("-inf")
        self._written = threading.local()
        self._fence = threading.local()  # .lease: the lease this thread's transactions check
        # Called after each write transaction of this process commits (`write_session`):
        # agents' long-polls look at once (`gitops.api.agentsync.NodeWatch`).
        self.after_write: list[Callable[[], None]] = []
        self._pods_counted = (float("-inf"), 0)  # (monotonic time, the pod rows then): `change_marker`
        self._writing: dict[object, float] = {}  # writes under way -> when each began
        self._writing_lock = threading.Lock()
        self._tokens: dict[str, tuple[str, float]] = {}  # node -> (its token's digest, when read)
        self._tokens_read_at = float("-inf")  # monotonic time of the last read of every node's token
        self._tokens_dropped: dict[str, float] = {}  # node -> when its token was last forgotten
        self._tokens_lock = threading.Lock()
        self._nodes_seen: dict[str, tuple[tuple[Any, ...], Node]] = {}  # name -> (its row, as of `nodes`)
        # The rows, the node objects and the result of `node_states`, for the controller's passes.
        self._node_rows: serials.Kept[Sequence[Sequence[Any]]] = serials.Kept("nodes")
        self._pass_nodes_seen: dict[str, tuple[tuple[Any, ...], Node]] = {}
        self._pass_nodes: _PassNodes | None = None
        self._pass_nodes_lock = threading.Lock()
        # `node_places`' last answer: (the kept rows, the silent nodes then, the places).
        self._places: (
            tuple[Sequence[Sequence[Any]], frozenset[str], tuple[tuple[str, str, str, bool], ...]] | None
        ) = None
        # The states as the last `rollouts` and `workload_states` read them (`_read_states`).
        self._rollouts_seen: _Seen | None = None
        self._workload_states_seen: _Seen | None = None
        self._rollouts_kept: serials.Kept[_Seen] = serials.Kept("rollouts")
        self._workload_states_kept: serials.Kept[_Seen] = serials.Kept("workload_states")
        self._subnet_cursor = 0  # the index of the pod subnet to try first for a new node
        self._write_lock = threading.RLock() if self.engine.dialect.name == "sqlite" else None
        self.renewing: Lease | None = None  # SQLite: the lease this process's writes renew
        self._pod_cache: PodCache | None = None
        self._pod_cache_lock = threading.Lock()
        self._desired: tuple[tuple[Any, ...], tuple[Manifest, ...]] | None = None  # (marker, objects)
        # One key object per owner for the pods read: a workload's 5,000 pods share one, and
        # grouping pods by owner skips hashing it (`gitops.planner.actions.group_by_owner`).
        self._owners: dict[tuple[str, str, str], ObjectKey] = {}
        # (column, its JSON text) -> the value a `Pod` holds: replicas share their labels,
        # and most pods the same container statuses (`pod_from_row`).
        self._column_values: dict[tuple[str, str], Any] = {}
        # `_HEARTBEAT` in the database's own dialect, and the order of its parameters when
        # they are positional (SQLite's `?`) rather than named (psycopg2's `%(at)s`).
        heartbeat = _HEARTBEAT.compile(dialect=self.engine.dialect)
        self._heartbeat_sql = heartbeat.string
        self._heartbeat_order = itemgetter(*heartbeat.positiontup or ()) if heartbeat.positional else None
        event.listen(self.engine, "before_cursor_execute", self._note_statement)
        event.listen(self.engine, "rollback", lambda conn: conn.info.pop(_DELETED_PODS, None))
        if read_only:
            self._check_readable()
        else:
            migrate(self.engine, then=self._check_key)

    def _note_statement(
        self, conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, executemany: bool
    ) -> None:
        if statement.lstrip()[:6].upper() in _WRITES:
            rows = len(parameters) if executemany else 1
            self._written.count = getattr(self._written, "count", 0) + rows
            if statement.lstrip()[:17].upper() == "DELETE FROM PODS ":
                conn.info[_DELETED_PODS] = True  # the pods' serial moves with the transaction

    def _move_serials(self, session: Session) -> None:
        """Move the serials of the tables `session`'s transaction wrote (`serials.move`), the
        last thing it does before it commits; the pods' when it deleted pod rows, by any
        statement (`_note_statement`; rows deleted through the session are sent first):
        readers keeping the pods find inserts and updates by their `written_at`, deletes by
        this serial (`PodCache`), and which by `pod_deletions` (a trigger's rows: those
        older than `DELETIONS_KEPT` go with this transaction). Noted on the connection, not
        the thread: a session opened inside another's block is another transaction."""
        if session.get_transaction() is None:
            return  # (nothing sent)
        if session.deleted:
            session.flush()
        if session.connection().info.pop(_DELETED_PODS, False):
            serials.changed(session, "pods")
            # Rows another transaction holds are skipped (the next cleanup takes them): two
            # cleanups, or one and a trigger updating a reused name's row, never wait on
            # each other in a cycle on PostgreSQL. (SQLite has one writer, and no such clause.)
            old = select(PodDeletionRow.id).where(PodDeletionRow.deleted_at < time.time() - DELETIONS_KEPT)
            session.execute(
                delete(PodDeletionRow).where(PodDeletionRow.id.in_(old.with_for_update(skip_locked=True)))
            )
        serials.move(session)

    @property
    def pod_cache(self) -> PodCache:
        """This process's pods in memory, shared by its readers (`gitops.store.podcache`)."""
        with self._pod_cache_lock:
            if self._pod_cache is None:
                from gitops.store.podcache import PodCache  # noqa: PLC0415 - it builds on this module

                self._pod_cache = PodCache(self)
            return self._pod_cache

    def written(self) -> int:
        """Write statements (INSERT, UPDATE, DELETE; each row of an executemany) this thread
        has sent to the database through this store: a caller compares two readings to
        know what a piece of work wrote (a lease renewal its transaction carried, on SQLite,
        is not counted: `Lease.renew_with_writes`)."""
        count: int = getattr(self._written, "count", 0)
        return count

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            self._check_fence(session)
            yield session
            self._move_serials(session)  # what the work wrote of tables readers keep (`changed`)

    @contextmanager
    def fenced(self, lease: Lease) -> Iterator[None]:
        """Within this block, every transaction this thread opens through the store first
        checks that `lease` is still held (`Lease.check`), and fails with `NotLeader` if
        not: leader-only work cannot write once another control plane leads."""
        before = getattr(self._fence, "lease", None)
        self._fence.lease = lease
        try:
            yield
        finally:
            self._fence.lease = before

    def _check_fence(self, session: Session) -> None:
        lease: Lease | None = getattr(self._fence, "lease", None)
        if lease is not None:
            lease.check(session)

    @contextmanager
    def write_session(self) -> Iterator[Session]:
        """A session for work that writes. On SQLite, this process's writers take turns (a
        lock, not the database's busy loop) and each transaction takes the database's
        write lock when it begins (`BEGIN IMMEDIATE`): one that first read and then found
        another writer committed in between would fail with "database is locked" at once,
        whatever the busy timeout. There, a write also renews the lease this process leads
        by, if any (`Lease.renew_with_writes`), just before it commits."""
        token = object()
        renewed = None
        with self._writing_lock:
            self._writing[token] = time.time()
        try:
            if self._write_lock is None:
                with self.session() as session:
                    yield session
            else:
                with self._write_lock, self._sessions.begin() as session:
                    began = time.monotonic()
                    session.connection(execution_options={IMMEDIATE: True})
                    self._check_fence(session)
                    yield session
                    self._move_serials(session)
                    lease = self.renewing
                    if lease is not None:
                        session.flush()  # the work's own writes counted first
                        count = self.written()
                        renewed = lease.renew_within(session)
                        self._written.count = count  # the lease's, not a write of the work (`written`)
                held = time.monotonic() - began
                if held > LONG_WRITE:  # every other writer of this process waited that long
                    by = sys._getframe(2).f_code.co_qualname  # the caller, past contextlib's __exit__
                    log.warning("store.long_write", seconds=round(held, 2), by=by)
        finally:
            with self._writing_lock:
                del self._writing[token]
        if renewed is not None:
            renewed()
        for written in self.after_write:  # committed
            written()

    def oldest_write(self) -> float | None:
        """When the oldest write of this process still under way began (wall clock): rows
        it writes are stamped later but seen only once it commits (`PodCache`)."""
        with self._writing_lock:
            return min(self._writing.values(), default=None)

    def close(self) -> None:
        """Close the pooled connections; on SQLite first fold the write-ahead log into the
        database file and empty it, so a cleanly stopped control plane leaves one
        self-contained file (a copy of it alone holds everything). The store stays usable: a
        later session opens a new connection."""
        if self.engine.dialect.name == "sqlite" and not self.read_only:
            try:
                with self.engine.connect() as conn:
                    conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            except OperationalError as e:  # a reader still open elsewhere: the log stays, nothing is lost
                log.warning("store.checkpoint_failed", error=str(e))
        self.engine.dispose()

    # --- sealing ----------------------------------------------------------------------

    def _check_key(self) -> None:
        """Refuse a key other than the one this database was sealed with; seal what an older
        release stored in the clear."""
        check = self.keys.check_value()
        with self.write_session() as s:
            row = s.get(MetaRow, KEY_CHECK)
            if row is None:
                sealed = s.scalar(
                    select(func.count()).select_from(ObjectRow).where(ObjectRow.kind == "Secret")
                )
                if sealed and any(is_sealed(b.get("sealed")) for b in self._secret_bodies(s)):
                    raise SecretKeyError(
                        "this database holds sealed Secret values but no key check; give the key file "
                        "it was sealed with (--secret-key-file)"
                    )
                s.add(MetaRow(key=KEY_CHECK, value=check))
            elif not hmac.compare_digest(row.value, check):
                raise SecretKeyError(
                    "the database's Secret values were sealed with another key; start with the key "
                    "file it was made with (--secret-key-file)"
                )
            if s.get(MetaRow, SEALED_LEGACY) is None:
                self._seal_legacy(s)
                s.add(MetaRow(key=SEALED_LEGACY, value="1"))

    def _check_readable(self) -> None:
        """For tools that only read (`gitops state export --db`): the database must be at this
        release's schema and sealed with our key; nothing is written."""
        with self.engine.connect() as connection:
            found = current_revision(connection)
        if found != head_revision():
            raise SecretKeyError(
                f"the database is at schema {found or '(none)'}, this release reads {head_revision()}: "
                "start this release's server on it once to upgrade it"
            )
        with self.session() as s:
            row = s.get(MetaRow, KEY_CHECK)
            if row is not None and not hmac.compare_digest(row.value, self.keys.check_value()):
                raise SecretKeyError(
                    "the database's Secret values were sealed with another key; give the key file "
                    "it was made with (--secret-key-file)"
                )

    @staticmethod
    def _secret_bodies(s: Session) -> list[dict[str, Any]]:
        return [dict(r.body) for r in s.scalars(select(ObjectRow).where(ObjectRow.kind == "Secret"))]

    def _seal_legacy(self, s: Session) -> None:
        """Release 0.1 stored Secret manifests, and pod specs holding their values, in the
        clear: seal both, once. Which pod values came from a Secret is told by value."""
        values: set[str] = set()
        sealed_objects = 0
        for row in s.scalars(select(ObjectRow).where(ObjectRow.kind == "Secret")):
            if is_sealed(row.body.get("sealed")):
                continue
            manifest = Manifest(
                ObjectKey("Secret", row.namespace, row.name),
                row.api_version,
                row.body,
                SourceLocation(row.file),
            )

            values |= {v.decode(errors="replace") for v in secret_data(manifest.body).values() if v}
            keyed = seal_manifest(manifest, self.keys.digest_key)
            row.body = self._body_to_row(keyed)
            row.hash = keyed.hash
            sealed_objects += 1
        sealed_pods = 0
        plain_hashes: set[str] = set()
        for pod in s.scalars(select(PodRow)):
            spec = pod.spec
            if "secret_env" in spec:
                continue
            secret_env = [k for k, v in spec.get("env", []) if v in values]
            files = [{**f, "secret": _b64_text(f["content"]) in values} for f in spec.get("files", [])]
            if secret_env or any(f["secret"] for f in files):
                plain_hashes.add(pod.template_hash)
            spec = {**spec, "secret_env": secret_env, "files": files}
            pod.spec = self._spec_to_row(spec)
            sealed_pods += 1
        # 0.1's template hashes of pods that used Secrets are plain hashes over the values: they
        # leave the events and rollout histories (the pods themselves are replaced at once, as
        # their keyed hash differs).
        for record in s.scalars(select(EventRow)):
            if any(h in record.object or h in record.message for h in plain_hashes):
                s.delete(record)
        for rollout in s.scalars(select(RolloutRow)):
            history = [h for h in rollout.state.get("history", []) if h[0] not in plain_hashes]
            if len(history) != len(rollout.state.get("history", [])):
                rollout.state = {**rollout.state, "history": history}
                serials.changed(s, "rollouts")
        if sealed_objects or sealed_pods:
            log.info(
                "store.sealed_legacy",
                secrets=sealed_objects,
                pods=sealed_pods,
                plain_hashes=len(plain_hashes),
            )

    def _body_to_row(self, m: Manifest) -> dict[str, Any]:
        if m.key.kind != "Secret":
            return dict(m.body)
        return {"sealed": self.keys.seal(canonical_json(m.body).encode())}

    def _body_from_row(self, kind: str, body: Mapping[str, Any]) -> dict[str, Any]:
        sealed = body.get("sealed") if kind == "Secret" else None
        if not is_sealed(sealed):
            return dict(body)
        opened: dict[str, Any] = json.loads(self.keys.open(str(sealed)))
        return opened

    def _manifest(self, row: ObjectRow) -> Manifest:
        manifest = Manifest(
            key=ObjectKey(row.kind, row.namespace, row.name),
            api_version=row.api_version,
            body=self._body_from_row(row.kind, row.body),
            location=SourceLocation(row.file, row.line, row.col),
            hash=row.hash,
        )
        if row.kind != "Secret":
            return manifest
        # The stored hash is already keyed; the value digests are computed on read.
        return dataclasses.replace(seal_manifest(manifest, self.keys.digest_key), hash=row.hash)

    def _spec_to_row(self, encoded: dict[str, Any]) -> dict[str, Any]:
        """An encoded pod spec with its Secret values sealed: every container's env values
        and files taken from Secrets, and registry passwords. A spec of release 0.1's shape
        is stored in today's."""
        data = PodSpec.upgrade_encoded(encoded)

        def seal(container: dict[str, Any]) -> dict[str, Any]:
            names = set(container.get("secret_env") or ())
            files = container.get("files", [])
            if not names and not any(f.get("secret") for f in files):
                return container
            env = [[k, self.keys.seal(v.encode()) if k in names else v] for k, v in container.get("env", [])]
            sealed = [
                {**f, "content": {"sealed": self.keys.seal(_b64_bytes(f["content"]))}}
                if f.get("secret")
                else f
                for f in files
            ]
            return {**container, "env": env, "files": sealed}

        return {
            **data,
            "containers": [seal(c) for c in data["containers"]],
            "init_containers": [seal(c) for c in data.get("init_containers", [])],
            "pull_auths": [
                {**a, "password": self.keys.seal(str(a["password"]).encode())}
                for a in data.get("pull_auths", [])
            ],
        }

    def spec_from_row(self, stored: Mapping[str, Any]) -> PodSpec:
        data = PodSpec.upgrade_encoded(dict(stored))

        def open_sealed(container: dict[str, Any]) -> dict[str, Any]:
            names = set(container.get("secret_env") or ())
            files = container.get("files", [])
            if not names and not any(f.get("secret") for f in files):
                return container
            env = [
                [k, self.keys.open(v).decode() if k in names and is_sealed(v) else v]
                for k, v in container.get("env", [])
            ]
            opened = []
            for f in files:
                content = f["content"]
                if isinstance(content, Mapping) and is_sealed(content.get("sealed")):
                    opened.append({**f, "content": encode(self.keys.open(str(content["sealed"])))})
                else:
                    opened.append(f)
            return {**container, "env": env, "files": opened}

        data = {
            **data,
            "containers": [open_sealed(c) for c in data["containers"]],
            "init_containers": [open_sealed(c) for c in data.get("init_containers", [])],
            "pull_auths": [
                {
                    **a,
                    "password": self.keys.open(a["password"]).decode()
                    if is_sealed(a["password"])
                    else a["password"],
                }
                for a in data.get("pull_auths", [])
            ],
        }
        return decode_as(PodSpec, data)

    def _pod(self, row: PodRow, specs: dict[SpecKey, PodSpec] | None = None) -> Pod:
        """The pod of `row`. With `specs`, pods of one owner and template hash share one
        decoded spec (the hash names the spec): 5,000 replicas decode it once, not 5,000 times."""
        if specs is None:
            spec = self.spec_from_row(row.spec)
        else:
            key = spec_key(row)
            spec = specs.get(key) or specs.setdefault(key, self.spec_from_row(row.spec))
        return self.pod_from_row(row, spec)

    def _owner(self, kind: str, namespace: str, name: str) -> ObjectKey:
        fields = (kind, namespace, name)
        found = self._owners.get(fields)
        if found is None:
            if len(self._owners) > 100_000:  # owners come and go: never more than this many kept
                self._owners.clear()
            found = self._owners.setdefault(fields, ObjectKey(kind, namespace, name))
        return found

    def pod_from_row(self, row: Any, spec: PodSpec) -> Pod:
        """The pod of `row` (a `PodRow`, or a result row with its columns but the spec,
        whose JSON columns may be their JSON text: `POD_TEXT_COLUMNS`)."""
        return Pod(
            namespace=row.namespace,
            name=PodName(row.name),
            owner=self._owner(row.owner_kind, row.owner_namespace, row.owner_name),
            template_hash=row.template_hash,
            spec=spec,
            labels=self._column_value("labels", row.labels),
            node=NodeName(row.node) if row.node else None,
            phase=row.phase,
            ready=row.ready,
            reason=row.reason,
            pod_ip=row.pod_ip,
            host_ports=self._column_value("host_ports", row.host_ports),
            restarts=row.restarts,
            exit_code=row.exit_code,
            created_at=row.created_at,
            last_log=row.last_log or "",
            terminating_at=row.terminating_at,
            ready_since=row.ready_since or 0.0,
            containers=self._column_value("containers", row.containers),
        )

    def _column_value(self, column: str, value: Any) -> Any:
        """A pod row's JSON `column` as its `Pod` field; from JSON text, decoded once per
        distinct text (the values are immutable: pods share them)."""
        if not isinstance(value, str):  # decoded already (an ORM row; PostgreSQL's driver)
            return _POD_COLUMN_VALUES[column](value)
        key = (column, value)
        found = self._column_values.get(key)
        if found is None:
            if len(self._column_values) > 100_000:  # never more than this many kept
                self._column_values.clear()
            found = self._column_values[key] = _POD_COLUMN_VALUES[column](json.loads(value))
        return found

    def _own_secrets(self, row: PodRow) -> list[str]:
        containers = PodSpec.upgrade_encoded(row.spec)["containers"]
        if not any(
            c.get("secret_env") or any(f.get("secret") for f in c.get("files", [])) for c in containers
        ):
            return []
        return sorted(secret_forms(self.spec_from_row(row.spec).secret_values()))

    def redactor(self, *, max_age: float = 0.0) -> Redactor:
        """A redactor of every Secret value desired now (rebuilt when a revision applies).
        With `max_age`, one checked that recently is returned without asking the database
        (for logs; what is written to the database is always redacted with a fresh one)."""
        cached_marker, cached = self._redactor
        if max_age and time.monotonic() - self._redactor_checked < max_age:
            return cached
        with self.session() as s:
            marker = s.scalar(select(func.max(RevisionRow.id)).where(RevisionRow.status == "applied"))
        self._redactor_checked = time.monotonic()
        if cached_marker == marker:
            return cached
        with self._redactor_lock:
            with self.session() as s:
                rows = list(s.scalars(select(ObjectRow).where(ObjectRow.kind == "Secret")))
                secrets = [self._manifest(r) for r in rows]
            fresh = Redactor.of(secrets)
            self._redactor = (marker, fresh)
            return fresh

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

    def latest_by_source(self) -> dict[str, tuple[RevisionRecord | None, RevisionRecord | None]]:
        """Per source (every source with a revision): its newest applied and newest rejected
        revision."""
        with self.session() as s:
            newest = select(RevisionRow.source, RevisionRow.status, func.max(RevisionRow.id)).group_by(
                RevisionRow.source, RevisionRow.status
            )
            ids = {(source, status): i for source, status, i in s.execute(newest)}
            rows = {
                r.id: _revision(r)
                for r in s.scalars(select(RevisionRow).where(RevisionRow.id.in_(ids.values())))
            }
            sources = sorted({source for source, _ in ids})
            return {
                source: (
                    rows.get(ids.get((source, "applied"), -1)),
                    rows.get(ids.get((source, "rejected"), -1)),
                )
                for source in sources
            }

    def revisions(self, limit: int = 50) -> list[RevisionRecord]:
        with self.session() as s:
            rows = s.scalars(select(RevisionRow).order_by(RevisionRow.id.desc()).limit(limit))
            return [_revision(r) for r in rows]

    def reject_revision(
        self,
        revision: Revision,
        errors: Sequence[str],
        warnings: Sequence[str],
        now: float,
        *,
        retry: bool = False,
    ) -> RevisionRecord:
        """Record a revision that was not applied; desired state is left untouched.
        `retry` marks one the sync tries again while the source stays at it."""
        with self.write_session() as s:
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
                summary={"retry": True} if retry else {},
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
        self,
        revision: Revision,
        manifests: Sequence[Manifest],
        warnings: Sequence[str],
        now: float,
        *,
        allow_empty: bool = False,
    ) -> RevisionRecord:
        """Make `manifests` the desired objects of `revision.source`, in one transaction, and
        record the revision. Raises `Refused` (and changes nothing) when the revision claims
        another source's object, would delete every object of its source without
        `allow_empty`, or needs more service addresses than the range holds."""
        source = revision.source
        keyed = [seal_manifest(m, self.keys.digest_key) for m in manifests]
        with self.write_session() as s:
            if self.engine.dialect.name == "postgresql":
                # Read, check, write: two servers (or two sources) applying at once must not
                # interleave (a claim checked against a state another transaction changes).
                s.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": APPLY_LOCK})
            existing = {(r.kind, r.namespace, r.name): r for r in s.scalars(select(ObjectRow))}
            wanted = {(m.key.kind, m.key.namespace, m.key.name): m for m in keyed}
            conflicts = [
                _conflict(m, existing[key], source)
                for key, m in sorted(wanted.items())
                if key in existing and existing[key].source not in ("", source)
            ]
            if conflicts:
                raise Refused(conflicts)
            owned = {k: r for k, r in existing.items() if r.source == source}
            if not wanted and owned and not allow_empty:
                shown = ", ".join(str(ObjectKey(*k)) for k in sorted(owned)[:5])
                more = f" and {len(owned) - 5} more" if len(owned) > 5 else ""
                raise Refused(
                    [
                        f"revision {revision.id[:12]} of {source} holds no objects: applying it would "
                        f"delete all {len(owned)} objects of this source ({shown}{more}). If that is "
                        f"what you want, allow empty revisions for this source (--allow-empty "
                        f"SOURCE)"
                    ]
                )
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
                row.body = self._body_to_row(m)
                row.hash = m.hash
                row.file = m.location.file
                row.line = m.location.line
                row.col = m.location.col
                row.revision = revision.id
                row.source = source
            for key, row in owned.items():
                if key not in wanted:
                    deleted.append(str(ObjectKey(*key)))
                    s.delete(row)
            self._release_claims(s, existing, wanted, now, source)
            s.flush()
            services = [
                self._manifest(r) for r in s.scalars(select(ObjectRow).where(ObjectRow.kind == "Service"))
            ]
            self._allocate_vips(s, services, source)
            summary = {"created": sorted(created), "changed": sorted(changed), "deleted": sorted(deleted)}
            record = RevisionRow(
                source=source,
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

    def _allocate_vips(self, s: Session, services: Sequence[Manifest], source: str = "") -> None:
        """Give every Service of every source that needs one an address (not a headless or
        an ExternalName one), and every NodePort and LoadBalancer Service its node ports
        (`_allocate_node_ports`); free those of Services gone or no longer needing them.
        `source` is the source being applied: its Services are the ones whose port claims
        may be refused."""
        rows = {(r.namespace, r.name): r for r in s.scalars(select(ServiceRow))}
        wanted = {(m.key.namespace, m.key.name): m for m in services if needs_vip(m)}
        for key, row in rows.items():
            if key not in wanted:
                s.delete(row)
        s.flush()
        rows = {k: r for k, r in rows.items() if k in wanted}
        used = {r.vip for r in rows.values()}
        net = self.service_cidr
        size = net.num_addresses
        missing = [key for key in sorted(wanted) if key not in rows]
        if len(used) + len(missing) > max(0, size - 3):
            raise Refused(
                [
                    f"the service range {net} is exhausted: {len(used) + len(missing)} Services need "
                    f"addresses and it holds {max(0, size - 3)}; start the server with a larger "
                    "--service-cidr, or remove Services"
                ]
            )
        for key in missing:
            m = wanted[key]
            requested = str(m.spec.get("clusterIP") or "")
            vip = ""
            if requested and requested != "None" and _assignable(requested, net) and requested not in used:
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
            used.add(vip)
            rows[key] = ServiceRow(namespace=key[0], name=key[1], vip=vip, node_ports={})
            s.add(rows[key])
        owners = {
            (ns, name): owner
            for ns, name, owner in s.execute(
                select(ObjectRow.namespace, ObjectRow.name, ObjectRow.source).where(
                    ObjectRow.kind == "Service"
                )
            )
        }
        allocated = _allocate_node_ports(
            wanted, {k: dict(r.node_ports or {}) for k, r in rows.items()}, owners, source
        )
        for key, ports in allocated.items():
            if (rows[key].node_ports or {}) != ports:
                rows[key].node_ports = ports

    def desired(self) -> list[Manifest]:
        """Every desired object. Objects change only with an applied revision
        (`apply_revision` records one in the same transaction, on any control plane sharing
        the database, one at a time: its ids come in commit order, which a rejected one's,
        written without that lock, need not): the decoded list is kept while the newest
        applied revision and the count of objects stay the same (every controller pass and
        every move of the endpoints asked for it, decoding every object: 600 at 3,000 hollow
        nodes, every half second)."""
        with self.session() as s:
            marker = (
                s.scalar(
                    select(RevisionRow.id)
                    .where(RevisionRow.status == "applied")
                    .order_by(RevisionRow.id.desc())
                    .limit(1)
                ),
                s.scalar(select(func.count()).select_from(ObjectRow)),
            )
            kept = self._desired
            if kept is not None and kept[0] == marker:
                return list(kept[1])
            manifests = [self._manifest(r) for r in s.scalars(select(ObjectRow))]
        self._desired = (marker, tuple(manifests))
        return manifests

    def source_failed(self, source: str, error: str, now: float) -> None:
        """Record that `source` cannot be read (the error; `since` stays the first failure's)."""
        error = truncate(self.redactor(max_age=1.0)(error), MAX_REASON)
        with self.write_session() as s:
            row = s.get(SourceHealthRow, source)
            if row is None:
                s.add(SourceHealthRow(source=source, error=error, since=now, checked_at=now))
                s.add(EventRow(time=now, object=f"source {source}", reason="SourceUnreadable", message=error))
                return
            row.error, row.checked_at = error, now

    def source_ok(self, source: str, now: float) -> None:
        with self.write_session() as s:
            row = s.get(SourceHealthRow, source)
            if row is not None:
                s.delete(row)
                s.add(
                    EventRow(
                        time=now,
                        object=f"source {source}",
                        reason="SourceReadable",
                        message=f"read again after {now - row.since:.0f}s",
                    )
                )

    def source_health(self) -> dict[str, tuple[str, float]]:
        """Sources that cannot be read: source -> (error, since)."""
        with self.session() as s:
            return {r.source: (r.error, r.since) for r in s.scalars(select(SourceHealthRow))}

    def owners(self) -> dict[ObjectKey, str]:
        """The source that declared each desired object."""
        with self.session() as s:
            rows = s.execute(select(ObjectRow.kind, ObjectRow.namespace, ObjectRow.name, ObjectRow.source))
            return {ObjectKey(k, ns, n): src for k, ns, n, src in rows}

    def vips(self) -> dict[ObjectKey, str]:
        """The virtual IP of every Service that has one (all but headless and ExternalName)."""
        with self.session() as s:
            return {ObjectKey("Service", r.namespace, r.name): r.vip for r in s.scalars(select(ServiceRow))}

    def node_ports(self) -> dict[ObjectKey, dict[str, int]]:
        """The node ports of every NodePort and LoadBalancer Service: `"<port>/<protocol>"` ->
        node port (`gitops.planner.services.port_key`)."""
        with self.session() as s:
            return {
                ObjectKey("Service", r.namespace, r.name): {str(k): int(v) for k, v in r.node_ports.items()}
                for r in s.scalars(select(ServiceRow))
                if r.node_ports
            }

    # --- nodes ------------------------------------------------------------------------

    def register_node(
        self, node: Node, token: str, now: float, *, presented: str = "", subnet_hint: str = ""
    ) -> str:
        """Register `node` (or update it) with a new token and return its pod subnet (kept
        from its last registration, else the first free one: `PodRangeExhausted` when none
        is). A node the store does not hold a subnet for gets `subnet_hint` (the subnet its
        pods already use) when it is one of the range's and free: a store rebuilt from git
        gives every node its subnet back, and no pod has to move. Raises `NodeNameTaken` when
        a Ready node holds the name and `presented` is not its current token. A NotReady
        node's name is free to take: its agent is gone or cut off."""
        with self._replacing_token(node.name), self.write_session() as s:
            serials.changed(s, "nodes")
            row = s.get(NodeRow, node.name)
            if row is None:
                row = NodeRow(name=node.name, registered_at=now)
                s.add(row)
                s.add(
                    EventRow(
                        time=now, object=f"node {node.name}", reason="NodeRegistered", message=node.address
                    )
                )
            else:
                ready = now - row.heartbeat_at <= self.heartbeat_grace
                own = bool(presented) and hmac.compare_digest(row.token_hash, token_digest(presented))
                if ready and not own:
                    raise NodeNameTaken(
                        f"node {node.name} is registered and Ready (last heartbeat "
                        f"{now - row.heartbeat_at:.0f}s ago); its name can be taken only with its "
                        f"current token, or once it has been NotReady for {self.heartbeat_grace:.0f}s"
                    )
                if not own:
                    s.add(
                        EventRow(
                            time=now,
                            object=f"node {node.name}",
                            reason="NodeReplaced",
                            message=f"registered anew from {node.address} after "
                            f"{now - row.heartbeat_at:.0f}s without a heartbeat",
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
            row.runtime_error = ""
            row.runtime_error_since = None
            if not self._holds_subnet(row):
                row.pod_cidr = self._free_subnet(s, node.name, subnet_hint)
                s.add(
                    EventRow(
                        time=now, object=f"node {node.name}", reason="PodSubnetGiven", message=row.pod_cidr
                    )
                )
            return row.pod_cidr or ""

    def _holds_subnet(self, row: NodeRow) -> bool:
        """Whether the node's subnet is one of this cluster's (the range may have changed)."""
        if not row.pod_cidr:
            return False
        held = ipaddress.IPv4Network(row.pod_cidr)
        return held.prefixlen == self.node_cidr_mask and held.subnet_of(self.cluster_cidr)

    def _free_subnet(self, s: Session, node: str, hint: str = "") -> str:
        """`hint` when it is a free subnet of the pod range, else the next subnet of the range
        no node holds, from the one after the last given (as Kubernetes' range allocator
        does: a node's subnet is kept while it stays registered; a deleted node's is free
        again, given once the cursor comes round). Each candidate is one indexed lookup:
        reading every held subnet per registration made registering n nodes cost n^2."""

        def held(cidr: str) -> bool:
            return s.scalar(select(NodeRow.name).where(NodeRow.pod_cidr == cidr).limit(1)) is not None

        if hint:
            wanted = ipaddress.IPv4Network(hint)
            if (
                wanted.prefixlen == self.node_cidr_mask
                and wanted.subnet_of(self.cluster_cidr)
                and not held(str(wanted))
            ):
                return str(wanted)
        count = 2 ** (self.node_cidr_mask - self.cluster_cidr.prefixlen)
        size = 2 ** (32 - self.node_cidr_mask)
        first = int(self.cluster_cidr.network_address)

        def subnet(index: int) -> str:
            return f"{ipaddress.IPv4Address(first + index * size)}/{self.node_cidr_mask}"

        for step in range(min(count, _SUBNET_PROBES)):
            index = (self._subnet_cursor + step) % count
            if not held(subnet(index)):
                self._subnet_cursor = index + 1
                return subnet(index)
        # A crowded range: every held subnet read at once, by number (a network object per
        # subnet made 1,000 registrations cost 36 s).
        rows = s.scalars(select(NodeRow.pod_cidr).where(NodeRow.pod_cidr.is_not(None)))
        taken = {int.from_bytes(socket.inet_aton(h.partition("/")[0]), "big") for h in rows if h}
        for index in range(count):
            if first + index * size not in taken:
                self._subnet_cursor = index + 1
                return subnet(index)
        raise PodRangeExhausted(
            f"node {node}: the pod range {self.cluster_cidr} holds {count} node subnets of "
            f"/{self.node_cidr_mask} and every one is taken; delete nodes that are gone "
            "(gitops node delete NAME), or start the server with a larger --cluster-cidr"
        )

    def delete_node(self, name: str, now: float) -> int:
        """Forget node `name`: its pod subnet is free again, and its pods are deleted (their
        owners place new ones elsewhere), as Kubernetes' pod garbage collector deletes the pods
        of a deleted node. Returns how many pods were deleted; raises KeyError for an unknown
        node. An agent still running there registers anew at its next sync."""
        with self._replacing_token(name), self.write_session() as s:
            row = s.get(NodeRow, name)
            if row is None:
                raise KeyError(name)
            serials.changed(s, "nodes")
            pods = len(s.scalars(select(PodRow.id).where(PodRow.node == name)).all())
            s.execute(delete(PodRow).where(PodRow.node == name))
            s.execute(delete(UsageRow).where(UsageRow.node == name))
            s.delete(row)
            s.add(
                EventRow(
                    time=now,
                    object=f"node {name}",
                    reason="NodeDeleted",
                    message=f"subnet {row.pod_cidr or '(none)'} freed; {pods} pod(s) deleted",
                )
            )
            return pods

    def _adopt(
        self, s: Session, node: str, statuses: Sequence[PodStatus], now: float, rows: dict[str, PodRow]
    ) -> bool:
        """Adopt reported containers of pods the store does not know, as those pods, when their
        owner is desired with the same template and has a place for them (`adoptable`: a
        Deployment's or ReplicaSet's below its replicas, a StatefulSet's ordinal, a
        DaemonSet's pod of this node). `rows` holds the reported pods' rows; adopted ones
        are added to it."""
        unknown = [st for st in statuses if st.template_hash and st.pod not in rows]
        if not unknown:
            return False
        node_row = s.get(NodeRow, node)
        if node_row is None:
            return False
        # What adopting reads, read once per transaction (a batch of reports): evicted pods'
        # containers, reported until their nodes hear of it, read every object and decoded a
        # workload's pods for each report at 1,000 nodes.
        adoption: _Adoption | None = s.info.get(_ADOPTION)
        if adoption is None:
            desired = [self._manifest(r) for r in s.scalars(select(ObjectRow))]
            adoption = s.info[_ADOPTION] = _Adoption({m.key: m for m in desired}, configs_of(desired))
        workloads, configs = adoption.workloads, adoption.configs
        here = _node(node_row, now, self.heartbeat_grace)
        adopted = False
        for status in unknown:
            namespace, _, name = status.pod.partition("/")
            owner = _owner_of(status, namespace, name)
            wanted = workloads.get(owner) if owner is not None else None
            if wanted is None:
                continue
            try:
                template = resolve_template(wanted, configs)
            except Exception as exc:  # the controller reports it on the workload
                log.info("store.not_adopted", pod=status.pod, error=str(exc))
                continue
            if template.hash != status.template_hash:
                continue
            owned = adoption.owned.get(wanted.key)
            if owned is None:
                rows_owned = s.scalars(
                    select(PodRow).where(
                        PodRow.owner_kind == wanted.key.kind,
                        PodRow.owner_namespace == wanted.key.namespace,
                        PodRow.owner_name == wanted.key.name,
                    )
                )
                owned = adoption.owned[wanted.key] = [self._pod(r) for r in rows_owned]
            pod = adoptable(wanted, template, name, node=here, owned=owned, now=now)
            if pod is None:
                continue
            row = PodRow(
                id=status.pod,
                namespace=namespace,
                name=name,
                owner_kind=wanted.key.kind,
                owner_namespace=wanted.key.namespace,
                owner_name=wanted.key.name,
                template_hash=template.hash,
                spec=self._spec_to_row(encode(pod.spec)),
                labels=[list(kv) for kv in pod.labels],
                node=node,
                phase="Pending",
                ready=False,
                reason=f"adopted: its container kept running on node {node}",
                pod_ip="",
                host_ports=[],
                restarts=status.restarts,
                exit_code=None,
                container_id=status.container_id,
                created_at=now,
                updated_at=now,
            )
            s.add(row)
            rows[status.pod] = row
            s.add(
                EventRow(
                    time=now,
                    object=f"pod {status.pod}",
                    reason="Adopted",
                    message=f"its container on node {node} runs {wanted.key}'s template {template.hash}",
                )
            )
            s.flush()
            owned.append(self._pod(row))  # counted by the next report's adoptions
            self._bind_claims(s, row, node, now)  # a StatefulSet's claim is where its pod runs
            adopted = True
        return adopted

    def node_for_token(self, name: str, token: str) -> bool:
        """Whether `token` is node `name`'s. Nodes' token hashes are remembered for
        `TOKEN_MEMORY` seconds (`AgentGate` asks it first from memory), every node's from one
        read when a call finds its node's forgotten, at most once a second (in between, its
        node's alone): 5,000 nodes read one by one about once a minute each were 110 reads a
        second, 13% of the server's core while pods came up. A token this process replaces
        is forgotten at once, one another server replaces within `TOKEN_MEMORY`."""
        if self.node_token_remembered(name, token):
            return True
        now = time.monotonic()
        with self.session() as s:  # the one column: loading whole rows cost more than the call
            if now - self._tokens_read_at >= 1.0:
                held = self._read_tokens(s).get(name)
            else:
                held = s.scalar(select(NodeRow.token_hash).where(NodeRow.name == name))
                with self._tokens_lock:
                    if held is not None and self._tokens_dropped.get(name, float("-inf")) < now:
                        self._tokens[name] = (held, now)
        return held is not None and hmac.compare_digest(held, token_digest(token))

    def _read_tokens(self, s: Session) -> dict[str, str]:
        """Every node's token digest, read and remembered. A token forgotten while the read
        ran (its node registered again, or deleted) is not remembered: the read may have
        found the old one."""
        started = time.monotonic()
        read = {str(n): str(h) for n, h in all_rows(s.connection(), select(NodeRow.name, NodeRow.token_hash))}
        with self._tokens_lock:
            dropped = self._tokens_dropped
            self._tokens = {
                n: (h, started) for n, h in read.items() if dropped.get(n, float("-inf")) < started
            }
            # Those forgotten within a minute stay noted (no read runs that long).
            self._tokens_dropped = {n: at for n, at in dropped.items() if at > started - 60.0}
            self._tokens_read_at = started
        return read

    def _forget_token(self, name: str) -> None:
        """Node `name`'s token is no longer good (replaced, or the node deleted); a read of
        every node's tokens begun before now does not bring it back."""
        with self._tokens_lock:
            self._tokens.pop(name, None)
            self._tokens_dropped[name] = time.monotonic()

    @contextmanager
    def _replacing_token(self, name: str) -> Iterator[None]:
        """Around a write that replaces or deletes node `name`'s token: forgotten before it,
        and again once it ended (committed: a read of every token begun meanwhile found the
        old one and must not bring it back)."""
        self._forget_token(name)
        try:
            yield
        finally:
            self._forget_token(name)

    def tokens_due(self) -> bool:
        """Whether every node's token is to be read again (`renew_tokens`), half of
        `TOKEN_MEMORY` after the last such read; no read, so the event loop may ask."""
        return time.monotonic() - self._tokens_read_at >= TOKEN_MEMORY / 2

    def renew_tokens(self) -> None:
        """Read every node's token again, so that a node calling often enough is never found
        forgotten: `AgentGate` has it done in a background thread when `tokens_due`, and answers
        the call from memory meanwhile. Found forgotten, a node's call waited for the read of
        every node's token (5,000 rows) in a worker thread: at one call a second, one in 60
        of a quiet node's calls, its p99."""
        with self.session() as s:
            self._read_tokens(s)

    def node_token_remembered(self, name: str, token: str) -> bool:
        """Whether `token` matched node `name`'s within `TOKEN_MEMORY` seconds (no read: safe
        to ask on the event loop)."""
        known = self._tokens.get(name)
        return (
            known is not None
            and time.monotonic() - known[1] < TOKEN_MEMORY
            and hmac.compare_digest(known[0], token_digest(token))
        )

    def node_places(self, now: float) -> tuple[tuple[str, str, str, bool], ...]:
        """(name, address, pod subnet or "", Ready) of every node, by name: what Services'
        endpoints and the pod routes depend on of the nodes, without decoding them. Read as
        `node_states` reads them, and the very tuple of the last call while no row changed
        and no node's readiness moved (the agents' watch asks every 2 s)."""
        with self.session() as s:
            rows, silent = self._kept_nodes(s, now)
        kept = self._places
        if kept is not None and kept[0] is rows and kept[1] == silent.keys():
            return kept[2]
        places = tuple((row[0], row[1], row[7] or "", row[0] not in silent and not row[8]) for row in rows)
        self._places = (rows, frozenset(silent), places)
        return places

    def _kept_nodes(self, s: Session, now: float) -> tuple[Sequence[Sequence[Any]], dict[str, float]]:
        """Every node's row (`NODE_COLUMNS`, by name), read again only when one changed but
        for its heartbeat (`serials`), and the heartbeats of the nodes silent past the grace
        at `now`, by name."""
        every = select(*NODE_COLUMNS)
        rows = self._node_rows.get(s, lambda: all_rows(s.connection(), every, key=itemgetter(0)))
        past = select(NodeRow.name, NodeRow.heartbeat_at).where(
            NodeRow.heartbeat_at < now - self.heartbeat_grace
        )
        return rows, {name: beat for name, beat in s.execute(past)}

    def nodes(self, now: float | None = None) -> list[NodeRecord]:
        """Every node, by name. Read as plain columns, and a node whose row (its heartbeat
        aside) and readiness are as at the last call is the same `Node` object as then:
        decoding 5,000 rows into new nodes cost 80-150 ms of every controller pass."""
        now = time.time() if now is None else now
        grace = self.heartbeat_grace
        with self.session() as s:
            query = select(*NODE_COLUMNS)
            # Core rows (the ORM's processing of each row of a column select was a third of
            # this), in one step on SQLite (`all_rows`: each row's step waited for the
            # interpreter beside the API's event loop).
            rows = all_rows(s.connection(), query, key=itemgetter(0))
        known, seen, records = self._nodes_seen, {}, []
        for name, address, cpu, memory, max_pods, labels, taints, cidr, error, error_since, beat, at in rows:
            reason = _not_ready_reason(now - beat, grace, error)
            key = (address, cpu, memory, max_pods, labels, taints, cidr, reason)
            cached = known.get(name)
            node = cached[1] if cached is not None and cached[0] == key else _node_from(name, key)
            seen[name] = (key, node)
            since = None if node.ready else _since(beat, grace, error, error_since)
            records.append(NodeRecord(node, beat, at, since))
        self._nodes_seen = seen
        return records

    def node_states(self, now: float | None = None) -> tuple[tuple[Node, ...], dict[NodeName, float]]:
        """Every node by name, and since when each NotReady one is: what a controller pass
        needs of `nodes`, read incrementally. The rows are read again only when one changed
        but for its heartbeat (a registration, a runtime error, a deletion: `serials`), and
        of the heartbeats only those past the grace: at 5,000 nodes reading and comparing
        every row was a third of a pass that decided nothing. While no row changed and no
        node's readiness moved, the result is the very tuple of the last call."""
        now = time.time() if now is None else now
        with self.session() as s:
            rows, silent = self._kept_nodes(s, now)
        with self._pass_nodes_lock:  # the API's snapshots ask too
            last = self._pass_nodes
            if last is not None and last.rows is rows:
                if not silent and not last.silent:
                    return last.nodes, dict(last.since)
                nodes, places = list(last.nodes), last.places
                for name in silent.keys() | last.silent.keys():  # only these can have moved
                    if name in places:
                        nodes[places[name]] = self._pass_node(rows[places[name]], silent.get(name), now)
            else:
                nodes = [self._pass_node(row, silent.get(row[0]), now) for row in rows]
                places = {row[0]: i for i, row in enumerate(rows)}
                if len(self._pass_nodes_seen) > len(places):  # nodes deleted
                    self._pass_nodes_seen = {k: v for k, v in self._pass_nodes_seen.items() if k in places}
            since = {
                node.name: self._pass_since(rows[i], silent.get(node.name))
                for i, node in enumerate(nodes)
                if not node.ready
            }
            self._pass_nodes = _PassNodes(rows, silent, tuple(nodes), since, places)
            return self._pass_nodes.nodes, dict(since)

    def _pass_node(self, row: Sequence[Any], beat: float | None, now: float) -> Node:
        """The node of a row (`NODE_COLUMNS`), given its heartbeat when it is past the
        grace (None: within it); the very object of the last time for the same row and
        readiness."""
        name, address, cpu, memory, max_pods, labels, taints, cidr, error = row[:9]
        reason = _not_ready_reason(0.0 if beat is None else now - beat, self.heartbeat_grace, error)
        key = (address, cpu, memory, max_pods, labels, taints, cidr, reason)
        cached = self._pass_nodes_seen.get(name)
        if cached is not None and cached[0] == key:
            return cached[1]
        node = _node_from(name, key)
        self._pass_nodes_seen[name] = (key, node)
        return node

    def _pass_since(self, row: Sequence[Any], beat: float | None) -> float:
        """When a NotReady node's row (`NODE_COLUMNS`) became so; `beat`: its heartbeat
        when past the grace (else the one read with the row)."""
        error, error_since, read_beat = row[8], row[9], row[10]
        return _since(read_beat if beat is None else beat, self.heartbeat_grace, error, error_since)

    def snapshot(
        self,
        now: float | None = None,
        *,
        pods: Callable[[], Sequence[Pod]] | None = None,
        versioned: bool = True,
        every_usage: bool = False,
    ) -> ClusterState:
        """The whole state one control-loop pass reads, with its version (unless not
        `versioned`: hashing 150,000 pods is not free); `pods` reads the pods instead of
        `self.pods` (a `PodCache`'s, which reads only what changed). The measured use is
        that of the pods autoscalers scale (all a pass needs of it), every pod's with
        `every_usage` (a preview's, whose autoscalers may be others)."""
        now = time.time() if now is None else now
        nodes, not_ready_since = self.node_states(now)
        states = self.workload_states()
        desired = tuple(self.desired())
        every_pod = tuple((pods or self.pods)())
        if every_usage:
            usage = self.usage()
        else:
            targets = autoscaled(desired)
            usage = self.usage([p.id for p in every_pod if p.owner in targets]) if targets else {}
        state = ClusterState(
            desired=desired,
            pods=every_pod,
            nodes=nodes,
            not_ready_since=not_ready_since,
            rollouts=self.rollouts(),
            claims=self.claims(),
            jobs={k: v for k, v in states.items() if isinstance(v, JobState)},
            crons={k: v for k, v in states.items() if isinstance(v, CronState)},
            scales={k: v for k, v in states.items() if isinstance(v, ScaleState)},
            usage=usage,
        )
        return dataclasses.replace(state, version=state_version(state)) if versioned else state

    # --- pods -------------------------------------------------------------------------

    def pods(self, node: str | None = None) -> list[Pod]:
        with self.session() as s:
            query = select(PodRow).order_by(PodRow.id)
            if node is not None:
                query = query.where(PodRow.node == node)
            specs: dict[tuple[str, str, str, str, str], PodSpec] = {}
            return [self._pod(r, specs) for r in s.scalars(query)]

    def apply_pod_changes(
        self,
        *,
        create: Sequence[tuple[Pod, str]],
        stop: Sequence[tuple[Pod, str]],
        bind: Mapping[PodId, NodeName],
        pending_reasons: Mapping[PodId, str],
        now: float,
        delete_now: Sequence[tuple[Pod, str]] = (),
        placed_because: Mapping[PodId, str] | None = None,
    ) -> None:
        """Create pods, stop pods (terminating, or deleted outright when `delete_now` or never
        placed), bind pods to nodes (the Scheduled event says why that node, `placed_because`, when given),
        and note why others stay pending."""
        with self.write_session() as s:
            # The rows this write looks at, read in a few queries rather than one per pod;
            # not those of the pods it creates (a first pass binds 150,000 of them).
            created = {p.id for p, _ in create}
            wanted = {p.id for p, _ in stop} | (set(bind) - created) | (set(pending_reasons) - created)
            ids = sorted(wanted)
            rows: dict[str, PodRow] = {}
            for chunk in _chunks(ids):
                rows.update((r.id, r) for r in s.scalars(select(PodRow).where(PodRow.id.in_(chunk))))
            if delete_now:
                s.execute(delete(PodRow).where(PodRow.id.in_([p.id for p, _ in delete_now])))
                for pod, reason in delete_now:
                    s.add(EventRow(time=now, object=f"pod {pod.id}", reason="Stopped", message=reason))
            gone = {p.id for p, _ in delete_now}
            for pod, reason in stop:
                row = rows.get(pod.id) if pod.id not in gone else None
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
            bind = self._create_pods(
                s, create, bind, rows, now=now, placed_because=placed_because or {}, pending=pending_reasons
            )
            for pod_id, node in bind.items():
                row = rows.get(pod_id)
                if row is not None and row.node is None:
                    self._bind_claims(s, row, node, now)
                    row.node = node
                    row.reason = f"scheduled on {node}"
                    row.updated_at = now
                    because = (placed_because or {}).get(pod_id)
                    message = f"placed on {node}" + (f": {because}" if because else "")
                    s.add(EventRow(time=now, object=f"pod {pod_id}", reason="Scheduled", message=message))
            for pod_id, why in pending_reasons.items():
                row = rows.get(pod_id)
                if row is not None and row.node is None and row.reason != why:
                    row.reason = why
                    row.updated_at = now
                    s.add(EventRow(time=now, object=f"pod {pod_id}", reason="Unschedulable", message=why))

    def _create_pods(
        self,
        s: Session,
        create: Sequence[tuple[Pod, str]],
        bind: Mapping[PodId, NodeName],
        rows: dict[str, PodRow],
        *,
        now: float,
        placed_because: Mapping[PodId, str],
        pending: Mapping[PodId, str],
    ) -> Mapping[PodId, NodeName]:
        """Insert the `create` pods, those bound in this very write already on their node
        and those found unschedulable with why (their Created, Scheduled and Unschedulable
        events too), in a few multi-row statements: 150,000 pods are not 150,000 ORM
        objects. A pod using claims is added as a row object (`rows`), so that the binds
        after bind its claims. The binds still to do come back."""
        inserted: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        # id(spec) -> its row form, and that as JSON text: replicas share one. The rows go
        # in with the text (`_INSERT_PODS`): the column's type made JSON of each row's spec
        # again, 10% of writing 150,000 pods.
        encoded: dict[int, tuple[PodSpec, dict[str, Any], str]] = {}
        labels_text: dict[tuple[tuple[str, str], ...], str] = {}
        bound_now: set[PodId] = set()
        written_at = time.time()  # the clock, as the column's default reads it
        for pod, reason in create:
            known = encoded.get(id(pod.spec))
            if known is None or known[0] is not pod.spec:
                row_form = self._spec_to_row(encode(pod.spec))
                known = encoded[id(pod.spec)] = (pod.spec, row_form, json.dumps(row_form))
            values: dict[str, Any] = {
                "id": pod.id,
                "namespace": pod.namespace,
                "name": pod.name,
                "owner_kind": pod.owner.kind,
                "owner_namespace": pod.owner.namespace,
                "owner_name": pod.owner.name,
                "template_hash": pod.template_hash,
                "node": pod.node,
                "phase": "Pending",
                "ready": False,
                "reason": pod.reason,
                "pod_ip": "",
                "restarts": 0,
                "exit_code": None,
                "container_id": "",
                "created_at": now,
                "updated_at": now,
            }
            events.append({"time": now, "object": f"pod {pod.id}", "reason": "Created", "message": reason})
            if pod.spec.claims:
                labels_row = [list(kv) for kv in pod.labels]
                rows[pod.id] = PodRow(**values, labels=labels_row, host_ports=[], spec=known[1])
                s.add(rows[pod.id])
                continue
            labels = labels_text.get(pod.labels)
            if labels is None:
                labels = labels_text[pod.labels] = json.dumps([list(kv) for kv in pod.labels])
            values |= {
                "spec_text": known[2],
                "labels_text": labels,
                "empty_list": "[]",
                "last_log": "",
                "terminating_at": None,
                "ready_since": 0.0,
                "written_at": written_at,
            }
            node = bind.get(pod.id)
            if node is not None and pod.node is None:
                bound_now.add(pod.id)
                values["node"], values["reason"] = node, f"scheduled on {node}"
                because = placed_because.get(pod.id)
                message = f"placed on {node}" + (f": {because}" if because else "")
                events.append(
                    {"time": now, "object": f"pod {pod.id}", "reason": "Scheduled", "message": message}
                )
            elif (why := pending.get(pod.id)) is not None and pod.node is None and why != pod.reason:
                values["reason"] = why
                events.append(
                    {"time": now, "object": f"pod {pod.id}", "reason": "Unschedulable", "message": why}
                )
            inserted.append(values)
        for start in range(0, len(inserted), _INSERT_BATCH):
            s.execute(_INSERT_PODS, inserted[start : start + _INSERT_BATCH])
        for start in range(0, len(events), _INSERT_BATCH):
            s.execute(_INSERT_EVENTS, events[start : start + _INSERT_BATCH])
        s.flush()
        return {p: n for p, n in bind.items() if p not in bound_now}

    def delete_pod(self, pod_id: str, now: float, reason: str = "deleted by gitops pod delete") -> None:
        """Stop a pod gracefully (as `kubectl delete pod`): its workload replaces it."""
        with self.session() as s:
            row = s.get(PodRow, pod_id)
            if row is None:
                raise KeyError(pod_id)
            pod = self._pod(row)
        self.apply_pod_changes(create=[], stop=[(pod, reason)], bind={}, pending_reasons={}, now=now)

    def _release_claims(
        self,
        s: Session,
        existing: Mapping[tuple[str, str, str], ObjectRow],
        wanted: Mapping[tuple[str, str, str], Manifest],
        now: float,
        source: str,
    ) -> None:
        """Claims that left git lose their volume (its node's agent deletes it), unless their
        StorageClass says `reclaimPolicy: Retain`: then it is kept, for a claim of the same
        name that comes back. A claim in git again takes its kept volume back."""
        others = {k for k, r in existing.items() if r.source not in ("", source)}
        declared = {f"{k[1]}/{k[2]}" for k in (*wanted, *others) if k[0] == "PersistentVolumeClaim"}
        rows = list(s.scalars(select(ClaimRow)))
        sets = [m for k, m in wanted.items() if k[0] == "StatefulSet"]
        sets += [self._manifest(existing[k]) for k in others if k[0] == "StatefulSet"]
        left = [
            self._manifest(r)
            for k, r in existing.items()
            if k[0] == "StatefulSet" and k not in wanted and k not in others
        ]
        fates = claim_fates(sets, left, [r.id for r in rows if r.id not in declared])
        for row in rows:
            fate = fates.get(row.id)
            if row.id in declared or (fate is not None and fate[0] == "keep"):
                if row.released:
                    row.released = False
                    serials.changed(s, "claims")
                continue
            if row.released:
                continue
            serials.changed(s, "claims")  # released or deleted below (readers keep them: `PodCache.claims`)
            if fate is not None:
                if fate[0] == "retain":
                    row.released = True
                    message = f"its volume stays on {row.node}: {fate[1]}"
                else:
                    s.delete(row)
                    message = f"its volume on {row.node} is deleted: {fate[1]}"
                s.add(EventRow(time=now, object=f"claim {row.id}", reason="Released", message=message))
                continue
            namespace, _, name = row.id.partition("/")
            before = existing.get(("PersistentVolumeClaim", namespace, name))
            spec = (before.body if before is not None else {}).get("spec") or {}
            storage_class = str(spec.get("storageClassName") or "")
            policy = ""
            for holder in (
                wanted.get(("StorageClass", "", storage_class)),
                existing.get(("StorageClass", "", storage_class)),
            ):
                if holder is not None:
                    policy = str(holder.body.get("reclaimPolicy") or "Delete")
                    break
            if policy == "Retain":
                row.released = True
                message = (
                    f"the claim left git; its volume stays on {row.node} "
                    f"(StorageClass {storage_class}: Retain)"
                )
            else:
                s.delete(row)
                message = f"the claim left git; its volume on {row.node} is deleted"
            s.add(EventRow(time=now, object=f"claim {row.id}", reason="Released", message=message))

    def _bind_claims(self, s: Session, row: PodRow, node: str, now: float) -> None:
        """The claims a pod bound to `node` uses have their volume there, if nowhere yet."""
        volumes = PodSpec.upgrade_encoded(row.spec).get("volumes") or []
        for claim in dict.fromkeys(str(v["claim"]) for v in volumes if v.get("claim")):
            if s.get(ClaimRow, claim) is None:
                s.add(ClaimRow(id=claim, node=node, bound_at=now, released=False))
                serials.changed(s, "claims")
                s.add(
                    EventRow(
                        time=now,
                        object=f"claim {claim}",
                        reason="Bound",
                        message=f"its volume is on {node}, where pod {row.id} is the first to use it",
                    )
                )
                s.flush()

    def claims(self, node: str | None = None) -> dict[str, NodeName]:
        """Each claim that has a volume (`namespace/name`), and its node (only `node`'s when given).
        Every write of claims moves their serial (`serials`): `PodCache.claims` keeps them."""
        with self.session() as s:
            query = select(ClaimRow)
            if node is not None:
                query = query.where(ClaimRow.node == node)
            return {r.id: NodeName(r.node) for r in s.scalars(query)}

    def record_heartbeats(self, beats: Mapping[str, float]) -> None:
        """Heartbeat times of several nodes in one statement (a time never goes back),
        its rows handed to the driver as they are: SQLAlchemy's processing of each row's
        parameters was most of the time this held the interpreter, which the event loop's
        calls wait for (at 5,000 nodes, 600 rows a second: 2.6 ms against 1.1 ms)."""
        if not beats:
            return
        order = self._heartbeat_order
        rows: list[Any] = [{"node": node, "at": at} for node, at in beats.items()]
        if order is not None:
            rows = list(map(order, rows))
        with self.write_session() as s:
            s.connection().exec_driver_sql(self._heartbeat_sql, rows)

    def heartbeat(
        self,
        node: str,
        statuses: Sequence[PodStatus],
        now: float,
        stopped: Sequence[str] = (),
        *,
        runtime_error: str = "",
        adopt: bool = False,
    ) -> bool:
        """Record an agent's heartbeat, the status of the pods bound to its node, and the
        terminating pods it has finished stopping (they are deleted). Free text is redacted
        before it is written. True when a pod changed in a way a control pass cares about
        (phase, readiness, a pod gone, the node's runtime failing or back); a heartbeat alone
        is False.

        `runtime_error` says the node's container runtime cannot be reached: the node is
        NotReady with that reason and its pods are not ready (they leave every endpoint).
        With `adopt`, a reported container of a pod the store does not know is adopted as
        that pod when its owner wants it (`_adopt`): a control plane that lost its state
        takes over running containers instead of recreating them."""
        result = self.heartbeats(
            [Report(node, tuple(statuses), now, tuple(stopped), runtime_error=runtime_error, adopt=adopt)]
        )[0]
        if isinstance(result, Exception):
            raise result
        return result

    def heartbeats(self, reports: Sequence[Report]) -> list[bool | Exception]:
        """`heartbeat` for several reports in one transaction (agents' reports arriving
        together are written together); each one's answer, or the error that kept it from
        being written: when the transaction fails, each report is tried alone, so that one
        bad report costs only itself."""
        # Asked before the write begins: a fresh one is one read, and `Redactor()` redacts nothing.
        fresh = self.redactor() if any(r.statuses or r.runtime_error for r in reports) else Redactor()
        try:
            with self.write_session() as s:
                nodes, rows, alike = self._report_rows(s, reports)
                return [
                    self._heartbeat_in(s, r, fresh, nodes.get(r.node), rows, alike=alike) for r in reports
                ]
        except Exception as exc:
            if len(reports) == 1:
                return [exc]
        return [self.heartbeats([r])[0] for r in reports]

    @staticmethod
    def _report_rows(
        s: Session, reports: Sequence[Report]
    ) -> tuple[dict[str, NodeRow], dict[str, PodRow], set[str]]:
        """The rows a batch of reports writes, read at once: their nodes', and their pods'
        (those reported and those stopped), and the reported pods whose status writes
        nothing (`_writes_nothing`), which are not read as rows. Held by the caller: the
        session's identity map holds unchanged rows only weakly, so `s.get` after a read
        that kept no reference read each row again. The pods without their specs and
        labels (read if asked): decoding them was 92% of writing a report. Read report by
        report, each read flushed the reports before it: while a rollout replaces pods, that
        and a read for each pod stopped were a fifth of the agents' server's time.

        A report holds every pod of its node, most as they were: their status columns are
        read first as plain rows, and only the pods whose report would change something are
        read as the session's objects, which the write then goes through. The rows are read
        as they were before the batch, so a pod an earlier report of the batch may write
        is never judged from them: one reported twice (the last report wins), one stopped
        in the batch (gone, or adopted by another node's report), and the pods of a node
        with more than one report in it (one saying its runtime failed marks them not
        ready). At 5,000 nodes, reading and flushing every reported pod as an object was a
        fifth of the agents' server while a rollout went on."""
        nodes: dict[str, NodeRow] = {}
        for chunk in _chunks(sorted({r.node for r in reports})):
            nodes.update((row.name, row) for row in s.scalars(select(NodeRow).where(NodeRow.name.in_(chunk))))
        reported = Counter(st.pod for r in reports for st in r.statuses)
        reports_of = Counter(r.node for r in reports)
        stopped = {pod for r in reports for pod in r.stopped}
        alike: set[str] = set()
        statuses = {
            st.pod: (st, r.node)
            for r in reports
            if reports_of[r.node] == 1 and not r.runtime_error
            for st in r.statuses
            if reported[st.pod] == 1 and st.pod not in stopped
        }
        for chunk in _chunks(sorted(statuses)):
            for row in s.connection().execute(select(*_STATUS_COLUMNS).where(PodRow.id.in_(chunk))).all():
                status, node = statuses[row.id]
                if _writes_nothing(row, status, node):
                    alike.add(row.id)
        ids = [pod for pod in reported if pod not in alike] + sorted(stopped)
        rows: dict[str, PodRow] = {}
        for chunk in _chunks(ids):
            query = select(PodRow).where(PodRow.id.in_(chunk))
            rows.update((r.id, r) for r in s.scalars(query.options(defer(PodRow.spec), defer(PodRow.labels))))
        return nodes, rows, alike

    def _heartbeat_in(
        self,
        s: Session,
        report: Report,
        redactor: Redactor,
        row: NodeRow | None,
        rows: dict[str, PodRow],
        *,
        alike: AbstractSet[str] = frozenset(),
    ) -> bool:
        """One report of a batch, its node's row and its pods' (among `rows`) read already,
        but for the pods in `alike`, whose status writes nothing (`_report_rows`)."""
        node, statuses, now, stopped = report.node, report.statuses, report.now, report.stopped
        runtime_error, adopt = report.runtime_error, report.adopt
        changed = False
        if row is None:
            return False
        row.heartbeat_at = now
        error = truncate(redactor(runtime_error), MAX_REASON)
        if error != row.runtime_error:
            changed = True
            serials.changed(s, "nodes")
            row.runtime_error = error
            row.runtime_error_since = now if error else None
            s.add(
                EventRow(
                    time=now,
                    object=f"node {node}",
                    reason="NodeNotReady" if error else "NodeReady",
                    message=f"container runtime: {error}" if error else "the container runtime is back",
                )
            )
        if error:
            for held in s.scalars(select(PodRow).where(PodRow.node == node, PodRow.ready.is_(True))):
                held.ready = False
                held.reason = f"NodeNotReady: {error}"
                held.updated_at = now
            return changed
        if adopt:
            changed |= self._adopt(s, node, [st for st in statuses if st.pod not in alike], now, rows)
        for pod_id in stopped:
            done = rows.get(pod_id)
            if done is not None and done.node == node and done.terminating_at is not None:
                s.delete(done)
                del rows[pod_id]  # gone for the batch's later reports too (read as gone before)
                changed = True
        for status in statuses:
            pod = rows.get(status.pod)
            if pod is None or pod.node != node or pod.terminating_at is not None:
                continue  # (a pod in `alike` among them)
            redact = redactor
            if status.reason or status.last_log:
                # The values this pod holds too: its Secret may have changed since it started.
                redact = redactor.merged(self._own_secrets(pod))
            reason = truncate(redact(status.reason), MAX_REASON)
            before = (pod.phase, pod.ready, pod.reason, pod.pod_ip, pod.host_ports)
            if (pod.phase, pod.ready) != (status.phase, status.ready):
                changed = True
            pod.phase = status.phase
            if status.ready and not pod.ready:
                pod.ready_since = now
            pod.ready = status.ready
            pod.reason = reason
            pod.pod_ip = status.pod_ip
            pod.host_ports = [list(hp) for hp in status.host_ports]
            pod.restarts = max(pod.restarts, status.restarts)
            pod.exit_code = status.exit_code
            pod.container_id = status.container_id
            if status.last_log:
                pod.last_log = truncate(redact(status.last_log), MAX_LOG)
            containers = [
                encode(
                    dataclasses.replace(
                        c,
                        reason=truncate(redact(c.reason), MAX_REASON),
                        last_log=truncate(redact(c.last_log), MAX_LOG),
                    )
                )
                for c in status.containers
            ]
            if containers != (pod.containers or []):
                pod.containers = containers
                pod.updated_at = now
            if before != (pod.phase, pod.ready, pod.reason, pod.pod_ip, pod.host_ports):
                pod.updated_at = now
                message = (
                    status.phase + (" ready" if status.ready else "") + (f": {reason}" if reason else "")
                )
                s.add(EventRow(time=now, object=f"pod {status.pod}", reason="StatusChanged", message=message))
        return changed

    # --- rollouts ------------------------------------------------------------------

    def _read_states(
        self,
        table: type[RolloutRow] | type[WorkloadStateRow],
        known: _Seen | None,
        decode: Callable[[str, Any], Any],
        *,
        session: Session | None = None,
    ) -> _Seen:
        """Every row of a table of states, by key, as (its text, its JSON, `decode(kind,
        JSON)`); a row whose text is in `known` alike is not decoded again. Read in
        `session` when given."""
        with nullcontext(session) if session is not None else self.session() as s:
            query = select(table.kind, table.namespace, table.name, sql_cast(table.state, Text))
            rows = all_rows(s.connection(), query)
        seen: _Seen = {}
        for kind, namespace, name, text_ in rows:
            key = ObjectKey(kind, namespace, name)
            cached = None if known is None else known.get(key)
            if cached is None or cached[0] != text_:
                stored = json.loads(text_)
                cached = (text_, stored, decode(kind, stored))
            seen[key] = cached
        return seen

    def rollouts(self) -> dict[ObjectKey, RolloutState]:
        """Every stored rollout state; one whose row is as at the last read is the same
        object as then. The rows are read only when one was written since (`serials`)."""
        with self.session() as s:
            seen = self._rollouts_kept.get(
                s, lambda: self._read_states(RolloutRow, self._rollouts_seen, _rollout, session=s)
            )
        self._rollouts_seen = seen
        return {key: cached[2] for key, cached in seen.items()}

    def save_rollouts(self, states: Mapping[ObjectKey, RolloutState], now: float) -> None:
        """Store rollout states; drop those of Deployments not in `states`; record changes
        of status as events. When every state is, in its stored form, what the last
        `rollouts` read, no write begins (`_as_read`)."""
        # A state equal to the one read has the stored form read: 1,500 states encoded at
        # every pass were 5% of a quiet server at 5,000 nodes.
        read = self._rollouts_seen or {}
        encoded = {
            key: known[1] if (known := read.get(key)) is not None and known[2] == state else encode(state)
            for key, state in states.items()
        }
        if _as_read(self._rollouts_seen, encoded):
            return
        seen, self._rollouts_seen = self._rollouts_seen, None  # written: read again before a write is spared
        with self.write_session() as s:
            serials.changed(s, "rollouts")
            if seen is None:  # not read since the last write
                seen = self._read_states(RolloutRow, None, _rollout, session=s)
            # Only what differs from the rows as read, in a few statements and no row loaded:
            # while 150,000 pods came up, loading 1,500 rows each pass was 10% of a core.
            changed = [key for key, value in encoded.items() if key not in seen or seen[key][1] != value]
            for key in [key for key in seen if key not in states]:
                s.execute(
                    delete(RolloutRow).where(
                        RolloutRow.kind == key.kind,
                        RolloutRow.namespace == key.namespace,
                        RolloutRow.name == key.name,
                    )
                )
            rows = [
                {"kind": key.kind, "namespace": key.namespace, "name": key.name, "state": encoded[key]}
                for key in changed
            ]
            if new := [row for key, row in zip(changed, rows, strict=True) if key not in seen]:
                s.execute(insert(RolloutRow), new)
            if old := [row for key, row in zip(changed, rows, strict=True) if key in seen]:
                s.execute(update(RolloutRow), old)  # by primary key
            for key in changed:
                state, before = states[key], seen[key][2] if key in seen else None
                if before is None or before.status != state.status or before.target != state.target:
                    message = f"{state.status} {state.target}" + (f": {state.reason}" if state.reason else "")
                    s.add(EventRow(time=now, object=str(key), reason="Rollout", message=message))

    # --- Jobs, CronJobs and autoscalers ------------------------------------------------

    def workload_states(self) -> dict[ObjectKey, Any]:
        """What the controller remembers of each Job, CronJob and autoscaler (`STATE_TYPES`);
        the rows are read only when one was written since (`serials`)."""
        with self.session() as s:
            seen = self._workload_states_kept.get(
                s,
                lambda: self._read_states(WorkloadStateRow, self._workload_states_seen, _state, session=s),
            )
        self._workload_states_seen = seen
        return {key: cached[2] for key, cached in seen.items() if cached[2] is not None}

    def save_workload_states(self, states: Mapping[ObjectKey, Any], now: float) -> None:
        """Store the states of the pass; drop those of objects not in `states`; record a
        changed condition (a Job that completed, an autoscaler that scaled) as an event.
        When every state is what the last `workload_states` read, no write begins."""
        encoded = {key: encode(state) for key, state in states.items()}
        if _as_read(self._workload_states_seen, encoded):
            return
        self._workload_states_seen = None
        with self.write_session() as s:
            serials.changed(s, "workload_states")
            rows = {ObjectKey(r.kind, r.namespace, r.name): r for r in s.scalars(select(WorkloadStateRow))}
            for old_key, old_row in rows.items():
                if old_key not in states:
                    s.delete(old_row)
            for key, value in encoded.items():
                row = rows.get(key)
                if row is not None and row.state == value:
                    continue
                before = row.state if row is not None else {}
                if row is None:
                    row = WorkloadStateRow(kind=key.kind, namespace=key.namespace, name=key.name)
                    s.add(row)
                row.state = value
                row.updated_at = now
                event = state_event(key.kind, before, value)
                if event:
                    s.add(EventRow(time=now, object=str(key), reason=event[0], message=event[1]))

    def usage(self, pods: Sequence[PodId] | None = None) -> dict[PodId, PodUsage]:
        """Each pod's latest measured CPU and memory use, as written for autoscalers
        (`gitops.api.agentsync.AgentReports`); only `pods`' when given."""
        with self.session() as s:
            if pods is None:
                rows = list(s.scalars(select(UsageRow)))
            else:
                rows = [
                    row
                    for chunk in _chunks(pods)
                    for row in s.scalars(select(UsageRow).where(UsageRow.pod.in_(chunk)))
                ]
            return {
                PodId(r.pod): PodUsage(
                    PodId(r.pod),
                    r.at,
                    tuple(
                        ContainerUsage(str(c["container"]), float(c["cpu_milli"]), int(c["memory_bytes"]))
                        for c in r.containers
                    ),
                    window=float(r.containers[0].get("window", 0.0)) if r.containers else 0.0,
                )
                for r in rows
            }

    def record_usage(self, measured: Mapping[str, Sequence[PodUsage]]) -> None:
        """Store what agents measured of their pods, by node, in one transaction: each
        node's rows are what it reported last (what it no longer reports is dropped), and a
        pod's row is its newest node's. Plain statements (deletes by node and by pod, one
        multi-row insert): at 5,000 nodes agents report every 15 s, and a transaction per
        report loading each node's rows into objects was 1.4 ms a node."""
        if not measured:
            return
        rows: dict[str, dict[str, Any]] = {}
        for node, samples in measured.items():
            for sample in samples:
                containers = [
                    {
                        "container": c.container,
                        "cpu_milli": c.cpu_milli,
                        "memory_bytes": c.memory_bytes,
                        "window": sample.window,
                    }
                    for c in sample.containers
                ]
                rows[sample.pod] = {  # a pod reported by two nodes: the later one's
                    "pod": sample.pod,
                    "node": node,
                    "at": sample.at,
                    "containers": containers,
                }
        table = cast(Table, UsageRow.__table__)
        nodes, pods = sorted(measured), sorted(rows)
        with self.write_session() as s:
            conn = s.connection()
            for chunk in _chunks(nodes):
                conn.execute(delete(table).where(table.c.node.in_(chunk)))
            for chunk in _chunks(pods):
                conn.execute(delete(table).where(table.c.pod.in_(chunk)))
            if rows:
                conn.execute(insert(table), list(rows.values()))

    # --- events -----------------------------------------------------------------------

    def add_event(self, obj: str, reason: str, message: str, now: float) -> None:
        with self.write_session() as s:
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
        with self.write_session() as s:
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
                    r.source,
                    r.ref,
                    r.base,
                    r.head,
                    r.state_version,
                    r.computed_at,
                    r.status,
                    r.report,
                    r.markdown,
                )
                for r in s.scalars(query)
            ]

    def forget_previews(self, source: str, keep: set[str]) -> None:
        """Drop the previews of `source`'s refs that are not in `keep` (deleted branches)."""
        with self.write_session() as s:
            for row in s.scalars(select(PreviewRow).where(PreviewRow.source == source)):
                if row.ref not in keep:
                    s.delete(row)

    # --- cheap summaries (status page, metrics) -------------------------------------

    def change_marker(self) -> tuple[Any, ...]:
        """A cheap fingerprint that moves whenever a revision, a pod, a rollout or an event is
        written (every store change above records an event or writes a pod row, which stamps
        its `written_at`) or a preview is saved.
        Heartbeat times are left out on purpose: they move every second on a live cluster.

        The pods' part is the newest `written_at` (inserts and updates) and the pods' serial
        (every delete: `serials`), with the rows counted at most every `serials.RESYNC`
        seconds (a row deleted by hand). It counted them at every call: 10 ms at 150,000
        pods, every second in the agents' watch (`SharedEndpoints`). One statement, built
        once (`_CHANGE_MARKER`): eight, each built at every call, were the rest of the
        watch's time."""
        with self.session() as s:
            marker = s.connection().execute(_CHANGE_MARKER).one()
            now = time.monotonic()
            if now - self._pods_counted[0] >= serials.RESYNC:
                self._pods_counted = (now, s.scalar(select(func.count(PodRow.id))) or 0)
            return (*marker, self._pods_counted[1])

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


# What a status is compared with before its pod's row is read as an object (`_writes_nothing`);
# the JSON columns as their text (decoding each row's was a third of reading them).
_STATUS_COLUMNS = tuple(
    POD_TEXT_COLUMNS.get(name, getattr(PodRow, name))
    for name in (
        "id", "node", "terminating_at", "phase", "ready", "reason", "pod_ip", "host_ports",
        "restarts", "exit_code", "container_id", "containers",
    )
)  # fmt: skip


def _writes_nothing(row: Any, status: PodStatus, node: str) -> bool:
    """Whether `_heartbeat_in` writing `status` (reported by `node`) over the pod's `row`
    (`_STATUS_COLUMNS`) would change nothing: the pod is not the node's to report (bound
    elsewhere, or stopping), or every column it writes already holds the value. A status
    with free text (a reason, a log) is never judged here: that is redacted against the
    Secrets of the day as it is written. The JSON columns are compared as the text the
    store writes them as (`json.dumps`, SQLAlchemy's): the same text is the same value, and
    a value written otherwise (by hand) is only found to differ, and written again."""
    if row.node != node or row.terminating_at is not None:
        return True
    if status.reason or status.last_log or any(c.reason or c.last_log for c in status.containers):
        return False
    return bool(
        row.phase == status.phase
        and row.ready == status.ready
        and row.reason == ""
        and row.pod_ip == status.pod_ip
        and row.host_ports == json.dumps([list(hp) for hp in status.host_ports])
        and row.restarts >= status.restarts
        and row.exit_code == status.exit_code
        and row.container_id == status.container_id
        and row.containers == json.dumps([encode(c) for c in status.containers])
    )


def _assignable(address: str, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    """An address the allocator itself could hand out: in the range, past the network
    address and the one after it, before the broadcast address."""
    try:
        offset = int(ipaddress.ip_address(address)) - int(net.network_address)
    except ValueError:
        return False
    return 2 <= offset < net.num_addresses - 1


def _conflict(m: Manifest, owner: ObjectRow, source: str) -> str:
    where = f"{owner.file}:{owner.line}:{owner.col}"
    return (
        f"{m.location}: {m.key}: declared by this source ({source}) and by {owner.source} at {where}, "
        f"which declared it first and keeps it; remove it from one of the two"
    )


def _b64_bytes(content: Any) -> bytes:
    return base64.b64decode(content["b64"]) if isinstance(content, Mapping) and "b64" in content else b""


def _b64_text(content: Any) -> str:
    return _b64_bytes(content).decode(errors="replace")


def _owner_of(status: PodStatus, namespace: str, name: str) -> ObjectKey | None:
    """The owner a container's label names (Kind/namespace/name), or, for a container made
    before owners were labelled, the Deployment its name says (`<name>-<template>-<suffix>`)."""
    kind, _, rest = status.owner.partition("/")
    owner_namespace, _, owner_name = rest.partition("/")
    if kind and owner_namespace and owner_name:
        return ObjectKey(kind, owner_namespace, owner_name)
    parts = name.rsplit("-", 2)
    if len(parts) == 3 and parts[1] == status.template_hash:
        return ObjectKey("Deployment", namespace, parts[0])
    return None
