"""CronJobs: Jobs started on a schedule, decided the way Kubernetes' CronJob controller (v2) decides.

One pass, `cron_step(cronjob, state, outcomes, now)`, takes the CronJob manifest, what the
previous pass remembered (`CronState`: when the CronJob appeared, the last schedule time a run
was started for, the runs whose Job still exists), the outcome of the runs that finished, and
the time. It returns the new state, the runs to start (`job_manifest` gives each one's Job) and
the runs to remove, each with its reason. There is no clock here: the caller passes `now`, so a
test drives it with plain floats and running a pass twice at the same time does nothing more.

The schedule is read by `gitops.schemas.cron`, the same reader that validates manifests
(Kubernetes' grammar, `spec.timeZone` or UTC, wall-clock times across daylight-saving changes as
robfig/cron keeps them); this module only decides what each pass does with its times.

Each pass starts at most one run: the most recent schedule time after the last one started (or
after the CronJob appeared) that is not after now. After an outage the times missed in between
are not replayed; only the most recent runs, late. With `startingDeadlineSeconds` only the
times within that many seconds of now count, so a catch-up older than the deadline is
dropped. More than 100 missed times are reported as a probable clock or deadline problem, and
the most recent still runs. `concurrencyPolicy` decides what an active run means: Allow starts
regardless, Forbid starts nothing and keeps the last schedule time (so the most recent missed
time may still start once the active run ends, if within the deadline), Replace removes the
active runs and starts the new one. A suspended CronJob starts nothing; its active runs go on.
Finished runs are kept up to `successfulJobsHistoryLimit` (default 3) and
`failedJobsHistoryLimit` (default 1); older ones are removed, oldest scheduled first.

A run's Job is named `<cronjob>-<scheduled time in minutes since the epoch>`, as Kubernetes names
it, so one schedule time can only ever create one Job; its
`batch.kubernetes.io/cronjob-scheduled-timestamp` annotation gives that time in RFC 3339, in UTC.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from itertools import islice, takewhile
from typing import Any, Literal
from zoneinfo import ZoneInfo

from gitops.model import CronRun, CronState, Manifest, ObjectKey, content_hash
from gitops.schemas.cron import CronSchedule, parse_schedule, read_time_zone

Outcome = Literal["Complete", "Failed"]
ConcurrencyPolicy = Literal["Allow", "Forbid", "Replace"]

SCHEDULED_TIMESTAMP_ANNOTATION = "batch.kubernetes.io/cronjob-scheduled-timestamp"
DEFAULT_SUCCESSFUL_HISTORY = 3
DEFAULT_FAILED_HISTORY = 1
# Kubernetes' threshold for "too many missed start times": more suggests a clock problem.
TOO_MANY_MISSED = 100

POLICIES: tuple[ConcurrencyPolicy, ...] = ("Allow", "Forbid", "Replace")


@dataclass(frozen=True)
class CronStep:
    """The result of one pass: the new state and what changed, with reasons."""

    state: CronState
    started: tuple[CronRun, ...]  # runs started in this pass
    ended: tuple[tuple[CronRun, str], ...]  # runs removed in this pass, with why


# --- schedule times ----------------------------------------------------------------------


def next_runs(spec: Mapping[str, Any], after: float, count: int) -> list[float]:
    """The next `count` schedule times strictly after `after`."""
    return list(islice(parse_schedule(spec).times_after(after), count))


def describe_time(t: float, zone: str) -> str:
    """`2026-12-01 10:05 UTC`: a time as reasons show it, in the CronJob's zone."""
    local = datetime.fromtimestamp(t, ZoneInfo(read_time_zone(zone)))
    clock = "%H:%M:%S" if local.second or local.microsecond else "%H:%M"
    return local.strftime(f"%Y-%m-%d {clock} %Z")


def _describe_duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 1:
        return f"{int(seconds)}s"
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "m")) if n]
    return "".join(parts)


# --- the rest of the spec ---------------------------------------------------------------


@dataclass(frozen=True)
class CronSpec:
    """A CronJob's spec as the controller reads it, defaults applied."""

    schedule: CronSchedule
    concurrency_policy: ConcurrencyPolicy = "Allow"
    starting_deadline: int | None = None  # startingDeadlineSeconds
    suspend: bool = False
    successful_limit: int = DEFAULT_SUCCESSFUL_HISTORY
    failed_limit: int = DEFAULT_FAILED_HISTORY


def _count(spec: Mapping[str, Any], name: str) -> int | None:
    value = spec.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"spec.{name}: expected an integer >= 0, got {value!r}")
    return value


def parse_cronjob_spec(spec: Mapping[str, Any]) -> CronSpec:
    """The CronJob's spec with Kubernetes' defaults; ValueError names the field that is wrong."""
    schedule = parse_schedule(spec)
    policy = spec.get("concurrencyPolicy") or "Allow"
    if policy not in POLICIES:
        raise ValueError(f"spec.concurrencyPolicy: expected Allow, Forbid or Replace, got {policy!r}")
    suspend = spec.get("suspend")
    if suspend is not None and not isinstance(suspend, bool):
        raise ValueError(f"spec.suspend: expected true or false, got {suspend!r}")
    successful = _count(spec, "successfulJobsHistoryLimit")
    failed = _count(spec, "failedJobsHistoryLimit")
    return CronSpec(
        schedule,
        policy,
        _count(spec, "startingDeadlineSeconds"),
        bool(suspend),
        DEFAULT_SUCCESSFUL_HISTORY if successful is None else successful,
        DEFAULT_FAILED_HISTORY if failed is None else failed,
    )


# --- one pass -------------------------------------------------------------------------


def job_name(cronjob_name: str, scheduled_at: float) -> str:
    """`<cronjob>-<scheduled time in minutes since the epoch>`, as Kubernetes names the Job, so
    that one schedule time can only ever create one Job."""
    return f"{cronjob_name}-{int(scheduled_at // 60)}"


@dataclass(frozen=True)
class _Decision:
    start: CronRun | None
    reason: str
    replaced: tuple[tuple[CronRun, str], ...] = ()


def _decide(name: str, spec: CronSpec, state: CronState, runs: Sequence[CronRun], now: float) -> _Decision:
    """Whether this pass starts a run, and for which schedule time."""
    schedule = spec.schedule

    def when(t: float) -> str:
        return describe_time(t, schedule.zone)

    if spec.suspend:
        return _Decision(None, "suspended")
    base = state.last_schedule if state.last_schedule is not None else state.created_at
    deadline = spec.starting_deadline
    earliest = base if deadline is None else max(base, now - deadline)
    # With a deadline, times older than it no longer count (Kubernetes' earliestTime). Past
    # TOO_MANY_MISSED only "too many" matters, so the count stops there.
    due = list(islice(takewhile(lambda t: t <= now, schedule.times_after(earliest)), TOO_MANY_MISSED + 1))
    # The latest time the deadline dropped, if any, for the reason.
    older = None
    if deadline is not None and earliest > base:
        latest_old = schedule.latest_at_or_before(earliest)
        older = latest_old if latest_old > base else None
    if not due:
        upcoming = f"next run at {when(schedule.next_after(now))}"
        if older is not None:
            return _Decision(
                None, f"missed {when(older)}: more than startingDeadlineSeconds {deadline} ago; {upcoming}"
            )
        return _Decision(None, upcoming)

    scheduled = due[-1] if len(due) <= TOO_MANY_MISSED else schedule.latest_at_or_before(now)
    run = CronRun(job_name(name, scheduled), scheduled)
    if any(r.name == run.name for r in runs):
        return _Decision(None, f"{when(scheduled)} already has run {run.name}")
    active = [r for r in runs if not r.outcome]
    if active and spec.concurrency_policy == "Forbid":
        names = ", ".join(r.name for r in active)
        return _Decision(None, f"Forbid: run {names} still active, {when(scheduled)} not started")

    if len(due) > TOO_MANY_MISSED:
        reason = (
            f"missed more than {TOO_MANY_MISSED} schedules since {when(due[0])} (too many missed start "
            "times: set or decrease startingDeadlineSeconds or check clock skew); "
            f"started only the most recent: {run.name} for {when(scheduled)}"
        )
    elif len(due) > 1:
        reason = (
            f"missed {len(due)} schedules ({when(due[0])} to {when(scheduled)}); "
            f"started only the most recent: {run.name} for {when(scheduled)}"
        )
    else:
        late = f" ({_describe_duration(now - scheduled)} late)" if now - scheduled >= 60 else ""
        reason = f"started {run.name} for {when(scheduled)}{late}"
    if older is not None:
        reason += f"; earlier schedules were more than startingDeadlineSeconds {deadline} ago"
    replaced: tuple[tuple[CronRun, str], ...] = ()
    if spec.concurrency_policy == "Replace":
        replaced = tuple(
            (
                r,
                f"Replace: {r.name} (for {when(r.scheduled_at)}) still running at {when(scheduled)}; "
                f"replaced by {run.name}",
            )
            for r in active
        )
    return _Decision(run, reason, replaced)


def _over_history(spec: CronSpec, runs: Sequence[CronRun]) -> list[tuple[CronRun, str]]:
    """Finished runs beyond the history limits, oldest scheduled first, with why."""
    removed = []
    for outcome, limit, setting, kind in (
        ("Complete", spec.successful_limit, "successfulJobsHistoryLimit", "succeeded"),
        ("Failed", spec.failed_limit, "failedJobsHistoryLimit", "failed"),
    ):
        finished = sorted((r for r in runs if r.outcome == outcome), key=lambda r: (r.scheduled_at, r.name))
        for run in finished[: max(len(finished) - limit, 0)]:
            reason = (
                f"history limit: {setting} {limit} keeps the newest {limit} {kind} runs of {len(finished)}; "
                f"{run.name} (for {describe_time(run.scheduled_at, spec.schedule.zone)}) is older"
            )
            removed.append((run, reason))
    return removed


def cron_step(
    cronjob: Manifest, state: CronState | None, outcomes: Mapping[str, Outcome], now: float
) -> CronStep:
    """One controller pass over a CronJob at time `now`.

    `state` None is the first sight of the CronJob: it exists from `now` on. `outcomes` gives
    the finished runs' Job outcome by Job name; a run absent from it is still active, and an
    outcome once recorded stays. A spec that cannot be read starts nothing and is reported in
    `error`; the runs already started are left alone.
    """
    if state is None:
        state = CronState(cronjob.key, created_at=now)
    runs = tuple(
        replace(r, outcome=outcomes[r.name]) if not r.outcome and r.name in outcomes else r
        for r in state.runs
    )
    try:
        spec = parse_cronjob_spec(cronjob.spec)
    except ValueError as error:
        failed = replace(state, runs=runs, reason=f"not started: {error}", error=str(error))
        return CronStep(failed, (), ())

    decision = _decide(cronjob.key.name, spec, state, runs, now)
    gone = {r.name for r, _ in decision.replaced}
    runs = tuple(r for r in runs if r.name not in gone)
    started: tuple[CronRun, ...] = ()
    last_schedule = state.last_schedule
    if decision.start is not None:
        started = (decision.start,)
        runs = (*runs, decision.start)
        last_schedule = decision.start.scheduled_at
    trimmed = _over_history(spec, runs)
    gone = {r.name for r, _ in trimmed}
    runs = tuple(sorted((r for r in runs if r.name not in gone), key=lambda r: (r.scheduled_at, r.name)))
    new = replace(state, last_schedule=last_schedule, runs=runs, reason=decision.reason, error="")
    return CronStep(new, started, (*decision.replaced, *trimmed))


def job_manifest(cronjob: Manifest, run: CronRun) -> Manifest:
    """The Job `run` creates, from the CronJob's jobTemplate."""
    template = cronjob.spec.get("jobTemplate") or {}
    meta = template.get("metadata") or {}
    scheduled = datetime.fromtimestamp(run.scheduled_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    namespace = cronjob.key.namespace
    body = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": run.name,
            "namespace": namespace,
            "labels": dict(meta.get("labels") or {}),
            "annotations": {**(meta.get("annotations") or {}), SCHEDULED_TIMESTAMP_ANNOTATION: scheduled},
        },
        "spec": template.get("spec") or {},
    }
    return Manifest(
        ObjectKey("Job", namespace, run.name), "batch/v1", body, cronjob.location, content_hash(body)
    )
