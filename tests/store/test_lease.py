"""The leader's lease and its fencing (`gitops.store.lease`), on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from gitops.store import Store
from gitops.store.lease import Lease, NotLeader


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_holder_at_a_time_and_the_other_takes_over_when_it_expires(two: tuple[Store, Store]) -> None:
    a_store, b_store = two
    a = Lease(a_store, "a", ttl=1.0)
    b = Lease(b_store, "b", ttl=1.0)
    assert a.hold() and a.epoch == 1
    assert not b.hold() and b.epoch == 0
    assert b.leader is not None and b.leader.holder == "a" and b.leader.epoch == 1
    assert a.hold() and a.epoch == 1  # a renewal keeps the epoch
    time.sleep(1.3)  # a stops renewing: the lease expires by the database's clock
    assert b.hold() and b.epoch == 2
    assert not a.hold() and a.epoch == 0 and not a.held
    assert a.leader is not None and a.leader.holder == "b"


def test_a_released_lease_is_taken_at_once(two: tuple[Store, Store]) -> None:
    a = Lease(two[0], "a", ttl=30.0)
    b = Lease(two[1], "b", ttl=30.0)
    assert a.hold()
    a.release()
    assert b.hold() and b.epoch == 2


def test_a_fenced_write_of_a_holder_that_lost_the_lease_fails_and_writes_nothing(
    two: tuple[Store, Store],
) -> None:
    a_store, b_store = two
    a = Lease(a_store, "a", ttl=1.0)
    b = Lease(b_store, "b", ttl=1.0)
    assert a.hold()
    with a_store.fenced(a):
        a_store.add_event("x", "Before", "written while a leads", 1.0)
    time.sleep(1.3)
    assert b.hold()
    # a has not noticed (it did not renew): its own clock still says it holds... until the
    # check in the transaction says otherwise.
    a.valid_until = float("inf")
    with a_store.fenced(a), pytest.raises(NotLeader, match="passed to another"):
        a_store.add_event("x", "After", "written after a lost the lease", 2.0)
    assert [e.reason for e in b_store.events()] == ["Before"]
    # Outside the fence (an agent's report, a read) a follower still writes.
    a_store.add_event("x", "Report", "any replica writes what agents report", 3.0)
    assert {e.reason for e in b_store.events()} == {"Before", "Report"}


def test_a_holder_whose_renewals_fail_stops_trusting_its_lease_after_the_ttl(
    two: tuple[Store, Store],
) -> None:
    clock = Clock()
    a = Lease(two[0], "a", ttl=5.0, clock=clock)
    assert a.hold() and a.held
    clock.now += 5.0  # no renewal for a whole ttl, by this process's clock
    assert not a.held
    with two[0].fenced(a), pytest.raises(NotLeader, match="does not hold"):
        two[0].add_event("x", "Late", "no write once the lease may have passed", 1.0)


def test_taking_the_lease_waits_for_the_old_holders_open_checked_transaction(postgres_database: str) -> None:
    """On PostgreSQL the old holder's checked transaction holds the lease row: the new
    holder's epoch is not committed until it ends, and the old holder's next transaction
    fails. (On SQLite writers take turns on the database's write lock.)"""
    a_store = Store(postgres_database)
    b_store = Store(postgres_database, keys=a_store.keys)
    try:
        a = Lease(a_store, "a", ttl=1.0)
        b = Lease(b_store, "b", ttl=1.0)
        assert a.hold()
        a.valid_until = float("inf")
        inside, finish = threading.Event(), threading.Event()

        def old_leader() -> None:
            with a_store.fenced(a), a_store.session() as s:
                inside.set()
                finish.wait(10)
                from gitops.store.tables import EventRow

                s.add(EventRow(time=1.0, object="x", reason="Slow", message="open across the expiry"))

        thread = threading.Thread(target=old_leader)
        thread.start()
        assert inside.wait(10)
        time.sleep(1.3)  # expired by the clock, but the row is held by the open transaction
        assert not b.hold()  # waited 1 s for the row lock, gave up, will try again
        finish.set()
        thread.join(10)
        assert b.hold() and b.epoch == 2
        assert [e.reason for e in b_store.events()] == ["Slow"]
        with a_store.fenced(a), pytest.raises(NotLeader):
            a_store.add_event("x", "After", "fenced", 2.0)
    finally:
        a_store.close()
        b_store.close()


def test_a_renewal_is_not_held_up_by_the_leaders_own_open_checked_transaction(url: str) -> None:
    store = Store(url)
    try:
        lease = Lease(store, "a", ttl=30.0)
        assert lease.hold()
        renewed: list[bool] = []
        with store.fenced(lease), store.session():
            thread = threading.Thread(target=lambda: renewed.append(lease.hold(settled=True)))
            thread.start()
            thread.join(5)
        thread.join(10)
        assert renewed == [True]
        assert lease.leader is not None and lease.leader.settled
    finally:
        store.close()


def test_on_sqlite_the_leaders_own_writes_renew_its_lease(tmp_path: Path) -> None:
    """On SQLite a renewal on its own waits on the busy handler, which a steady stream of
    this process's writes may never let in (3,000 hollow nodes' reports): the lone control
    plane lost its own lease. Its writes renew it instead, at most every ttl / 10 s."""
    from sqlalchemy import event, update

    from gitops.store.tables import LeaseRow

    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        clock = Clock()
        lease = Lease(store, "a", ttl=5.0, clock=clock)
        lease.renew_with_writes()
        assert lease.hold()
        with store.session() as s:  # as if the last renewal were long ago by the database's clock
            s.execute(update(LeaseRow).values(expires_at=LeaseRow.expires_at - 4.5))
        written = store.written()
        for _ in range(5):
            clock.now += 2.0  # 10 s in all with no renewal of the lease thread's own
            store.add_event("x", "Report", "a write any replica makes", clock.now)
        assert store.written() - written == 5  # the events: the renewals they carried are the lease's
        assert lease.held and lease.valid_until == clock.now + 5.0
        leader = lease.read()
        assert leader is not None and leader.expires_in > 4.0 and leader.epoch == 1

        statements: list[str] = []
        event.listen(store.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
        clock.now += 0.1  # within ttl / 10 of the last renewal: this write does not renew again
        store.add_event("x", "Report", "again", clock.now)
        assert not [q for q in statements if "leases" in q]
        assert lease.valid_until == clock.now - 0.1 + 5.0
        statements.clear()
        assert lease.hold()  # renewed by a write within ttl / 5: the lease thread has nothing to do
        assert statements == []
        assert lease.hold(settled=True)  # something new to publish: it renews itself
        assert [q for q in statements if q.lstrip().startswith("UPDATE leases")]
        assert lease.read() is not None and lease.leader is not None and lease.leader.settled
        clock.now += 16.0  # the lease thread has not asked for 3 ttl: it is gone or stuck
        statements.clear()
        store.add_event("x", "Report", "a write while no lease thread asks", clock.now)
        assert not [q for q in statements if "leases" in q] and not lease.held
        assert lease.hold()  # the lease thread again: its own renewal
        lease.release()
        statements.clear()
        store.add_event("x", "Report", "after the lease was given up", clock.now + 10)
        assert not [q for q in statements if "leases" in q]
    finally:
        store.close()
