"""The agent's plan as a pure function: each fault case is a fast unit test here."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from gitops.agents.plan import Outage, PodMemory, plan_node
from gitops.agents.runtime import ContainerInfo
from gitops.model import NodeName, ObjectKey, Pod, PodId, PodName
from tests.specs import pod_spec

NODE = NodeName("n1")


def pod(name: str = "a", template: str = "h1", **extra: object) -> Pod:
    return Pod(
        "default",
        PodName(name),
        ObjectKey("Deployment", "default", "web"),
        template,
        pod_spec("web:1"),
        node=NODE,
        **extra,  # type: ignore[arg-type]
    )


def container(
    cid: str,
    name: str = "a",
    *,
    running: bool = True,
    restart: int = 0,
    template: str = "h1",
    **extra: object,
) -> ContainerInfo:
    fields = {
        "exit_code": None if running else 1,
        "started_at": 100.0,
        "finished_at": 0.0 if running else 105.0,
    }
    fields.update(extra)
    return ContainerInfo(
        cid,
        PodId(f"default/{name}"),
        template,
        running,
        fields["exit_code"],
        "172.17.0.9",
        (),  # type: ignore[arg-type]
        fields["started_at"],
        fields["finished_at"],
        restart=restart,  # type: ignore[arg-type]
    )


def test_a_running_container_is_adopted_as_it_is_whatever_the_agent_remembers() -> None:
    actions = plan_node([pod()], [container("c0", restart=4)], {}, now=1000.0)
    assert not actions.changes and actions.describe() == []


def test_a_pod_without_a_container_gets_its_first_run() -> None:
    (start,) = plan_node([pod()], [], {}, now=1000.0).start
    assert (start.pod.id, start.restart, start.reason) == ("default/a", 0, "the pod has no container yet")


def test_a_crash_restarts_as_a_fresh_container_after_the_backoff_keeping_the_previous_run() -> None:
    exited = container("c0", running=False, restart=0)
    first = plan_node([pod()], [exited], {}, now=106.0)
    assert not first.start
    assert first.waiting["default/a"] == "CrashLoopBackOff: exited with code 1; restarting in 10s"
    later = plan_node([pod()], [exited], first.memory, now=116.0)
    (start,) = later.start
    assert (start.restart, start.reason) == (1, "restart after exit code 1")
    assert not later.remove  # the exited run stays for its logs
    # The next crash: run 1 exited; run 0 goes, run 1 stays.
    again = container("c1", running=False, restart=1, started_at=116.0, finished_at=117.0)
    third = plan_node([pod()], [exited, again], later.memory, now=117.0)
    assert third.waiting["default/a"].endswith("restarting in 20s")
    fourth = plan_node([pod()], [exited, again], third.memory, now=137.0)
    assert [a.container.id for a in fourth.remove] == ["c0"]
    assert [s.restart for s in fourth.start] == [2]


def test_a_failed_liveness_probe_kills_and_the_restart_waits_for_the_same_backoff() -> None:
    running = container("c0")
    killed = plan_node(
        [pod()], [running], {}, now=200.0, verdicts={(PodId("default/a"), "main"): "Liveness probe failed"}
    )
    assert [(k.container.id, k.reason) for k in killed.kill] == [("c0", "Liveness probe failed")]
    assert not killed.start
    dead = dataclasses.replace(running, running=False, exit_code=137, finished_at=201.0)
    after = plan_node([pod()], [dead], killed.memory, now=201.0)
    assert not after.start and "restarting in 10s" in after.waiting["default/a"]


def test_thirteen_liveness_failures_in_thirty_seconds_restart_at_most_twice() -> None:
    memory: dict[tuple[PodId, str], PodMemory] = {}
    containers = [container("c0")]
    starts = 0
    for second in range(30):
        now = 300.0 + second
        current = max(containers, key=lambda c: c.restart)
        verdicts = {(PodId("default/a"), "main"): "Liveness probe failed"} if current.running else {}
        actions = plan_node([pod()], containers, memory, now=now, verdicts=verdicts)
        memory = dict(actions.memory)
        for kill in actions.kill:
            containers = [
                dataclasses.replace(c, running=False, exit_code=137, finished_at=now)
                if c.id == kill.container.id
                else c
                for c in containers
            ]
        for start in actions.start:
            starts += 1
            containers.append(container(f"c{start.restart}", restart=start.restart, started_at=now))
    assert starts <= 2


def test_a_container_that_stopped_during_a_runtime_outage_restarts_at_once_without_backoff() -> None:
    stopped = container("c0", running=False, exit_code=0, finished_at=500.0)
    memory = {(PodId("default/a"), "main"): PodMemory(backoff=3)}
    actions = plan_node([pod()], [stopped], memory, now=540.0, outages=(Outage(501.0, 538.0),))
    assert [s.restart for s in actions.start] == [1]
    assert actions.memory[(PodId("default/a"), "main")].backoff == 3  # the outage was not a crash


def test_containers_of_unassigned_pods_are_removed_only_on_an_authoritative_assignment() -> None:
    orphan = container("c9", name="gone")
    assert plan_node([], [orphan], {}, now=1.0, authoritative=False).remove == ()
    (remove,) = plan_node([], [orphan], {}, now=1.0).remove
    assert (remove.container.id, remove.reason) == ("c9", "the pod is no longer assigned to this node")


def test_a_terminating_pod_drains_then_stops_then_is_reported_gone() -> None:
    leaving = pod(terminating_at=10.0, reason="scale down")
    running = container("c0")
    first = plan_node([leaving], [running], {}, now=10.0, drain_seconds=2.0)
    assert not first.remove and "draining" in first.waiting["default/a"]
    second = plan_node([leaving], [running], first.memory, now=12.0, drain_seconds=2.0)
    assert [r.reason for r in second.remove] == ["the pod is terminating (scale down)"]
    assert plan_node([leaving], [], second.memory, now=13.0).stopped == (PodId("default/a"),)


def test_a_second_running_container_of_a_pod_is_removed_and_the_newest_run_kept() -> None:
    older, newer = container("c0", restart=0), container("c1", restart=1)
    actions = plan_node([pod()], [older, newer], {}, now=1.0)
    assert [(r.container.id, r.reason) for r in actions.remove] == [("c0", "a second run of the container")]
    assert not actions.start


def test_a_container_of_another_template_is_replaced() -> None:
    actions = plan_node([pod(template="h2")], [container("c0", template="h1")], {}, now=1.0)
    assert [r.reason for r in actions.remove] == ["its template differs"]
    assert [(s.pod.template_hash, s.restart) for s in actions.start] == [("h2", 0)]


runs_strategy = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]), st.integers(0, 3), st.booleans(), st.sampled_from(["h1", "h2"])
    ),
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(runs_strategy, st.sets(st.sampled_from(["a", "b", "c"])), st.booleans(), st.floats(0, 1000))
def test_planning_is_deterministic_starts_each_pod_at_most_once_and_never_removes_a_healthy_current_run(
    found: list[tuple[str, int, bool, str]], assigned: set[str], authoritative: bool, now: float
) -> None:
    containers = [
        container(f"c{i}", name, running=running, restart=restart, template=template)
        for i, (name, restart, running, template) in enumerate(found)
    ]
    pods = [pod(name) for name in sorted(assigned)]
    first = plan_node(pods, containers, {}, now=now, authoritative=authoritative)
    assert first == plan_node(pods, containers, {}, now=now, authoritative=authoritative)
    started = [s.pod.id for s in first.start]
    assert len(started) == len(set(started))
    removed = {r.container.id for r in first.remove}
    for p in pods:
        mine = [c for c in containers if c.pod == p.id and c.template_hash == p.template_hash]
        if mine:
            current = max(mine, key=lambda c: (c.restart, c.running, c.started_at, c.id))
            assert current.id not in removed
            if current.running:
                assert p.id not in started
    if not authoritative:
        assert all(c.pod in {p.id for p in pods} for c in containers if c.id in removed)
