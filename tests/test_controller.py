"""A controller pass plans, places and records; a second pass changes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from gitops import controller
from gitops.controller import reconcile_once
from gitops.model import Node, NodeName, ObjectKey, Revision
from gitops.store import Store
from tests.planner.factories import deployment

MiB = 2**20


def test_a_pass_binds_what_fits_and_records_why_the_rest_waits(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.register_node(
        Node(NodeName("n1"), "192.0.2.10", cpu_milli=1000, memory_bytes=512 * MiB), "t", now=100.0
    )
    dep = deployment(replicas=3, resources={"requests": {"cpu": "400m", "memory": "64Mi"}})
    store.apply_revision(Revision("git:x", "a" * 40), [dep], [], now=100.0)
    first = reconcile_once(store, now=101.0)
    assert (len(first.plan.create), first.bound, first.unschedulable) == (3, 2, 1)
    pods = store.pods()
    assert sorted(p.node or "-" for p in pods) == ["-", "n1", "n1"]
    assert [p.reason for p in pods if p.node is None] == ["0/1 nodes: 1 insufficient cpu"]
    recorded = store.events()
    events = {(e.reason, e.message) for e in recorded}
    assert ("Created", "Deployment default/web wants 3 replicas") in events
    assert ("Unschedulable", "0/1 nodes: 1 insufficient cpu") in events

    second = reconcile_once(store, now=102.0)
    assert second.plan.empty and second.bound == 0
    assert store.pods() == pods
    assert store.events() == recorded


def test_each_scheduled_event_says_why_that_node(tmp_path: Path) -> None:
    """The API's events (`/api/v1/events`) say why each pod went where it did."""
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    for name, cpu in (("big", 4000), ("small", 1000)):
        store.register_node(
            Node(NodeName(name), "192.0.2.10", cpu_milli=cpu, memory_bytes=2**30), "t", now=100.0
        )
    dep = deployment(replicas=2, resources={"requests": {"cpu": "500m", "memory": "64Mi"}})
    store.apply_revision(Revision("git:x", "a" * 40), [dep], [], now=100.0)
    reconcile_once(store, now=101.0)
    scheduled = sorted(e.message for e in store.events() if e.reason == "Scheduled")
    assert scheduled == [
        "placed on big: score 0.91 against 0.72 on small: least allocated 0.91 vs 0.72",
        # The first replica is on big: spreading now outweighs big's larger free share.
        "placed on small: score 1.72 against 1.31 on big: spread 1.00 vs 0.50, least allocated 0.72 vs 0.81",
    ]


def test_pods_wait_for_a_node_and_are_placed_when_one_registers(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.apply_revision(Revision("git:x", "a" * 40), [deployment(replicas=2)], [], now=100.0)
    reconcile_once(store, now=101.0)
    assert {p.reason for p in store.pods()} == {"0/0 nodes: no nodes registered"}
    store.register_node(Node(NodeName("n1"), "192.0.2.10", 4000, 2**30), "t", now=102.0)
    assert reconcile_once(store, now=103.0).bound == 2
    assert {p.node for p in store.pods()} == {"n1"}


def test_pods_of_a_silent_node_are_replaced_on_a_ready_one_after_the_toleration(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}", heartbeat_grace=40.0)
    store.register_node(Node(NodeName("a"), "192.0.2.10", 4000, 2**30), "ta", now=0.0)
    store.apply_revision(Revision("git:x", "a" * 40), [deployment(replicas=2)], [], now=0.0)
    reconcile_once(store, now=1.0)
    first = {p.id for p in store.pods()}
    assert {p.node for p in store.pods()} == {"a"}
    store.register_node(Node(NodeName("b"), "192.0.2.11", 4000, 2**30), "tb", now=50.0)
    store.heartbeat("b", [], now=99.0)
    assert reconcile_once(store, now=99.0).plan.empty  # a: NotReady since 40 s, tolerated until 100 s
    result = reconcile_once(store, now=100.0, not_ready_toleration=60.0)
    assert {a.pod.id for a in result.plan.stop} == first
    assert {p.node for p in store.pods()} == {"b"}
    assert not {p.id for p in store.pods()} & first


def test_a_stopped_pod_leaves_the_endpoints_at_once_and_its_name_is_not_reused(tmp_path: Path) -> None:
    from gitops.model import PodStatus
    from gitops.planner import all_endpoints
    from tests.planner.factories import service

    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.register_node(Node(NodeName("n1"), "192.0.2.10", 4000, 2**30), "t", now=100.0)
    svc = service("web", {"app": "web"}, target=80)
    store.apply_revision(
        Revision("git:x", "a" * 40), [deployment(replicas=1, image="web:1"), svc], [], now=100.0
    )
    reconcile_once(store, now=100.0)
    (old,) = store.pods()
    store.heartbeat("n1", [PodStatus(old.id, "Running", True, pod_ip="172.17.0.2")], now=101.0)
    store.apply_revision(Revision("git:x", "c" * 40), [deployment(replicas=0, image="web:1"), svc], [], 103.0)
    reconcile_once(store, now=104.0)
    (draining,) = store.pods()
    assert draining.terminating_at == 104.0
    (eps,) = all_endpoints(store.desired(), store.vips(), store.pods(), [r.node for r in store.nodes(104.0)])
    assert eps.endpoints[0][1] == ()
    store.apply_revision(Revision("git:x", "d" * 40), [deployment(replicas=1, image="web:1"), svc], [], 105.0)
    reconcile_once(store, now=105.0)
    names = [p.name for p in store.pods()]
    assert len(names) == 2 and len(set(names)) == 2


def test_a_control_plane_back_from_a_long_outage_does_not_evict_the_pods_of_silent_nodes(
    tmp_path: Path,
) -> None:
    """It heard nothing while it was down: a node's NotReady time counts from its start."""
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    for name in ("n1", "n2"):
        store.register_node(Node(NodeName(name), "192.0.2.10", 4000, 8 * 2**30), "t", now=100.0)
    store.apply_revision(Revision("git:x", "a" * 40), [deployment(replicas=4)], [], now=100.0)
    reconcile_once(store, now=101.0)
    before = {p.id for p in store.pods()}
    store.heartbeat("n2", [], now=3600.0)  # n2's agent is back; n1's is not yet
    restarted_at = 3600.0
    result = reconcile_once(store, now=3605.0, not_ready_before=restarted_at)
    assert {p.id for p in store.pods()} == before and not result.plan.stop
    store.heartbeat("n2", [], now=restarted_at + 60)
    later = reconcile_once(store, now=restarted_at + 61, not_ready_before=restarted_at)
    assert len(later.plan.stop) == 2  # n1's pods, a full toleration after the start


def test_when_no_node_is_ready_nothing_is_evicted(tmp_path: Path) -> None:
    """Every node silent at once is likelier the control plane's fault (its network) than theirs."""
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.register_node(Node(NodeName("n1"), "192.0.2.10", 4000, 8 * 2**30), "t", now=100.0)
    store.apply_revision(Revision("git:x", "a" * 40), [deployment(replicas=2)], [], now=100.0)
    reconcile_once(store, now=101.0)
    before = {p.id for p in store.pods()}
    result = reconcile_once(store, now=1000.0)
    assert not result.plan.stop and {p.id for p in store.pods()} == before


@pytest.mark.filterwarnings("ignore:New instance .* conflicts with persistent instance")  # the squatter
@pytest.mark.parametrize("batch", [controller.WRITE_BATCH, 1])
def test_a_workload_whose_pods_cannot_be_written_fails_alone_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    """One failing write once stopped every other workload: no pod anywhere was created again.
    With one workload a transaction, api's pods are committed before web's write fails, and
    are not written twice (which would fail api too)."""
    from gitops.model import Pod, PodName
    from gitops.planner import plan

    monkeypatch.setattr(controller, "WRITE_BATCH", batch)
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.register_node(Node(NodeName("n1"), "192.0.2.10", 16000, 64 * 2**30), "t", now=100.0)
    web, api = deployment("web", replicas=2), deployment("api", replicas=2)
    store.apply_revision(Revision("git:x", "a" * 40), [web, api], [], now=100.0)
    # A row under the name the planner will give web's first pod, owned by something else.
    (first, *_) = [a.pod for a in plan([web], []).create]
    squatter = Pod(
        first.namespace, PodName(first.name), other_owner(), "other", first.spec, node=NodeName("n1")
    )
    store.apply_pod_changes(create=[(squatter, "test")], stop=[], bind={}, pending_reasons={}, now=100.0)

    result = reconcile_once(store, now=101.0)
    assert [str(k) for k in result.plan.failed] == ["Deployment default/web"]
    assert "could not write its pods" in result.plan.failed[web.key]
    api_pods = [p for p in store.pods() if p.owner == api.key]
    assert len(api_pods) == 2 and all(p.node == "n1" for p in api_pods)
    assert store.rollouts()[web.key].error.startswith("the pass could not write its pods")
    assert store.rollouts()[api.key].error == ""


def other_owner() -> ObjectKey:
    return ObjectKey("Deployment", "default", "somebody-else")


def test_a_pass_writes_whole_workloads_in_transactions_of_a_bounded_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first pass creating 150,000 pods held SQLite's write lock for 65 s in one
    transaction, and the leader's lease (renewed as its writes commit) lapsed under it."""
    monkeypatch.setattr(controller, "WRITE_BATCH", 500)
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.register_node(Node(NodeName("n1"), "192.0.2.10", 64000, 256 * 2**30, max_pods=1000), "t", now=100.0)
    apps = [deployment(name, replicas=200) for name in ("a", "b", "c", "d")]
    store.apply_revision(Revision("git:x", "a" * 40), apps, [], now=100.0)
    transactions: list[list[str]] = []
    apply = store.apply_pod_changes

    def spy(**changes: Any) -> None:
        transactions.append(sorted({pod.owner.name for pod, _ in changes["create"]}))
        apply(**changes)

    monkeypatch.setattr(store, "apply_pod_changes", spy)
    result = reconcile_once(store, now=101.0)
    assert result.bound == 800
    # 400 changes a workload (200 created, 200 bound): whole workloads, up to 500 or just past
    assert transactions == [["a", "b"], ["c", "d"]]
    assert len(store.pods()) == 800 and all(p.node == "n1" for p in store.pods())
    transactions.clear()
    reconcile_once(store, now=102.0)
    assert transactions == []  # nothing to write opens no transaction


def test_a_huge_replica_count_creates_pods_in_bursts_and_the_pass_says_there_is_more(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.apply_revision(Revision("git:x", "a" * 40), [deployment("big", replicas=1200)], [], now=100.0)
    counts = []
    for n in range(4):
        result = reconcile_once(store, now=101.0 + n)
        counts.append((len(result.plan.create), result.plan.more))
    assert counts == [(500, True), (500, True), (200, False), (0, False)]
    assert len({p.id for p in store.pods()}) == 1200


def test_a_pass_over_many_pending_pods_reads_them_in_a_few_queries_and_rewrites_nothing(
    tmp_path: Path,
) -> None:
    """Each pass once read every pending pod with a query of its own to compare its reason
    (8,000 pending pods: 4.5 s of a core per pass, forever)."""
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.apply_revision(Revision("git:x", "a" * 40), [deployment("web", replicas=1200)], [], now=100.0)
    for second in range(4):  # at most 500 new pods per pass
        reconcile_once(store, now=101.0 + second)
    assert len(store.pods()) == 1200 and all(p.reason.startswith("0/0 nodes") for p in store.pods())
    marker = store.change_marker()
    statements: list[str] = []
    event.listen(store.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    reconcile_once(store, now=110.0)
    assert store.change_marker() == marker  # nothing written
    assert len(statements) < 30, len(statements)


def test_a_rollout_of_a_deployment_using_a_configmap_completes_and_stays_complete(tmp_path: Path) -> None:
    """The rollout's template hash is the pods' (resolved with the ConfigMap), so a rollout
    whose pods all run is complete, and no progress deadline fails it later."""
    from gitops.model import PodStatus
    from tests.planner.factories import configmap

    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.register_node(Node(NodeName("n1"), "192.0.2.10", 4000, 2**30), "t", now=0.0)
    env = [{"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "web", "key": "greeting"}}}]
    objects = [configmap("web", greeting="hello"), deployment(replicas=2, env=env)]
    store.apply_revision(Revision("git:x", "a" * 40), objects, [], now=0.0)
    reconcile_once(store, now=1.0)
    store.heartbeat("n1", [PodStatus(p.id, "Running", True) for p in store.pods()], now=2.0)
    reconcile_once(store, now=3.0)
    reconcile_once(store, now=700.0)
    (state,) = store.rollouts().values()
    assert state.status == "complete", state


def test_a_pass_with_nothing_new_does_not_decide_again_until_the_resync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing written since a pass that decided nothing: the next pass skips deciding (and
    writes nothing); a pod's status report, or `resync` seconds, bring a real pass back."""
    from gitops import controller
    from gitops.controller import QuietPasses
    from gitops.model import PodStatus

    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.register_node(Node(NodeName("n1"), "192.0.2.10", 4000, 2**32), "t", now=0.0)
    store.apply_revision(Revision("git:x", "a" * 40), [deployment(replicas=2)], [], now=0.0)
    decided: list[float] = []
    original = controller.decide

    def counting(state: object, now: float, **kwargs: object) -> object:
        decided.append(now)
        return original(state, now, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(controller, "decide", counting)
    quiet = QuietPasses(resync=5.0)
    cache = store.pod_cache
    reconcile_once(store, 1.0, pods=cache, quiet=quiet)  # creates and binds the two pods
    store.heartbeat("n1", [], now=1.0)
    reconcile_once(store, 1.5, pods=cache, quiet=quiet)  # sees them bound: decides nothing
    written = store.written()
    reconcile_once(store, 2.0, pods=cache, quiet=quiet)
    reconcile_once(store, 3.0, pods=cache, quiet=quiet)
    assert decided == [1.0, 1.5]
    assert store.written() == written
    pod = store.pods()[0]
    store.heartbeat("n1", [PodStatus(pod.id, "Running", ready=True, pod_ip="10.244.0.5")], now=3.5)
    reconcile_once(store, 4.0, pods=cache, quiet=quiet)  # a status changed: a real pass
    reconcile_once(store, 4.5, pods=cache, quiet=quiet)  # (the rollout's bookkeeping moved)
    assert decided == [1.0, 1.5, 4.0, 4.5]
    reconcile_once(store, 5.0, pods=cache, quiet=quiet)
    reconcile_once(store, 9.0, pods=cache, quiet=quiet)
    assert decided == [1.0, 1.5, 4.0, 4.5]
    reconcile_once(store, 9.5, pods=cache, quiet=quiet)  # 5 s since it last decided
    assert decided == [1.0, 1.5, 4.0, 4.5, 9.5]
    store.close()


def test_a_pass_that_changes_nothing_begins_no_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A no-op pass over 1,500 settled Deployments loaded their 1,500 rollout rows under the
    write lock, to write none of them."""
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.register_node(Node(NodeName("n1"), "192.0.2.10", 16000, 64 * 2**30), "t", now=100.0)
    apps = [deployment(name, replicas=2) for name in ("a", "b")]
    store.apply_revision(Revision("git:x", "a" * 40), apps, [], now=100.0)
    reconcile_once(store, now=101.0)
    reconcile_once(store, now=102.0)
    rollouts = store.rollouts()
    writes = []
    write_session = store.write_session

    def spy() -> Any:
        writes.append(1)
        return write_session()

    monkeypatch.setattr(store, "write_session", spy)
    result = reconcile_once(store, now=103.0)
    assert (result.plan.create, result.plan.stop, result.bound) == ((), (), 0)
    assert writes == []
    monkeypatch.undo()
    # A change is written still: one Deployment gone, its rollout state with it.
    store.apply_revision(Revision("git:x", "b" * 40), apps[:1], [], now=104.0)
    reconcile_once(store, now=105.0)
    assert set(store.rollouts()) == {apps[0].key} and store.rollouts()[apps[0].key] == rollouts[apps[0].key]


@pytest.mark.parametrize(("replicas", "held"), [(3, [True, True]), (1, [False])])
def test_a_pass_writing_more_than_one_transaction_holds_precedence_over_the_agents_calls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, replicas: int, held: list[bool]
) -> None:
    """While a pass created and bound 150,000 pods, the agents' calls took most of the one
    core, and binding them all took three times what the pass alone takes: a pass writing
    more than `WRITE_BATCH` pod changes holds its `Precedence` while it writes, a small one
    does not."""
    from gitops.loop import Precedence

    monkeypatch.setattr(controller, "WRITE_BATCH", 2)
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.register_node(Node(NodeName("n1"), "192.0.2.10", 64000, 256 * 2**30), "t", now=100.0)
    apps = [deployment(name, replicas=replicas) for name in ("a", "b")[: 2 if replicas > 1 else 1]]
    store.apply_revision(Revision("git:x", "a" * 40), apps, [], now=100.0)
    precedence, holding = Precedence(), []
    apply = store.apply_pod_changes

    def spy(**changes: Any) -> None:
        holding.append(precedence.holding)
        apply(**changes)

    monkeypatch.setattr(store, "apply_pod_changes", spy)
    assert reconcile_once(store, now=101.0, precedence=precedence).bound == len(apps) * replicas
    assert holding == held
    assert not precedence.holding  # given back once the pass has written


def test_the_first_pass_of_a_new_revision_decides_holding_precedence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deciding 150,000 new pods (planning and placing them) takes seconds of the one core
    the agents' calls share: the pass after a revision is applied, and one going on with
    what the last pass left, hold the precedence from the start; a pass after agents'
    reports does not."""
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.register_node(Node(NodeName("n1"), "192.0.2.10", 64000, 256 * 2**30), "t", now=100.0)
    store.apply_revision(Revision("git:x", "a" * 40), [deployment("web", replicas=2)], [], now=100.0)
    ctl = controller.Controller(store, interval=3600, clock=lambda: 101.0)
    holding: list[bool] = []
    real = controller.reconcile_once

    def spy(*args: Any, **kwargs: Any) -> controller.PassResult:
        holding.append(ctl.precedence.holding)
        return real(*args, **kwargs)

    monkeypatch.setattr(controller, "reconcile_once", spy)
    ctl._pass()  # the revision is new to it
    ctl._pass()  # nothing new
    store.apply_revision(Revision("git:x", "b" * 40), [deployment("web", replicas=3)], [], now=102.0)
    failing = [True]

    def flaky(*args: Any, **kwargs: Any) -> controller.PassResult:
        holding.append(ctl.precedence.holding)
        if failing.pop():
            raise RuntimeError("database is locked")
        return real(*args, **kwargs)

    monkeypatch.setattr(controller, "reconcile_once", flaky)
    with pytest.raises(RuntimeError):
        ctl._pass()  # the new revision's pass fails: the next one is its first again
    failing.append(False)
    ctl._pass()
    assert holding == [True, False, True, True]
    assert not ctl.precedence.holding and len(store.pods()) == 3
