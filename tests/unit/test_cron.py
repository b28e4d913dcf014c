"""Cron schedules: parsing, matching, time zones, and the property the exactly-once
enqueue rests on (the ticks of adjoining intervals add up)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet_worker.app import App, load_app
from fleet_worker.cron import CronEntry, Schedule, ticks
from fleet_worker.errors import AppLoadError, CronError

UTC_ZONE = ZoneInfo("UTC")
T0 = datetime(2026, 3, 28, 22, 0, tzinfo=UTC)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, sec: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, sec, tzinfo=UTC)


def all_ticks(expr: str, zone: str, after: datetime, until: datetime) -> list[datetime]:
    return list(ticks(Schedule.parse(expr), ZoneInfo(zone), after, until))


@pytest.mark.parametrize(
    ("expr", "after", "expected"),
    [
        (
            "*/15 * * * *",
            utc(2026, 1, 1, 10, 7),
            [utc(2026, 1, 1, 10, 15), utc(2026, 1, 1, 10, 30)],
        ),
        ("@hourly", utc(2026, 1, 1, 10, 0), [utc(2026, 1, 1, 11, 0)]),
        ("5/20 * * * *", utc(2026, 1, 1, 10, 0), [utc(2026, 1, 1, 10, 5), utc(2026, 1, 1, 10, 25)]),
        ("0 9 * * mon-fri", utc(2026, 1, 2, 10, 0), [utc(2026, 1, 5, 9, 0)]),  # Fri -> Mon
        ("0 0 1 jan *", utc(2026, 1, 1, 0, 0), [utc(2027, 1, 1, 0, 0)]),
        ("0 0 * * 7", utc(2026, 1, 1, 0, 0), [utc(2026, 1, 4, 0, 0)]),  # 7 is Sunday too
        # Both day fields restricted: either matches (the 13th, or any Friday).
        ("0 0 13 * fri", utc(2026, 2, 1, 0, 0), [utc(2026, 2, 6, 0, 0), utc(2026, 2, 13, 0, 0)]),
    ],
)
def test_known_schedules_tick_where_cron_would(
    expr: str, after: datetime, expected: list[datetime]
) -> None:
    got = all_ticks(expr, "UTC", after, after + timedelta(days=400))
    assert got[: len(expected)] == expected


def test_a_wall_time_skipped_by_the_clocks_going_forward_does_not_tick() -> None:
    # Europe/Paris, 29 March 2026: 02:00 local becomes 03:00 (01:00 UTC).
    got = all_ticks("30 2 * * *", "Europe/Paris", utc(2026, 3, 28, 0, 0), utc(2026, 3, 31, 0, 0))
    assert got == [utc(2026, 3, 28, 1, 30), utc(2026, 3, 30, 0, 30)]


def test_a_wall_time_repeated_by_the_clocks_going_back_ticks_once() -> None:
    # Europe/Paris, 25 October 2026: 03:00 local goes back to 02:00 (01:00 UTC).
    got = all_ticks("30 2 * * *", "Europe/Paris", utc(2026, 10, 25, 0, 0), utc(2026, 10, 25, 3, 0))
    assert got == [utc(2026, 10, 25, 0, 30)]  # 02:30 CEST; not 02:30 CET an hour later


def test_the_zone_decides_the_wall_clock() -> None:
    got = all_ticks("0 9 * * *", "America/New_York", utc(2026, 7, 1, 0, 0), utc(2026, 7, 2, 0, 0))
    assert got == [utc(2026, 7, 1, 13, 0)]  # 09:00 EDT


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("* * * *", "has 4 field"),
        ("61 * * * *", "minute: 61 is outside 0-59"),
        ("* 24 * * *", "hour: 24 is outside 0-23"),
        ("*/0 * * * *", "minute: the step in '\\*/0' must be a positive number"),
        ("* * * foo *", "month: 'foo' is not a number or a name"),
        ("10-5 * * * *", "minute: the range '10-5' runs backwards"),
        ("@often", "unknown macro '@often'"),
        ("1,,2 * * * *", "minute: empty item"),
    ],
)
def test_a_bad_schedule_says_which_field_and_why(expr: str, message: str) -> None:
    with pytest.raises(CronError, match=message):
        Schedule.parse(expr)


def _entry(**kw: object) -> CronEntry:
    args: dict[str, object] = {
        "name": None, "timezone": "UTC", "backfill_s": 0.0, "payload": None, "queue": None,
        "priority": None, "max_attempts": None,
    }  # fmt: skip
    args.update(kw)
    return CronEntry.build("* * * * *", "t", **args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"backfill_s": 8 * 86400.0}, "backfill must be between 0 and 7 days"),
        ({"name": "has space"}, "1-100 characters"),
        ({"payload": {1, 2}}, "payload is not JSON"),
        ({"max_attempts": 0}, "max_attempts must be 1-32767"),
    ],
)
def test_a_bad_entry_is_refused_when_the_app_is_defined(
    kw: dict[str, object], message: str
) -> None:
    with pytest.raises(CronError, match=message):
        _entry(**kw)


def test_an_entry_for_a_task_the_app_lacks_fails_the_load() -> None:
    app = App(name="t")
    app.task("digest")(lambda payload: None)
    app.cron("@daily", "digets", timezone="UTC")
    with pytest.raises(AppLoadError, match=r"task 'digets', which the app does not define"):
        app.check()
    with pytest.raises(ValueError, match="defined twice"):
        app.cron("@hourly", "digets", timezone="UTC")


def test_due_skips_ticks_older_than_the_backfill_window() -> None:
    now = utc(2026, 1, 1, 12, 0, 30)
    last = utc(2026, 1, 1, 9, 0)  # no worker ran for three hours
    assert _entry().due(last, now) == [utc(2026, 1, 1, 12, 0)]  # on time only
    hour = _entry(backfill_s=3600.0).due(last, now)
    assert hour[0] == utc(2026, 1, 1, 11, 1) and len(hour) == 60
    assert len(_entry(backfill_s=86400.0).due(last, now)) == 180  # never before `last`


@settings(max_examples=200, deadline=None)
@given(
    expr=st.sampled_from(["* * * * *", "*/7 * * * *", "30 2 * * *", "0 */3 * * 1-5", "@hourly"]),
    zone=st.sampled_from(["UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe"]),
    start=st.integers(0, 400 * 24 * 60),
    cuts=st.lists(st.integers(0, 3 * 24 * 60 * 60), min_size=1, max_size=6),
)
def test_the_ticks_of_adjoining_intervals_add_up(
    expr: str, zone: str, start: int, cuts: list[int]
) -> None:
    """Checks at arbitrary times (to the second) enqueue each tick exactly once, and each
    tick is a match on the zone's wall clock."""
    schedule, tz = Schedule.parse(expr), ZoneInfo(zone)
    a = T0 + timedelta(minutes=start)
    points = [a, *sorted(a + timedelta(seconds=c) for c in cuts)]
    pieces = [t for x, y in itertools.pairwise(points) for t in ticks(schedule, tz, x, y)]
    whole = list(ticks(schedule, tz, points[0], points[-1]))
    assert pieces == whole
    assert whole == sorted(set(whole))
    assert all(schedule.matches(t.astimezone(tz)) for t in whole)


def test_a_module_whose_crontab_is_wrong_fails_to_load_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "badcron.py").write_text(
        "from fleet_worker import App\n"
        "app = App(name='t')\n"
        "app.task('t')(lambda payload: None)\n"
        "app.cron('0 25 * * *', 't', timezone='UTC')\n"
    )
    (tmp_path / "missingtask.py").write_text(
        "from fleet_worker import App\n"
        "app = App(name='t')\n"
        "app.cron('@hourly', 'nope', timezone='UTC')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(AppLoadError, match=r"'badcron': cron entry 't': hour: 25 is outside"):
        load_app("badcron")
    with pytest.raises(AppLoadError, match=r"enqueues task 'nope'.*\(tasks: none\)"):
        load_app("missingtask")
