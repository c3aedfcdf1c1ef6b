"""One leader among the control planes that share a database, and its writes fenced.

Several `gitops serve` may run on one database (PostgreSQL; a SQLite file works the same
way on one machine). Each serves the page, the API and agents; only one, the leader,
syncs the sources, computes previews and runs the controller. Who leads is a row of the
`leases` table:

- **Taking it.** `Lease.hold()` renews the lease while this process holds it and takes it
  when it is free or expired, in a transaction that locks the row (`FOR UPDATE`). Every
  change of holder adds one to the row's `epoch`. Expiry is by the database's clock, so
  the replicas' clocks do not matter.
- **Losing it.** A renewal that finds another holder or epoch, or none that succeeded for
  `ttl` seconds by this process's monotonic clock, means this process no longer leads.
- **Fencing.** Work that only the leader may do runs under `Store.fenced(lease)`: each
  transaction it opens first checks, in that transaction, that the row still names this
  holder and epoch and has not expired (`Lease.check`). On PostgreSQL the check holds the
  row `FOR KEY SHARE` until the transaction ends, and taking the lease needs `FOR UPDATE`,
  which waits for those: a new leader's epoch is never committed while an old leader's
  checked transaction is still open, and every later transaction of the old leader fails
  its check (`NotLeader`). A leader stopped mid-transaction (SIGSTOP) loses its
  connection after `IDLE_IN_TRANSACTION` seconds (`gitops.store.store.make_engine`), so
  a taker waits at most that long. On SQLite, writers take the database's write lock when
  they begin (`BEGIN IMMEDIATE`), and a transaction that read the row before another
  committed cannot write.
- **Renewals** do not lock against checked transactions (`UPDATE` of non-key columns
  takes `FOR NO KEY UPDATE`, which `FOR KEY SHARE` allows), so a long pass never holds up
  its own leader's renewal. On SQLite every write takes the one write lock, and a renewal
  on its own waits on SQLite's busy handler, which a steady stream of this process's own
  writes (agents' reports from thousands of nodes) may never let in: the lone control
  plane would lose its own lease and stop its controller. There, the leader's own writes
  renew the lease (`Lease.renew_with_writes`): each write transaction of the process ends
  by renewing it, at most every `ttl / 10` seconds, and the lease thread renews on its own
  only when no write did for `ttl / 5` seconds (then the lock is free to take).

The row also carries what the leader knows that the others serve by: whether its sources
are read once and whether it has settled (`gitops.server.ControlPlane.settled`).
"""

from __future__ import annotations

import threading
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import ColumnElement, Float, and_, cast, extract, func, insert, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from gitops.loop import Ended
from gitops.store.tables import LeaseRow

if TYPE_CHECKING:
    from sqlalchemy.engine import CursorResult
    from sqlalchemy.orm import Session

    from gitops.store.store import Store

log = structlog.get_logger(__name__)

TTL = 5.0  # seconds a lease holds without renewal; leaders renew every TTL / 5


class NotLeader(Ended):
    """This process does not (or no longer) hold the lease its work needs: the leader's
    loops end (`gitops.loop.Ended`)."""


@dataclass(frozen=True)
class Leader:
    """Who holds a lease, as last read."""

    holder: str
    epoch: int
    expires_in: float  # seconds left by the database's clock when read (< 0: expired)
    sources_read: bool
    settled: bool


def _now(dialect: str) -> ColumnElement[float]:
    """The database's wall clock in seconds since the epoch."""
    if dialect == "postgresql":
        return cast(extract("epoch", func.clock_timestamp()), Float)
    return (func.julianday("now") - 2440587.5) * 86400.0


class Lease:
    """This process's claim on the lease `name` (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        holder: str,
        *,
        name: str = "controller",
        ttl: float = TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.holder = holder
        self.name = name
        self.ttl = ttl
        self.clock = clock
        self.epoch = 0  # the epoch held; 0 while not holding
        self.valid_until = float("-inf")  # by `clock`: a lease not renewed by then is lost
        self.leader: Leader | None = None  # who holds it, as the last `hold` or `read` found
        self._renewed_at = float("-inf")  # by `clock`: when the last renewal that succeeded began
        self._published = (False, False)  # sources_read and settled, as last given to `hold`
        self._by_writes = False  # this process's write transactions renew it (`renew_with_writes`)
        self._asked_at = float("-inf")  # by `clock`: when `hold` was last called (the lease thread lives)
        self._lock = threading.Lock()  # epoch, valid_until and _renewed_at move together
        self._postgresql = store.engine.dialect.name == "postgresql"
        self._now = _now(store.engine.dialect.name)

    @property
    def held(self) -> bool:
        return self.epoch > 0 and self.clock() < self.valid_until

    def hold(self, *, sources_read: bool = False, settled: bool = False) -> bool:
        """Renew the lease if held, else take it if it is free or expired; whether this
        process holds it now. `sources_read` and `settled` are published with a renewal."""
        started = self._asked_at = self.clock()
        published, self._published = self._published, (sources_read, settled)
        if (
            self._by_writes
            and published == self._published
            and started - self._renewed_at < self.ttl / 5
            and self.held
        ):
            return True  # a write of this process renewed it just now
        epoch = self.epoch
        if epoch and self._renew(epoch):
            self._renewed(started, epoch)
            return True
        if epoch:
            log.warning("lease.lost", lease=self.name, holder=self.holder, epoch=epoch)
            with self._lock:
                self.epoch, self.valid_until, self._renewed_at = 0, float("-inf"), float("-inf")
        epoch = self._take()
        if epoch:
            with self._lock:
                self.epoch, self.valid_until, self._renewed_at = epoch, started + self.ttl, started
            log.info("lease.taken", lease=self.name, holder=self.holder, epoch=epoch)
            return True
        return False

    def _renewed(self, started: float, epoch: int) -> None:
        """A renewal of `epoch` that began at `started` committed: the lease holds `ttl` from
        then (unless it was lost and taken again meanwhile)."""
        with self._lock:
            if self.epoch == epoch:
                self._renewed_at = max(self._renewed_at, started)
                self.valid_until = max(self.valid_until, started + self.ttl)

    def renew_with_writes(self) -> None:
        """On SQLite, let this process's write transactions renew the lease while it is held
        (`Store.write_session` calls `renew_within`; see the module docstring)."""
        if not self._postgresql:
            self._by_writes = True
            self.store.renewing = self

    def renew_within(self, s: Session) -> Callable[[], None] | None:
        """Renew the lease in `s`, a write transaction of this process about to commit, if
        it is held and was not renewed in the last `ttl / 10` seconds: what to call once the
        transaction committed (the renewal counts from then on), or None. Only while the
        lease thread lives (it called `hold` in the last `3 * ttl` seconds, time for a
        renewal of its own waiting out SQLite's 10 s busy timeout): agents' writes must not
        keep a lease whose holder no longer leads."""
        epoch, started = self.epoch, self.clock()
        if not epoch or started - self._renewed_at < self.ttl / 10 or started - self._asked_at > 3 * self.ttl:
            return None
        if not self._renew_in(s, epoch):
            return None
        return lambda: self._renewed(started, epoch)

    def _mine(self, epoch: int) -> ColumnElement[bool]:
        return and_(LeaseRow.name == self.name, LeaseRow.holder == self.holder, LeaseRow.epoch == epoch)

    def _renew(self, epoch: int) -> bool:
        with self.store.session() as s:
            return self._renew_in(s, epoch)

    def _renew_in(self, s: Session, epoch: int) -> bool:
        sources_read, settled = self._published
        done = s.execute(
            update(LeaseRow)
            .where(self._mine(epoch))
            .values(expires_at=self._now + self.ttl, sources_read=sources_read, settled=settled)
            .execution_options(synchronize_session=False)
        )
        self.leader = self._read(s)
        return bool(typing.cast("CursorResult[Any]", done).rowcount)

    def _take(self) -> int:
        """Take the lease if free or expired: the new epoch, or 0 if another holds it (or a
        checked transaction of the old holder is still open)."""
        try:
            with self.store.write_session() as s:
                if self._postgresql:
                    # An old holder's checked transaction may hold the row: try again next time.
                    s.execute(text("SET LOCAL lock_timeout = '1s'"))
                row = s.execute(
                    select(LeaseRow.epoch, LeaseRow.expires_at - self._now)
                    .where(LeaseRow.name == self.name)
                    .with_for_update()
                ).first()
                fresh = {"holder": self.holder, "expires_at": self._now + self.ttl, "acquired_at": self._now}
                if row is None:
                    epoch = 1
                    s.execute(
                        insert(LeaseRow).values(
                            name=self.name, epoch=epoch, sources_read=False, settled=False, **fresh
                        )
                    )
                elif row[1] <= 0:
                    epoch = int(row[0]) + 1
                    s.execute(
                        update(LeaseRow)
                        .where(LeaseRow.name == self.name)
                        .values(epoch=epoch, sources_read=False, settled=False, **fresh)
                        .execution_options(synchronize_session=False)
                    )
                else:
                    epoch = 0
                self.leader = self._read(s)
                return epoch
        except IntegrityError:  # another took a new lease first
            return 0
        except DBAPIError as exc:
            if _lock_timeout(exc):
                log.info(
                    "lease.waiting", lease=self.name, reason="the old holder's transaction is still open"
                )
                return 0
            raise

    def _read(self, s: Session) -> Leader | None:
        row = s.execute(
            select(
                LeaseRow.holder,
                LeaseRow.epoch,
                LeaseRow.expires_at - self._now,
                LeaseRow.sources_read,
                LeaseRow.settled,
            ).where(LeaseRow.name == self.name)
        ).first()
        if row is None:
            return None
        return Leader(str(row[0]), int(row[1]), float(row[2]), bool(row[3]), bool(row[4]))

    def read(self) -> Leader | None:
        """Who holds the lease now (read from the database)."""
        with self.store.session() as s:
            self.leader = self._read(s)
        return self.leader

    def check(self, s: Session) -> None:
        """Raise `NotLeader` unless this process holds the lease, checked in the
        transaction of `s`, which then keeps the lease from changing hands until it ends."""
        epoch = self.epoch
        if not epoch or self.clock() >= self.valid_until:
            raise NotLeader(f"this control plane does not hold the {self.name} lease")
        found = s.execute(
            select(LeaseRow.epoch)
            .where(self._mine(epoch), LeaseRow.expires_at > self._now)
            .with_for_update(read=True, key_share=True)  # FOR KEY SHARE on PostgreSQL
        ).first()
        if found is None:
            raise NotLeader(f"the {self.name} lease (epoch {epoch}) has passed to another control plane")

    def release(self) -> None:
        """Give the lease up (a clean stop): another may take it at once."""
        if not self.epoch:
            return
        with self._lock:
            epoch, self.epoch, self.valid_until, self._renewed_at = (
                self.epoch,
                0,
                float("-inf"),
                float("-inf"),
            )
        with self.store.session() as s:
            s.execute(
                update(LeaseRow)
                .where(self._mine(epoch))
                .values(expires_at=self._now - 1.0)
                .execution_options(synchronize_session=False)
            )
        log.info("lease.released", lease=self.name, holder=self.holder, epoch=epoch)


def _lock_timeout(exc: DBAPIError) -> bool:
    code: Any = getattr(exc.orig, "pgcode", None)
    return bool(code == "55P03")  # lock_not_available
