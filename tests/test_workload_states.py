"""Jobs, CronJobs and autoscalers through real controller passes on a real store: their
state survives a restart of the control plane, so a finished Job never runs again, a
CronJob does not run twice for one time, and an autoscaler's replicas win over git's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gitops.controller import reconcile_once
from gitops.model import (
    ContainerUsage,
    CronState,
    JobState,
    Manifest,
    Node,
    NodeName,
    ObjectKey,
    PodStatus,
    PodUsage,
    Revision,
    ScaleState,
)
from gitops.store import Store
from tests.planner.factories import deployment, manifest

POD = {"restartPolicy": "Never", "containers": [{"name": "work", "image": "busybox"}]}


def job(name: str = "once", **spec: Any) -> Manifest:
    found = manifest("Job", name, spec={"template": {"spec": POD}, **spec})
    return found


def cronjob(name: str = "tick", schedule: str = "* * * * *") -> Manifest:
    return manifest(
        "CronJob", name, spec={"schedule": schedule, "jobTemplate": {"spec": {"template": {"spec": POD}}}}
    )


def open_store(tmp_path: Path, now: float, *objects: Manifest) -> Store:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    store.register_node(Node(NodeName("n1"), "192.0.2.10", 4000, 2**32), "t", now=now)
    store.apply_revision(Revision("git:x", "a" * 40), list(objects), [], now=now)
    return store


def report(store: Store, now: float, phase: str, **more: Any) -> None:
    """The node's agent reports every pod bound to it in `phase`."""
    statuses = [PodStatus(p.id, phase, phase == "Running", **more) for p in store.pods(node="n1")]  # type: ignore[arg-type]
    store.heartbeat("n1", statuses, now=now)


def test_a_finished_job_is_remembered_across_a_restart_and_never_runs_again(tmp_path: Path) -> None:
    store = open_store(tmp_path, 100.0, job())
    reconcile_once(store, now=101.0)
    (pod,) = store.pods()
    assert pod.node == "n1" and pod.name.startswith("once-")
    report(store, 102.0, "Succeeded", exit_code=0)
    reconcile_once(store, now=103.0)
    state = store.workload_states()[ObjectKey("Job", "default", "once")]
    assert isinstance(state, JobState)
    assert (state.condition, state.succeeded, state.finished_at) == ("Complete", 1, 103.0)
    assert ("Complete", "1/1 pods succeeded") in {(e.reason, e.message) for e in store.events()}
    # The finished pod is kept (its container's log stays readable).
    assert [p.phase for p in store.pods()] == ["Succeeded"]

    store.close()
    again = Store(f"sqlite:///{tmp_path / 's.db'}", keys=store.keys)  # the control plane restarts
    result = reconcile_once(again, now=200.0)
    assert result.plan.empty
    assert [p.name for p in again.pods()] == [pod.name]


def test_a_jobs_ttl_after_finishing_deletes_its_pods_but_not_its_memory(tmp_path: Path) -> None:
    store = open_store(tmp_path, 100.0, job(ttlSecondsAfterFinished=30))
    reconcile_once(store, now=101.0)
    report(store, 102.0, "Failed", exit_code=1)
    reconcile_once(store, now=103.0)  # counted: backoff before the next pod
    assert len(store.pods()) == 1
    reconcile_once(store, now=113.0)  # 10 s later: the retry
    assert len(store.pods()) == 2
    report(store, 114.0, "Succeeded", exit_code=0)
    reconcile_once(store, now=115.0)
    reconcile_once(store, now=145.0)
    assert all(p.terminating_at is not None for p in store.pods())
    state = store.workload_states()[ObjectKey("Job", "default", "once")]
    assert isinstance(state, JobState)
    assert (state.condition, state.expired, state.failed, state.succeeded) == ("Complete", True, 1, 1)


def test_a_cronjob_starts_one_run_per_schedule_time_even_after_a_restart(tmp_path: Path) -> None:
    start = 1_800_000_000.0 + 30  # half a minute past a minute
    store = open_store(tmp_path, start, cronjob())
    reconcile_once(store, now=start)
    assert store.pods() == []  # no run for times before the CronJob appeared
    reconcile_once(store, now=start + 31)  # the next minute
    (pod,) = store.pods()
    minute = int((start + 30) // 60)
    assert pod.owner == ObjectKey("Job", "default", f"tick-{minute}")
    state = store.workload_states()[ObjectKey("CronJob", "default", "tick")]
    assert isinstance(state, CronState) and [r.name for r in state.runs] == [f"tick-{minute}"]

    store.close()
    again = Store(f"sqlite:///{tmp_path / 's.db'}", keys=store.keys)
    reconcile_once(again, now=start + 32)
    assert [p.name for p in again.pods()] == [pod.name]  # not started twice


def test_an_autoscalers_replicas_win_over_the_replicas_written_in_git(tmp_path: Path) -> None:
    web = deployment(replicas=1, resources={"requests": {"cpu": "100m"}})
    hpa = manifest(
        "HorizontalPodAutoscaler",
        "web",
        spec={
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
            "minReplicas": 1,
            "maxReplicas": 4,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}},
                }
            ],
        },
    )
    store = open_store(tmp_path, 0.0, web, hpa)
    reconcile_once(store, now=1.0)  # first sight: starts from git's 1
    report(store, 2.0, "Running")
    (pod,) = store.pods()
    store.record_usage(
        {"n1": [PodUsage(pod.id, 400.0, (ContainerUsage("main", 200.0, 2**20),), window=15.0)]}
    )
    reconcile_once(store, now=400.0)
    state = store.workload_states()[ObjectKey("HorizontalPodAutoscaler", "default", "web")]
    assert isinstance(state, ScaleState)
    assert state.replicas == 4, state.reason
    assert state.reason.startswith("cpu 200% of requests > target 50%: 1 -> 4"), state.reason
    assert len(store.pods()) == 4  # git says 1; the autoscaler says 4
    assert ("Scaled", state.reason) in {(e.reason, e.message) for e in store.events()}


def autoscaler_of_web() -> Manifest:
    return manifest(
        "HorizontalPodAutoscaler",
        "web",
        spec={"scaleTargetRef": {"kind": "Deployment", "name": "web"}, "minReplicas": 1, "maxReplicas": 4},
    )


def test_a_pass_reads_the_measured_use_of_autoscaled_pods_only(tmp_path: Path) -> None:
    """Every pod's use was read at every pass: 150,000 rows at 150,000 pods, the agents
    measuring every 15 s. A pass needs only the pods autoscalers scale; a preview, whose
    branch may autoscale others, still gets every pod's."""
    web = deployment(name="web", replicas=2)
    db = deployment(name="db", replicas=1)
    hpa = autoscaler_of_web()
    store = open_store(tmp_path, 0.0, web, db)
    reconcile_once(store, now=1.0)
    report(store, 2.0, "Running")
    samples = [PodUsage(p.id, 3.0, (ContainerUsage("main", 5.0, 2**20),), window=15.0) for p in store.pods()]
    store.record_usage({"n1": samples})
    webs = {p.id for p in store.pods() if p.owner == ObjectKey("Deployment", "default", "web")}
    assert len(webs) == 2 and len(samples) == 3

    assert store.snapshot(4.0).usage == {}  # no autoscaler: nothing read
    assert set(store.snapshot(4.0, every_usage=True).usage) == {s.pod for s in samples}
    store.apply_revision(Revision("git:x", "b" * 40), [web, db, hpa], [], now=5.0)
    assert set(store.snapshot(6.0).usage) == webs  # the autoscaled Deployment's pods only
    assert store.snapshot(6.0).usage[min(webs)] == next(s for s in samples if s.pod == min(webs))


def test_only_autoscaled_pods_measurements_are_written_every_pods_stays_in_memory(tmp_path: Path) -> None:
    """Agents report every pod's use every 15 s: written whole, at 150,000 pods that was
    10,000 rows a second. Only the pods autoscalers scale are written (what a pass reads);
    every pod's last measurement is kept in memory for `/metrics/resource`."""
    from gitops.api.agentsync import AgentReports, keep

    web = deployment(name="web", replicas=2)
    db = deployment(name="db", replicas=1)
    hpa = autoscaler_of_web()
    store = open_store(tmp_path, 0.0, web, db)
    reconcile_once(store, now=1.0)
    samples = [PodUsage(p.id, 3.0, (ContainerUsage("main", 5.0, 2**20),), window=15.0) for p in store.pods()]
    reports = AgentReports(store)
    reports.keep_usage("n1", keep(samples))
    reports.flush()
    assert store.usage() == {}  # no autoscaler: nothing written
    assert [s.pod for s in reports.measured()] == sorted(s.pod for s in samples)

    store.apply_revision(Revision("git:x", "b" * 40), [web, db, hpa], [], now=5.0)
    reports.keep_usage("n1", keep(samples))
    reports.flush()
    webs = {p.id for p in store.pods() if p.owner == ObjectKey("Deployment", "default", "web")}
    assert set(store.usage()) == webs and len(webs) == 2
    assert len(reports.measured()) == 3
    assert list(reports.measured(max_age=-1.0)) == []  # a node not heard from within the age drops out


def test_a_nodes_measurements_of_no_autoscaled_pod_are_deleted_once_then_cost_no_write(
    tmp_path: Path,
) -> None:
    """With no autoscaler every flush deleted the rows of every node that reported (333
    nodes a second at 5,000 nodes), though nothing was left to delete after the first."""
    from gitops.api.agentsync import AgentReports, keep

    web = deployment(name="web", replicas=2)
    store = open_store(tmp_path, 0.0, web, autoscaler_of_web())
    reconcile_once(store, now=1.0)
    samples = [PodUsage(p.id, 3.0, (ContainerUsage("main", 5.0, 2**20),), window=15.0) for p in store.pods()]
    reports = AgentReports(store)
    reports.keep_usage("n1", keep(samples))
    reports.flush()
    assert len(store.usage()) == 2
    store.apply_revision(Revision("git:x", "b" * 40), [web], [], now=5.0)  # the autoscaler goes
    reports.keep_usage("n1", keep(samples))
    reports.flush()
    assert store.usage() == {}  # its rows deleted
    written = store.written()
    reports.keep_usage("n1", keep(samples))
    reports.flush()
    assert store.written() == written  # nothing left to delete: no statement
    store.apply_revision(Revision("git:x", "c" * 40), [web, autoscaler_of_web()], [], now=9.0)
    reports.keep_usage("n1", keep(samples))
    reports.flush()
    assert len(store.usage()) == 2  # back with the autoscaler
