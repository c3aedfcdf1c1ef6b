"""CronJob schedules and time zones, read the way Kubernetes reads them: the one reader.

Kubernetes parses `spec.schedule` with robfig/cron's standard parser: five fields (minute,
hour, day of month, month, day of week with 0 = Sunday) of `*`, `?`, numbers, month and day
names, ranges, lists and steps, or one of the descriptors below. When both day fields are
restricted a day matching either one fires (cron's rule); a stepped star (`*/2`) restricts its
field, as in robfig/cron v3. croniter reads more (seconds and years, `L`, `#`, `H`, day of
week 7) and less (`?` in any field), so a schedule is read with Kubernetes' grammar here
(`read_schedule`, giving a `CronSchedule`), and the values it selects, spelled out, are handed
to croniter, which only proposes candidate times.

Refused beyond a syntax error: `TZ=` and `CRON_TZ=` prefixes, as Kubernetes refuses them on
create (the time zone belongs in `spec.timeZone`); `@every`, which croniter cannot compute;
a schedule that can never fire (`0 0 31 2 *`), which Kubernetes accepts and never runs. A
time zone is an IANA name from the zone database (`tzdata`), never `Local`; without one the
schedule is read in UTC, the control plane's zone here (Kubernetes would use
kube-controller-manager's local zone).

A schedule fires at every instant whose wall-clock time in its zone matches, so on the day
clocks spring forward a time in the skipped hour does not run, and a time in the hour
repeated in autumn runs twice -- both as robfig/cron does.

Validation asks `schedule_problem` and `time_zone_problem` for the problem alone (the
caller names the field and says what is valid); the CronJob planner (`gitops.planner.cron`)
reads a whole spec with `parse_schedule`, whose ValueError says the same in one sentence.
"""

from __future__ import annotations

import copy
import functools
import math
import zoneinfo
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from .schema import describe_value

# croniter ships no type information; mypy's `ignore_missing_imports` (pyproject) makes it Any.
# Only `_parsed_croniter` and `_computable` touch it, and import it (with dateutil, 20 ms) on
# their first call: validating manifests without a CronJob does without it.

__all__ = [
    "DEFAULT_ZONE",
    "DESCRIPTORS",
    "SCHEDULE_HELP",
    "TZ_HELP",
    "CronSchedule",
    "parse_schedule",
    "read_schedule",
    "read_time_zone",
    "schedule_problem",
    "time_zone_problem",
]

# Each descriptor and the five fields it stands for.
DESCRIPTORS: Mapping[str, str] = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
SCHEDULE_HELP = (
    'a cron schedule of five fields (minute hour day-of-month month day-of-week, like "*/15 * * * *") '
    "or one of " + ", ".join(DESCRIPTORS)
)
TZ_HELP = 'an IANA time zone name like "Europe/Paris" or "Etc/UTC"'
DEFAULT_ZONE = "UTC"


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: Mapping[str, int] = field(default_factory=dict)


_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day of month", 1, 31),
    _Field("month", 1, 12, {name: i + 1 for i, name in enumerate(_MONTHS)}),
    _Field("day of week", 0, 6, {name: i for i, name in enumerate(_WEEKDAYS)}),
)
# The longest month each month can have (29 February happens in leap years).
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


# --- the schedule ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CronSchedule:
    """A parsed schedule: the values each field matches, and the zone the fields are read in."""

    text: str  # as written in spec.schedule
    zone: str  # IANA name
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    either_day: bool  # both day fields restricted: a day matching either one fires

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.zone)

    def matches(self, t: float) -> bool:
        """Whether the wall-clock time of instant `t` in the zone matches every field."""
        local = datetime.fromtimestamp(t, self.tz)
        if local.second or local.microsecond:
            return False
        if local.minute not in self.minutes or local.hour not in self.hours or local.month not in self.months:
            return False
        in_days = local.day in self.days
        in_weekdays = local.isoweekday() % 7 in self.weekdays
        return in_days or in_weekdays if self.either_day else in_days and in_weekdays

    def times_after(self, t: float) -> Iterator[float]:
        """The schedule's times strictly after `t`, in order, without end."""
        candidates = _croniter_at(self._expression, datetime.fromtimestamp(t, self.tz))
        while True:
            # croniter moves a time that falls in a spring-forward gap to after it; the wall
            # clock never showed that time, so (as robfig/cron) it does not run.
            candidate = float(candidates.get_next(datetime).timestamp())
            if candidate > t and self.matches(candidate):
                yield candidate

    def next_after(self, t: float) -> float:
        return next(self.times_after(t))

    def latest_at_or_before(self, t: float) -> float:
        """The schedule's most recent time not after `t`."""
        # Start just past t's second: croniter's previous time is strictly before its start.
        candidates = _croniter_at(self._expression, datetime.fromtimestamp(math.floor(t) + 1, self.tz))
        while True:
            candidate = float(candidates.get_prev(datetime).timestamp())
            if candidate <= t and self.matches(candidate):
                return candidate

    @property
    def _expression(self) -> str:
        """The same schedule for croniter, every field spelled out so no dialect differences apply."""
        days, weekdays = _spell(self.days, _FIELDS[2]), _spell(self.weekdays, _FIELDS[4])
        if self.either_day and "*" in (days, weekdays):
            days = weekdays = "*"  # either-day with one field matching every day: every day
        fields = (_spell(self.minutes, _FIELDS[0]), _spell(self.hours, _FIELDS[1]), days)
        return " ".join((*fields, _spell(self.months, _FIELDS[3]), weekdays))


@functools.lru_cache(maxsize=1024)
def _parsed_croniter(expression: str) -> Any:
    from croniter import croniter  # noqa: PLC0415 - see the imports

    return croniter(expression, 0.0)


@functools.lru_cache(maxsize=1024)
def _computable(expression: str) -> bool:
    from croniter import croniter  # noqa: PLC0415 - see the imports

    return bool(croniter.is_valid(expression))


def _croniter_at(expression: str, start: datetime) -> Any:
    """A croniter for `expression` starting at `start`. Parsing an expression costs more than the
    search, so each is parsed once; a shallow copy of the parsed one is an independent iterator,
    because croniter copies its field lists before changing them."""
    candidates = copy.copy(_parsed_croniter(expression))
    candidates.set_current(start, force=True)
    return candidates


def _spell(values: frozenset[int], spec: _Field) -> str:
    return "*" if len(values) == spec.high - spec.low + 1 else ",".join(map(str, sorted(values)))


# --- reading it -----------------------------------------------------------------------------
# Each ValueError below is the problem alone, naming the field of the schedule; the callers
# add which manifest field it is and what a valid schedule looks like.


def _number(token: str, spec: _Field) -> int:
    if token.lower() in spec.names:
        return spec.names[token.lower()]
    if not token.isascii() or not token.isdigit():
        names = f" or a name ({', '.join(spec.names)})" if spec.names else ""
        raise ValueError(f'{spec.name}: "{token}" is not a number{names}')
    number = int(token)
    if not spec.low <= number <= spec.high:
        hint = " (Sunday is 0)" if spec.name == "day of week" and number == 7 else ""
        raise ValueError(f"{spec.name}: {number} is outside {spec.low}-{spec.high}{hint}")
    return number


def _parse_range(expr: str, spec: _Field) -> tuple[set[int], bool]:
    """One `number | number-number | * | ?`, optionally `/step`: its values and whether it is a
    plain star (which, for the day fields, means "every day" rather than a restriction)."""
    span, slash, step_text = expr.partition("/")
    if "/" in step_text:
        raise ValueError(f'{spec.name}: "{expr}" has more than one "/"')
    bounds = span.split("-")
    star = bounds[0] in ("*", "?")
    if star:
        if len(bounds) > 1:
            raise ValueError(f'{spec.name}: range {span} cannot start with "{bounds[0]}"')
        start, end = spec.low, spec.high
    elif len(bounds) > 2:
        raise ValueError(f'{spec.name}: "{span}" has more than one "-"')
    else:
        start = _number(bounds[0], spec)
        end = _number(bounds[1], spec) if len(bounds) == 2 else start
    step = 1
    if slash:
        if not step_text.isascii() or not step_text.isdigit() or int(step_text) == 0:
            raise ValueError(f'{spec.name}: step "{step_text}" is not a positive number')
        step = int(step_text)
        if len(bounds) == 1:
            end = spec.high  # "N/step" means "N-max/step"
        if step > 1:
            star = False  # "*/2" restricts the field (robfig/cron v3)
    if start > end:
        raise ValueError(f"{spec.name}: range {span} starts after it ends")
    return set(range(start, end + 1, step)), star


def _parse_field(text: str, spec: _Field) -> tuple[frozenset[int], bool]:
    values: set[int] = set()
    star = False
    for expr in filter(None, text.split(",")):
        more, is_star = _parse_range(expr, spec)
        values |= more
        star = star or is_star
    if not values:
        raise ValueError(f'{spec.name}: "{text}" selects nothing')
    return frozenset(values), star


def read_schedule(text: str, zone: str = DEFAULT_ZONE) -> CronSchedule:
    """`text` read with Kubernetes' grammar, its times in `zone` (an IANA name, already checked
    with `time_zone_problem`); a ValueError gives the problem alone."""
    if "TZ" in text:
        raise ValueError("cannot use TZ or CRON_TZ in schedule, use timeZone field instead")
    written = text.strip()
    if written.startswith("@"):
        if written.startswith("@every"):
            raise ValueError("@every is not supported")
        if written not in DESCRIPTORS:
            raise ValueError(f'unknown descriptor "{written}"')
        written = DESCRIPTORS[written]
    fields = written.split()
    if len(fields) != len(_FIELDS):
        raise ValueError(f"expected exactly {len(_FIELDS)} fields, got {len(fields)}")
    parsed = [_parse_field(part, spec) for part, spec in zip(fields, _FIELDS, strict=True)]
    (minutes, _), (hours, _), (days, days_star), (months, _), (weekdays, weekdays_star) = parsed
    either_day = not (days_star or weekdays_star)
    # With one day field a plain star, the other's days must exist in some chosen month.
    if not either_day and not any(day <= _MONTH_DAYS[month - 1] for day in days for month in months):
        raise ValueError("it never fires: no chosen month has any of the chosen days")
    schedule = CronSchedule(text, zone, minutes, hours, days, months, weekdays, either_day)
    if not _computable(schedule._expression):
        raise ValueError("croniter cannot compute it")
    return schedule


@functools.cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def time_zone_problem(name: str) -> str | None:
    """Why `name` is not a time zone Kubernetes accepts in `spec.timeZone`, or None."""
    if name.lower() == "local":
        return "timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones"
    if name not in _zones():
        return "unknown time zone"
    return None


def schedule_problem(schedule: str) -> str | None:
    """Why Kubernetes (or croniter) would refuse `schedule`, or None if both accept it."""
    try:
        read_schedule(schedule)
    except ValueError as error:
        return str(error)
    return None


def read_time_zone(value: object) -> str:
    """`spec.timeZone` as written, or UTC when it is unset; ValueError says what is wrong."""
    if value is None:
        return DEFAULT_ZONE
    if isinstance(value, str):
        problem = time_zone_problem(value)
        if problem is None:
            return value
    else:
        problem = "not a string"
    raise ValueError(f"spec.timeZone: {problem}; expected {TZ_HELP}, got {describe_value(value)}")


def parse_schedule(spec: Mapping[str, Any]) -> CronSchedule:
    """`spec.schedule` read in `spec.timeZone` (UTC when unset); ValueError says what is wrong,
    in the words validation uses."""
    zone = read_time_zone(spec.get("timeZone"))
    text = spec.get("schedule")
    if not isinstance(text, str) or not text:
        raise ValueError(f"spec.schedule: expected {SCHEDULE_HELP}, got {describe_value(text)}")
    try:
        return read_schedule(text, zone)
    except ValueError as error:
        raise ValueError(
            f"spec.schedule: {error}; expected {SCHEDULE_HELP}, got {describe_value(text)}"
        ) from None
