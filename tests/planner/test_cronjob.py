"""CronJobs start Jobs on schedule as Kubernetes' CronJob controller does, on a fake clock."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gitops.model import CronRun, CronState, Manifest, ObjectKey, SourceLocation, content_hash
from gitops.planner.cron import (
    SCHEDULED_TIMESTAMP_ANNOTATION,
    CronStep,
    Outcome,
    cron_step,
    describe_time,
    job_manifest,
    next_runs,
)
from gitops.schemas.cron import SCHEDULE_HELP, TZ_HELP, parse_schedule, schedule_problem, time_zone_problem


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, *, second: int = 0) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


def cronjob(schedule: str = "* * * * *", name: str = "cron", **spec: Any) -> Manifest:
    job_template = {
        "metadata": {"labels": {"app": name}, "annotations": {"team": "ops"}},
        "spec": {"template": {"spec": {"containers": [{"name": "main", "image": "busybox"}]}}},
    }
    body = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"schedule": schedule, "jobTemplate": job_template, **spec},
    }
    return Manifest(
        ObjectKey("CronJob", "default", name),
        "batch/v1",
        body,
        SourceLocation("cron.yaml", 3),
        content_hash(body),
    )


def step(
    cj: Manifest, state: CronState | None, now: float, outcomes: Mapping[str, Outcome] | None = None
) -> CronStep:
    return cron_step(cj, state, outcomes or {}, now)


def name_for(t: float, cronjob_name: str = "cron") -> str:
    return f"{cronjob_name}-{int(t // 60)}"


def active(state: CronState) -> list[str]:
    return [r.name for r in state.runs if not r.outcome]


T0 = utc(2026, 12, 1, 10, 0)  # a Tuesday
MIN = 60.0
HOUR = 3600.0


# --- starting on schedule ---------------------------------------------------------------


def test_every_minute_schedule_runs_once_per_minute() -> None:
    """A `* * * * *` CronJob starts one run per minute, however often it is looked at."""
    cj = cronjob("* * * * *")
    state = step(cj, None, T0 + 30).state
    started: list[CronRun] = []
    outcomes: dict[str, Outcome] = {}
    for now in (T0 + 60, T0 + 61, T0 + 90, T0 + 119.5, T0 + 120, T0 + 150, T0 + 180):
        result = step(cj, state, now, outcomes)
        started += result.started
        outcomes |= {r.name: "Complete" for r in result.started}
        state = result.state
    assert [r.scheduled_at for r in started] == [T0 + 60, T0 + 120, T0 + 180]
    assert [r.name for r in started] == [name_for(T0 + 60), name_for(T0 + 120), name_for(T0 + 180)]
    assert state.last_schedule == T0 + 180
    assert state.reason == f"started {name_for(T0 + 180)} for 2026-12-01 10:03 UTC"


def test_job_name_is_the_scheduled_minute_since_the_epoch() -> None:
    run = step(cronjob(), CronState(ObjectKey("CronJob", "default", "cron"), created_at=T0 - 1), T0).started[
        0
    ]
    assert run.name == f"cron-{int(T0) // 60}" == "cron-29935320"


def test_first_sight_starts_nothing_and_remembers_when_it_appeared() -> None:
    result = step(cronjob(), None, T0 + 30)
    assert result.started == ()
    assert result.state.created_at == T0 + 30
    assert result.state.cronjob == ObjectKey("CronJob", "default", "cron")
    assert result.state.reason == "next run at 2026-12-01 10:01 UTC"


def test_no_run_for_schedule_times_before_the_cronjob_existed() -> None:
    """Created at 09:30, a `0 9 * * *` CronJob does not run for today's 09:00 but tomorrow's."""
    cj = cronjob("0 9 * * *")
    state = step(cj, None, utc(2026, 12, 1, 9, 30)).state
    assert step(cj, state, utc(2026, 12, 1, 23, 0)).started == ()
    assert [r.scheduled_at for r in step(cj, state, utc(2026, 12, 2, 9, 0, second=5)).started] == [
        utc(2026, 12, 2, 9)
    ]


def test_a_cronjob_created_on_a_schedule_time_does_not_run_for_it() -> None:
    cj = cronjob("* * * * *")
    state = step(cj, None, T0).state
    assert step(cj, state, T0).started == ()
    assert [r.scheduled_at for r in step(cj, state, T0 + 60).started] == [T0 + 60]


def test_a_second_pass_at_the_same_time_does_nothing() -> None:
    cj = cronjob("*/5 * * * *")
    state = step(cj, None, T0).state
    first = step(cj, state, T0 + 5 * MIN + 3)
    again = step(cj, first.state, T0 + 5 * MIN + 3)
    assert len(first.started) == 1
    assert again.started == () and again.ended == ()
    assert again.state.runs == first.state.runs and again.state.last_schedule == first.state.last_schedule


# --- missed schedules -------------------------------------------------------------------


def test_after_an_hour_long_outage_only_the_most_recent_missed_time_runs() -> None:
    cj = cronjob("*/5 * * * *")
    state = step(cj, None, T0 - 1).state
    state = step(cj, state, T0 + 1, {}).state  # started 10:00
    result = step(cj, state, T0 + HOUR + 2 * MIN, {name_for(T0): "Complete"})  # back at 11:02
    assert [r.scheduled_at for r in result.started] == [T0 + HOUR]
    assert result.state.last_schedule == T0 + HOUR
    assert result.state.reason == (
        "missed 12 schedules (2026-12-01 10:05 UTC to 2026-12-01 11:00 UTC); "
        f"started only the most recent: {name_for(T0 + HOUR)} for 2026-12-01 11:00 UTC"
    )
    # The skipped times are not replayed later.
    later = step(cj, result.state, T0 + HOUR + 4 * MIN)
    assert later.started == ()


def test_a_catch_up_within_starting_deadline_seconds_runs() -> None:
    cj = cronjob("*/5 * * * *", startingDeadlineSeconds=300)
    state = step(cj, None, T0 + 1).state
    result = step(cj, state, T0 + HOUR + 2 * MIN)
    assert [r.scheduled_at for r in result.started] == [T0 + HOUR]
    assert result.state.reason == (
        f"started {name_for(T0 + HOUR)} for 2026-12-01 11:00 UTC (2m late); "
        "earlier schedules were more than startingDeadlineSeconds 300 ago"
    )


def test_deadline_counts_only_the_missed_times_within_it() -> None:
    """Kubernetes' earliestTime = max(last schedule, now - deadline): older times are not counted."""
    cj = cronjob("*/5 * * * *", startingDeadlineSeconds=900)
    state = step(cj, None, T0 + 1).state
    result = step(cj, state, T0 + HOUR + 2 * MIN)  # window 10:47..11:02 holds 10:50, 10:55, 11:00
    assert [r.scheduled_at for r in result.started] == [T0 + HOUR]
    assert result.state.reason.startswith("missed 3 schedules (2026-12-01 10:50 UTC to 2026-12-01 11:00 UTC)")


def test_a_catch_up_older_than_starting_deadline_seconds_is_skipped() -> None:
    cj = cronjob("*/5 * * * *", startingDeadlineSeconds=30)
    state = step(cj, None, T0 + 1).state
    result = step(cj, state, T0 + HOUR + 2 * MIN)
    assert result.started == ()
    assert result.state.last_schedule is None
    assert result.state.reason == (
        "missed 2026-12-01 11:00 UTC: more than startingDeadlineSeconds 30 ago; "
        "next run at 2026-12-01 11:05 UTC"
    )
    on_time = step(cj, result.state, T0 + HOUR + 5 * MIN + 20)
    assert [r.scheduled_at for r in on_time.started] == [T0 + HOUR + 5 * MIN]


def test_more_than_100_missed_times_still_start_the_most_recent_and_say_why() -> None:
    cj = cronjob("* * * * *")
    state = step(cj, None, T0 + 1).state
    result = step(cj, state, T0 + 3 * HOUR + 10)
    assert [r.scheduled_at for r in result.started] == [T0 + 3 * HOUR]
    assert "missed more than 100 schedules since 2026-12-01 10:01 UTC" in result.state.reason
    assert "set or decrease startingDeadlineSeconds or check clock skew" in result.state.reason


# --- concurrency policy -----------------------------------------------------------------


def test_forbid_skips_while_a_run_is_active_and_starts_the_late_one_after() -> None:
    cj = cronjob("* * * * *", concurrencyPolicy="Forbid")
    state = step(cj, None, T0 - 1).state
    state = step(cj, state, T0 + 1).state
    first = name_for(T0)
    blocked = step(cj, state, T0 + MIN + 1)
    assert blocked.started == ()
    assert blocked.state.last_schedule == T0  # not advanced
    assert blocked.state.reason == f"Forbid: run {first} still active, 2026-12-01 10:01 UTC not started"
    # The active run ends at 10:02:30: the most recent missed time (10:02) starts, late.
    late = step(cj, blocked.state, T0 + 2.5 * MIN, {first: "Complete"})
    assert [r.scheduled_at for r in late.started] == [T0 + 2 * MIN]
    assert late.state.reason.startswith("missed 2 schedules (2026-12-01 10:01 UTC to 2026-12-01 10:02 UTC)")


def test_forbid_drops_the_late_run_when_it_is_past_the_deadline() -> None:
    cj = cronjob("*/5 * * * *", concurrencyPolicy="Forbid", startingDeadlineSeconds=60)
    state = step(cj, None, T0 - 1).state
    state = step(cj, state, T0 + 1).state
    state = step(cj, state, T0 + 5 * MIN + 10).state  # 10:05 blocked by the 10:00 run
    result = step(cj, state, T0 + 7 * MIN, {name_for(T0): "Failed"})
    assert result.started == ()
    assert result.state.reason.startswith(
        "missed 2026-12-01 10:05 UTC: more than startingDeadlineSeconds 60 ago"
    )


def test_replace_ends_the_active_run_and_starts_the_new_one() -> None:
    cj = cronjob("*/5 * * * *", concurrencyPolicy="Replace")
    state = step(cj, None, T0 - 1).state
    state = step(cj, state, T0 + 1).state
    result = step(cj, state, T0 + 5 * MIN + 1)
    assert [r.scheduled_at for r in result.started] == [T0 + 5 * MIN]
    assert [(r.name, why) for r, why in result.ended] == [
        (
            name_for(T0),
            f"Replace: {name_for(T0)} (for 2026-12-01 10:00 UTC) still running at 2026-12-01 10:05 UTC; "
            f"replaced by {name_for(T0 + 5 * MIN)}",
        )
    ]
    assert [r.name for r in result.state.runs] == [name_for(T0 + 5 * MIN)]


def test_replace_leaves_finished_runs_alone() -> None:
    cj = cronjob("*/5 * * * *", concurrencyPolicy="Replace")
    state = step(cj, None, T0 - 1).state
    state = step(cj, state, T0 + 1).state
    result = step(cj, state, T0 + 5 * MIN + 1, {name_for(T0): "Complete"})
    assert result.ended == ()
    assert [(r.name, r.outcome) for r in result.state.runs] == [
        (name_for(T0), "Complete"),
        (name_for(T0 + 300), ""),
    ]


def test_allow_lets_runs_overlap() -> None:
    cj = cronjob("* * * * *", concurrencyPolicy="Allow")
    state = step(cj, None, T0 - 1).state
    for now in (T0 + 1, T0 + MIN + 1, T0 + 2 * MIN + 1):
        state = step(cj, state, now).state
    assert active(state) == [name_for(T0), name_for(T0 + MIN), name_for(T0 + 2 * MIN)]


def test_suspend_starts_nothing_and_active_runs_continue() -> None:
    cj = cronjob("* * * * *")
    state = step(cj, None, T0 - 1).state
    state = step(cj, state, T0 + 1).state
    suspended = cronjob("* * * * *", suspend=True)
    result = step(suspended, state, T0 + 5 * MIN)
    assert result.started == () and result.ended == ()
    assert result.state.reason == "suspended"
    assert active(result.state) == [name_for(T0)]
    # Resumed, it behaves as Kubernetes: the most recent missed time runs (no deadline set).
    resumed = step(cj, result.state, T0 + 5 * MIN + 10)
    assert [r.scheduled_at for r in resumed.started] == [T0 + 5 * MIN]


# --- history ------------------------------------------------------------------------------


def run_minutes(cj: Manifest, outcomes_by_minute: list[Outcome]) -> list[CronStep]:
    """One run per minute from 10:00, each finishing with the given outcome a minute later."""
    state = step(cj, None, T0 - 1).state
    outcomes: dict[str, Outcome] = {}
    steps = []
    for i, outcome in enumerate([*outcomes_by_minute, None]):
        result = step(cj, state, T0 + i * MIN + 1, outcomes)
        steps.append(result)
        state = result.state
        if outcome is not None:
            outcomes[result.started[0].name] = outcome
    return steps


def test_succeeded_runs_beyond_three_are_removed_oldest_first() -> None:
    steps = run_minutes(cronjob("* * * * *"), ["Complete"] * 5)
    removed = [(r.name, why) for s in steps for r, why in s.ended]
    assert [name for name, _ in removed] == [name_for(T0), name_for(T0 + MIN)]
    assert removed[0][1] == (
        "history limit: successfulJobsHistoryLimit 3 keeps the newest 3 succeeded runs of 4; "
        f"{name_for(T0)} (for 2026-12-01 10:00 UTC) is older"
    )
    final = steps[-1].state
    assert [(r.scheduled_at, r.outcome) for r in final.runs] == [
        (T0 + 2 * MIN, "Complete"),
        (T0 + 3 * MIN, "Complete"),
        (T0 + 4 * MIN, "Complete"),
        (T0 + 5 * MIN, ""),
    ]


def test_failed_runs_beyond_one_are_removed_separately_from_succeeded_ones() -> None:
    steps = run_minutes(cronjob("* * * * *"), ["Failed", "Complete", "Failed", "Failed", "Complete"])
    final = steps[-1].state
    assert [(r.name, r.outcome) for r in final.runs] == [
        (name_for(T0 + MIN), "Complete"),
        (name_for(T0 + 3 * MIN), "Failed"),
        (name_for(T0 + 4 * MIN), "Complete"),
        (name_for(T0 + 5 * MIN), ""),
    ]
    removed = [r.name for s in steps for r, _ in s.ended]
    assert removed == [name_for(T0), name_for(T0 + 2 * MIN)]
    assert all(
        why.startswith("history limit: failedJobsHistoryLimit 1 ") for s in steps for _, why in s.ended
    )


def test_history_limits_of_zero_keep_no_finished_runs() -> None:
    cj = cronjob("* * * * *", successfulJobsHistoryLimit=0, failedJobsHistoryLimit=0)
    final = run_minutes(cj, ["Complete", "Failed"])[-1].state
    assert [r.name for r in final.runs] == [name_for(T0 + 2 * MIN)]


def test_an_outcome_once_recorded_stays() -> None:
    cj = cronjob("* * * * *")
    state = step(cj, None, T0 - 1).state
    state = step(cj, state, T0 + 1).state
    state = step(cj, state, T0 + 2, {name_for(T0): "Failed"}).state
    state = step(cj, state, T0 + 3, {}).state
    assert [r.outcome for r in state.runs] == ["Failed"]


# --- schedules and zones ----------------------------------------------------------------


def test_next_runs_gives_the_next_three_times_strictly_after() -> None:
    assert next_runs({"schedule": "*/15 * * * *"}, T0, 3) == [T0 + 15 * MIN, T0 + 30 * MIN, T0 + 45 * MIN]
    assert next_runs({"schedule": "*/15 * * * *"}, T0 - 0.5, 3) == [T0, T0 + 15 * MIN, T0 + 30 * MIN]


def test_time_zone_keeps_wall_clock_time_across_daylight_saving_changes() -> None:
    """09:00 in Berlin is 08:00 UTC in winter (CET, +1) and 07:00 UTC in summer (CEST, +2)."""
    spring = next_runs({"schedule": "0 9 * * *", "timeZone": "Europe/Berlin"}, utc(2026, 3, 27, 12), 3)
    assert spring == [utc(2026, 3, 28, 8), utc(2026, 3, 29, 7), utc(2026, 3, 30, 7)]
    autumn = next_runs({"schedule": "0 9 * * *", "timeZone": "Europe/Berlin"}, utc(2026, 10, 24, 12), 3)
    assert autumn == [utc(2026, 10, 25, 8), utc(2026, 10, 26, 8), utc(2026, 10, 27, 8)]
    new_york = next_runs({"schedule": "30 6 * * 1-5", "timeZone": "America/New_York"}, utc(2026, 3, 6, 12), 2)
    assert new_york == [utc(2026, 3, 9, 10, 30), utc(2026, 3, 10, 10, 30)]  # EDT from Sunday 8 March


def test_a_time_in_the_spring_forward_gap_is_skipped_and_one_in_the_repeated_hour_runs_twice() -> None:
    """As robfig/cron: 02:30 does not exist in Berlin on 29 March 2026 and exists twice on 25 October."""
    spec = {"schedule": "30 2 * * *", "timeZone": "Europe/Berlin"}
    assert next_runs(spec, utc(2026, 3, 27, 12), 3) == [
        utc(2026, 3, 28, 1, 30),
        utc(2026, 3, 30, 0, 30),
        utc(2026, 3, 31, 0, 30),
    ]
    assert next_runs(spec, utc(2026, 10, 24, 12), 3) == [
        utc(2026, 10, 25, 0, 30),
        utc(2026, 10, 25, 1, 30),
        utc(2026, 10, 26, 1, 30),
    ]


def test_cron_step_reads_the_schedule_in_the_time_zone() -> None:
    cj = cronjob("0 9 * * *", timeZone="Europe/Berlin")
    state = step(cj, None, utc(2026, 7, 1, 0)).state
    assert step(cj, state, utc(2026, 7, 1, 6, 59)).started == ()
    result = step(cj, state, utc(2026, 7, 1, 7, 0, second=1))
    assert [r.scheduled_at for r in result.started] == [utc(2026, 7, 1, 7)]
    assert result.state.reason == f"started {name_for(utc(2026, 7, 1, 7))} for 2026-07-01 09:00 CEST"


def test_without_a_time_zone_the_schedule_is_utc() -> None:
    assert next_runs({"schedule": "0 9 * * *"}, utc(2026, 7, 1), 1) == [utc(2026, 7, 1, 9)]


@pytest.mark.parametrize(
    ("macro", "expected"),
    [
        ("@yearly", [utc(2027, 1, 1), utc(2028, 1, 1)]),
        ("@annually", [utc(2027, 1, 1), utc(2028, 1, 1)]),
        ("@monthly", [utc(2027, 1, 1), utc(2027, 2, 1)]),
        ("@weekly", [utc(2026, 12, 6), utc(2026, 12, 13)]),  # Sundays
        ("@daily", [utc(2026, 12, 2), utc(2026, 12, 3)]),
        ("@midnight", [utc(2026, 12, 2), utc(2026, 12, 3)]),
        ("@hourly", [T0 + HOUR, T0 + 2 * HOUR]),
    ],
)
def test_macros(macro: str, expected: list[float]) -> None:
    assert next_runs({"schedule": macro}, T0, 2) == expected


@pytest.mark.parametrize(
    ("schedule", "after", "expected"),
    [
        ("0 12 * jan,Feb MON", utc(2026, 12, 1), [utc(2027, 1, 4, 12), utc(2027, 1, 11, 12)]),
        ("5/20 * * * *", T0, [T0 + 5 * MIN, T0 + 25 * MIN, T0 + 45 * MIN]),  # N/step is N-max/step
        ("0 0 ? * sun", T0, [utc(2026, 12, 6), utc(2026, 12, 13)]),
        # Both day fields restricted: either matches (the 1st and 15th, and every Sunday).
        ("0 0 1,15 * 0", T0, [utc(2026, 12, 6), utc(2026, 12, 13), utc(2026, 12, 15)]),
        # One of them a star: both must match.
        ("0 0 * * 5", T0, [utc(2026, 12, 4), utc(2026, 12, 11)]),
        # A stepped star restricts (robfig/cron v3): odd days, or Sundays.
        ("0 0 */2 * 0", utc(2026, 12, 3, 1), [utc(2026, 12, 5), utc(2026, 12, 6), utc(2026, 12, 7)]),
        ("0 0 29 2 *", T0, [utc(2028, 2, 29), utc(2032, 2, 29)]),
    ],
)
def test_schedule_syntax_as_robfig_cron_reads_it(schedule: str, after: float, expected: list[float]) -> None:
    assert next_runs({"schedule": schedule}, after, len(expected)) == expected


@pytest.mark.parametrize(
    ("schedule", "problem"),
    [
        ("* * * *", "expected exactly 5 fields, got 4"),
        ("0 * * * * *", "expected exactly 5 fields, got 6"),
        ("60 * * * *", "minute: 60 is outside 0-59"),
        ("* 24 * * *", "hour: 24 is outside 0-23"),
        ("* * 0 * *", "day of month: 0 is outside 1-31"),
        ("* * * * 7", "day of week: 7 is outside 0-6 (Sunday is 0)"),
        ("0-70 * * * *", "minute: 70 is outside 0-59"),
        ("*/0 * * * *", 'minute: step "0" is not a positive number'),
        ("*/2/3 * * * *", 'minute: "*/2/3" has more than one "/"'),
        ("5-1 * * * *", "minute: range 5-1 starts after it ends"),
        ("1-2-3 * * * *", 'minute: "1-2-3" has more than one "-"'),
        ("*-5 * * * *", 'minute: range *-5 cannot start with "*"'),
        (
            "* * * foo *",
            'month: "foo" is not a number or a name (jan, feb, mar, apr, may, jun, jul, aug, sep, '
            "oct, nov, dec)",
        ),
        ("L * * * *", 'minute: "L" is not a number'),
        ("* , * * *", 'hour: "," selects nothing'),
        ("0 0 30 2 *", "it never fires: no chosen month has any of the chosen days"),
        ("@every 5m", "@every is not supported"),
        ("@fortnightly", 'unknown descriptor "@fortnightly"'),
        (
            "CRON_TZ=Europe/Berlin 0 9 * * *",
            "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
        ),
    ],
)
def test_a_bad_schedule_is_refused_in_the_words_validation_uses(schedule: str, problem: str) -> None:
    """The planner and manifest validation read schedules with one parser and say the same: the
    field, the problem, what is valid and what was written."""
    assert schedule_problem(schedule) == problem
    with pytest.raises(ValueError) as caught:
        parse_schedule({"schedule": schedule})
    assert str(caught.value) == f'spec.schedule: {problem}; expected {SCHEDULE_HELP}, got "{schedule}"'


@pytest.mark.parametrize(("schedule", "got"), [("", '""'), (None, "null"), (5, "5")])
def test_a_missing_schedule_is_refused(schedule: object, got: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_schedule({"schedule": schedule})
    assert str(caught.value) == f"spec.schedule: expected {SCHEDULE_HELP}, got {got}"


@pytest.mark.parametrize(
    "schedule", ["*/1 * * * *", "1,,2 * * * *", " 0 0 * * * ", "0 0 1-31 * mon", "0 0 31 1-2 *"]
)
def test_schedules_robfig_cron_accepts_are_accepted(schedule: str) -> None:
    assert schedule_problem(schedule) is None
    assert next_runs({"schedule": schedule}, T0, 1)


@pytest.mark.parametrize(
    ("zone", "problem", "got"),
    [
        ("Mars/Olympus_Mons", "unknown time zone", '"Mars/Olympus_Mons"'),
        ("Europe", "unknown time zone", '"Europe"'),
        ("", "unknown time zone", '""'),
        ("../etc/passwd", "unknown time zone", '"../etc/passwd"'),
        (
            "Local",
            "timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones",
            '"Local"',
        ),
        (3, "not a string", "3"),
    ],
)
def test_a_bad_time_zone_is_refused_in_the_words_validation_uses(
    zone: object, problem: str, got: str
) -> None:
    if isinstance(zone, str):
        assert time_zone_problem(zone) == problem
    with pytest.raises(ValueError) as caught:
        parse_schedule({"schedule": "* * * * *", "timeZone": zone})
    assert str(caught.value) == f"spec.timeZone: {problem}; expected {TZ_HELP}, got {got}"


def test_a_bad_spec_starts_nothing_and_is_reported() -> None:
    cj = cronjob("* * * * *", timeZone="Mars/Olympus_Mons")
    state = step(cronjob(), None, T0 - 1).state
    state = step(cronjob(), state, T0 + 1).state
    result = step(cj, state, T0 + MIN + 1, {name_for(T0): "Complete"})
    assert result.started == () and result.ended == ()
    assert result.state.error == (
        'spec.timeZone: unknown time zone; expected an IANA time zone name like "Europe/Paris" or "Etc/UTC", '
        'got "Mars/Olympus_Mons"'
    )
    assert result.state.reason == f"not started: {result.state.error}"
    assert [r.outcome for r in result.state.runs] == ["Complete"]
    assert step(cronjob(), result.state, T0 + MIN + 2).state.error == ""


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        (
            "concurrencyPolicy",
            "Sometimes",
            "spec.concurrencyPolicy: expected Allow, Forbid or Replace, got 'Sometimes'",
        ),
        ("startingDeadlineSeconds", -5, "spec.startingDeadlineSeconds: expected an integer >= 0, got -5"),
        (
            "successfulJobsHistoryLimit",
            "3",
            "spec.successfulJobsHistoryLimit: expected an integer >= 0, got '3'",
        ),
        ("suspend", "yes", "spec.suspend: expected true or false, got 'yes'"),
    ],
)
def test_bad_spec_fields_are_named(field: str, value: Any, message: str) -> None:
    result = step(cronjob(**{field: value}), None, T0)
    assert result.state.error == message


def test_describe_time_uses_the_zone_abbreviation() -> None:
    assert describe_time(utc(2026, 12, 1, 10, 5), "UTC") == "2026-12-01 10:05 UTC"
    assert describe_time(utc(2026, 12, 1, 10, 5), "Europe/Berlin") == "2026-12-01 11:05 CET"
    assert describe_time(utc(2026, 12, 1, 10, 5, second=7), "UTC") == "2026-12-01 10:05:07 UTC"


# --- the Job --------------------------------------------------------------------------------


def test_job_manifest_is_the_job_template_named_for_the_run() -> None:
    cj = cronjob("*/5 * * * *", timeZone="Europe/Berlin")
    run = CronRun(name_for(T0 + 5 * MIN), T0 + 5 * MIN)
    job = job_manifest(cj, run)
    assert job.key == ObjectKey("Job", "default", run.name)
    assert job.api_version == "batch/v1"
    assert job.location == cj.location
    assert job.body["metadata"] == {
        "name": run.name,
        "namespace": "default",
        "labels": {"app": "cron"},
        "annotations": {"team": "ops", SCHEDULED_TIMESTAMP_ANNOTATION: "2026-12-01T10:05:00Z"},
    }
    assert job.spec == cj.spec["jobTemplate"]["spec"]
    assert job.hash == content_hash(job.body)
    assert job.body["kind"] == "Job"


def test_job_manifest_without_template_metadata() -> None:
    cj = cronjob()
    bare = Manifest(cj.key, cj.api_version, {**cj.body, "spec": {"schedule": "* * * * *"}}, cj.location)
    job = job_manifest(bare, CronRun("cron-1", 60.0))
    assert job.body["metadata"]["labels"] == {}
    assert job.body["metadata"]["annotations"] == {SCHEDULED_TIMESTAMP_ANNOTATION: "1970-01-01T00:01:00Z"}
    assert job.spec == {}


# --- properties ---------------------------------------------------------------------------

# A slow, obviously-correct twin of the schedule: every whole minute whose wall-clock time in the
# zone matches the fields (robfig/cron's rule for the day fields), found by looking at each one.

ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "America/Sao_Paulo",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
]
# Near daylight-saving changes: Berlin, New York, Sao Paulo (midnight, 2018), Lord Howe (30 minutes).
ANCHORS = [
    utc(2026, 3, 29),
    utc(2026, 10, 25),
    utc(2026, 3, 8, 7),
    utc(2026, 11, 1, 6),
    utc(2018, 11, 4, 3),
    utc(2018, 2, 18, 2),
    utc(2026, 4, 4, 15),
    utc(2026, 10, 3, 15),
    utc(2026, 6, 15),
]


@st.composite
def field_values(draw: st.DrawFn, low: int, high: int, star: str = "*") -> tuple[str, frozenset[int], bool]:
    """A field as written, the values it matches, and whether it is a plain star."""
    kind = draw(st.sampled_from(["star", "list", "step"]))
    if kind == "star":
        return star, frozenset(range(low, high + 1)), True
    if kind == "step":
        start = draw(st.integers(low, high))
        step_ = draw(st.integers(2, max(2, (high - low) // 2)))
        return f"{start}/{step_}", frozenset(range(start, high + 1, step_)), False
    values = draw(st.frozensets(st.integers(low, high), min_size=1, max_size=6))
    return ",".join(map(str, sorted(values))), values, False


def twin_matches(minute: datetime, fields: list[tuple[str, frozenset[int], bool]]) -> bool:
    (_, minutes, _), (_, hours, _), (_, days, days_star), (_, months, _), (_, weekdays, weekdays_star) = (
        fields
    )
    if minute.minute not in minutes or minute.hour not in hours or minute.month not in months:
        return False
    day_ok, weekday_ok = minute.day in days, minute.isoweekday() % 7 in weekdays
    return day_ok and weekday_ok if days_star or weekdays_star else day_ok or weekday_ok


def twin_times(
    fields: list[tuple[str, frozenset[int], bool]], zone: str, after: float, until: float, count: int
) -> list[float]:
    tz = ZoneInfo(zone)
    found: list[float] = []
    t = (after // 60 + 1) * 60
    while t <= until and len(found) < count:
        if twin_matches(datetime.fromtimestamp(t, tz), fields):
            found.append(t)
        t += 60
    return found


@settings(max_examples=100, deadline=None)
@given(
    minute=field_values(0, 59),
    hour=field_values(0, 23),
    day=field_values(1, 31, star="?"),
    weekday=field_values(0, 6),
    zone=st.sampled_from(ZONES),
    anchor=st.sampled_from(ANCHORS),
    offset=st.floats(-2 * 86400, 86400),
)
def test_next_runs_agree_with_the_minute_by_minute_twin(
    *,
    minute: tuple[str, frozenset[int], bool],
    hour: tuple[str, frozenset[int], bool],
    day: tuple[str, frozenset[int], bool],
    weekday: tuple[str, frozenset[int], bool],
    zone: str,
    anchor: float,
    offset: float,
) -> None:
    fields = [minute, hour, day, ("*", frozenset(range(1, 13)), True), weekday]
    spec = {"schedule": " ".join(text for text, _, _ in fields), "timeZone": zone}
    after = anchor + offset
    window = after + 3 * 86400
    expected = twin_times(fields, zone, after, window, 3)
    got = next_runs(spec, after, 3)
    assert got[: len(expected)] == expected
    if len(expected) < 3:
        assert got[len(expected)] > window


SCHEDULES = ["* * * * *", "*/5 * * * *", "0 * * * *", "*/7 9-17 * * 1-5", "30 2 * * *"]


@st.composite
def passes(draw: st.DrawFn) -> list[tuple[float, list[Outcome | None]]]:
    """Gaps between passes (some long, as outages) and what happens to each active run meanwhile."""
    gap = st.one_of(st.floats(0, 90), st.floats(0, 600), st.floats(0, 3 * HOUR))
    finish = st.lists(st.sampled_from([None, None, "Complete", "Failed"]), max_size=4)
    return draw(st.lists(st.tuples(gap, finish), min_size=1, max_size=30))


@settings(max_examples=100, deadline=None)
@given(
    schedule=st.sampled_from(SCHEDULES),
    zone=st.sampled_from(["UTC", "Europe/Berlin"]),
    policy=st.sampled_from(["Allow", "Forbid", "Replace"]),
    deadline=st.sampled_from([None, 0, 30, 300, 3600]),
    limits=st.tuples(st.integers(0, 3), st.integers(0, 3)),
    start=st.sampled_from(ANCHORS),
    sequence=passes(),
)
def test_cron_passes_keep_their_promises(
    *,
    schedule: str,
    zone: str,
    policy: str,
    deadline: int | None,
    limits: tuple[int, int],
    start: float,
    sequence: list[tuple[float, list[Outcome | None]]],
) -> None:
    """Over random pass times and outcomes: unique run names, at most one start per pass, the most
    recent due time is the one started, Forbid never has two runs active, history stays in its
    limits, and a second pass at the same time changes nothing."""
    cj = cronjob(
        schedule,
        timeZone=zone,
        concurrencyPolicy=policy,
        startingDeadlineSeconds=deadline,
        successfulJobsHistoryLimit=limits[0],
        failedJobsHistoryLimit=limits[1],
    )
    parsed = parse_schedule(cj.spec)
    now = start
    state = step(cj, None, now).state
    outcomes: dict[str, Outcome] = {}
    names: set[str] = set()
    for gap, finishing in sequence:
        now += gap
        before = state
        result = step(cj, state, now, outcomes)
        state = result.state

        assert len(result.started) <= 1
        for run in result.started:
            assert run.name not in names
            names.add(run.name)
            assert before.created_at < run.scheduled_at <= now
            assert parsed.matches(run.scheduled_at)
            assert parsed.next_after(run.scheduled_at) > now  # the most recent due time
            if deadline is not None:
                assert run.scheduled_at >= now - deadline
        base = before.last_schedule if before.last_schedule is not None else before.created_at
        earliest = base if deadline is None else max(base, now - deadline)
        if not result.started and policy != "Forbid":
            assert parsed.next_after(earliest) > now, state.reason  # nothing was due
        if policy == "Forbid":
            assert len(active(state)) <= 1
        assert sum(r.outcome == "Complete" for r in state.runs) <= limits[0]
        assert sum(r.outcome == "Failed" for r in state.runs) <= limits[1]
        assert len({r.name for r in state.runs}) == len(state.runs)
        assert all(why for _, why in result.ended) and state.reason and not state.error

        again = step(cj, state, now, outcomes)
        assert again.started == () and again.ended == ()
        assert (again.state.runs, again.state.last_schedule) == (state.runs, state.last_schedule)

        running = active(state)
        for name, outcome in zip(running, finishing, strict=False):
            if outcome is not None:
                outcomes[name] = outcome


def test_a_long_outage_is_one_pass_of_work() -> None:
    """Ten years away: one run, found without walking every missed minute."""
    cj = cronjob("* * * * *")
    state = step(cj, None, T0).state
    started = datetime.now(UTC)
    result = step(cj, state, T0 + 3650 * 86400 + 30)
    assert [r.scheduled_at for r in result.started] == [T0 + 3650 * 86400]
    assert datetime.now(UTC) - started < timedelta(seconds=1)
