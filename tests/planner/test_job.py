"""Jobs run as Kubernetes' Job controller runs them: completions and parallelism, work
queues, Indexed completion, backoffLimit with exponential backoff, activeDeadlineSeconds,
podFailurePolicy, suspend and resume, ttlSecondsAfterFinished, and a changed template as a
new run."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from typing import Any

import pytest

from gitops.model import ContainerStatus, JobState, Manifest, NodeName, Pod
from gitops.planner import Plan, plan
from gitops.planner.actions import Workloads
from gitops.planner.job import INDEX_ENV, INDEX_LABEL, JOB_NAME_LABEL, backoff_delay, index_of, job_counts
from gitops.schemas import SourceFile, validate_files

NOW = 10_000.0


def load(body: dict[str, Any], path: str = "apps/workload.yaml") -> Manifest:
    """A manifest as the source would give it: validated, with its hash."""
    result = validate_files([SourceFile(path, json.dumps(body).encode())])
    assert not result.errors, [str(e) for e in result.errors]
    return next(m for m in result.manifests if m.key.kind == body["kind"])


def job(
    image: str = "work:1",
    *,
    name: str = "batch",
    restart: str = "Never",
    init: Sequence[str] = (),
    **spec: Any,
) -> Manifest:
    pod: dict[str, Any] = {"restartPolicy": restart, "containers": [{"name": "work", "image": image}]}
    if init:
        pod["initContainers"] = [{"name": c, "image": "init:1"} for c in init]
    body = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"template": {"spec": pod}, **spec},
    }
    return load(body)


def step(
    manifest: Manifest,
    pods: Iterable[Pod],
    *,
    now: float = NOW,
    state: JobState | None = None,
    avoid: Iterable[str] = (),
) -> tuple[Plan, JobState]:
    """One pass: the plan and the Job's state after it."""
    jobs = {manifest.key: state} if state is not None else {}
    result = plan([manifest], list(pods), context=Workloads(now=now, avoid=frozenset(avoid), jobs=jobs))
    return result, result.jobs[manifest.key]


def running(pod: Pod, *, restarts: int = 0) -> Pod:
    return dataclasses.replace(pod, node=NodeName("n1"), phase="Running", ready=True, restarts=restarts)


def succeeded(pod: Pod) -> Pod:
    status = ContainerStatus("work", state="terminated", exit_code=0)
    return dataclasses.replace(pod, phase="Succeeded", ready=False, exit_code=0, containers=(status,))


def failed(pod: Pod, code: int = 1, container: str = "work", *, init: bool = False) -> Pod:
    statuses = [ContainerStatus(container, state="terminated", exit_code=code, init=init)]
    if init:
        statuses.append(ContainerStatus("work", state="waiting"))
    return dataclasses.replace(pod, phase="Failed", ready=False, exit_code=code, containers=tuple(statuses))


def apply(pods: Iterable[Pod], result: Plan) -> list[Pod]:
    """The pods once the agents carried the plan out: stopped ones gone, new ones running."""
    stopped = {a.pod.id for a in result.stop}
    return [p for p in pods if p.id not in stopped] + [running(a.pod) for a in result.create]


def names(actions: Iterable[Any]) -> list[str]:
    return [a.pod.name for a in actions]


def replace_where(pods: Sequence[Pod], name: str, change: Any) -> list[Pod]:
    return [change(p) if p.name == name else p for p in pods]


# --- completions and parallelism --------------------------------------------------------------


def test_runs_parallelism_pods_until_completions_succeed() -> None:
    manifest = job(completions=5, parallelism=2)
    result, state = step(manifest, [])
    assert len(result.create) == 2
    assert {a.reason for a in result.create} == {
        "Job default/batch runs 5 completions (0 done, parallelism 2)"
    }
    assert all(a.pod.label_map[JOB_NAME_LABEL] == "batch" for a in result.create)
    assert state.started_at == NOW
    pods = apply([], result)
    done = 0
    for t in range(1, 10):
        pods = [succeeded(p) if p.phase == "Running" else p for p in pods]
        result, state = step(manifest, pods, now=NOW + t, state=state)
        done = state.succeeded
        active = [p for p in pods if p.phase == "Running"] + [a.pod for a in result.create]
        assert len(active) <= min(2, 5 - done)
        pods = apply(pods, result)
        if state.finished:
            break
    assert (state.condition, state.reason) == ("Complete", "5/5 pods succeeded")
    assert state.finished_at == NOW + t
    assert not result.stop  # finished pods stay, their logs readable
    assert len(result.keep) == 5


def test_never_more_pods_than_completions_left() -> None:
    result, _ = step(job(completions=3, parallelism=5), [])
    assert len(result.create) == 3


def test_lowering_parallelism_stops_the_newest_pods() -> None:
    result, state = step(job(completions=10, parallelism=3), [])
    pods = [dataclasses.replace(p, created_at=NOW + i) for i, p in enumerate(apply([], result))]
    result, _ = step(job(completions=10, parallelism=1), pods, state=state)
    assert names(result.stop) == [pods[2].name, pods[1].name]
    assert {a.reason for a in result.stop} == {"3 pods running, 1 wanted (parallelism 1)"}
    assert not result.create


def test_a_job_that_sets_neither_completions_nor_parallelism_runs_one_pod_to_success() -> None:
    manifest = job()
    result, state = step(manifest, [])
    assert [a.reason for a in result.create] == [
        "Job default/batch runs 1 completion (0 done, parallelism 1)"
    ]
    pods = [failed(p) for p in apply([], result)]
    _, state = step(manifest, pods, now=NOW + 1, state=state)
    result, state = step(manifest, pods, now=NOW + 11, state=state)
    pods = [succeeded(p) if p.phase == "Running" else p for p in apply(pods, result)]
    _, state = step(manifest, pods, now=NOW + 12, state=state)
    assert (state.condition, state.reason) == ("Complete", "1/1 pods succeeded")


def test_a_work_queue_starts_no_new_pod_once_one_succeeded_and_lets_the_others_finish() -> None:
    manifest = job(parallelism=3)
    result, state = step(manifest, [])
    assert {a.reason for a in result.create} == {
        "Job default/batch runs a work queue (0 done, parallelism 3)"
    }
    pods = apply([], result)
    pods = replace_where(pods, pods[0].name, succeeded)
    result, state = step(manifest, pods, now=NOW + 1, state=state)
    assert result.empty  # the two still draining the queue keep running
    assert state.condition == ""
    pods = replace_where(pods, pods[1].name, succeeded)
    pods = replace_where(pods, pods[2].name, succeeded)
    result, state = step(manifest, pods, now=NOW + 2, state=state)
    assert result.empty
    assert (state.condition, state.reason) == ("Complete", "3 pod(s) succeeded (work queue)")


def test_a_work_queue_replaces_a_failed_pod_while_none_succeeded() -> None:
    manifest = job(parallelism=2)
    result, state = step(manifest, [])
    pods = apply([], result)
    pods = replace_where(pods, pods[0].name, failed)
    _, state = step(manifest, pods, now=NOW + 1, state=state)
    result, state = step(manifest, pods, now=NOW + 11, state=state)
    assert len(result.create) == 1
    assert result.create[0].reason.endswith("; retry after 1 failure(s)")


# --- Indexed ---------------------------------------------------------------------------------


def test_indexed_pods_know_their_index_and_each_index_succeeds_once() -> None:
    manifest = job(completions=3, parallelism=2, completionMode="Indexed")
    result, state = step(manifest, [])
    assert [index_of(a.pod) for a in result.create] == [0, 1]
    for i, action in enumerate(result.create):
        pod = action.pod
        assert pod.name.startswith(f"batch-{i}-")
        assert pod.label_map[INDEX_LABEL] == str(i)
        assert pod.spec.containers[0].env[0] == (INDEX_ENV, str(i))
        assert pod.spec.hostname == f"batch-{i}"
        assert action.reason == f"Job default/batch runs 3 completions (0 done, parallelism 2): index {i}"
    pods = apply([], result)
    pods = replace_where(pods, pods[0].name, succeeded)
    pods = replace_where(pods, pods[1].name, failed)
    result, state = step(manifest, pods, now=NOW + 1, state=state)
    assert state.succeeded_indexes == (0,)
    assert result.empty  # index 1 waits out its backoff
    result, state = step(manifest, pods, now=NOW + 11, state=state)
    assert sorted(index_of(a.pod) or 0 for a in result.create) == [1, 2]
    pods = [succeeded(p) if p.phase == "Running" else p for p in apply(pods, result)]
    result, state = step(manifest, pods, now=NOW + 12, state=state)
    assert (state.condition, state.reason) == ("Complete", "3/3 indexes succeeded")
    assert state.succeeded_indexes == (0, 1, 2)
    assert not result.create


def test_lowering_parallelism_of_an_indexed_job_stops_the_newest_pods() -> None:
    manifest = job(completions=5, parallelism=3, completionMode="Indexed")
    result, state = step(manifest, [])
    pods = [dataclasses.replace(p, created_at=NOW + i) for i, p in enumerate(apply([], result))]
    lowered = job(completions=5, parallelism=2, completionMode="Indexed")
    result, state = step(lowered, pods, now=NOW + 1, state=state)
    assert [index_of(a.pod) for a in result.stop] == [2]
    assert not result.create


def test_indexed_never_runs_two_pods_of_one_index_nor_one_of_a_succeeded_index() -> None:
    manifest = job(completions=4, parallelism=4, completionMode="Indexed")
    result, state = step(manifest, [])
    pods = apply([], result)
    pods = [succeeded(p) if index_of(p) in (0, 2) else p for p in pods]
    result, state = step(manifest, pods, now=NOW + 1, state=state)
    assert result.empty
    assert sorted(index_of(p) or 0 for p in result.keep if p.phase == "Running") == [1, 3]


# --- failures --------------------------------------------------------------------------------


def test_backoff_limit_counts_failed_pods_and_then_fails_the_job() -> None:
    manifest = job(completions=4, parallelism=3, backoffLimit=1)
    result, state = step(manifest, [])
    pods = apply([], result)
    pods = replace_where(pods, pods[0].name, failed)
    _, state = step(manifest, pods, now=NOW + 1, state=state)
    assert (state.failed, state.condition) == (1, "")
    result, state = step(manifest, pods, now=NOW + 11, state=state)
    assert len(result.create) == 1  # the replacement, after 10 s
    pods = apply(pods, result)
    pods = replace_where(pods, pods[1].name, failed)
    result, state = step(manifest, pods, now=NOW + 30, state=state)
    assert state.condition == "Failed"
    assert state.reason == "BackoffLimitExceeded: 2 failure(s), backoffLimit 1"
    still_running = [p.name for p in pods if p.phase == "Running"]
    assert len(still_running) == 2
    assert sorted(names(result.stop)) == sorted(still_running)
    assert {a.reason for a in result.stop} == {f"Job default/batch failed: {state.reason}"}
    assert not result.create


def test_under_on_failure_restarts_reaching_the_backoff_limit_fail_the_job() -> None:
    """Kubernetes' test for OnFailure: the running pods' restarts reach backoffLimit (with
    backoffLimit 0, any restart)."""
    manifest = job(restart="OnFailure", backoffLimit=2)
    result, state = step(manifest, [])
    pods = [running(p, restarts=1) for p in apply([], result)]
    _, state = step(manifest, pods, now=NOW + 1, state=state)
    assert state.condition == ""
    pods = [running(p, restarts=2) for p in pods]
    result, state = step(manifest, pods, now=NOW + 2, state=state)
    assert state.condition == "Failed"
    assert state.reason == "BackoffLimitExceeded: 2 container restart(s) of running pods, backoffLimit 2"
    assert names(result.stop) == [pods[0].name]
    strict = job(restart="OnFailure", backoffLimit=0)
    result, state = step(strict, [])
    pods = [running(p, restarts=1) for p in apply([], result)]
    _, state = step(strict, pods, now=NOW + 1, state=state)
    assert state.condition == "Failed"


def test_each_replacement_waits_ten_seconds_doubling_after_each_failure() -> None:
    assert [backoff_delay(n) for n in range(0, 8)] == [0, 10, 20, 40, 80, 160, 320, 360]
    manifest = job(completions=1)
    result, state = step(manifest, [])
    pods = apply([], result)
    pods = [failed(p) for p in pods]
    result, state = step(manifest, pods, now=NOW + 100, state=state)
    assert result.empty
    assert state.reason == "backoff after 1 failure(s): next pod in 10s"
    result, state = step(manifest, pods, now=NOW + 109, state=state)
    assert result.empty
    result, state = step(manifest, pods, now=NOW + 110, state=state)
    assert len(result.create) == 1
    pods = [failed(p) for p in apply(pods, result)]
    result, state = step(manifest, pods, now=NOW + 200, state=state)
    assert state.reason == "backoff after 2 failure(s): next pod in 20s"
    assert step(manifest, pods, now=NOW + 219, state=state)[0].empty
    assert len(step(manifest, pods, now=NOW + 220, state=state)[0].create) == 1


def test_a_replacement_never_reuses_a_name() -> None:
    manifest = job(completions=1, backoffLimit=10)
    result, state = step(manifest, [])
    pods = apply([], result)
    seen = {p.name for p in pods}
    t = NOW
    for _ in range(4):
        pods = [failed(p) if p.phase == "Running" else p for p in pods]
        t += 1000
        _, state = step(manifest, pods, now=t, state=state)  # the failure is seen
        result, state = step(manifest, pods, now=t + 500, state=state, avoid={"unrelated"})
        assert len(result.create) == 1
        assert result.create[0].pod.name not in seen
        seen.add(result.create[0].pod.name)
        pods = apply(pods, result)
    assert state.created == 5


def test_active_deadline_fails_the_job_and_stops_its_pods() -> None:
    manifest = job(completions=3, parallelism=3, activeDeadlineSeconds=60)
    result, state = step(manifest, [])
    pods = apply([], result)
    result, state = step(manifest, pods, now=NOW + 59, state=state)
    assert result.empty and not state.finished
    result, state = step(manifest, pods, now=NOW + 60, state=state)
    assert (state.condition, state.reason) == (
        "Failed",
        "DeadlineExceeded: active longer than activeDeadlineSeconds 60",
    )
    assert sorted(names(result.stop)) == sorted(p.name for p in pods)


# --- podFailurePolicy --------------------------------------------------------------------------


def _policy(*rules: tuple[str, str, list[int], str | None]) -> dict[str, Any]:
    out = []
    for action, operator, values, container in rules:
        codes: dict[str, Any] = {"operator": operator, "values": values}
        if container:
            codes["containerName"] = container
        out.append({"action": action, "onExitCodes": codes})
    return {"rules": out}


def _fail_first(
    manifest: Manifest, code: int, container: str = "work", *, init: bool = False
) -> tuple[Plan, JobState]:
    result, state = step(manifest, [])
    pods = [failed(p, code, container, init=init) for p in apply([], result)]
    return step(manifest, pods, now=NOW + 1, state=state)


def test_fail_job_on_a_matching_exit_code_fails_the_job_at_once() -> None:
    manifest = job(backoffLimit=6, podFailurePolicy=_policy(("FailJob", "In", [42], None)))
    _, state = _fail_first(manifest, 42)
    assert state.condition == "Failed"
    assert state.reason.startswith("PodFailurePolicy: pod batch-")
    assert state.reason.endswith(": container work exited with code 42, matching podFailurePolicy rule 0")


def test_ignore_neither_counts_the_failure_nor_waits_to_replace_the_pod() -> None:
    manifest = job(backoffLimit=0, podFailurePolicy=_policy(("Ignore", "In", [137], None)))
    result, state = _fail_first(manifest, 137)
    assert (state.failed, state.condition) == (0, "")
    assert len(result.create) == 1


def test_count_and_unmatched_exit_codes_count_against_the_backoff_limit() -> None:
    manifest = job(
        backoffLimit=0, podFailurePolicy=_policy(("Count", "In", [1], None), ("FailJob", "In", [42], None))
    )
    _, state = _fail_first(manifest, 1)
    assert (state.failed, state.reason) == (1, "BackoffLimitExceeded: 1 failure(s), backoffLimit 0")
    _, state = _fail_first(manifest, 3)
    assert state.reason.startswith("BackoffLimitExceeded")


def test_not_in_matches_every_other_nonzero_exit_code() -> None:
    manifest = job(podFailurePolicy=_policy(("FailJob", "NotIn", [1, 2], None)))
    assert _fail_first(manifest, 2)[1].condition == ""
    assert _fail_first(manifest, 3)[1].condition == "Failed"


def test_a_rule_naming_a_container_looks_only_at_that_container() -> None:
    manifest = job(init=("setup",), podFailurePolicy=_policy(("FailJob", "In", [42], "setup")))
    assert _fail_first(manifest, 42)[1].condition == ""  # the app container "work" exited 42
    _, state = _fail_first(manifest, 42, "setup", init=True)
    assert state.condition == "Failed"
    assert "container setup exited with code 42" in state.reason


def test_an_init_containers_exit_code_matches_a_rule_for_any_container() -> None:
    manifest = job(init=("setup",), podFailurePolicy=_policy(("FailJob", "In", [42], None)))
    assert _fail_first(manifest, 42, "setup", init=True)[1].condition == "Failed"


# --- suspend, TTL, template changes ----------------------------------------------------------


def test_suspend_stops_running_pods_and_starts_none_and_resume_starts_again() -> None:
    manifest = job(completions=2, parallelism=2, activeDeadlineSeconds=100)
    result, state = step(manifest, [])
    pods = apply([], result)
    suspended = job(completions=2, parallelism=2, activeDeadlineSeconds=100, suspend=True)
    result, state = step(suspended, pods, now=NOW + 50, state=state)
    assert sorted(names(result.stop)) == sorted(p.name for p in pods)
    assert {a.reason for a in result.stop} == {"Job default/batch is suspended"}
    assert (state.condition, state.started_at) == ("Suspended", None)
    pods = apply(pods, result)
    result, state = step(suspended, pods, now=NOW + 60, state=state)
    assert result.empty
    # Resumed: the deadline counts from now.
    result, state = step(manifest, pods, now=NOW + 500, state=state)
    assert len(result.create) == 2
    assert (state.condition, state.started_at) == ("", NOW + 500)
    pods = apply(pods, result)
    assert not step(manifest, pods, now=NOW + 599, state=state)[1].finished
    assert step(manifest, pods, now=NOW + 600, state=state)[1].reason.startswith("DeadlineExceeded")


def test_a_job_suspended_from_the_start_creates_nothing() -> None:
    result, state = step(job(suspend=True), [])
    assert result.empty
    assert state.condition == "Suspended"


def test_finished_pods_stay_until_ttl_seconds_after_finished_then_all_go() -> None:
    manifest = job(completions=1, ttlSecondsAfterFinished=100)
    result, state = step(manifest, [])
    pods = [succeeded(p) for p in apply([], result)]
    result, state = step(manifest, pods, now=NOW + 5, state=state)
    assert state.condition == "Complete" and state.finished_at == NOW + 5
    assert result.empty and [p.name for p in result.keep] == [pods[0].name]
    result, state = step(manifest, pods, now=NOW + 104, state=state)
    assert result.empty
    result, state = step(manifest, pods, now=NOW + 105, state=state)
    assert [(a.pod.name, a.reason) for a in result.stop] == [
        (pods[0].name, "ttlSecondsAfterFinished 100 passed: Job default/batch finished")
    ]
    assert state.expired
    result, state = step(manifest, [], now=NOW + 106, state=state)
    assert result.empty  # the Job stays in git, and does not run again


def test_without_a_ttl_a_finished_job_keeps_its_pods_and_never_runs_again() -> None:
    manifest = job(completions=1)
    result, state = step(manifest, [])
    pods = [succeeded(p) for p in apply([], result)]
    for t in (1, 10_000, 1_000_000):
        result, state = step(manifest, pods, now=NOW + t, state=state)
        assert result.empty
        assert [p.name for p in result.keep] == [pods[0].name]


def test_a_changed_template_is_a_new_run() -> None:
    result, state = step(job("work:1", completions=1), [])
    pods = [succeeded(p) for p in apply([], result)]
    _, state = step(job("work:1", completions=1), pods, now=NOW + 1, state=state)
    assert state.condition == "Complete"
    result, new_state = step(job("work:2", completions=1), pods, now=NOW + 2, state=state)
    assert [(a.pod.name, a.reason) for a in result.stop] == [
        (pods[0].name, "Job default/batch's template changed: a new run")
    ]
    assert [a.pod.spec.image for a in result.create] == ["work:2"]
    assert (new_state.condition, new_state.succeeded, new_state.template) == (
        "",
        0,
        result.create[0].pod.template_hash,
    )


def test_job_counts_reports_active_succeeded_and_failed() -> None:
    manifest = job(completions=3, parallelism=3, backoffLimit=5)
    result, state = step(manifest, [])
    pods = apply([], result)
    pods = replace_where(pods, pods[0].name, succeeded)
    pods = replace_where(pods, pods[1].name, failed)
    _, state = step(manifest, pods, now=NOW + 1, state=state)
    assert job_counts(state, pods) == {"active": 1, "succeeded": 1, "failed": 1}
    assert job_counts(None, pods) == {"active": 1, "succeeded": 0, "failed": 0}


@pytest.mark.parametrize("completions", [1, 3])
def test_planning_twice_changes_nothing(completions: int) -> None:
    manifest = job(completions=completions, parallelism=2)
    result, state = step(manifest, [])
    pods = apply([], result)
    again, again_state = step(manifest, pods, state=state)
    assert again.empty
    assert again_state == state
