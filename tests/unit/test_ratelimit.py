"""The operator's reconcile pace: the bucket's bound over any window, the back-off's growth,
cap and reset."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from workerfleet_operator.ratelimit import Backoff, TokenBucket


@given(
    rate=st.floats(0.5, 200),
    burst=st.integers(1, 50),
    gaps=st.lists(st.floats(0, 2), min_size=1, max_size=200),
)
def test_no_window_gets_more_than_the_burst_plus_the_rate(
    rate: float, burst: int, gaps: list[float]
) -> None:
    """Callers arrive at any times and use their token after the wait they were given: in
    any window [a, b] at most burst + rate * (b - a) reconciles start."""
    bucket = TokenBucket(rate, burst)
    now, starts = 0.0, []
    for gap in gaps:
        now += gap
        starts.append(now + bucket.reserve(now))
    starts.sort()
    for i in range(len(starts)):
        for j in range(i, len(starts)):
            allowed = burst + rate * (starts[j] - starts[i]) + 1e-6
            assert j - i + 1 <= allowed


def test_a_burst_is_free_then_the_rate_applies() -> None:
    bucket = TokenBucket(10, 3)
    assert [bucket.reserve(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.reserve(0.0) == pytest.approx(0.1)
    assert bucket.reserve(0.0) == pytest.approx(0.2)
    assert bucket.reserve(10.0) == 0.0  # refilled, never beyond the burst
    with pytest.raises(ValueError):
        TokenBucket(0, 1)


def test_failures_back_off_exponentially_to_a_cap_and_success_resets() -> None:
    backoff, key = Backoff(base_s=2, cap_s=60), ("ns", "shop")
    assert backoff.wait(key, 2.0) == 2.0
    waits = []
    for _ in range(7):
        backoff.record(key, failed=True)
        waits.append(backoff.wait(key, 2.0))
    assert waits == [2, 4, 8, 16, 32, 60, 60]
    assert backoff.wait(key, 90.0) == 90.0  # never shorter than the fleet's own wait
    backoff.record(key, failed=False)
    assert backoff.wait(key, 2.0) == 2.0
    assert backoff.wait(("ns", "other"), 30.0) == 30.0


def test_resyncs_are_spread_but_never_longer_than_the_threshold() -> None:
    from workerfleet_operator.handlers import INTERVAL_S, RESYNC_S, next_wait

    waits = [next_wait(None, "60s", jitter=j / 10) for j in range(10)]
    assert max(waits) == RESYNC_S and min(waits) >= 0.9 * RESYNC_S and len(set(waits)) == 10
    assert all(next_wait(None, "5s", jitter=j / 10) <= 5 for j in range(10))
    assert next_wait(None, "1s", jitter=0.99) == INTERVAL_S  # never below the busy interval
