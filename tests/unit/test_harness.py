"""The shared harness's pure parts: the tally that every "nothing lost, nothing twice" check
of the tests, the demo and the benchmarks rests on, and the wait helper."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workerfleet_dev.harness import Tally, WaitTimeout, longest_gap_s, wait_for


def test_a_tally_names_the_lost_the_twice_and_the_unexpected() -> None:
    tally = Tally.of([1, 2, 3, 4], [1, 2, 2, 5, 3])
    assert (tally.enqueued, tally.completed) == (4, 3)
    assert (tally.lost, tally.twice, tally.unexpected) == ((4,), (2,), (5,))
    assert not tally.exactly_once
    assert tally.describe() == (
        "3 of 4 enqueued job(s) ran; 1 lost: 4; 1 ran twice: 2; 1 not enqueued: 5"
    )


@given(st.lists(st.integers(1, 50), unique=True), st.lists(st.integers(1, 60)))
def test_exactly_once_is_each_enqueued_job_run_once_and_nothing_else(
    enqueued: list[int], ran: list[int]
) -> None:
    tally = Tally.of(enqueued, ran)
    assert tally.exactly_once == (sorted(ran) == sorted(enqueued))
    assert tally.completed + len(tally.lost) == tally.enqueued


def test_the_longest_gap_is_between_neighbours_in_time_order() -> None:
    t = datetime(2026, 6, 1, tzinfo=UTC)
    times = [t + timedelta(seconds=s) for s in (5, 0, 1, 9)]
    assert longest_gap_s(times) == 4.0
    assert longest_gap_s([t]) == 0.0


def test_wait_for_returns_the_value_and_names_what_it_waited_for() -> None:
    calls = iter([None, 0, "ready"])
    assert wait_for(lambda: next(calls), 5, 0.001) == "ready"
    began = time.monotonic()
    with pytest.raises(WaitTimeout, match=r"timed out after 0.2s waiting for the moon"):
        wait_for(lambda: False, 0.2, 0.01, "the moon")
    assert time.monotonic() - began >= 0.2
