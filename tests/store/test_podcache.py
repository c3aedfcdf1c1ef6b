"""`PodCache` gives what a full read of the store gives, reading only what changed."""

from __future__ import annotations

import dataclasses
import json
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, update

from gitops.codec import encode
from gitops.model import ContainerStatus, Node, NodeName, ObjectKey, Pod, PodName, PodStatus
from gitops.store import Store
from gitops.store.podcache import PodCache
from gitops.store.tables import PodRow
from tests.specs import pod_spec


@pytest.fixture
def store() -> Iterator[Store]:
    s = Store("sqlite://")
    yield s
    s.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request: pytest.FixtureRequest) -> Iterator[Store]:
    """On PostgreSQL too: its driver hands JSON columns out decoded, SQLite as text."""
    s = Store("sqlite://" if request.param == "sqlite" else request.getfixturevalue("postgres_database"))
    yield s
    s.close()


def _pod(i: int, owner: int = 0) -> Pod:
    return Pod(
        "default",
        PodName(f"web-{i}"),
        ObjectKey("Deployment", "default", f"web{owner}"),
        f"h{owner}",
        pod_spec(f"web{owner}:1"),
        labels=(("app", f"web{owner}"),),
    )


def test_a_cache_reads_only_the_rows_written_since_and_agrees_with_a_full_read(store: Store) -> None:
    """Creates, binds, status reports and deletions between reads: each read equals
    `store.pods()`, and once the slack has passed a read with nothing written reads no row."""
    cache = PodCache(store, slack=0.0)
    store.apply_pod_changes(
        create=[(_pod(i, i % 3), "new") for i in range(30)], stop=[], bind={}, pending_reasons={}, now=1.0
    )
    assert cache.pods() == tuple(store.pods())
    assert cache.rows_read == 30
    rng = random.Random(5)
    for step in range(12):
        pods = store.pods()
        pick = rng.sample(pods, 4)
        store.apply_pod_changes(
            create=[(_pod(100 + step, step % 3), "new")],
            stop=[(pick[0], "gone")],
            bind={pick[1].id: NodeName("n1")} if pick[1].node is None else {},
            pending_reasons={pick[2].id: f"waiting {step}"} if pick[2].node is None else {},
            now=2.0 + step,
        )
        assert cache.pods() == tuple(store.pods()), step
    assert cache.pods() == tuple(store.pods())
    assert cache.rows_read == 0
    assert len(cache.pods()) > 30


def test_the_pods_of_one_owner_share_one_owner_key(store: Store) -> None:
    """So that grouping 150,000 pods by owner hashes each owner once, not each pod's."""
    store.apply_pod_changes(
        create=[(_pod(i, i % 2), "new") for i in range(6)], stop=[], bind={}, pending_reasons={}, now=1.0
    )
    for pods in (store.pods(), PodCache(store).pods()):
        owners = {id(p.owner) for p in pods}
        assert len(owners) == 2 and {p.owner.name for p in pods} == {"web0", "web1"}


def test_pods_read_share_their_labels_and_container_statuses(any_store: Store) -> None:
    """The cache reads a row's JSON columns as text and decodes each distinct text once:
    replicas share their labels, and pods reporting alike their container statuses. What
    it gives still equals a full read."""
    store = any_store
    store.register_node(Node(NodeName("n1"), "192.0.2.10", 4000, 2**32), "t", now=1.0)
    store.apply_pod_changes(
        create=[(_pod(i, i % 2), "new") for i in range(6)],
        stop=[],
        bind={f"default/web-{i}": NodeName("n1") for i in range(6)},
        pending_reasons={},
        now=1.0,
    )
    app = ContainerStatus("app", "running", ready=True)
    port = ((80, "TCP", 8080),)
    statuses = [
        PodStatus(f"default/web-{i}", "Running", ready=True, containers=(app,), host_ports=port)
        for i in range(6)
    ]
    store.heartbeat("n1", statuses, now=2.0)
    pods = PodCache(store).pods()
    assert pods == tuple(store.pods())
    assert {p.labels for p in pods} == {(("app", "web0"),), (("app", "web1"),)}
    assert len({id(p.labels) for p in pods}) == 2
    assert {p.containers for p in pods} == {(app,)} and len({id(p.containers) for p in pods}) == 1
    assert {p.host_ports for p in pods} == {((80, "TCP", 8080),)}


def test_a_node_view_encodes_each_pod_as_encode_does_sharing_what_pods_share(store: Store) -> None:
    """Spec, owner, labels and container statuses are encoded once for the pods sharing
    them, as JSON text; every pod's encoding still reads as `encode(pod)`, before and after
    a report."""
    store.register_node(Node(NodeName("n1"), "192.0.2.10", 4000, 2**32), "t", now=1.0)
    store.apply_pod_changes(
        create=[(_pod(i, i % 2), "new") for i in range(4)],
        stop=[],
        bind={f"default/web-{i}": NodeName("n1") for i in range(4)},
        pending_reasons={},
        now=1.0,
    )
    cache = PodCache(store, slack=0.0)
    for step in range(2):
        _, ids, text = cache.node_view("n1", max_age=0.0)
        encoded = json.loads(text)
        by_id = {p.id: p for p in store.pods()}
        assert [e["name"] for e in encoded] == [f"web-{i}" for i in range(4)]
        assert ids == [f"default/web-{i}" for i in range(4)]
        for item in encoded:
            assert item == encode(by_id[f"{item['namespace']}/{item['name']}"])
        specs = {id(cache._encoded[pod_id][2]) for pod_id in ids}
        assert len(specs) == 2  # one spec text for each owner's pods
        app = ContainerStatus("app", "running", ready=True, restarts=step)
        store.heartbeat(
            "n1",
            [PodStatus(f"default/web-{i}", "Running", ready=True, containers=(app,)) for i in range(4)],
            now=2.0 + step,
        )


def test_a_node_version_kept_between_calls_moves_only_with_that_nodes_pods(store: Store) -> None:
    """Made again only when the node's pods moved since: it always equals what a fresh
    cache computes, moves when one of the node's pods is written, comes or goes, and stays
    when only another node's do."""
    for name in ("n1", "n2"):
        store.register_node(Node(NodeName(name), "192.0.2.10", 4000, 2**32), "t", now=1.0)
    store.apply_pod_changes(
        create=[(_pod(i), "new") for i in range(4)],
        stop=[],
        bind={f"default/web-{i}": NodeName(f"n{1 + i % 2}") for i in range(4)},
        pending_reasons={},
        now=1.0,
    )
    cache = PodCache(store, slack=0.0)

    def fresh() -> dict[str, str]:
        other = PodCache(store)
        other.refresh()
        return {n: other.node_version(n) for n in ("n1", "n2")}

    steps = [
        ("n1", lambda: store.heartbeat("n1", [PodStatus("default/web-0", "Running", ready=True)], now=2.0)),
        ("n2", lambda: store.heartbeat("n2", [PodStatus("default/web-1", "Running", ready=True)], now=3.0)),
        (
            "n1",
            lambda: store.apply_pod_changes(
                create=[(_pod(9), "new")],
                stop=[],
                bind={"default/web-9": NodeName("n1")},
                pending_reasons={},
                now=4.0,
            ),
        ),
        (
            "n2",
            lambda: store.apply_pod_changes(
                create=[], stop=[], bind={}, pending_reasons={}, now=5.0, delete_now=[(_pod(3), "gone")]
            ),
        ),
    ]
    for moved, step in steps:
        cache.refresh()
        before = {n: cache.node_version(n) for n in ("n1", "n2")}
        assert before == fresh()
        step()
        cache.refresh()
        after = {n: cache.node_version(n) for n in ("n1", "n2")}
        assert after == fresh()
        assert after[moved] != before[moved]
        assert [after[n] == before[n] for n in ("n1", "n2") if n != moved] == [True]
        assert cache.node_view(moved, max_age=0.0)[0] == after[moved]


def test_a_kept_node_version_is_given_while_a_read_holds_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API's event loop asks a node's version for every quiet heartbeat. Every
    `full_every` seconds a read compares every row's stamp (150,000 rows), holding the
    cache: waiting for it, every agent's call waited half a second. A version kept since
    the node's pods last moved is given at once, the one from before the read."""
    store = Store(f"sqlite:///{tmp_path / 's.db'}")  # a file: the read runs in a thread of its own
    store.register_node(Node(NodeName("n1"), "192.0.2.10", 4000, 2**32), "t", now=1.0)
    store.apply_pod_changes(
        create=[(_pod(i), "new") for i in range(2)],
        stop=[],
        bind={f"default/web-{i}": NodeName("n1") for i in range(2)},
        pending_reasons={},
        now=1.0,
    )
    cache = PodCache(store, slack=0.0)
    cache.refresh()
    kept = cache.node_version("n1")
    inside, release = threading.Event(), threading.Event()
    read_changes = PodCache._read_changes

    def held(self: PodCache, since: float) -> None:
        inside.set()
        assert release.wait(10)
        read_changes(self, since)

    monkeypatch.setattr(PodCache, "_read_changes", held)
    cache.full_every = 0.0  # the next read compares every row's stamp
    failed: list[Exception] = []

    def refresh() -> None:
        try:
            cache.refresh()
        except Exception as exc:
            failed.append(exc)

    reading = threading.Thread(target=refresh)
    reading.start()
    try:
        assert inside.wait(10)
        given: list[str] = []
        asking = threading.Thread(target=lambda: given.append(cache.node_version("n1")))
        asking.start()
        asking.join(2)
        assert given == [kept]  # at once, not after the read
    finally:
        release.set()
        reading.join(10)
    assert not reading.is_alive() and failed == []  # the read ended, and did not fail
    assert cache.node_version("n1") == kept  # nothing moved
    store.close()


def test_a_status_report_that_changes_only_restarts_is_seen(store: Store) -> None:
    """Restarts, exit codes and container ids count as a change of the row (the cache reads
    rows by when they were written)."""
    store.register_node(Node(NodeName("n1"), "192.0.2.10", 4000, 2**32), "t", now=1.0)
    store.apply_pod_changes(create=[(_pod(1), "new")], stop=[], bind={}, pending_reasons={}, now=1.0)
    pod = store.pods()[0]
    store.apply_pod_changes(create=[], stop=[], bind={pod.id: NodeName("n1")}, pending_reasons={}, now=2.0)
    cache = PodCache(store, slack=0.0)
    cache.pods()
    running = PodStatus(pod=pod.id, phase="Running", ready=True, pod_ip="10.244.0.5")
    store.heartbeat("n1", [running], now=3.0)
    assert cache.pods() == tuple(store.pods())
    store.heartbeat("n1", [dataclasses.replace(running, restarts=2)], now=4.0)
    assert cache.pods() == tuple(store.pods())
    assert cache.pods()[0].restarts == 2


def test_rows_of_a_long_write_are_seen_when_it_commits(tmp_path: object) -> None:
    """A write that stamps its rows and commits only after the slack has passed (a big
    first pass) is still read: the cache's window starts no later than it began."""
    import threading
    import time
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    cache = PodCache(store, slack=0.0)
    cache.pods()
    inserted, release = threading.Event(), threading.Event()

    def long_write() -> None:
        with store.write_session() as s:
            store._create_pods(s, [(_pod(1), "new")], {}, {}, now=1.0, placed_because={}, pending={})
            inserted.set()
            release.wait(10)

    writer = threading.Thread(target=long_write)
    writer.start()
    assert inserted.wait(10)
    time.sleep(0.05)
    assert cache.pods() == ()  # not committed yet
    time.sleep(0.05)
    release.set()
    writer.join(10)
    assert [p.name for p in cache.pods()] == ["web-1"]
    store.close()


def test_calls_that_wrote_together_share_one_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Agents' reports written in one batch each ask for their node's pods as of after the
    write (`read_after`): while one reads, the others wait, and are then served by that read
    instead of each reading again in turn."""
    import threading
    import time

    store = Store(f"sqlite:///{tmp_path / 's.db'}")  # one database for every thread
    cache = PodCache(store, slack=0.0)
    store.apply_pod_changes(create=[(_pod(1), "new")], stop=[], bind={}, pending_reasons={}, now=1.0)
    cache.pods()
    written_at = time.monotonic()  # as a batch of reports was written
    reads: list[float] = []
    original = cache._read_changes

    def slow(since: float) -> None:
        reads.append(since)
        time.sleep(0.2)  # the other calls arrive while this one reads
        original(since)

    monkeypatch.setattr(cache, "_read_changes", slow)
    answered: list[str] = []

    def call(node: str) -> None:
        # (`max_age` long: a thread that starts late, the interpreter held elsewhere, is not
        # to read again because the first read is older than the default 0.1 s)
        answered.append(cache.node_view(node, read_after=written_at, max_age=60.0)[0])

    calls = [threading.Thread(target=call, args=(f"n{i}",)) for i in range(8)]
    for call in calls:
        call.start()
    for call in calls:
        call.join(10)
    assert len(answered) == 8 and len(reads) == 1
    store.close()


def test_the_periodic_resync_compares_every_stamp_and_decodes_only_what_moved(store: Store) -> None:
    """A row written with a stamp before the window (another process's commit later than the
    slack) is put right by the resync every `full_every` seconds, which decoded every row
    again (20 s at 150,000 pods); now only the rows whose stamp moved are read."""
    store.apply_pod_changes(
        create=[(_pod(i), "new") for i in range(30)], stop=[], bind={}, pending_reasons={}, now=1.0
    )
    cache = PodCache(store, slack=0.0, full_every=3600.0)
    before = {p.id: p for p in cache.pods()}
    hidden = sorted(before)[7]
    with store.write_session() as s:  # a late commit: stamped before the cache's window
        s.execute(update(PodRow).where(PodRow.id == hidden).values(reason="changed", written_at=1.0))
    assert {p.id: p.reason for p in cache.pods()}[hidden] == before[hidden].reason != "changed"  # missed
    cache.full_every = 0.0
    after = {p.id: p for p in cache.pods()}
    assert after[hidden].reason == "changed" and cache.rows_read == 1
    assert all(after[pod_id] is pod for pod_id, pod in before.items() if pod_id != hidden)
    assert cache.pods() == tuple(store.pods())


def test_the_resync_compares_the_stamps_a_part_a_read_until_every_row_is_compared(store: Store) -> None:
    """At 150,000 pods, comparing every row's stamp in one read held the interpreter 0.7 s
    in the reading thread, the agents' event loop waiting on it: the resync goes
    `sweep_rows` rows (by id) a read, and a row a late commit hid is put right when the
    sweep reaches it."""
    store.apply_pod_changes(
        create=[(_pod(i), "new") for i in range(30)], stop=[], bind={}, pending_reasons={}, now=1.0
    )
    cache = PodCache(store, slack=0.0, full_every=3600.0, sweep_rows=10)
    before = {p.id: p for p in cache.pods()}
    hidden = sorted(before)[25]  # in the third part
    with store.write_session() as s:  # a late commit: stamped before the cache's window
        s.execute(update(PodRow).where(PodRow.id == hidden).values(reason="changed", written_at=1.0))
    cache.full_every = 0.0
    seen = [{p.id: p.reason for p in cache.pods()}[hidden] for _ in range(3)]
    # Parts of 10: the first two reads do not reach it (one comparing every row would).
    assert seen == [before[hidden].reason, before[hidden].reason, "changed"]
    assert cache.rows_read == 1  # only the row whose stamp moved is decoded
    assert cache.pods() == tuple(store.pods())


def test_a_write_that_commits_while_the_cache_reads_is_seen_by_the_next_read(tmp_path: Path) -> None:
    """The window of the next read began at the oldest write still under way as sampled after
    the read: a write that began before the read and committed during it was no longer under
    way, and its rows, stamped before the read began, fell before the window. A bind missed
    so stayed unseen until the resync, minutes later."""
    import threading
    import time

    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.register_node(Node(NodeName("n1"), "192.0.2.10", 4000, 2**32), "t", now=1.0)
    store.apply_pod_changes(create=[(_pod(1), "new")], stop=[], bind={}, pending_reasons={}, now=1.0)
    cache = PodCache(store, slack=0.0)
    (pod,) = cache.pods()
    stamped, release = threading.Event(), threading.Event()

    def long_bind() -> None:
        with store.write_session() as s:
            s.execute(update(PodRow).where(PodRow.id == pod.id).values(node="n1", written_at=time.time()))
            stamped.set()
            release.wait(10)

    writer = threading.Thread(target=long_bind)
    writer.start()
    assert stamped.wait(10)
    time.sleep(0.02)  # the read begins after the rows were stamped
    read_changes = cache._read_changes

    def read_then_commit(since: float) -> None:
        read_changes(since)  # the write is not committed yet: not seen
        release.set()
        writer.join(10)

    cache._read_changes = read_then_commit  # type: ignore[method-assign]
    assert cache.pods()[0].node is None
    cache._read_changes = read_changes  # type: ignore[method-assign]
    time.sleep(0.02)
    assert cache.pods()[0].node == "n1"
    store.close()


def test_rows_are_counted_only_after_a_delete_moved_the_serial_or_after_count_every(
    tmp_path: Path,
) -> None:
    """Counting 150,000 rows cost 10 ms, and readers counted them every second for the
    deletes of other processes: now a read counts them only when the pods' serial moved
    since the last count (a delete of this process or of another sharing the database,
    through a statement or a row deleted through the session), and every `count_every`
    seconds for a row deleted behind the serial's back (by hand, or by an older release)."""
    from sqlalchemy import create_engine, delete, event, text

    url = f"sqlite:///{tmp_path / 's.db'}"
    store = Store(url)
    other = Store(url, keys=store.keys)
    store.apply_pod_changes(
        create=[(_pod(i), "new") for i in range(6)], stop=[], bind={}, pending_reasons={}, now=1.0
    )
    cache = PodCache(store, slack=0.0, count_every=3600.0, count_gap=0.0)
    counts: list[str] = []
    event.listen(
        store.engine,
        "before_cursor_execute",
        lambda _c, _k, statement, *_: counts.append(statement) if "count(" in statement else None,
    )
    assert len(cache.pods()) == 6
    first, second, third = sorted(cache.pods(), key=lambda p: p.id)[:3]  # the first read: counted
    counts.clear()
    store.apply_pod_changes(create=[], stop=[], bind={}, pending_reasons={first.id: "waiting"}, now=2.0)
    assert {p.id: p.reason for p in cache.pods()}[first.id] == "waiting"
    assert cache.pods() and counts == []  # writes that deleted nothing, and quiet reads: no count
    store.apply_pod_changes(create=[], stop=[(first, "gone")], bind={}, pending_reasons={}, now=3.0)
    assert first.id not in {p.id for p in cache.pods()} and len(counts) == 1  # never placed: deleted
    with other.write_session() as s:  # another process deletes one: seen at the next read
        s.execute(delete(PodRow).where(PodRow.id == second.id))
    assert second.id not in {p.id for p in cache.pods()} and len(counts) == 2
    assert cache.pods() and len(counts) == 2
    behind = create_engine(url)  # not through a store: the serial does not move
    with behind.begin() as conn:
        conn.execute(text("DELETE FROM pods WHERE id = :id"), {"id": third.id})
    behind.dispose()
    assert third.id in {p.id for p in cache.pods()}  # not counted yet
    cache.count_every = 0.0
    assert third.id not in {p.id for p in cache.pods()}
    assert cache.pods() == tuple(store.pods())
    other.close()
    store.close()


def test_deleted_rows_are_dropped_by_their_deletion_rows_without_reading_every_id(url: str) -> None:
    """While a rollout deleted pods, each read found the count changed and read every pod's
    id (150,000 at scale), ten times a second in the agents' server. A trigger now leaves a
    row in `pod_deletions` at every delete, whoever made it, and a read drops the pods it
    names, unless the row is there again (a StatefulSet's pod comes back under its name).
    A delete without its row (the trigger gone) is still found by reading every id."""
    from sqlalchemy import create_engine, delete, event, text

    from gitops.store.tables import PodDeletionRow

    store = Store(url)
    other = Store(url, keys=store.keys)
    pods = [_pod(i) for i in range(8)]
    store.apply_pod_changes(create=[(p, "new") for p in pods], stop=[], bind={}, pending_reasons={}, now=1.0)
    cache = PodCache(store, slack=0.5)
    assert len(cache.pods()) == 8
    every_id: list[str] = []
    event.listen(
        store.engine,
        "before_cursor_execute",
        lambda _c, _k, sql, *_: (
            every_id.append(sql) if " ".join(sql.split()) == "SELECT pods.id FROM pods" else None
        ),
    )
    ids = sorted(p.id for p in pods)
    # Deleted through this store (never placed: deleted at once), through another, by hand.
    store.apply_pod_changes(create=[], stop=[(pods[0], "gone")], bind={}, pending_reasons={}, now=2.0)
    assert ids[0] not in {p.id for p in cache.pods()}
    with other.write_session() as s:
        s.execute(delete(PodRow).where(PodRow.id.in_(ids[1:3])))
    behind = create_engine(url)  # not through a store: its serial does not move, the count does
    with behind.begin() as conn:
        conn.execute(text("DELETE FROM pods WHERE id = :id"), {"id": ids[3]})
    cache.count_every = 0.0
    assert {p.id for p in cache.pods()} == set(ids[4:])
    # Deleted and written again under its name: kept, as it is now.
    with other.write_session() as s:
        s.execute(delete(PodRow).where(PodRow.id == ids[4]))
    other.apply_pod_changes(
        create=[(dataclasses.replace(pods[4], template_hash="again"), "back")],
        stop=[],
        bind={},
        pending_reasons={},
        now=3.0,
    )
    assert {p.id: p.template_hash for p in cache.pods()}[ids[4]] == "again"
    assert every_id == []
    assert cache.pods() == tuple(store.pods())
    # While pods are deleted one after another, the rows are counted at most every
    # `count_gap` seconds (counting 150,000 rows was a tenth of the agents' server's time
    # during a rollout); the deletes between are found by their rows all the same.
    counts: list[str] = []

    def counted(_c: object, _k: object, sql: str, *_: object) -> None:
        if "count(" in sql:
            counts.append(sql)

    extra = [dataclasses.replace(_pod(100 + i), name=PodName(f"extra-{i}")) for i in range(3)]
    store.apply_pod_changes(create=[(p, "new") for p in extra], stop=[], bind={}, pending_reasons={}, now=3.5)
    cache.count_gap = cache.count_every = 3600.0
    cache.pods()
    event.listen(store.engine, "before_cursor_execute", counted)
    for pod in extra:
        store.apply_pod_changes(create=[], stop=[(pod, "gone")], bind={}, pending_reasons={}, now=3.6)
        assert pod.id not in {p.id for p in cache.pods()}
    assert len(counts) <= 1 and every_id == []  # (one at most: the first, if the gap had passed)
    event.remove(store.engine, "before_cursor_execute", counted)
    cache.count_gap = cache.count_every = 0.0
    assert cache.pods() == tuple(store.pods())
    # A delete that left no row (the trigger dropped by hand): found by reading every id.
    with behind.begin() as conn:
        conn.execute(text("DROP TRIGGER pods_deleted" + (" ON pods" if "postgresql" in url else "")))
        conn.execute(text("DELETE FROM pods WHERE id = :id"), {"id": ids[5]})
    assert ids[5] not in {p.id for p in cache.pods()} and len(every_id) == 1
    assert cache.pods() == tuple(store.pods())
    behind.dispose()
    # Old deletion rows go with the next transaction that deletes pods.
    with store.write_session() as s:
        s.execute(text("UPDATE pod_deletions SET deleted_at = 0"))
    store.apply_pod_changes(create=[], stop=[(pods[6], "gone")], bind={}, pending_reasons={}, now=4.0)
    with store.session() as s:
        assert s.scalars(select(PodDeletionRow.id)).all() == []  # (the trigger is gone: none for it)
    other.close()
    store.close()
