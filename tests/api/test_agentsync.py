"""`AgentReports`: reports arriving together are written together, each caller still
getting its own answer after its report is written."""

from __future__ import annotations

import gc
import json
import threading
import time
import tracemalloc
from pathlib import Path
from typing import ClassVar

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gitops.agents.agent import changed_services, usage_rows
from gitops.agents.usage import ContainerUsage as Figure
from gitops.api.agentsync import AgentReports, SharedEndpoints, keep, kept_measurements, kept_samples
from gitops.api.models import SyncRequest
from gitops.metrics import Metrics, render_usage
from gitops.model import ContainerUsage, Node, NodeName, ObjectKey, PodId, PodUsage
from gitops.store import Report, Store


@pytest.mark.parametrize(("max_batch", "expected"), [(200, [1, 7]), (3, [1, 3, 3, 1])])
def test_reports_arriving_while_one_is_written_are_written_in_one_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_batch: int, expected: list[int]
) -> None:
    """... of at most `max_batch` reports, so that the store's write lock turns over."""
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    for i in range(8):
        store.register_node(Node(NodeName(f"n{i}"), f"192.0.2.{i + 10}", 4000, 2**32), "t", now=0.0)
    reports = AgentReports(store, max_batch=max_batch)
    batches: list[int] = []
    original = store.heartbeats

    def slow(batch: list[Report]) -> list[bool | Exception]:
        batches.append(len(batch))
        time.sleep(0.3)  # while this batch is written, the other reports arrive
        return original(batch)

    monkeypatch.setattr(store, "heartbeats", slow)
    answers: dict[str, bool] = {}

    def report(node: str) -> None:
        answers[node] = reports.write(Report(node, (), now=5.0, runtime_error="docker is gone"))[0]

    first = threading.Thread(target=report, args=("n0",))
    first.start()
    time.sleep(0.1)
    others = [threading.Thread(target=report, args=(f"n{i}",)) for i in range(1, 8)]
    for thread in others:
        thread.start()
    for thread in (first, *others):
        thread.join(10)
    assert batches == expected
    assert answers == {f"n{i}": True for i in range(8)}  # each node's runtime went away: a change
    assert {r.node.name: r.heartbeat_at for r in store.nodes()} == {f"n{i}": 5.0 for i in range(8)}
    store.close()


def test_a_report_that_cannot_be_written_fails_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One report of a batch fails to write: the others are written, and only its caller
    gets the error."""
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    for name in ("n1", "n2", "n3"):
        store.register_node(Node(NodeName(name), "192.0.2.10", 4000, 2**32), "t", now=0.0)
    original = store._heartbeat_in

    def failing(s: object, report: Report, *rest: object, **named: object) -> bool:
        if report.node == "n2":
            raise RuntimeError("disk full")
        return original(s, report, *rest, **named)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "_heartbeat_in", failing)
    results = store.heartbeats([Report(n, (), now=7.0) for n in ("n1", "n2", "n3")])
    assert results[0] is False and results[2] is False
    assert isinstance(results[1], RuntimeError)
    beats = {r.node.name: r.heartbeat_at for r in store.nodes()}
    assert beats == {"n1": 7.0, "n2": 0.0, "n3": 7.0}
    store.close()


def test_nodes_joining_move_the_routes_at_most_once_a_routes_period_and_endpoints_at_once(
    tmp_path: Path,
) -> None:
    """Every agent fetches every route when they move: while many nodes join, the routes
    alone move at most every `routes_every()` seconds (1 s for a small cluster)."""
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    shared = SharedEndpoints(store, clock=lambda: 1.0, ttl=0.0)
    store.register_node(Node(NodeName("n0"), "192.0.2.10", 4000, 2**32), "t", now=1.0)
    first = shared.version()
    assert [name for name, _, _ in shared.routes()] == ["n0"]
    store.register_node(Node(NodeName("n1"), "192.0.2.11", 4000, 2**32), "t", now=1.0)
    assert shared.version() == first and len(shared.routes()) == 1  # within a second of the last move
    time.sleep(shared.routes_every())
    assert shared.version() != first and [name for name, _, _ in shared.routes()] == ["n0", "n1"]


def test_the_nodes_places_are_read_at_most_every_places_period(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every `ttl` on a small cluster; at 5,000 nodes at most every 2 s (each read is 5,000
    rows), however often what else the endpoints depend on moves."""
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    reads: list[int] = []
    original = store.node_places

    def counted(now: float) -> tuple[tuple[str, str, str, bool], ...]:
        reads.append(1)
        return original(now)

    monkeypatch.setattr(store, "node_places", counted)
    shared = SharedEndpoints(store, clock=lambda: 1.0, ttl=0.0)
    store.register_node(Node(NodeName("n0"), "192.0.2.10", 4000, 2**32), "t", now=1.0)
    shared.version()
    shared.version()
    assert len(reads) == 2 and shared.places_every() == 0.0
    shared._nodes = (shared._nodes[0], shared._nodes[1] * 5000)  # as if it had 5,000 nodes
    assert shared.places_every() == 2.0
    shared._places_at = time.monotonic()
    _services(store, "a", ("web", 80))  # endpoints move: read again, the nodes' places not
    shared.version()
    assert len(reads) == 2 and [s["name"] for s in shared.get()] == ["web"]
    shared._places_at -= 2.0
    shared.version()
    assert len(reads) == 3
    store.close()


def _services(store: Store, sha: str, *services: tuple[str, int]) -> None:
    from gitops.model import Revision
    from tests.planner.factories import service

    manifests = [service(name, {"app": name}, port=port) for name, port in services]
    store.apply_revision(Revision("git:x", sha * 40), manifests, [], 1.0)


def _parsed(parts: dict[str, bytes | list[bytes | memoryview]]) -> dict[str, object]:
    return {
        key: json.loads(b"".join(text) if isinstance(text, list) else text) for key, text in parts.items()
    }


def test_each_agent_gets_the_routes_but_its_own_as_slices_of_one_text(tmp_path: Path) -> None:
    """When the routes move, every agent gets every node's [pod subnet, address] but its
    own. Joined for each agent, at 5,000 nodes that was 170 KB a reply, and the watch
    answering 5,000 waiting agents at once held 500 MiB more for a moment (docs/scale.md).
    Each agent's are slices of one text: the replies to every agent hold little more than
    that text, and each gives what it gave before (the first node's, the last's, a node
    with no route of its own)."""
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    for i in range(250):  # (a /16 of /24s: 256 nodes at most)
        node = Node(NodeName(f"n{i:03d}"), f"10.1.0.{i + 1}", 4000, 2**32)
        store.register_node(node, "t", now=1.0)
    shared = SharedEndpoints(store, clock=lambda: 1.0, ttl=0.0)
    routes = {name: [subnet, address] for name, subnet, address in shared.routes()}
    assert len(routes) == 250
    shared.reply_parts("", "n000", deltas=True)  # the replies' shared parts made
    tracemalloc.start()
    try:
        replies = {
            name: shared.reply_parts("", name, deltas=True)[1]["routes"] for name in [*routes, "n-new"]
        }
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    text = replies["n-new"]
    assert isinstance(text, bytes) and json.loads(text) == list(routes.values())
    assert held < 20 * len(text), (held, len(text))  # joined for each: 250 copies
    for name, parts in replies.items():
        given = json.loads(b"".join(parts) if isinstance(parts, list) else parts)
        assert given == [pair for other, pair in routes.items() if other != name], name
    store.close()


def test_an_agent_holding_a_kept_version_gets_only_the_services_changed_since(tmp_path: Path) -> None:
    """Every agent fetched every Service after every move of any endpoint (6.9 MB re-encoded
    per call at 300 Services of 100 endpoints): an agent that takes deltas gets those changed
    since the version it holds and the keys of those removed, as text encoded once for all
    agents holding that version."""
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.register_node(Node(NodeName("n0"), "192.0.2.10", 4000, 2**32), "t", now=1.0)
    shared = SharedEndpoints(store, clock=lambda: 1.0, ttl=0.0)
    _services(store, "1", ("a", 80), ("b", 80), ("c", 80))
    first, parts = shared.reply_parts("", "n0", deltas=True)
    held = _parsed(parts)["services"]
    assert isinstance(held, list) and [s["name"] for s in held] == ["a", "b", "c"]
    assert shared.reply_parts(first, "n0", deltas=True) == (first, {"services": b"null", "routes": b"null"})

    _services(store, "2", ("a", 81), ("c", 80), ("d", 80))  # a changed, b removed, d added
    second, parts = shared.reply_parts(first, "n0", deltas=True)
    delta = _parsed(parts)
    assert second != first and delta["services"] is None and delta["services_from"] == first
    assert [s["name"] for s in delta["services_changed"]] == ["a", "d"]  # type: ignore[union-attr]
    assert delta["services_removed"] == [["default", "b"]]
    assert delta["routes"] is None  # the routes did not move since `first`
    everything = _parsed(shared.reply_parts(first, "n0", deltas=False)[1])  # an older agent: all of them
    applied = changed_services(held, delta["services_changed"], delta["services_removed"])  # type: ignore[arg-type]
    assert applied == everything["services"] and everything["routes"] == []
    # Encoded once for every agent holding `first`; a version never kept gets everything.
    assert shared.reply_parts(first, "n1", deltas=True)[1]["services_changed"] is parts["services_changed"]
    assert _parsed(shared.reply_parts("unknown", "n0", deltas=True)[1])["services"] == applied
    store.close()


def test_an_agent_whose_version_fell_out_of_the_history_gets_the_services_changed_since_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With edits, moves of a few endpoints come every second or so, and an agent minutes
    behind held a version no longer kept: it got every Service (33 MB at 1,500 Services).
    The moves before those kept are remembered by the keys they changed: it gets those
    Services whole and the keys removed; only beyond `MOVED_KEYS` does it get every one."""
    from gitops.api import agentsync

    monkeypatch.setattr(agentsync, "HISTORY", 1)
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.register_node(Node(NodeName("n0"), "192.0.2.10", 4000, 2**32), "t", now=1.0)
    shared = SharedEndpoints(store, clock=lambda: 1.0, ttl=0.0)
    _services(store, "1", ("a", 80), ("b", 80), ("c", 80), ("d", 80))
    first, parts = shared.reply_parts("", "n0", deltas=True)
    held = _parsed(parts)["services"]
    _services(store, "2", ("a", 81), ("b", 80), ("c", 80), ("d", 80))
    shared.version()
    _services(store, "3", ("a", 81), ("b", 80), ("c", 80), ("e", 80))  # d removed, e added
    shared.version()
    _services(store, "4", ("a", 82), ("b", 80), ("c", 80), ("e", 80), ("f", 80))
    now, parts = shared.reply_parts(first, "n0", deltas=True, edits=True)
    assert first not in shared._history
    delta = _parsed(parts)
    assert delta["services"] is None and delta["services_from"] == first
    assert [s["name"] for s in delta["services_changed"]] == ["a", "e", "f"]  # type: ignore[union-attr]
    assert delta["services_removed"] == [["default", "d"]]
    everything = _parsed(shared.reply_parts("", "n0", deltas=True)[1])
    applied = changed_services(held, delta["services_changed"], delta["services_removed"])  # type: ignore[arg-type]
    assert applied == everything["services"] and now == shared.version()

    monkeypatch.setattr(agentsync, "MOVED_KEYS", 2)  # the moves since `first` no longer all kept
    _services(store, "5", ("a", 83), ("b", 81), ("c", 80), ("e", 80), ("f", 80))
    assert _parsed(shared.reply_parts(first, "n0", deltas=True)[1])["services"] is not None  # every one
    store.close()


def test_a_costly_move_of_the_services_holds_the_next_one_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each move is sent to every agent: the next waits until that fan-out would have gone
    at `FANOUT_BYTES_PER_S` (at most `MAX_PACE` s)."""
    from gitops.api import agentsync

    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.register_node(Node(NodeName("n0"), "192.0.2.10", 4000, 2**32), "t", now=1.0)
    shared = SharedEndpoints(store, clock=lambda: 1.0, ttl=0.0)
    _services(store, "1", ("a", 80))
    first = shared.version()
    assert shared.pace < 0.01  # one small Service to one node
    monkeypatch.setattr(agentsync, "FANOUT_BYTES_PER_S", 1.0)
    _services(store, "2", ("a", 81))
    second = shared.version()
    assert second != first and shared.pace == agentsync.MAX_PACE
    _services(store, "3", ("a", 82))
    assert shared.version() == second  # held back: the last move's fan-out is still being paid for
    shared.pace = 0.0
    assert shared.version() != second
    store.close()


def test_kept_heartbeats_due_are_handed_to_one_call_to_write(tmp_path: Path) -> None:
    """Heartbeats are kept in memory; once they are due, one call is told to have them
    written (in the background: it does not wait), and those after it keep theirs for the
    next time due, instead of each queueing for the same write."""
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    for i in range(3):
        store.register_node(Node(NodeName(f"n{i}"), f"192.0.2.{i + 10}", 4000, 2**32), "t", now=0.0)
    reports = AgentReports(store, flush_seconds=0.2)
    assert [reports.beat("n0", 5.0), reports.beat("n1", 5.0)] == [False, False]
    time.sleep(0.25)
    told = [reports.beat(f"n{i}", 6.0) for i in range(3)]
    assert told == [True, False, False]  # the first call that found them due, only
    reports.flush()
    assert {r.node.name: r.heartbeat_at for r in store.nodes(7.0)} == {"n0": 6.0, "n1": 6.0, "n2": 6.0}
    assert not reports.beat("n0", 7.0)  # the next batch is due a period later
    time.sleep(0.25)
    assert reports.beat("n1", 7.5)


def test_kept_measurements_leave_nothing_for_the_collector_to_walk(tmp_path: Path) -> None:
    """Agents report every pod's use every 15 s, and each report replaces the node's last
    one in memory: at 150,000 pods kept as objects the cyclic collector tracks, those
    replaced made two thirds of what its young collections walked, and their pauses held
    the agents' calls. Kept as plain tuples, the collector drops them the first time it
    sees them; what `measured` gives back is unchanged."""
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    reports = AgentReports(store)
    gc.collect()
    before = len(gc.get_objects())
    nodes = {
        f"n{n}": [
            PodUsage(PodId(f"default/web-{n}-{i}"), 3.0, (ContainerUsage("main", 5.0, 2**20),), window=15.0)
            for i in range(30)
        ]
        for n in range(100)
    }
    for node, samples in nodes.items():
        reports.keep_usage(node, keep(samples))
    given = sorted((s for samples in nodes.values() for s in samples), key=lambda s: s.pod)
    del nodes, samples
    assert list(reports.measured()) == given
    del given
    gc.collect()
    assert len(gc.get_objects()) - before < 100  # not the 3,000 pods' 9,000 objects
    store.close()


def test_kept_measurements_are_nothing_the_collector_walks_even_before_it_first_looks() -> None:
    """Each measuring call replaces its node's kept measurements, so the count of objects
    the collector tracks does not grow and no young collection comes: kept as tuples, each
    node's 30 pods (210 items) waited in the young generation for the heap keeper's
    collection every 2 s, which walked them all (7 ms at 2,000 nodes, every call waiting).
    Kept as they are now, 200 nodes' measurements add nothing for it to walk."""
    store = Store("sqlite://")
    reports = AgentReports(store)
    request = SyncRequest.model_validate_json(
        json.dumps({"measured": [[f"default/web-{i}", 3.0, 15.0, "main", 5.0, 2**20] for i in range(30)]})
    )
    assert request.measured is not None
    gc.collect()
    gc.disable()
    try:
        before = len(gc.get_objects())
        for n in range(200):
            kept = kept_measurements(request)
            assert kept is not None
            reports.keep_usage(f"n{n}", kept)
        del kept
        assert len(gc.get_objects()) - before < 20  # not the 200 nodes' tuples
    finally:
        gc.enable()
    assert len(reports.measured()) == 30 * 200
    store.close()


def test_a_scrape_of_the_measured_use_holds_a_part_of_its_text_at_a_time(tmp_path: Path) -> None:
    """`/metrics/resource` is every container's measured use: 40 MB of text at 150,000 pods,
    read by the bench after its window. The whole text was made, after a sorted list of
    every pod's measurement, and the scraped server's memory peaked there, 350 MiB above
    what it held before (docs/scale.md): 3.3 times the text. The text is sent in parts as
    they are made from the kept measurements, read back for the scrape (the read-back
    figures and their index, 240 bytes a pod, with a part of the text): well under twice the
    text at any time, and it is the same text."""
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    reports = AgentReports(store)
    given = []
    for n in range(500):
        samples = [
            PodUsage(PodId(f"team-{n % 7}/web-{n}-{i}"), 3.0, (ContainerUsage("main", 5.0 + i, n),), 15.0)
            for i in range(40)
        ]
        reports.keep_usage(f"n{n}", keep(samples))
        given += samples
    del samples
    observed = Metrics()
    observed.watch_usage(reports.measured)
    tracemalloc.start()
    try:
        parts = [len(part) for part in observed.render_resource()]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    size = sum(parts)
    assert size > 3_000_000 and len(parts) > 10
    assert peak < 2 * size, (peak, size)  # the whole text made, it was 3.3 times the text
    text = b"".join(observed.render_resource())
    assert text == render_usage(sorted(given, key=lambda s: s.pod))
    assert len(reports.measured()) == 20_000 and given[-1] in reports.measured()
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}
    cpu = families["gitops_container_cpu_usage_millicores"].samples
    pods = [f"{s.labels['namespace']}/{s.labels['pod']}" for s in cpu]
    assert len(pods) == 20_000 and pods == sorted(pods)  # by pod, as before
    assert cpu[0].labels == {"namespace": "team-0", "pod": "web-0-0", "container": "main"}
    assert cpu[0].value == 5.0
    store.close()


def test_a_pod_moving_under_one_service_computes_only_that_service_again(tmp_path: Path) -> None:
    """At 150,000 pods and 1,500 Services, computing every Service at each move of any pod
    held the serving process for over a second: only the Service whose pod moved is computed
    and encoded again; the others' texts stay the very same, and the version moves."""
    from gitops.controller import reconcile_once
    from gitops.model import PodStatus, Revision
    from tests.planner.factories import deployment, service

    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.register_node(Node(NodeName("n0"), "192.0.2.10", 4000, 2**32), "t", now=1.0)
    manifests = [m for app in ("a", "b") for m in (deployment(app, replicas=2), service(app, {"app": app}))]
    store.apply_revision(Revision("git:x", "a" * 40), manifests, [], 1.0)
    reconcile_once(store, 1.0)
    pods = store.pods()
    statuses = tuple(
        PodStatus(p.id, "Running", ready=True, pod_ip=f"10.244.0.{i + 2}") for i, p in enumerate(pods)
    )
    store.heartbeat("n0", statuses, now=2.0)
    shared = SharedEndpoints(store, clock=lambda: 2.0, ttl=0.0)
    first = shared.version()
    texts = dict(shared._texts)
    assert [len(json.loads(t)["endpoints"][0][1]) for t in texts.values()] == [2, 2]
    assert shared._kept.recomputed == {
        ObjectKey("Service", "default", "a"),
        ObjectKey("Service", "default", "b"),
    }
    b_pod = next(p for p in pods if p.owner.name == "b")
    store.heartbeat("n0", (PodStatus(b_pod.id, "Running", ready=False, pod_ip="10.244.0.9"),), now=3.0)
    assert shared.version() != first
    assert shared._kept.recomputed == {ObjectKey("Service", "default", "b")}
    assert shared._texts[("default", "a")] is texts[("default", "a")]
    assert len(json.loads(shared._texts[("default", "b")])["endpoints"][0][1]) == 1
    store.close()


def test_a_pod_leaving_a_service_goes_as_edits_and_paces_the_next_move_by_their_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One pod of 20 leaving a Service: an agent holding the version before that takes
    edits gets the Service as edits of the one it holds (`gitops.edits`), an older agent
    whole; applied, the edits give what a full reply gives. The next move waits for the
    edits' fan-out, not the whole Service's."""
    from gitops.api import agentsync
    from gitops.controller import reconcile_once
    from gitops.model import PodStatus, Revision
    from tests.planner.factories import deployment, service

    monkeypatch.setattr(agentsync, "FANOUT_BYTES_PER_S", 1.0)  # the pace: the fan-out's bytes, in seconds
    monkeypatch.setattr(agentsync, "MAX_PACE", 1e9)
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.register_node(Node(NodeName("n0"), "192.0.2.10", 4000, 2**32), "t", now=1.0)
    store.apply_revision(
        Revision("git:x", "a" * 40), [deployment("a", replicas=20), service("a", {"app": "a"})], [], 1.0
    )
    reconcile_once(store, 1.0)
    pods = store.pods()
    statuses = tuple(
        PodStatus(p.id, "Running", ready=True, pod_ip=f"10.244.0.{i + 2}") for i, p in enumerate(pods)
    )
    store.heartbeat("n0", statuses, now=2.0)
    shared = SharedEndpoints(store, clock=lambda: 2.0, ttl=0.0)
    first, parts = shared.reply_parts("", "n0", deltas=True)
    held = _parsed(parts)["services"]
    assert len(held[0]["endpoints"][0][1]) == 20  # type: ignore[index]
    store.heartbeat("n0", (PodStatus(pods[7].id, "Running", ready=False, pod_ip="10.244.0.9"),), now=3.0)
    shared.pace = 0.0
    second, parts = shared.reply_parts(first, "n0", deltas=True, edits=True)
    assert second != first
    [entry] = _parsed(parts)["services_changed"]  # type: ignore[misc]
    assert "edits" in entry and "endpoints" not in entry
    whole = _parsed(shared.reply_parts(first, "n0", deltas=True)[1])["services_changed"]
    assert "edits" not in whole[0]  # type: ignore[index]  # an agent that does not take edits
    everything = _parsed(shared.reply_parts("", "n0", deltas=True)[1])["services"]
    assert changed_services(held, [entry], []) == everything  # type: ignore[arg-type]
    assert len(everything[0]["endpoints"][0][1]) == 19  # type: ignore[index]
    edits_bytes = len(parts["services_changed"]) + len(parts["services_removed"])  # type: ignore[arg-type]
    assert shared.pace == edits_bytes < len(shared._texts["default", "a"])
    store.close()


def test_an_agent_s_measurement_rows_are_kept_as_its_report_per_pod_would_be() -> None:
    """The real agent's rows (`usage_rows`, a row per container) pass the server's request
    model and are kept per pod: each pod's containers together, the latest of their times
    and the shortest of their windows, as the objects per pod of older agents are."""
    figures = {
        (PodId("default/web-1"), "sidecar"): Figure(1.25, 3 * 2**20, at=99.0, window=14.0),
        (PodId("default/db-0"), "main"): Figure(10.0, 2**30, at=97.0, window=15.0),
        (PodId("default/web-1"), "main"): Figure(250.5004, 2**20, at=98.0, window=15.0),
    }
    rows = usage_rows(figures)
    request = SyncRequest.model_validate_json(json.dumps({"measured": rows}))
    kept = kept_measurements(request)
    assert kept is not None
    expected = [
        PodUsage(PodId("default/db-0"), 97.0, (ContainerUsage("main", 10.0, 2**30),), window=15.0),
        PodUsage(
            PodId("default/web-1"),
            99.0,
            (ContainerUsage("main", 250.5, 2**20), ContainerUsage("sidecar", 1.25, 3 * 2**20)),
            window=14.0,
        ),
    ]
    assert list(kept_samples(kept)) == expected
    per_pod = [
        {
            "pod": s.pod,
            "at": s.at,
            "window": s.window,
            "containers": [vars(c) for c in s.containers],
        }
        for s in expected
    ]
    older = kept_measurements(SyncRequest.model_validate_json(json.dumps({"usage": per_pod})))
    assert older is not None and list(kept_samples(older)) == expected
    assert kept_measurements(SyncRequest()) is None


def test_the_heartbeats_are_written_with_the_interpreter_handed_over_within_half_a_millisecond(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flush runs in a worker thread every second at thousands of nodes; while it makes
    its statement's rows in Python, the event loop, asking for the interpreter at each
    socket read and write, waited a whole switch interval (5 ms) each time
    (`gitops.handover`). The interval from before comes back after it."""
    import sys

    from gitops.handover import HANDOVER

    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.register_node(Node(NodeName("n0"), "192.0.2.10", 4000, 2**32), "t", now=0.0)
    reports = AgentReports(store)
    seen: list[float] = []
    original = store.record_heartbeats

    def noted(beats: dict[str, float]) -> None:
        seen.append(sys.getswitchinterval())
        original(beats)

    monkeypatch.setattr(store, "record_heartbeats", noted)
    before = sys.getswitchinterval()
    reports.beat("n0", 5.0)
    reports.flush()
    assert seen == [HANDOVER] and before > HANDOVER
    assert sys.getswitchinterval() == before
    assert {r.node.name: r.heartbeat_at for r in store.nodes(6.0)} == {"n0": 5.0}


class _Counted(str):
    """A string that counts its comparisons by value (`compared`)."""

    compared: ClassVar[list[int]] = []

    def __eq__(self, other: object) -> bool:
        self.compared.append(1)
        return str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = str.__hash__


def test_the_same_places_read_again_are_compared_once_not_at_every_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The nodes' rows read again (at least every minute, `gitops.store.serials.RESYNC`)
    give the same places in new objects: compared in full with the old ones once, and then
    not at every call. Each comparison walked every node's strings in C, the interpreter
    held: at 5,000 nodes the agents' watch held the API's event loop 1-5 ms every second
    (docs/scale.md, thirty-second session)."""
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    for i in range(3):
        store.register_node(Node(NodeName(f"n{i}"), f"192.0.2.{i + 10}", 4000, 2**32), "t", now=1.0)
    shared = SharedEndpoints(store, clock=lambda: 1.0, ttl=0.0)  # the places read at every call
    first = shared.version()
    routes = shared.routes()
    assert len(routes) == 3
    places = store.node_places(1.0)
    again = tuple(tuple(_Counted(v) if isinstance(v, str) else v for v in place) for place in places)
    assert again == places and again is not places
    monkeypatch.setattr(store, "node_places", lambda now: again)  # as the store gives it until the next read
    _Counted.compared.clear()
    assert shared.version() == first
    once = len(_Counted.compared)
    assert once > 0  # compared with the old ones, found the same
    for _ in range(3):
        assert shared.version() == first and shared.routes() == routes
    assert len(_Counted.compared) == once  # and not again
    store.close()


def test_the_same_places_read_again_are_not_compared_at_the_calls_between_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 5,000 nodes the places are read every 2 s (`places_every`) and the agents' watch
    asks every second: the places read again (the same, in new objects) were compared in
    full with those the calls between reads held, at every call, until a write moved the
    change marker (2.4-3.8 ms each, the interpreter held: a debug log in the bench)."""
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    for i in range(3):
        store.register_node(Node(NodeName(f"n{i}"), f"192.0.2.{i + 10}", 4000, 2**32), "t", now=1.0)
    shared = SharedEndpoints(store, clock=lambda: 1.0, ttl=0.0)
    first = shared.version()
    places = store.node_places(1.0)
    again = tuple(tuple(_Counted(v) if isinstance(v, str) else v for v in place) for place in places)
    monkeypatch.setattr(store, "node_places", lambda now: again)
    _Counted.compared.clear()
    assert shared.version() == first  # read again: compared once
    once = len(_Counted.compared)
    assert once > 0
    monkeypatch.setattr(shared, "places_every", lambda: 3600.0)  # the calls before the next read
    for _ in range(3):
        assert shared.version() == first
    monkeypatch.setattr(shared, "places_every", lambda: 0.0)  # the next read gives the same again
    for _ in range(3):
        assert shared.version() == first
    assert len(_Counted.compared) == once
    store.close()
