"""Jobs: pods that run to completion, as Kubernetes' Job controller runs them.

A Job runs pods until `completions` of them succeed (`completionMode: Indexed`: one success
per index `0..completions-1`, each pod told its index in `JOB_COMPLETION_INDEX`), at most
`parallelism` at a time; a Job that sets neither runs one pod to success (both default to
1). With `parallelism` but without `completions` it is a work queue: once one pod succeeds,
no new ones start, those running finish, and the Job completes when none is left running.

A Job fails once more pods failed than `backoffLimit` (default 6), or, under
`restartPolicy: OnFailure`, once its running pods' container restarts reach it (any restart
with a limit of 0), as Kubernetes decides; the next pod after a failure waits 10 s, 20 s,
40 s ... (at most six minutes). `podFailurePolicy` rules look at a failed pod's container
exit codes first: `FailJob` fails the Job at once, `Ignore` does not count the failure,
`Count` counts it. Past `activeDeadlineSeconds` from its start, the Job fails and its
running pods are stopped. `suspend: true` stops its running pods and starts none; the
deadline counts again from the resume.

A finished Job keeps its finished pods (their containers stay, exited, so their logs can
be read) until the Job leaves the source or `ttlSecondsAfterFinished` passes. The Job
itself stays in git: its state (`JobState`) remembers that it ran, so it does not run
again; a Job whose pod template changes in git is a new run.

Pod names are `<job>-<suffix>` (`<job>-<index>-<suffix>` when Indexed), the suffix taken
from the template hash and a count of the pods the Job created, so they never repeat.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from gitops.model import JobState, Manifest, Pod, PodName
from gitops.planner.actions import Action, Plan, Workloads, finished, pod_suffix
from gitops.planner.podspec import Template

JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
LEGACY_JOB_NAME_LABEL = "job-name"
INDEX_LABEL = "batch.kubernetes.io/job-completion-index"
INDEX_ENV = "JOB_COMPLETION_INDEX"
DEFAULT_BACKOFF_LIMIT = 6
BACKOFF_FIRST = 10.0
BACKOFF_CAP = 360.0


def backoff_delay(failures: int) -> float:
    """Kubernetes' delay before the next pod after `failures` failures: 10 s, doubling, at most 6 min."""
    if failures <= 0:
        return 0.0
    return float(min(BACKOFF_CAP, BACKOFF_FIRST * 2.0 ** (failures - 1)))


def index_of(pod: Pod) -> int | None:
    value = dict(pod.labels).get(INDEX_LABEL)
    return int(value) if value is not None and value.isdigit() else None


def _rule_matches(rule: Mapping[str, Any], pod: Pod) -> str:
    """What in `pod` matches a podFailurePolicy rule ("" when nothing does)."""
    codes = rule.get("onExitCodes")
    if not codes:
        return ""
    container = codes.get("containerName")
    values = {int(v) for v in codes.get("values") or []}
    operator = codes.get("operator", "In")
    # App containers first, then init containers (sidecars too), as Kubernetes matches them.
    for status in sorted(pod.containers, key=lambda c: c.init):
        if status.exit_code is None or status.state != "terminated":
            continue
        if container and status.name != container:
            continue
        code = status.exit_code
        if code == 0:
            continue
        if (operator == "In" and code in values) or (operator == "NotIn" and code not in values):
            return f"container {status.name} exited with code {code}"
    if not pod.containers and pod.exit_code not in (None, 0):
        code = pod.exit_code
        if (operator == "In" and code in values) or (operator == "NotIn" and code not in values):
            return f"exited with code {code}"
    return ""


def failure_action(job: Manifest, pod: Pod) -> tuple[str, str]:
    """(action, why) of the first podFailurePolicy rule `pod`'s failure matches; Count by default."""
    rules = (job.spec.get("podFailurePolicy") or {}).get("rules") or []
    for i, rule in enumerate(rules):
        found = _rule_matches(rule, pod)
        if found:
            return str(rule.get("action", "Count")), f"{found}, matching podFailurePolicy rule {i}"
    return "Count", ""


def _count(job: Manifest, state: JobState, pods: Sequence[Pod], now: float) -> JobState:
    """`state` with the newly finished `pods` counted."""
    counted = set(state.counted)
    succeeded, failed = state.succeeded, state.failed
    indexes = set(state.succeeded_indexes)
    condition, reason = state.condition, state.reason
    last_failure = state.last_failure_at
    for pod in sorted(pods, key=lambda p: (p.created_at, p.name)):
        if not finished(pod) or pod.name in counted:
            continue
        counted.add(pod.name)
        if pod.phase == "Succeeded":
            succeeded += 1
            index = index_of(pod)
            if index is not None:
                indexes.add(index)
            continue
        action, why = failure_action(job, pod)
        if action == "Ignore":
            continue
        if action == "FailJob" and not condition:
            condition, reason = "Failed", f"PodFailurePolicy: pod {pod.name}: {why}"
        failed += 1
        last_failure = now  # when the failure was seen: the next pod waits from there
    return dataclasses.replace(
        state,
        counted=tuple(sorted(counted)),
        succeeded=succeeded,
        failed=failed,
        succeeded_indexes=tuple(sorted(indexes)),
        condition=condition,
        reason=reason,
        last_failure_at=last_failure,
    )


def _new_pod(job: Manifest, template: Template, number: int, index: int | None, now: float) -> Pod:
    suffix = pod_suffix(template.hash, number)
    labels = {**dict(template.labels), JOB_NAME_LABEL: job.key.name, LEGACY_JOB_NAME_LABEL: job.key.name}
    spec = template.spec
    if index is not None:
        labels[INDEX_LABEL] = str(index)
        name = PodName(f"{job.key.name}-{index}-{suffix}")
        spec = spec.with_containers(lambda c: dataclasses.replace(c, env=((INDEX_ENV, str(index)), *c.env)))
        spec = dataclasses.replace(spec, hostname=spec.hostname or f"{job.key.name}-{index}")
    else:
        name = PodName(f"{job.key.name}-{suffix}")
    return Pod(
        namespace=job.key.namespace,
        name=name,
        owner=job.key,
        template_hash=template.hash,
        spec=spec,
        labels=tuple(sorted(labels.items())),
        reason="waiting to be scheduled",
        created_at=now,
    )


def plan_job(job: Manifest, template: Template, owned: Sequence[Pod], ctx: Workloads) -> Plan:
    spec = job.spec
    now = ctx.now
    state = ctx.jobs.get(job.key)
    if state is None or state.template != template.hash:
        state = JobState(job.key, template.hash)
    mine = [p for p in owned if p.template_hash == template.hash]
    stop = [
        Action(p, f"{job.key}'s template changed: a new run")
        for p in owned
        if p.template_hash != template.hash
    ]
    active = [p for p in mine if not finished(p) and p.terminating_at is None]
    if state.expired:
        stop += [Action(p, f"ttlSecondsAfterFinished passed: {job.key} finished") for p in mine]
        return Plan(stop=tuple(stop), jobs={job.key: state})
    state = _count(job, state, mine, now)
    restarts = sum(p.restarts for p in active) if template.spec.restart_policy == "OnFailure" else 0
    backoff_limit = int(spec.get("backoffLimit", DEFAULT_BACKOFF_LIMIT))
    completions: int | None = int(spec["completions"]) if spec.get("completions") is not None else None
    if completions is None and spec.get("parallelism") is None:
        completions = 1  # Kubernetes' default when neither is set: one pod, run to success
    parallelism = int(spec.get("parallelism", 1))
    indexes = completions if spec.get("completionMode") == "Indexed" and completions is not None else None
    indexed = indexes is not None
    deadline = spec.get("activeDeadlineSeconds")

    if not state.finished:
        # Kubernetes' two tests: more failed pods than the limit, or (OnFailure) restarts of
        # the running pods reaching it.
        restarted_out = restarts > 0 if backoff_limit == 0 else restarts >= backoff_limit
        if state.failed > backoff_limit or (restarts and restarted_out):
            counted = (
                f"{state.failed} failure(s)"
                if state.failed > backoff_limit
                else f"{restarts} container restart(s) of running pods"
            )
            state = dataclasses.replace(
                state,
                condition="Failed",
                reason=f"BackoffLimitExceeded: {counted}, backoffLimit {backoff_limit}",
            )
        elif (
            deadline is not None and state.started_at is not None and now - state.started_at >= int(deadline)
        ):
            state = dataclasses.replace(
                state,
                condition="Failed",
                reason=f"DeadlineExceeded: active longer than activeDeadlineSeconds {deadline}",
            )
        elif indexes is not None and len(state.succeeded_indexes) >= indexes:
            state = dataclasses.replace(
                state, condition="Complete", reason=f"{completions}/{completions} indexes succeeded"
            )
        elif not indexed and completions is not None and state.succeeded >= completions:
            state = dataclasses.replace(
                state, condition="Complete", reason=f"{state.succeeded}/{completions} pods succeeded"
            )
        elif completions is None and state.succeeded > 0 and not active:
            state = dataclasses.replace(
                state, condition="Complete", reason=f"{state.succeeded} pod(s) succeeded (work queue)"
            )
    if state.finished:
        if state.finished_at is None:
            state = dataclasses.replace(state, finished_at=now)
        stop += [Action(p, f"{job.key} {state.condition.lower()}: {state.reason}") for p in active]
        ttl = spec.get("ttlSecondsAfterFinished")
        assert state.finished_at is not None
        if ttl is not None and now >= state.finished_at + int(ttl):
            state = dataclasses.replace(state, expired=True)
            stopped = {a.pod.id for a in stop}
            stop += [
                Action(p, f"ttlSecondsAfterFinished {ttl} passed: {job.key} finished")
                for p in mine
                if p.id not in stopped
            ]
        return _result(owned, stop, [], state)

    if spec.get("suspend") is True:
        state = dataclasses.replace(state, condition="Suspended", reason="suspend: true", started_at=None)
        stop += [Action(p, f"{job.key} is suspended") for p in active]
        return _result(owned, stop, [], state)
    if state.condition == "Suspended":
        state = dataclasses.replace(state, condition="", reason="")
    if state.started_at is None:
        state = dataclasses.replace(state, started_at=now)

    create: list[Action] = []
    if indexes is not None:
        remaining = indexes - len(state.succeeded_indexes)
    elif completions is not None:
        remaining = completions - state.succeeded
    else:
        # A work queue: once a pod succeeded no new one starts, and those running finish.
        remaining = parallelism if state.succeeded == 0 else len(active)
    target = max(0, min(parallelism, remaining))
    excess = len(active) - target
    if excess > 0:  # parallelism lowered, or fewer completions left than pods running: the newest go
        newest = sorted(active, key=lambda p: (-p.created_at, p.name))[:excess]
        stop += [
            Action(p, f"{len(active)} pods running, {target} wanted (parallelism {parallelism})")
            for p in newest
        ]
    room = max(0, target - len(active))
    wanted: list[int | None]
    if indexes is not None:
        running = {index_of(p) for p in active}
        todo = [i for i in range(indexes) if i not in state.succeeded_indexes and i not in running]
        wanted = list(todo[:room])
    else:
        wanted = [None] * room
    if wanted:
        wait = state.last_failure_at + backoff_delay(state.failed) - now if state.failed else 0.0
        if wait > 0:
            state = dataclasses.replace(
                state, reason=f"backoff after {state.failed} failure(s): next pod in {wait:.0f}s"
            )
            return _result(owned, stop, [], state)
        number = state.created
        for index in wanted:
            pod = _new_pod(job, template, number, index, now)
            while pod.name in ctx.avoid or any(p.name == pod.name for p in owned):
                number += 1
                pod = _new_pod(job, template, number, index, now)
            number += 1
            done = len(state.succeeded_indexes) if indexed else state.succeeded
            goal = (
                "a work queue"
                if completions is None
                else f"{completions} completion" + ("s" if completions != 1 else "")
            )
            why = f"{job.key} runs {goal} ({done} done, parallelism {parallelism})"
            if index is not None:
                why += f": index {index}"
            if state.failed:
                why += f"; retry after {state.failed} failure(s)"
            create.append(Action(pod, why))
        state = dataclasses.replace(state, created=number, reason="")
    return _result(owned, stop, create, state)


def _result(owned: Sequence[Pod], stop: list[Action], create: list[Action], state: JobState) -> Plan:
    stopped = {a.pod.id for a in stop}
    keep = tuple(sorted((p for p in owned if p.id not in stopped), key=lambda p: p.name))
    return Plan(tuple(create), tuple(stop), keep, jobs={state.job: state})


def job_counts(state: JobState | None, pods: Sequence[Pod]) -> dict[str, int]:
    """Kubernetes' Job status counters: active, succeeded, failed."""
    active = sum(1 for p in pods if not finished(p) and p.terminating_at is None)
    if state is None:
        return {"active": active, "succeeded": 0, "failed": 0}
    return {"active": active, "succeeded": state.succeeded, "failed": state.failed}
