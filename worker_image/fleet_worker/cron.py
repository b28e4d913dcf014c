"""Cron schedules: the standard 5-field syntax and the `@hourly` style macros, and the ticks
of a schedule in a time zone. Pure (no I/O): the periodic-job service (fleet_worker.periodic)
decides with it, and unit tests check it without a database.

Fields: minute (0-59), hour (0-23), day of month (1-31), month (1-12 or jan-dec), day of
week (0-7, 0 and 7 are Sunday, or sun-sat). Each field is `*`, a number, a range `a-b`, a
step `*/n` or `a-b/n`, or a comma-separated list of those. As in Vixie cron, when both day
fields are restricted a day matches if either does.

Time zones: a schedule is read on the wall clock of its zone. A wall time that does not
exist (the hour skipped when clocks go forward) never ticks; a wall time that happens twice
(the hour repeated when clocks go back) ticks once, the first time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from fleet_worker.errors import CronError

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
MINUTE = timedelta(minutes=1)


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()  # names for low, low + 1, ... (months, days)


_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day of month", 1, 31),
    _Field("month", 1, 12, tuple(_MONTHS)),
    _Field("day of week", 0, 7, tuple(_DAYS)),
)


def _value(text: str, field: _Field) -> int:
    lowered = text.lower()
    if lowered in field.names:
        return field.low + field.names.index(lowered)
    if not text.isdigit():
        hint = f" or a name ({', '.join(field.names)})" if field.names else ""
        raise CronError(f"{field.name}: {text!r} is not a number{hint}")
    number = int(text)
    if not field.low <= number <= field.high:
        raise CronError(f"{field.name}: {number} is outside {field.low}-{field.high}")
    return number


def _parse_field(text: str, field: _Field) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        body, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"{field.name}: the step in {part!r} must be a positive number")
            step = int(step_text)
        if body == "*":
            low, high = field.low, field.high
        elif "-" in body:
            start, _, end = body.partition("-")
            low, high = _value(start, field), _value(end, field)
            if low > high:
                raise CronError(f"{field.name}: the range {body!r} runs backwards")
        elif body:
            low = _value(body, field)
            high = field.high if slash else low  # `5/15` means 5, 20, 35, 50
        else:
            raise CronError(f"{field.name}: empty item in {text!r}")
        values.update(range(low, high + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class Schedule:
    text: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool  # the day-of-month field is `*`
    any_weekday: bool  # the day-of-week field is `*`

    @classmethod
    def parse(cls, text: str) -> Schedule:
        expanded = MACROS.get(text.strip().lower(), text) if text.strip().startswith("@") else text
        if expanded.strip().startswith("@"):
            raise CronError(f"unknown macro {text.strip()!r}; known: {', '.join(MACROS)}")
        parts = expanded.split()
        if len(parts) != 5:
            raise CronError(
                f"{text!r} has {len(parts)} field(s); a schedule has 5 (minute hour "
                "day-of-month month day-of-week) or is a macro such as @hourly"
            )
        fields = [_parse_field(p, f) for p, f in zip(parts, _FIELDS, strict=True)]
        weekdays = frozenset(d % 7 for d in fields[4])
        return cls(
            text, fields[0], fields[1], fields[2], fields[3], weekdays,
            any_day=parts[2].startswith("*"), any_weekday=parts[4].startswith("*"),
        )  # fmt: skip

    def matches(self, wall: datetime) -> bool:
        """Whether a wall-clock minute (the zone's local time) is a tick."""
        if wall.minute not in self.minutes or wall.hour not in self.hours:
            return False
        if wall.month not in self.months:
            return False
        day = wall.day in self.days
        weekday = (wall.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return day and weekday
        return day or weekday


def _repeated(wall: datetime) -> bool:
    """A wall time in the second pass of an hour the clocks went back over."""
    return wall.fold == 1 and wall.replace(fold=0).utcoffset() != wall.utcoffset()


def ticks(
    schedule: Schedule, zone: ZoneInfo, after: datetime, until: datetime
) -> Iterator[datetime]:
    """The ticks in (after, until], as UTC instants, in order. Intervals that meet add up:
    the ticks of (a, b] and of (b, c] are those of (a, c], so consecutive checks enqueue each
    tick once whatever the checks' times."""
    minute = after.astimezone(UTC).replace(second=0, microsecond=0) + MINUTE
    end = until.astimezone(UTC)
    while minute <= end:
        wall = minute.astimezone(zone)
        if schedule.matches(wall) and not _repeated(wall):
            yield minute
        minute += MINUTE


# Backfill is bounded: after downtime, at most this far back is enqueued (per entry).
MAX_BACKFILL_S = 7 * 24 * 3600.0
# A tick this recent counts as on time even with no backfill: checks run a moment after the
# minute, and a worker that was starting may get to it late.
ON_TIME_S = 60.0
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-")


@dataclass(frozen=True)
class CronEntry:
    """One line of an App's crontab: enqueue `task` with `payload` at every tick."""

    name: str  # unique in the app; the row in `cron_entries` and the job key prefix
    schedule: Schedule
    task: str
    zone: ZoneInfo
    payload: object = None
    backfill_s: float = 0.0  # after downtime, enqueue missed ticks this far back
    queue: str | None = None
    priority: int | None = None
    max_attempts: int | None = None

    @classmethod
    def build(
        cls, schedule: str, task: str, *, name: str | None, timezone: str, backfill_s: float,
        payload: object, queue: str | None, priority: int | None, max_attempts: int | None,
    ) -> CronEntry:  # fmt: skip
        entry_name = name or task
        if not 1 <= len(entry_name) <= 100 or not set(entry_name) <= _NAME_CHARS:
            raise CronError(
                f"cron entry name {entry_name!r}: 1-100 characters of letters, digits, _ . : -"
            )
        try:
            zone = ZoneInfo(timezone)
        except (ValueError, KeyError, OSError) as exc:  # ZoneInfoNotFoundError is a KeyError
            raise CronError(
                f"cron entry {entry_name!r}: unknown time zone {timezone!r} (use an IANA name "
                "such as 'UTC' or 'Europe/Paris')"
            ) from exc
        if not 0 <= backfill_s <= MAX_BACKFILL_S:
            raise CronError(f"cron entry {entry_name!r}: backfill must be between 0 and 7 days")
        try:
            json.dumps(payload)
        except (TypeError, ValueError) as exc:
            raise CronError(f"cron entry {entry_name!r}: payload is not JSON: {exc}") from None
        if max_attempts is not None and not 1 <= max_attempts <= 32767:
            raise CronError(f"cron entry {entry_name!r}: max_attempts must be 1-32767")
        try:
            parsed = Schedule.parse(schedule)
        except CronError as exc:
            raise CronError(f"cron entry {entry_name!r}: {exc}") from None
        return cls(entry_name, parsed, task, zone, payload, backfill_s, queue, priority,
                   max_attempts)  # fmt: skip

    def due(self, last: datetime, now: datetime) -> list[datetime]:
        """The ticks to enqueue now, given the last check of this entry (by anyone): those
        after it, except ticks older than the backfill window (or than ON_TIME_S)."""
        oldest = now - timedelta(seconds=max(self.backfill_s, ON_TIME_S))
        return list(ticks(self.schedule, self.zone, max(last, oldest), now))

    def job_key(self, tick: datetime) -> str:
        return f"cron:{self.name}:{tick.astimezone(UTC).strftime('%Y-%m-%dT%H:%MZ')}"
