"""The store keeps desired state, revisions, pods and nodes, on SQLite and on PostgreSQL."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text

import gitops.store.store as store_module
from gitops.model import ContainerUsage, Node, NodeName, ObjectKey, Pod, PodId, PodStatus, PodUsage, Revision
from gitops.planner import plan
from gitops.store import Store
from gitops.store.store import TOKEN_MEMORY
from tests.planner.factories import deployment, service


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        yield Store(f"sqlite:///{tmp_path / 'state.db'}")
        return
    yield Store(request.getfixturevalue("postgres_database"))


def rev(n: int) -> Revision:
    return Revision(source="git:test", id=f"{n:040d}", message=f"commit {n}", author="a <a@example.org>")


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    s = Store(f"sqlite:///{tmp_path / 'wal.db'}")
    with s.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"


def test_a_closed_store_leaves_one_self_contained_database_file(tmp_path: Path) -> None:
    s = Store(f"sqlite:///{tmp_path / 'wal.db'}")
    s.apply_revision(rev(1), [deployment("web")], [], 1.0)
    assert (tmp_path / "wal.db-wal").stat().st_size > 0
    s.close()
    wal = tmp_path / "wal.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0  # folded into wal.db
    alone = tmp_path / "copy.db"
    alone.write_bytes((tmp_path / "wal.db").read_bytes())
    assert [o.key.name for o in Store(f"sqlite:///{alone}", keys=s.keys).desired()] == ["web"]
    assert [o.key.name for o in s.desired()] == ["web"]  # still usable


def test_an_applied_revision_becomes_the_desired_state_with_a_summary(store: Store) -> None:
    record = store.apply_revision(rev(1), [deployment(), service("web", {"app": "web"})], [], now=10.0)
    assert record.status == "applied"
    assert record.summary == {
        "created": ["Deployment default/web", "Service default/web"],
        "changed": [],
        "deleted": [],
    }
    assert {m.key for m in store.desired()} == {
        ObjectKey("Deployment", "default", "web"),
        ObjectKey("Service", "default", "web"),
    }
    record = store.apply_revision(rev(2), [deployment(replicas=5)], [], now=11.0)
    assert record.summary == {
        "created": [],
        "changed": ["Deployment default/web"],
        "deleted": ["Service default/web"],
    }
    assert [m.spec["replicas"] for m in store.desired()] == [5]


def test_a_rejected_revision_changes_nothing_but_is_recorded(store: Store) -> None:
    store.apply_revision(rev(1), [deployment()], [], now=10.0)
    record = store.reject_revision(
        rev(2), ["web.yaml:3:5: Deployment default/web: spec.replicas: bad"], [], now=11.0
    )
    assert record.status == "rejected"
    assert [m.spec["replicas"] for m in store.desired()] == [3]
    last = store.last_revision("git:test")
    assert last is not None and last.revision == rev(2).id and last.errors == record.errors


def test_service_addresses_are_stable_unique_and_freed(store: Store) -> None:
    services = [service(f"s{i}", {"app": "x"}) for i in range(20)]
    store.apply_revision(rev(1), services, [], now=1.0)
    first = store.vips()
    assert len(set(first.values())) == 20
    assert all(v.startswith("10.243.") for v in first.values())
    store.apply_revision(rev(2), services[:10], [], now=2.0)
    second = store.vips()
    assert second == {k: v for k, v in first.items() if k in second}
    assert len(second) == 10


def test_one_read_of_every_node_token_serves_the_other_nodes_calls(store: Store) -> None:
    """Each node's token was read alone once a minute: 110 reads a second at 5,000 nodes."""
    for i in range(5):
        store.register_node(Node(NodeName(f"n{i}"), f"192.0.2.{10 + i}", 16000, 64 * 2**30), f"t{i}", now=1.0)
    statements: list[str] = []
    event.listen(store.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    assert all(store.node_for_token(f"n{i}", f"t{i}") for i in range(5))
    assert len([q for q in statements if "token_hash" in q]) == 1
    assert not store.node_for_token("n1", "t2") and not store.node_for_token("n9", "t9")
    store.register_node(Node(NodeName("n3"), "192.0.2.13", 16000, 64 * 2**30), "new", now=2.0, presented="t3")
    assert not store.node_for_token("n3", "t3")  # replaced here: forgotten at once
    assert store.node_for_token("n3", "new")


def test_a_read_of_every_token_begun_before_a_node_registers_again_does_not_bring_its_old_one_back(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read found the old token; the registration committed and forgot it before the
    read was remembered: the old token was then taken for a minute."""
    node = Node(NodeName("n1"), "192.0.2.10", 16000, 64 * 2**30)
    store.register_node(node, "old", now=1.0)
    store.register_node(Node(NodeName("n2"), "192.0.2.11", 16000, 64 * 2**30), "t2", now=1.0)
    read = store_module.all_rows

    def racing(connection: Any, query: Any, **kwargs: Any) -> Any:
        rows = read(connection, query, **kwargs)  # the old token, read
        if "token_hash" in str(query):
            monkeypatch.setattr(store_module, "all_rows", read)
            store.register_node(node, "new", now=2.0, presented="old")  # committed meanwhile
        return rows

    monkeypatch.setattr(store_module, "all_rows", racing)
    assert store.node_for_token("n2", "t2")  # a read of every node's token
    assert not store.node_token_remembered("n1", "old")
    assert not store.node_for_token("n1", "old") and store.node_for_token("n1", "new")


def test_tokens_are_read_again_before_they_are_forgotten(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`AgentGate` has them read again once due, so a node calling every second is never
    found forgotten (and its call never waits for a read)."""
    store.register_node(Node(NodeName("n1"), "192.0.2.10", 16000, 64 * 2**30), "t1", now=1.0)
    clock = [time.monotonic() + 1.0]  # after the registration's
    monkeypatch.setattr("gitops.store.store.time.monotonic", lambda: clock[0])
    assert store.node_for_token("n1", "t1") and not store.tokens_due()
    clock[0] += TOKEN_MEMORY / 2
    assert store.tokens_due() and store.node_token_remembered("n1", "t1")
    store.renew_tokens()
    assert not store.tokens_due()
    clock[0] += TOKEN_MEMORY * 0.9  # past the first read's memory, not the renewal's
    assert store.node_token_remembered("n1", "t1")


def test_a_report_does_not_read_its_pods_specs(store: Store) -> None:
    """Decoding each reported pod's spec was 92% of writing a report while 150,000 pods came up."""
    store.register_node(Node(NodeName("n1"), "192.0.2.10", 16000, 64 * 2**30), "t", now=1.0)
    result = plan([deployment(replicas=2)], [])
    store.apply_pod_changes(
        create=[(a.pod, a.reason) for a in result.create],
        stop=[],
        bind={a.pod.id: NodeName("n1") for a in result.create},
        pending_reasons={},
        now=2.0,
    )
    statements: list[str] = []
    event.listen(store.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    ids = sorted(a.pod.id for a in result.create)
    assert store.heartbeat("n1", [PodStatus(pod_id, "Running", ready=True) for pod_id in ids], now=3.0)
    assert not [q for q in statements if "pods.spec" in q], statements
    assert [(p.phase, p.ready, p.spec) for p in store.pods()] == [
        ("Running", True, result.create[0].pod.spec)
    ] * 2


def test_pods_are_created_bound_and_report_status_only_from_their_node(store: Store) -> None:
    store.register_node(Node(NodeName("n1"), "192.0.2.10", 16000, 64 * 2**30), "token-1", now=1.0)
    store.register_node(Node(NodeName("n2"), "192.0.2.11", 16000, 64 * 2**30), "token-2", now=1.0)
    assert store.node_for_token("n1", "token-1")
    assert not store.node_for_token("n1", "token-2")
    result = plan([deployment(replicas=2)], [])
    store.apply_pod_changes(
        create=[(a.pod, a.reason) for a in result.create], stop=[], bind={}, pending_reasons={}, now=2.0
    )
    a, b = (p.id for p in store.pods())
    store.apply_pod_changes(
        create=[], stop=[], bind={a: "n1"}, pending_reasons={b: "0/2 nodes: 2 insufficient cpu"}, now=3.0
    )
    pods = {p.id: p for p in store.pods()}
    assert pods[a].node == "n1"
    assert pods[b].node is None and pods[b].reason == "0/2 nodes: 2 insufficient cpu"
    store.heartbeat("n2", [PodStatus(a, "Running", True, pod_ip="172.17.0.9")], now=4.0)
    assert store.pods(node="n1")[0].phase == "Pending"
    store.heartbeat(
        "n1", [PodStatus(a, "Running", True, pod_ip="172.17.0.2", host_ports=((80, "TCP", 32000),))], now=4.0
    )
    pod = store.pods(node="n1")[0]
    assert (pod.phase, pod.ready, pod.pod_ip, pod.host_ports) == (
        "Running",
        True,
        "172.17.0.2",
        ((80, "TCP", 32000),),
    )
    assert (
        dataclasses.replace(pod, phase="Pending", ready=False, pod_ip="", host_ports=(), reason="").spec
        == result.create[0].pod.spec
    )


def test_the_change_marker_moves_with_every_pod_write_and_only_then(store: Store) -> None:
    """Its pods' part is the count and the newest `written_at`: a status report, a bind,
    a new pod and a deleted one each move it; a report that changes nothing does not."""
    store.register_node(Node(NodeName("n1"), "192.0.2.10", 16000, 64 * 2**30), "token-1", now=1.0)
    result = plan([deployment(replicas=2)], [])
    marker = store.change_marker()
    store.apply_pod_changes(
        create=[(a.pod, a.reason) for a in result.create], stop=[], bind={}, pending_reasons={}, now=2.0
    )
    assert store.change_marker() != marker
    a, b = (p.id for p in store.pods())
    moves = [
        lambda: store.apply_pod_changes(create=[], stop=[], bind={a: "n1"}, pending_reasons={}, now=3.0),
        lambda: store.heartbeat("n1", [PodStatus(a, "Running", True, pod_ip="172.17.0.2")], now=4.0),
        lambda: store.heartbeat("n1", [PodStatus(a, "Running", False, pod_ip="172.17.0.2")], now=4.0),
        lambda: store.apply_pod_changes(
            create=[], stop=[], bind={}, pending_reasons={}, now=5.0, delete_now=[(store.pods()[1], "gone")]
        ),
    ]
    for step, move in enumerate(moves):
        before = store.change_marker()
        move()
        assert store.change_marker() != before, step
    assert [p.id for p in store.pods()] == [a] and b
    before = store.change_marker()
    store.heartbeat("n1", [PodStatus(a, "Running", False, pod_ip="172.17.0.2")], now=6.0)  # as before
    assert store.change_marker() == before


def test_the_change_marker_counts_the_pods_only_at_the_resync(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agents' watch asks for the marker every second: counting 150,000 pods in it cost
    10 ms each time. A delete moves the pods' serial, which the marker holds; the rows are
    counted at most every `serials.RESYNC` seconds (for a row deleted by hand)."""
    counts: list[str] = []
    event.listen(
        store.engine,
        "before_cursor_execute",
        lambda _c, _k, statement, *_: counts.append(statement) if "count(pods." in statement else None,
    )
    store.change_marker()
    assert len(counts) == 1  # the first: counted
    store.change_marker()
    store.change_marker()
    assert len(counts) == 1
    monkeypatch.setattr(store_module.serials, "RESYNC", 0.0)
    store.change_marker()
    assert len(counts) == 2


def test_a_node_without_heartbeat_is_not_ready(store: Store) -> None:
    store.register_node(Node(NodeName("n1"), "192.0.2.10", 16000, 64 * 2**30), "t", now=100.0)
    assert store.nodes(now=120.0)[0].node.ready
    assert not store.nodes(now=100.0 + store.heartbeat_grace + 1)[0].node.ready


def test_heartbeats_written_together_never_move_a_nodes_time_back(store: Store) -> None:
    """`record_heartbeats` hands its rows to the driver itself, in the database's own
    parameter style (positional on SQLite, named on PostgreSQL)."""
    for name in ("n1", "n2", "n3"):
        store.register_node(Node(NodeName(name), "192.0.2.10", 16000, 64 * 2**30), f"t-{name}", now=100.0)
    store.record_heartbeats({"n1": 105.0, "n2": 103.0})
    store.record_heartbeats({"n1": 104.0, "n2": 106.0, "gone": 107.0})  # n1's is older; no node "gone"
    beats = {r.node.name: r.heartbeat_at for r in store.nodes(now=108.0)}
    assert beats == {"n1": 105.0, "n2": 106.0, "n3": 100.0}


def test_a_node_unchanged_but_for_its_heartbeat_is_the_same_object_pass_after_pass(store: Store) -> None:
    """Every pass decoded every node's row into a new `Node` (5,000 nodes: 80-150 ms)."""
    labelled = Node(NodeName("n1"), "192.0.2.10", 16000, 64 * 2**30, labels=(("zone", "a"),))
    store.register_node(labelled, "t", now=100.0)
    store.register_node(Node(NodeName("n2"), "192.0.2.11", 16000, 64 * 2**30), "t2", now=100.0)
    first = {r.node.name: r for r in store.nodes(now=101.0)}
    store.record_heartbeats({"n1": 105.0})
    again = {r.node.name: r for r in store.nodes(now=106.0)}
    assert again["n1"].node is first["n1"].node and again["n2"].node is first["n2"].node
    assert again["n1"].heartbeat_at == 105.0  # the record is new, the node the same
    assert again["n1"].node.labels == (("zone", "a"),)
    store.register_node(
        dataclasses.replace(labelled, labels=(("zone", "b"),)), "t3", now=107.0, presented="t"
    )
    late = 100.0 + store.heartbeat_grace + 1
    changed = {r.node.name: r for r in store.nodes(now=late)}
    assert changed["n1"].node.labels == (("zone", "b"),) and changed["n1"].node.ready
    assert not changed["n2"].node.ready and changed["n2"].not_ready_since == 100.0 + store.heartbeat_grace
    assert changed["n2"].node.reason == f"no heartbeat for {late - 100.0:.0f}s"


def test_stopping_a_placed_pod_drains_it_until_its_agent_reports_it_gone(store: Store) -> None:
    store.register_node(Node(NodeName("n1"), "192.0.2.10", 16000, 64 * 2**30), "t", now=1.0)
    result = plan([deployment(replicas=2)], [])
    store.apply_pod_changes(
        create=[(a.pod, a.reason) for a in result.create], stop=[], bind={}, pending_reasons={}, now=2.0
    )
    placed, unplaced = store.pods()
    store.apply_pod_changes(create=[], stop=[], bind={placed.id: "n1"}, pending_reasons={}, now=3.0)
    store.apply_pod_changes(
        create=[],
        stop=[(placed, "scale down"), (unplaced, "scale down")],
        bind={},
        pending_reasons={},
        now=4.0,
    )
    (draining,) = store.pods()
    assert (draining.id, draining.terminating_at, draining.reason) == (
        placed.id,
        4.0,
        "Terminating: scale down",
    )
    store.heartbeat("n1", [], now=5.0, stopped=[placed.id])
    assert store.pods() == []


def test_a_batch_of_reports_reads_its_rows_at_once_whatever_its_size(store: Store) -> None:
    """While a rollout replaces pods, each report read its node's row and each pod it had
    stopped apart, every read flushing the reports before it: a fifth of the agents'
    server's time. A batch now reads its nodes and its pods in one statement each (and the
    pods that change, or are stopped, as objects in one more)."""
    from gitops.store.store import Report

    names = [f"n{i}" for i in range(12)]
    for name in names:
        store.register_node(Node(NodeName(name), "192.0.2.10", 16000, 64 * 2**30), f"t-{name}", now=1.0)
    result = plan([deployment(replicas=36)], [])
    store.apply_pod_changes(
        create=[(a.pod, a.reason) for a in result.create], stop=[], bind={}, pending_reasons={}, now=2.0
    )
    pods = sorted(store.pods(), key=lambda p: p.id)
    bind = {p.id: NodeName(names[i % 12]) for i, p in enumerate(pods)}
    store.apply_pod_changes(create=[], stop=[], bind=bind, pending_reasons={}, now=3.0)
    stopping = pods[:12]  # one on each node
    store.apply_pod_changes(
        create=[], stop=[(p, "rolled") for p in stopping], bind={}, pending_reasons={}, now=4.0
    )
    reports = [
        Report(
            name,
            tuple(PodStatus(p.id, "Running", ready=True) for p in pods[12:] if bind[p.id] == name),
            5.0,
            tuple(p.id for p in stopping if bind[p.id] == name),
        )
        for name in names
    ]
    reads: list[str] = []

    def note(_c: object, _k: object, statement: str, *_: object) -> None:
        read = statement.lstrip().upper().startswith("SELECT")
        if read and ("FROM pods" in statement or "FROM nodes" in statement):
            reads.append(statement)

    event.listen(store.engine, "before_cursor_execute", note)
    assert store.heartbeats(reports) == [True] * 12
    event.remove(store.engine, "before_cursor_execute", note)
    # The nodes, the pods' status columns, the pods written (before: a node and a stopped pod each report).
    assert len(reads) == 3
    left = store.pods()
    assert {p.id for p in left} == {p.id for p in pods[12:]}
    assert all(p.phase == "Running" and p.ready for p in left)
    assert {r.node.name: r.heartbeat_at for r in store.nodes(now=5.0)} == dict.fromkeys(names, 5.0)
    # The same pod stopped in two reports of one batch (an agent's report sent again): the
    # first deletes it, the second finds it gone, as when each read its rows after the other.
    store.apply_pod_changes(create=[], stop=[(pods[12], "rolled")], bind={}, pending_reasons={}, now=6.0)
    twice = Report(bind[pods[12].id], (), 7.0, (pods[12].id,))
    assert store.heartbeats([twice, twice]) == [True, False]
    assert pods[12].id not in {p.id for p in store.pods()}


def _bound_on_n1(store: Store, replicas: int) -> list[Pod]:
    """Nodes n1 and n2, and `replicas` pods of a Deployment created and bound to n1."""
    for name in ("n1", "n2"):
        store.register_node(Node(NodeName(name), "192.0.2.10", 16000, 64 * 2**30), f"t-{name}", now=1.0)
    result = plan([deployment(replicas=replicas)], [])
    store.apply_pod_changes(
        create=[(a.pod, a.reason) for a in result.create], stop=[], bind={}, pending_reasons={}, now=2.0
    )
    pods = sorted(store.pods(), key=lambda p: p.id)
    store.apply_pod_changes(
        create=[], stop=[], bind={p.id: NodeName("n1") for p in pods}, pending_reasons={}, now=3.0
    )
    return pods


def test_a_report_of_pods_as_they_are_reads_none_as_objects_and_writes_nothing(store: Store) -> None:
    """A report holds every pod of its node, most as they were. Those whose status would
    change nothing are compared on their status columns only, not read and flushed as the
    session's objects; a status that changes something, one with free text (redacted as it
    is written), and a pod reported twice in a batch (the last wins) are written as ever."""
    from gitops.model import ContainerStatus
    from gitops.store.store import Report

    pods = _bound_on_n1(store, 4)
    running = (ContainerStatus("main", "running", ready=True),)

    def status(pod: Pod, **changed: object) -> PodStatus:
        fields: dict[str, Any] = {"phase": "Running", "ready": True, "pod_ip": "10.244.0.5"}
        fields |= {"host_ports": ((80, "TCP", 8080),), "containers": running}
        return PodStatus(pod.id, **(fields | changed))

    assert store.heartbeats([Report("n1", tuple(status(p) for p in pods), 4.0)]) == [True]
    statements: list[str] = []

    def note(_c: object, _k: object, statement: str, *_: object) -> None:
        statements.append(statement.lstrip().upper())

    event.listen(store.engine, "before_cursor_execute", note)
    again = Report("n1", tuple(status(p) for p in pods), 5.0)
    elsewhere = Report("n2", (status(pods[0], phase="Failed"),), 5.0)  # not n2's pod: passed by
    assert store.heartbeats([again]) == [False]
    assert store.heartbeats([elsewhere]) == [False]
    event.remove(store.engine, "before_cursor_execute", note)
    assert not [s for s in statements if s.startswith("UPDATE PODS") or s.startswith("INSERT INTO EVENTS")]
    as_objects = [s for s in statements if s.startswith("SELECT PODS.ID, PODS.NAMESPACE")]
    assert not as_objects
    assert {p.id: (p.phase, p.ready) for p in store.pods()} == {p.id: ("Running", True) for p in pods}

    restarted = status(pods[1], restarts=1)
    texted = status(pods[2], reason="Back-off: password=hunter2")
    first, last = status(pods[3], ready=False), status(pods[3])  # the same pod twice: the last wins
    reports = [Report("n1", (status(pods[0]), restarted, texted, first), 6.0), Report("n1", (last,), 6.0)]
    assert store.heartbeats(reports) == [True, True]
    after = {p.id: p for p in store.pods()}
    assert after[pods[0].id].restarts == 0 and after[pods[1].id].restarts == 1
    assert after[pods[2].id].reason == "Back-off: password=hunter2"
    assert after[pods[3].id].ready


def test_a_batch_judges_no_pod_an_earlier_report_of_it_may_write(store: Store) -> None:
    """A batch's rows are read before its first report is written: a pod another report of
    the same batch writes is written as ever, not judged from them. A node whose runtime
    failed and came back within one batch has its pods ready again; a pod stopped on one
    node and found running on another in one batch is adopted there."""
    from gitops.planner.plan import configs_of
    from gitops.planner.podspec import resolve_template
    from gitops.store.store import Report
    from tests.planner.factories import manifest

    pods = _bound_on_n1(store, 2)
    ready = tuple(PodStatus(p.id, "Running", ready=True) for p in pods)
    assert store.heartbeats([Report("n1", ready, 4.0)]) == [True]
    failed, back = Report("n1", (), 5.0, runtime_error="cannot reach Docker"), Report("n1", ready, 5.0)
    assert store.heartbeats([failed, back]) == [True, True]
    assert all(p.ready for p in store.pods())

    pod = {"containers": [{"name": "main", "image": "db:1"}]}
    db = manifest(
        "StatefulSet",
        "db",
        spec={
            "replicas": 2,
            "serviceName": "db",
            "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}}, "spec": pod},
        },
    )
    store.apply_revision(Revision("git:x", "a" * 40), [db], [], now=6.0)
    template = resolve_template(db, configs_of([db])).hash
    owner = "StatefulSet/default/db"
    found = PodStatus(PodId("default/db-1"), "Running", True, template_hash=template, owner=owner)
    assert store.heartbeat("n1", [found], now=7.0, adopt=True)
    (db1,) = [p for p in store.pods() if p.name == "db-1"]
    store.apply_pod_changes(create=[], stop=[(db1, "moved")], bind={}, pending_reasons={}, now=8.0)
    gone, elsewhere = Report("n1", (), 9.0, (db1.id,)), Report("n2", (found,), 9.0, adopt=True)
    assert store.heartbeats([gone, elsewhere]) == [True, True]
    (db1,) = [p for p in store.pods() if p.name == "db-1"]
    assert db1.node == "n2" and db1.terminating_at is None


def test_real_nodes_register_whatever_their_size(store: Store) -> None:
    """Sizes are 64-bit on both databases: 0.1 overflowed INTEGER on PostgreSQL from 2 GiB."""
    huge = Node(NodeName("big"), "192.0.2.30", 256_000, 4 * 2**40, max_pods=250)
    store.register_node(huge, "t", now=1.0)
    store.register_node(Node(NodeName("normal"), "192.0.2.31", 16_000, 64 * 2**30), "u", now=1.0)
    sizes = {r.node.name: (r.node.cpu_milli, r.node.memory_bytes) for r in store.nodes(now=1.0)}
    assert sizes == {"big": (256_000, 4 * 2**40), "normal": (16_000, 64 * 2**30)}


def test_the_desired_objects_are_decoded_again_only_after_a_revision(tmp_path: Path) -> None:
    """Every controller pass and every move of the endpoints asks for every desired object:
    they are read again only once a revision was applied, here or by another control plane
    sharing the database."""
    from sqlalchemy import event

    first = Store(f"sqlite:///{tmp_path / 's.db'}")
    second = Store(f"sqlite:///{tmp_path / 's.db'}", keys=first.keys)  # another server, one database
    first.apply_revision(Revision("git:x", "1" * 40), [deployment(), service("web", {"app": "web"})], [], 1.0)
    reads: list[str] = []
    event.listen(
        first.engine,
        "before_cursor_execute",
        lambda *a: reads.append(a[2]) if a[2].startswith("SELECT objects.kind") else None,  # whole rows
    )
    assert sorted(str(m.key) for m in first.desired()) == ["Deployment default/web", "Service default/web"]
    assert len(first.desired()) == 2 and len(reads) == 1
    second.apply_revision(Revision("git:x", "2" * 40), [deployment(replicas=5)], [], 2.0)
    assert [(str(m.key), m.body["spec"]["replicas"]) for m in first.desired()] == [
        ("Deployment default/web", 5)
    ]
    assert len(reads) == 2
    first.close()
    second.close()


def test_rollout_states_are_written_only_where_they_differ_with_an_event_when_the_status_moves(
    store: Store,
) -> None:
    from gitops.model import RolloutState

    def state(name: str, status: str = "progressing", mark: int = 0) -> RolloutState:
        key = ObjectKey("Deployment", "default", name)
        return RolloutState(key, "h1", 1.0, 1.0, (mark, mark), status)  # type: ignore[arg-type]

    a, b, c = state("a"), state("b"), state("c")
    store.save_rollouts({s.deployment: s for s in (a, b)}, now=1.0)  # not read before: read in the write
    assert store.rollouts() == {a.deployment: a, b.deployment: b}
    statements: list[str] = []
    event.listen(store.engine, "before_cursor_execute", lambda *x: statements.append(x[2]))
    moved, done = state("a", mark=1), state("b", "complete", 2)
    store.save_rollouts({a.deployment: moved, b.deployment: done, c.deployment: c}, now=2.0)
    assert not [q for q in statements if q.startswith("SELECT") and "rollouts" in q]  # as read: none loaded
    assert store.rollouts() == {a.deployment: moved, b.deployment: done, c.deployment: c}
    rollout_events = [(e.object, e.message) for e in store.events() if e.reason == "Rollout"]
    assert sorted(rollout_events) == [
        ("Deployment default/a", "progressing h1"),
        ("Deployment default/b", "complete h1"),
        ("Deployment default/b", "progressing h1"),
        ("Deployment default/c", "progressing h1"),
    ]
    store.save_rollouts({c.deployment: c}, now=3.0)
    assert store.rollouts() == {c.deployment: c}


def test_measurements_of_several_nodes_are_stored_at_once_each_nodes_as_it_last_said(store: Store) -> None:
    """Agents' measurements kept with their heartbeats are written in one transaction: each
    node's rows are those of its last report, and a pod's row is that of the node that
    reported it last (a pod moved, or reported twice in one batch)."""

    def sample(pod: str, cpu: float, at: float = 1.0) -> PodUsage:
        return PodUsage(PodId(pod), at, (ContainerUsage("main", cpu, 2**20),), window=15.0)

    store.record_usage({"a": [sample("ns/p1", 1.0), sample("ns/p2", 2.0)], "b": [sample("ns/p3", 3.0)]})
    assert {p: u.containers[0].cpu_milli for p, u in store.usage().items()} == {
        "ns/p1": 1.0,
        "ns/p2": 2.0,
        "ns/p3": 3.0,
    }
    # a no longer reports p2; p3 moved from b to a; b, not in this batch, keeps nothing of p3
    store.record_usage({"a": [sample("ns/p1", 10.0, 2.0), sample("ns/p3", 30.0, 2.0)]})
    got = store.usage()
    assert {p: u.containers[0].cpu_milli for p, u in got.items()} == {"ns/p1": 10.0, "ns/p3": 30.0}
    assert got[PodId("ns/p1")].at == 2.0 and got[PodId("ns/p1")].window == 15.0
    # One pod from two nodes in one batch: the later node's (a moved pod's new node).
    store.record_usage({"a": [sample("ns/p4", 4.0)], "b": [sample("ns/p4", 40.0)]})
    assert store.usage()[PodId("ns/p4")].containers[0].cpu_milli == 40.0
    assert set(store.usage()) == {"ns/p4"}  # a and b both reported again: only p4 now
    store.record_usage({})  # nothing kept: no write
    assert set(store.usage()) == {"ns/p4"}
