"""Rows kept in memory while their table's serial stays where it was.

A controller pass needs every node, every rollout state and every workload state, and on a
quiet cluster none of them changes from one pass to the next: at 5,000 nodes and 1,500
Deployments, reading and comparing those rows was a third of a pass that decided nothing.

The `serials` table holds a count per such table. A transaction that writes rows of one
says so (`changed`), and the store moves that table's count in the same transaction, last
(`move`: on PostgreSQL the row lock of a serial is then the last lock a writer takes, so two
writers never wait on each other through it). A reader (`Kept`) reads the count first, then
the rows, and keeps what it made of them with that count: while the count is where it was,
no row changed, and the rows are not read again. A write that commits between the two reads
moved the count past the one kept, so the next read reads the rows again. It stays
level-triggered: the rows are read again at least every `RESYNC` seconds whatever the count
says (a row written by hand, or by a release before this one), and at every read when the
count's row is missing.

A node's heartbeat is not a change here: every node's moves every few seconds. Readers that
need heartbeats read them apart (`Store.node_states`).

The pods' serial moves only when pod rows are deleted (`Store._move_serials`, whatever
statement deleted them): readers keeping the pods (`gitops.store.podcache`) find the rows
inserted and updated by their `written_at`, and count the table only when it moved. The
claims' serial moves with every write of claim rows: the pod cache keeps them too
(`PodCache.claims`), for the agents' syncs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar, cast

from sqlalchemy import Table, select, update
from sqlalchemy.orm import Session

from gitops.store.tables import SerialRow

T = TypeVar("T")

RESYNC = 60.0  # seconds a reader keeps rows at most, whatever their table's serial says
_CHANGED = "gitops.serials.changed"  # Session.info key: the tables the transaction changed


def changed(session: Session, *tables: str) -> None:
    """Note that `session`'s transaction writes rows of `tables` (their serials move when it
    commits)."""
    session.info.setdefault(_CHANGED, set()).update(tables)


def move(session: Session) -> None:
    """Move the serials of the tables `session`'s transaction changed; the last thing it
    does before it commits."""
    tables = session.info.pop(_CHANGED, None)
    if not tables:
        return
    session.flush()  # the rows first: the serials' row locks are the last taken
    table = cast(Table, SerialRow.__table__)
    session.connection().execute(
        update(table).where(table.c.name.in_(sorted(tables))).values(serial=table.c.serial + 1)
    )


def current(session: Session, table: str) -> int | None:
    """`table`'s serial as `session`'s transaction sees it (None: its row is missing)."""
    return session.scalar(select(SerialRow.serial).where(SerialRow.name == table))


class Kept(Generic[T]):
    """What a reader made of `table`'s rows, kept while the table's serial stays where it was
    when they were read, and for `resync` seconds at most."""

    def __init__(self, table: str, *, resync: float = RESYNC) -> None:
        self.table = table
        self.resync = resync
        self._kept: tuple[int | None, float, T] | None = None  # (serial, monotonic time, value)
        self.reads = 0  # times the rows were read (tests count them)

    def get(self, session: Session, read: Callable[[], T]) -> T:
        """The kept value, or `read()`'s (in `session`, after the serial) when the table's
        serial moved, is missing, or the value is older than `resync`."""
        serial = current(session, self.table)
        now = time.monotonic()
        kept = self._kept
        if kept is not None and serial is not None and kept[0] == serial and now - kept[1] < self.resync:
            return kept[2]
        value = read()
        self.reads += 1
        self._kept = (serial, now, value)
        return value
