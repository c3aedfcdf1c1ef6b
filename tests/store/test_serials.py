"""Rows a controller pass keeps (nodes, rollouts, workload states) are read again only when
their table's serial moved (`gitops.store.serials`), and what it makes of them is what a
whole read gives: after writes of this control plane and of another on the same database,
as heartbeats come and stop, and at the resync when a row changed behind the serial's back."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import delete, update

from gitops.model import JobState, Node, NodeName, ObjectKey, Pod, PodName, PodStatus, RolloutState
from gitops.store import Store, serials
from gitops.store.tables import NodeRow, PodRow, SerialRow
from tests.specs import pod_spec

GRACE = 40.0  # the store's default heartbeat grace


def node(name: str, address: str = "192.0.2.10", labels: tuple[tuple[str, str], ...] = ()) -> Node:
    return Node(NodeName(name), address, 4000, 2**33, labels=labels)


def as_whole_read(store: Store, now: float) -> tuple[tuple[Node, ...], dict[NodeName, float]]:
    """What `node_states` gives, made from a whole read (`nodes`)."""
    records = store.nodes(now)
    since = {r.node.name: r.not_ready_since for r in records if r.not_ready_since is not None}
    return tuple(r.node for r in records), since


def check(store: Store, now: float) -> tuple[tuple[Node, ...], dict[NodeName, float]]:
    """`node_states` and `node_places` (the agents' watch reads the same kept rows) as a
    whole read gives them."""
    got = store.node_states(now)
    nodes, since = as_whole_read(store, now)
    assert got[0] == nodes
    assert got[1] == pytest.approx(since, abs=1e-4)
    assert store.node_places(now) == tuple((n.name, n.address, n.pod_cidr, n.ready) for n in nodes)
    return got


def test_a_quiet_pass_reads_no_node_row_and_gets_the_very_same_nodes(two: tuple[Store, Store]) -> None:
    mine, _ = two
    now = time.time()
    for i in range(3):
        mine.register_node(node(f"n{i}"), f"t{i}", now=now)
    first = check(mine, now)
    reads = mine._node_rows.reads
    mine.record_heartbeats({"n0": now + 5, "n1": now + 5, "n2": now + 5})  # not a change of a row
    places = mine.node_places(now + 6)
    again = mine.node_states(now + 6)
    assert mine._node_rows.reads == reads
    assert again[0] is first[0]  # the very tuple: a quiet pass compares nothing
    assert again[1] == {}
    assert mine.node_places(now + 7) is places


def test_another_control_planes_writes_are_seen_at_the_next_pass(two: tuple[Store, Store]) -> None:
    mine, other = two
    now = time.time()
    mine.register_node(node("n0"), "t0", now=now)
    check(mine, now)
    reads = mine._node_rows.reads

    other.register_node(node("n1", "192.0.2.11", labels=(("zone", "b"),)), "t1", now=now + 1)
    nodes, _ = check(mine, now + 1)
    assert [n.name for n in nodes] == ["n0", "n1"] and nodes[1].labels == (("zone", "b"),)

    other.heartbeat("n0", [], now + 2, runtime_error="docker.sock: connection refused")
    nodes, since = check(mine, now + 2)
    assert not nodes[0].ready and "connection refused" in nodes[0].reason
    assert since == {NodeName("n0"): pytest.approx(now + 2)}

    other.heartbeat("n0", [], now + 3)  # the runtime is back
    assert all(n.ready for n in check(mine, now + 3)[0])

    other.delete_node("n1", now + 4)
    assert [n.name for n in check(mine, now + 4)[0]] == ["n0"]
    assert mine._node_rows.reads == reads + 4  # each change read once, and only then


def test_readiness_follows_the_heartbeats_without_reading_the_rows(two: tuple[Store, Store]) -> None:
    mine, other = two
    now = time.time()
    for i in range(3):
        mine.register_node(node(f"n{i}"), f"t{i}", now=now)
    first, _ = check(mine, now)
    reads = mine._node_rows.reads
    # n1 falls silent: the others' heartbeats go on, written by the other control plane.
    for t in (20.0, 40.0, 60.0):
        other.record_heartbeats({"n0": now + t, "n2": now + t})
    nodes, since = check(mine, now + GRACE + 25)
    assert [n.ready for n in nodes] == [True, False, True]
    assert "no heartbeat for 65s" in nodes[1].reason
    assert since == {NodeName("n1"): pytest.approx(now + GRACE)}
    later, _ = check(mine, now + GRACE + 30)  # still silent: only its reason moved
    assert later[1].reason == "no heartbeat for 70s" and later[0] is nodes[0] and later[2] is nodes[2]
    other.record_heartbeats({"n1": now + GRACE + 31})  # back
    back, since = check(mine, now + GRACE + 32)
    assert all(n.ready for n in back) and since == {}
    assert back[1] == first[1] and back[0] is nodes[0]
    assert mine._node_rows.reads == reads


def test_a_row_changed_behind_the_serial_is_read_at_the_resync(two: tuple[Store, Store]) -> None:
    mine, _ = two
    now = time.time()
    mine.register_node(node("n0"), "t0", now=now)
    check(mine, now)
    with mine.write_session() as s:  # by hand: the serial stays
        s.execute(update(NodeRow).where(NodeRow.name == "n0").values(address="192.0.2.99"))
    assert mine.node_states(now)[0][0].address == "192.0.2.10"  # kept
    mine._node_rows.resync = 0.0
    assert mine.node_states(now)[0][0].address == "192.0.2.99"


def test_without_its_serial_a_table_is_read_every_time(two: tuple[Store, Store]) -> None:
    mine, _ = two
    now = time.time()
    mine.register_node(node("n0"), "t0", now=now)
    with mine.write_session() as s:
        s.query(SerialRow).filter(SerialRow.name == "nodes").delete()
    reads = mine._node_rows.reads
    mine.node_states(now)
    mine.node_states(now)
    assert mine._node_rows.reads == reads + 2


def test_rollouts_and_workload_states_written_elsewhere_are_read_again(two: tuple[Store, Store]) -> None:
    mine, other = two
    now = time.time()
    web = ObjectKey("Deployment", "default", "web")
    job = ObjectKey("Job", "default", "migrate")
    assert mine.rollouts() == {} and mine.workload_states() == {}
    reads = (mine._rollouts_kept.reads, mine._workload_states_kept.reads)
    assert mine.rollouts() == {} and mine.workload_states() == {}
    assert (mine._rollouts_kept.reads, mine._workload_states_kept.reads) == reads  # nothing written

    other.rollouts()
    other.save_rollouts({web: RolloutState(web, "abc", now, now)}, now)
    other.workload_states()
    other.save_workload_states({job: JobState(job, "t1", started_at=now)}, now)
    assert mine.rollouts()[web].target == "abc"
    assert mine.workload_states()[job] == JobState(job, "t1", started_at=now)

    # This control plane's own write of what it read moves the serial too.
    mine.save_rollouts({web: RolloutState(web, "def", now, now + 1, status="complete")}, now + 1)
    assert mine.rollouts()[web].status == "complete"
    assert other.rollouts()[web] == mine.rollouts()[web]


def test_every_delete_of_pod_rows_moves_the_pods_serial_nothing_else_does(
    two: tuple[Store, Store],
) -> None:
    """Readers keeping the pods count the table only when the pods' serial moved
    (`PodCache`): a delete by a statement, one through the session that is sent only as
    the transaction commits (a pod its agent finished stopping), and one of another
    control plane each move it; a create, a bind, a status and a delete rolled back do not."""
    mine, other = two

    def serial() -> int | None:
        with other.session() as s:
            return serials.current(s, "pods")

    now = time.time()
    mine.register_node(node("n1"), "t1", now=now)
    a, b, c = (
        Pod("default", PodName(f"web-{i}"), ObjectKey("Deployment", "default", "web"), "h", pod_spec("web:1"))
        for i in range(3)
    )
    start = serial()
    assert start is not None
    mine.apply_pod_changes(
        create=[(p, "new") for p in (a, b, c)], stop=[], bind={}, pending_reasons={}, now=now
    )
    mine.apply_pod_changes(create=[], stop=[], bind={a.id: "n1"}, pending_reasons={}, now=now + 1)
    mine.heartbeat("n1", [PodStatus(a.id, "Running", True, pod_ip="172.17.0.2")], now=now + 2)
    mine.apply_pod_changes(create=[], stop=[(a, "scale down")], bind={}, pending_reasons={}, now=now + 3)
    assert serial() == start  # inserts and updates: `written_at` tells them
    mine.heartbeat("n1", [], now=now + 4, stopped=[a.id])  # deleted through the session, sent at commit
    assert serial() == start + 1
    other.apply_pod_changes(
        create=[], stop=[], bind={}, pending_reasons={}, now=now + 5, delete_now=[(b, "gone")]
    )
    assert serial() == start + 2
    with pytest.raises(RuntimeError), mine.write_session() as s:
        s.execute(delete(PodRow).where(PodRow.id == c.id))
        raise RuntimeError("rolled back")
    mine.apply_pod_changes(create=[], stop=[], bind={}, pending_reasons={c.id: "waiting"}, now=now + 6)
    assert serial() == start + 2  # the delete that rolled back left no mark for the next write
    assert [p.id for p in mine.pods()] == [c.id]
