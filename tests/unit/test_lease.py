"""The lease arithmetic: when a pool must stop its jobs, exit, and may judge others."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fleet_worker.lease import Lease

timings = st.tuples(
    st.floats(min_value=0.01, max_value=600), st.floats(min_value=2.0, max_value=50)
).map(lambda t: (t[0], t[0] * t[1]))  # (interval, threshold >= 2 x interval), as validated


@given(timings)
def test_the_deadlines_leave_room_on_both_sides(timing: tuple[float, float]) -> None:
    interval, threshold = timing
    lease = Lease(interval, threshold)
    # A pool beating on time never fences itself (a beat is due every interval)...
    assert lease.fence_after >= 1.5 * interval
    # ...and it stops its jobs, then its process, before anyone may take them.
    assert lease.fence_after < lease.exit_after < threshold
    assert threshold - lease.exit_after >= threshold / 8 - 1e-9


@given(timings, st.floats(min_value=0, max_value=1e6))
def test_on_time_beats_keep_the_lease(timing: tuple[float, float], start: float) -> None:
    interval, threshold = timing
    lease = Lease(interval, threshold)
    t = start
    lease.renewed(t)
    while t < start + 3 * threshold:
        t += interval * 1.2  # late, as a loaded machine is
        assert not lease.must_fence(t - 1e-9)
        lease.renewed(t)
    assert not lease.on_probation(t)


@given(timings, st.floats(min_value=0, max_value=1e6))
def test_silence_fences_then_exits(timing: tuple[float, float], start: float) -> None:
    interval, threshold = timing
    lease = Lease(interval, threshold)
    lease.renewed(start)
    eps = 1e-6 * max(1.0, start)  # float sums of large times
    assert not lease.must_fence(start + lease.fence_after * 0.99)
    assert lease.must_fence(start + lease.fence_after + eps)
    assert not lease.must_exit(start + lease.exit_after * 0.99)
    assert lease.must_exit(start + lease.exit_after + eps)


@given(timings, st.floats(min_value=0, max_value=1e6))
def test_probation_lasts_one_threshold_after_any_failure(
    timing: tuple[float, float], start: float
) -> None:
    interval, threshold = timing
    lease = Lease(interval, threshold)
    lease.renewed(start)
    assert lease.on_probation(start)  # a new pool judges no one for its first threshold
    t = start
    while t - start < threshold:
        t += interval
        lease.renewed(t)
    assert not lease.on_probation(t)
    lease.failed()
    assert lease.on_probation(t)
    t += interval
    lease.renewed(t)
    recovered = t
    while t - recovered < threshold:
        assert lease.on_probation(t)
        t += interval
        lease.renewed(t)
    assert not lease.on_probation(t)


@given(timings, st.floats(min_value=0, max_value=1e6))
def test_a_beat_that_hung_counts_as_a_failure(timing: tuple[float, float], start: float) -> None:
    interval, threshold = timing
    lease = Lease(interval, threshold, renewed_at=start, healthy_since=start - 10 * threshold)
    lease.renewed(start + threshold * 0.8)  # the beat hung for most of the threshold
    assert lease.on_probation(start + threshold * 0.8)
