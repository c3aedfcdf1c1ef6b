"""The pods of a store kept in memory, brought up to date by reading only what changed.

At 150,000 pods, reading and decoding every row costs seconds, and a control pass needs
them all every pass. A `PodCache` reads them all once; each later `pods()` reads only the
rows whose `written_at` (the wall clock of their last insert or update, whatever `now`
their writer was given) is at or after the start of the previous read, or of the oldest
write of this process still under way then, minus `slack`: a transaction that stamped its
rows earlier and committed later is still seen (this process's however long they take,
another's up to `slack` seconds late). Of those, only rows whose stamp moved since they
were last read are read whole. Rows deleted since are found by counting: after the changed
rows are read, the cache holds every row still in the table plus those deleted, so the two
counts differ exactly when a row is gone; then one read of every id drops them. But a
delete leaves a row in `pod_deletions` (a trigger writes one at each delete, whatever
statement or release made it), and after the pods' serial moved (every transaction that
deletes pod rows moves it, in this process or another: `gitops.store.serials`) a read
drops the pods those rows name in its window; the count is for the deletes the window
missed. Reading every id at each read while a rollout deleted pods was a quarter of the
agents' server's time, and counting the rows a tenth. The rows are counted when the pods'
serial moved since the last count, at most every `count_gap` seconds, and every
`count_every` seconds whatever it says (a row deleted by hand, or by a release before the
serial). Counting every second, as it did, cost 10 ms at 150,000 pods in each reader (the
agents' watch and the controller), and, with the change marker's own count, was most of
the agents' watch's time on a quiet cluster. A pod's spec is decoded once (a pod row's
spec is never rewritten; pods sharing a spec share one value).

It stays level-triggered: every `full_every` seconds a sweep compares every row's stamp (no
window), so what a write committed too late for its window would leave wrong is put right
then, decoding only the rows whose stamp moved. The sweep goes `sweep_rows` rows (by id) a
read: at 150,000 pods, all of them in one read held the interpreter 0.7 s in the thread
that reads, and the event loop answering agents waited for it in turns of the switch
interval (500 rows: about 2 ms; with the watch reading once or twice a second on a quiet
cluster, a sweep takes a few minutes). When a read finds a row it lacks, the next
compares every row's stamp at once; after any error it reads and decodes every row again.
The pods come out in id order, as `Store.pods()` gives them. The claims' volumes (a small
table) are kept beside them, read again when their serial moved (`claims`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import structlog
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gitops.codec import encode
from gitops.model import NodeName, Pod, PodId, PodSpec
from gitops.store import serials
from gitops.store.store import POD_TEXT_COLUMNS, SpecKey, Store, spec_key
from gitops.store.tables import ClaimRow, PodDeletionRow, PodRow

log = structlog.get_logger(__name__)
# Every column but the spec, the JSON ones as their text: decoded once per distinct text.
_COLUMNS = tuple(POD_TEXT_COLUMNS.get(c.name, c) for c in PodRow.__table__.columns if c.name != "spec")
_CHUNK = 500  # ids per IN (...) list
_POD_FIELDS = tuple(f.name for f in dataclasses.fields(Pod))
_PLAIN = frozenset({str, int, float, bool, type(None)})  # what `encode` gives as it is
_MAX_VALUES = 100_000  # encoded field values kept (`PodCache._encode`)


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class PodCache:
    def __init__(
        self,
        store: Store,
        *,
        slack: float = 2.0,
        full_every: float = 300.0,
        count_every: float = serials.RESYNC,
        count_gap: float = 1.0,
        sweep_rows: int = 500,
    ) -> None:
        self.store = store
        self.slack = slack
        self.full_every = full_every
        self.count_every = count_every
        self.sweep_rows = sweep_rows
        self._sweep: str | None = None  # the id a sweep under way goes on after ("": from the first)
        self._sweep_began = 0.0  # (the clock `written_at` is stamped with)
        # (the pods' serial, monotonic time) at the last count
        self._counted: tuple[int | None, float] = (None, float("-inf"))
        self.count_gap = count_gap
        self._deletes_read: int | None = None  # the pods' serial when `pod_deletions` was last read
        self._lock = threading.Lock()
        self._pods: dict[PodId, Pod] = {}
        self._specs: dict[SpecKey, PodSpec] = {}
        self._listed: tuple[Pod, ...] | None = ()  # `_pods` in id order; None: to be built again
        # `_pods` in id order, kept as rows change (a changed pod takes its place: no
        # 150,000-pod walk for a few changed), and each id's place; None: to be sorted again.
        self._order: list[Pod] | None = []
        self._places: dict[PodId, int] = {}
        self._since: float | None = None  # the next read starts at rows written from here
        self._full_at = float("-inf")  # when everything was last read
        self.rows_read = 0  # rows the last `pods()` read (every row after a full read)
        self._stale = False  # a read found rows its window missed: the next compares every stamp
        self._by_node: dict[str, set[PodId]] = {}
        # pod -> (its stamp, its JSON text but the spec, its spec's): `_encode`
        self._encoded: dict[PodId, tuple[float, bytes, bytes]] = {}
        # id(value) -> (the value, encode(value) as JSON text), for a pod's fields that are objects: pods
        # share their spec, owner key, labels and most their container statuses.
        self._values_encoded: dict[int, tuple[Any, Any]] = {}
        self._read_at = float("-inf")  # monotonic time of the last read
        self.generation = 0  # moves whenever `pods()` may give something else than before
        self._stamps: dict[str, float] = {}  # pod id -> `written_at` of the row as read
        self._node_generations: dict[str, int] = {}  # node -> the generation its pods last changed in
        self._node_versions: dict[str, tuple[int, str]] = {}  # node -> (the generation then, its version)
        self._full_generation = 0  # the generation of the last full read
        self._claims: dict[str, NodeName] = {}  # claim -> the node holding its volume (`claims`)
        self._claims_kept: serials.Kept[dict[str, NodeName]] = serials.Kept("claims")

    def pods(self) -> tuple[Pod, ...]:
        """Every pod in the store, in id order, as of this call."""
        with self._lock:
            self._refresh()
            if self._listed is None:  # built when asked for: agents' syncs and watches never ask
                if self._order is None:
                    ids = sorted(self._pods)
                    self._order = [self._pods[p] for p in ids]
                    self._places = {p: i for i, p in enumerate(ids)}
                self._listed = tuple(self._order)
            return self._listed

    def claims(self, node: str) -> dict[str, NodeName]:
        """The claims whose volume is on `node` (`Store.claims`), as of the last read: read
        with the pods whenever their serial moved (at most `serials.RESYNC` seconds apart
        whatever it says). An agent's sync, right after its node's pods (`node_view`), gets
        them from the same read: asked of the store at each sync that changed the node's
        pods, they were a tenth of the agents' server while a rollout went on at 5,000
        nodes."""
        with self._lock:
            return {claim: at for claim, at in self._claims.items() if at == node}

    def refresh(self) -> None:
        """Read what was written since the last read (`pods` without the list)."""
        with self._lock:
            self._refresh()

    def _refresh(self) -> None:
        began = time.monotonic()
        started = time.time()  # the clock `written_at` is stamped with
        # Not past a write of this process under way as the read begins: its rows, stamped
        # since it began, become visible only when it commits, however long it takes. Asked
        # before the read: a write that commits during the read is not seen by it, and asked
        # after, it was no longer under way, and its rows fell before the next window. (One
        # that begins after `started` stamps its rows after it.)
        oldest = self.store.oldest_write()
        try:
            if self._since is None:
                self._read_all(started)
            elif self._stale:
                # Every row's stamp at once, with no window: what a late commit hid is read
                # now. Only rows whose stamp moved are decoded (decoding all 150,000 took 20 s).
                self._stale, self._full_at, self._sweep = False, started, None
                self._read_changes(float("-inf"))
            else:
                if self._sweep is None and started - self._full_at >= self.full_every:
                    self._sweep, self._sweep_began = "", started  # every row's stamp, a part a read
                self._read_changes(self._since)
        except Exception:
            self._since = None  # the next call reads everything again
            raise
        self._read_at = began
        self._since = min(started, oldest if oldest is not None else started) - self.slack

    def invalidate(self) -> None:
        """Read everything again on the next call."""
        with self._lock:
            self._since = None

    def _read_all(self, started: float) -> None:
        self._specs, self._stale = {}, False
        with self.store.session() as s:  # before the rows: a row written in between is read again
            self._stamps = {
                pod_id: written
                for pod_id, written in s.connection().execute(select(PodRow.id, PodRow.written_at))
            }
        with self.store.session() as s:
            rows = s.connection().execute(select(*_COLUMNS).order_by(PodRow.id)).all()
            pods = [pod for _, pod in self._decode(s, rows)]
            self._claims_kept = serials.Kept("claims")  # read again with everything
            self._read_claims(s)
        self.generation += 1
        self._full_generation = self.generation
        self._pods = {p.id: p for p in pods}
        self._encoded, self._values_encoded, self._node_versions = {}, {}, {}
        self._by_node = {}
        for pod in pods:
            if pod.node is not None:
                self._by_node.setdefault(pod.node, set()).add(pod.id)
        self._listed, self._order = tuple(pods), list(pods)
        self._places = {p.id: i for i, p in enumerate(pods)}
        self._full_at, self._sweep = started, None
        self.rows_read = len(pods)

    def _place(self, before: Pod | None, after: Pod | None) -> None:
        """Keep the pods-by-node index as a pod row moves (or comes, or goes), and note the
        nodes touched with the generation this read gives (`changed_nodes`)."""
        for pod in (before, after):
            if pod is not None and pod.node is not None:
                self._node_generations[pod.node] = self.generation + 1
        if before is not None and before.node is not None and (after is None or after.node != before.node):
            self._by_node.get(before.node, set()).discard(before.id)
        if after is not None and after.node is not None:
            self._by_node.setdefault(after.node, set()).add(after.id)

    def node_view(
        self, node: str, *, max_age: float = 0.1, read_after: float | None = None
    ) -> tuple[str, list[PodId], bytes]:
        """The pods bound to `node`: their ids, and a JSON array of them, each as `encode`
        gives it, with a version that moves whenever one of their rows is written, one comes
        or one goes; all from one state of the cache, read again when it is older than
        `max_age` seconds or was read before `read_after` (monotonic: a caller that just
        wrote). Agents' syncs ask this: thousands of calls a second cost no database read.
        Ages count from the call's arrival, and whether to read is decided holding the lock:
        calls waiting on another's read (a batch of reports written together) are served by
        it, not each read again in turn (at 1,000 nodes each re-read thousands of rows)."""
        wanted = time.monotonic() - max_age  # a read begun since will do
        if read_after is not None:
            wanted = max(wanted, read_after)
        with self._lock:
            if self._read_at < wanted:
                self._refresh()
            ids = sorted(self._by_node.get(node, ()))
            texts = []
            for pod_id in ids:
                stamp = self._stamps.get(pod_id, 0.0)
                known = self._encoded.get(pod_id)
                if known is None or known[0] != stamp:
                    known = self._encoded[pod_id] = (stamp, *self._encode(self._pods[pod_id]))
                texts.append(known[1] + b',"spec":' + known[2] + b"}")
            return self._node_version(node, ids), ids, b"[" + b",".join(texts) + b"]"

    def age(self) -> float:
        """Seconds since the cache last read the store."""
        return time.monotonic() - self._read_at

    def node_version(self, node: str) -> str:
        """The version `node_view` gives for `node`, from the cache as it is (no read).

        A version made since the node's pods last moved is given without the lock: the API's
        event loop asks it for every quiet heartbeat, and a read holding the lock (every
        `full_every` seconds, all 150,000 rows' stamps compared) held every agent's call for
        half a second. A read under way marks a node it moves (`_place`) before it changes
        that node's pods, so the version given without the lock is the one from before it."""
        kept = self._kept_version(node)
        if kept is not None:
            return kept
        with self._lock:
            return self._node_version(node)

    def _kept_version(self, node: str) -> str | None:
        """`node`'s version made since its pods last moved, if there is one."""
        known = self._node_versions.get(node)
        if known is not None and known[0] >= max(self._node_generations.get(node, -1), self._full_generation):
            return known[1]
        return None

    def _node_version(self, node: str, ids: list[PodId] | None = None) -> str:
        """`node`'s version (`ids`: its pods, sorted, if at hand), made again only when its
        pods moved since it was last made: a quiet heartbeat asks it, 500 a second at
        5,000 nodes."""
        kept = self._kept_version(node)
        if kept is not None:
            return kept
        version = self._version(sorted(self._by_node.get(node, ())) if ids is None else ids)
        self._node_versions[node] = (self.generation, version)
        return version

    def _version(self, ids: list[PodId]) -> str:
        digest = hashlib.blake2b(digest_size=12)
        for pod_id in ids:
            digest.update(f"{pod_id}\0{self._stamps.get(pod_id, 0.0)!r}\n".encode())
        return digest.hexdigest()

    def changed_nodes(self, since: int) -> set[str] | None:
        """The nodes one of whose pods came, went or was written after generation `since`
        (None: any may have, after a full read)."""
        with self._lock:
            if since < self._full_generation:
                return None
            return {node for node, generation in self._node_generations.items() if generation > since}

    def _encode(self, pod: Pod) -> tuple[bytes, bytes]:
        """`encode(pod)` as JSON text in two parts: every field but the spec (an object left
        open), and the spec. Each field that is an object (spec, owner, labels, container
        statuses) is encoded once for all the pods that share it (a pod's row is rewritten
        at each status its agent reports; its spec never is), and a pod's first part is kept
        until its row moves: a reply of 30 pods joins texts, where encoding them at each
        call was a tenth of the server while 150,000 pods came up. Spec texts are shared,
        not copied into each pod's."""
        plain: dict[str, Any] = {}
        parts = []
        spec = b"null"
        values = self._values_encoded
        for name in _POD_FIELDS:
            value = getattr(pod, name)
            if type(value) in _PLAIN:
                plain[name] = value
                continue
            known = values.get(id(value))
            if known is None or known[0] is not value:
                if len(values) > _MAX_VALUES:
                    values.clear()
                known = values[id(value)] = (value, _json(encode(value)))
            if name == "spec":
                spec = known[1]
            else:
                parts.append(_json(name) + b":" + known[1])
        head = _json(plain)[:-1]  # the object left open
        return (b",".join([head, *parts]) if plain else b"{" + b",".join(parts)), spec

    def _decode(self, s: Session, rows: Sequence[Any]) -> Iterator[tuple[Any, Pod]]:
        """Each of `rows` (`_COLUMNS`) with its pod; the specs not known yet are read, once
        per spec (`spec_key`). A row whose spec is gone (deleted between the reads) is left
        out: the next read drops it. Rows are read as Core rows (`s.connection()`): the
        ORM's processing of each row of a column select cost as much as the query."""
        missing = sorted({key: row.id for row in rows if (key := spec_key(row)) not in self._specs}.values())
        for start in range(0, len(missing), _CHUNK):
            chunk = missing[start : start + _CHUNK]
            for row in s.connection().execute(select(*_COLUMNS, PodRow.spec).where(PodRow.id.in_(chunk))):
                self._specs[spec_key(row)] = self.store.spec_from_row(row.spec)
        for row in rows:
            spec = self._specs.get(spec_key(row))
            if spec is not None:
                yield row, self.store.pod_from_row(row, spec)

    def _count(self, s: Session, serial: int | None, *, every: bool) -> int | None:
        """The rows in the table, or None when it need not be counted: the pods' serial
        (`serial`) is where it was at the last count (no transaction deleted pod rows since),
        or that count was less than `count_gap` seconds ago (the deletes since are found by
        their rows in `pod_deletions`: the count is for those the window missed), and it was
        less than `count_every` seconds ago. Counting 150,000 rows took 10 ms, under the lock
        every agent's sync waits on, at each of the many reads a second while pods come up,
        and, while a rollout deleted pods, at each read."""
        now = time.monotonic()
        counted, at = self._counted
        unmoved = serial is not None and serial == counted
        if not every and (unmoved or now - at < self.count_gap) and now - at < self.count_every:
            return None
        self._counted = (serial, now)
        return s.scalar(select(func.count(PodRow.id))) or 0

    def _drop_deleted(self, s: Session, since: float) -> bool:
        """Drop the pods whose rows were deleted since `since`, as `pod_deletions` has them
        (a trigger's rows: every delete leaves one), those of them whose row is not there
        again (a StatefulSet's pod comes back under its name); whether any was dropped. A
        delete it misses (its transaction committed more than `slack` after its statement,
        or the trigger is not there) leaves the count different: every id is read then."""
        deleted = select(PodDeletionRow.id).where(PodDeletionRow.deleted_at >= since)
        gone = [pod_id for pod_id in s.scalars(deleted) if pod_id in self._pods]
        back: set[str] = set()
        for start in range(0, len(gone), _CHUNK):
            back.update(s.scalars(select(PodRow.id).where(PodRow.id.in_(gone[start : start + _CHUNK]))))
        for pod_id in gone:
            if pod_id not in back:
                self._forget(PodId(pod_id))
        return len(back) < len(gone)

    def _read_claims(self, s: Session) -> None:
        """The claims (`claims`), read again when their serial moved (`serials.Kept`)."""

        def read() -> dict[str, NodeName]:
            rows = s.connection().execute(select(ClaimRow.id, ClaimRow.node))
            return {claim: NodeName(node) for claim, node in rows}

        self._claims = self._claims_kept.get(s, read)

    def _forget(self, pod_id: PodId) -> None:
        """Drop a pod whose row is gone."""
        self._place(self._pods[pod_id], None)
        del self._pods[pod_id]
        self._encoded.pop(pod_id, None)
        self._stamps.pop(pod_id, None)

    def _read_changes(self, since: float) -> None:
        store = self.store
        with store.session() as s:
            # First only when each row in the window was written: rows read already at that
            # stamp (the window overlaps the last one by `slack`) are not read again.
            db = s.connection()  # Core rows (see `_decode`)
            stamps = list(db.execute(select(PodRow.id, PodRow.written_at).where(PodRow.written_at >= since)))
            if self._sweep is not None:  # and the next `sweep_rows` rows' of the sweep under way
                part = db.execute(
                    select(PodRow.id, PodRow.written_at)
                    .where(PodRow.id > self._sweep)
                    .order_by(PodRow.id)
                    .limit(self.sweep_rows)
                ).all()
                stamps += part
                if len(part) < self.sweep_rows:  # the last part: every row's stamp compared
                    self._sweep, self._full_at = None, self._sweep_began
                else:
                    self._sweep = part[-1][0]
            changed = sorted({pod_id for pod_id, written in stamps if self._stamps.get(pod_id) != written})
            rows: list[Any] = []
            for start in range(0, len(changed), _CHUNK):
                rows += db.execute(
                    select(*_COLUMNS).where(PodRow.id.in_(changed[start : start + _CHUNK]))
                ).all()
            serial = serials.current(s, "pods")  # (before the deletes' rows and the count)
            self._read_claims(s)
            count = self._count(s, serial, every=since == float("-inf"))
            added = False
            order, places = self._order, self._places
            for row, pod in self._decode(s, rows):
                at = places.get(pod.id)
                if pod.id not in self._pods:
                    added = True
                elif order is not None and at is not None:
                    order[at] = pod
                self._place(self._pods.get(pod.id), pod)
                self._pods[pod.id] = pod
                self._stamps[pod.id] = row.written_at
            removed = False
            if serial is None or serial != self._deletes_read:  # pod rows were deleted since
                removed = self._drop_deleted(s, since)
                self._deletes_read = serial
            if count is not None and count != len(self._pods):
                present = set(s.scalars(select(PodRow.id)))
                for pod_id in [p for p in self._pods if p not in present]:
                    self._forget(pod_id)
                    removed = True
                if present - self._pods.keys():  # a row the window missed (another process's
                    self._stale = True  # write that committed later than `slack`): every stamp next time
                    log.warning("podcache.missed_rows", rows=len(present - self._pods.keys()))
        self.rows_read = len(rows)
        if rows or removed:
            self.generation += 1
        if added or removed:
            self._order = None
        if rows or removed:
            self._listed = None
