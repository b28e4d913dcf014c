from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet_worker.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10s", 10),
        ("5m", 300),
        ("1h30m", 5400),
        ("250ms", 0.25),
        ("1.5", 1.5),
        ("0", 0),
        ("2h0m1s", 7201),
    ],
)
def test_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10x", "-5s", "s", "1h-3m", "nan", "10 s"])
def test_invalid(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@given(st.integers(min_value=0, max_value=10**9))
def test_format_round_trips_milliseconds(ms: int) -> None:
    seconds = ms / 1000
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


def test_a_timestamp_must_say_its_time_zone() -> None:
    from datetime import UTC, datetime

    from fleet_worker.durations import parse_timestamp

    assert parse_timestamp("2030-01-01T12:00:00+00:00") == datetime(2030, 1, 1, 12, tzinfo=UTC)
    with pytest.raises(ValueError, match="needs a time zone"):
        parse_timestamp("2030-01-01T12:00:00")
    with pytest.raises(ValueError, match="is not an ISO 8601 timestamp"):
        parse_timestamp("tomorrow")
