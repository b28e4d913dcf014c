"""A pool's own view of its lease: when it must stop executing, when it must exit, and when
it may judge other pools' silence. Pure: the runtime feeds it times from `lease_clock`.

Others declare a pool dead once `threshold` seconds passed on the database clock since its
last recorded heartbeat. The heartbeat is recorded after it was sent, so measuring from the
send time locally is conservative. At `fence_after` (3/4 of the threshold) without a recorded
heartbeat the pool stops fetching and cancels its running jobs; at `exit_after` (7/8) a job
that is still executing (sync code that ignores the request) is stopped with the process.
The last 1/8 of the threshold is the safety margin for the exit and for scheduling delays.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

FENCE_FRACTION = 0.75


def lease_clock() -> float:
    """Seconds on a clock that keeps running while the machine is suspended (a monotonic
    clock stops then, and a thawed VM would believe its lease fresh)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


EXIT_FRACTION = 0.875


@dataclass
class Lease:
    interval: float
    threshold: float
    renewed_at: float | None = None  # send time of the last heartbeat the database recorded
    healthy_since: float | None = None  # start of the current run of timely heartbeats

    @property
    def fence_after(self) -> float:
        return self.threshold * FENCE_FRACTION

    @property
    def exit_after(self) -> float:
        return self.threshold * EXIT_FRACTION

    def renewed(self, sent_at: float) -> None:
        """A heartbeat sent at `sent_at` was recorded. A gap long enough to fence between two
        recorded beats counts as a failure (a beat that hung rather than failed)."""
        if self.renewed_at is not None and sent_at - self.renewed_at >= self.fence_after:
            self.healthy_since = None
        if self.healthy_since is None:
            self.healthy_since = sent_at
        if self.renewed_at is None or sent_at > self.renewed_at:
            self.renewed_at = sent_at

    def failed(self) -> None:
        self.healthy_since = None

    def silent_for(self, now: float) -> float:
        return 0.0 if self.renewed_at is None else max(0.0, now - self.renewed_at)

    def must_fence(self, now: float) -> bool:
        return self.renewed_at is not None and self.silent_for(now) >= self.fence_after

    def must_exit(self, now: float) -> bool:
        return self.renewed_at is not None and self.silent_for(now) >= self.exit_after

    def on_probation(self, now: float) -> bool:
        """Not yet allowed to take others' silence for death: since its start or its last
        failure this pool has not heartbeated continuously for one threshold, so its own
        view of the others may be the outage's, not theirs."""
        if self.healthy_since is None or self.must_fence(now):
            return True
        return now - self.healthy_since < self.threshold
