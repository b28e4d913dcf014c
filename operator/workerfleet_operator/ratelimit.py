"""How often failing fleets are retried, as controller-runtime's default work-queue
limiter does for requeues after errors: per fleet an exponential back-off (a fleet whose
action keeps failing is retried 2, 4, 8 ... s apart, up to a cap, instead of every 2 s
forever), and one token bucket for the whole operator that those retries draw from (so
many fleets failing at once, say while the API server is away, come back at a steady
rate). Changes, first reconciles and resyncs never wait on either: a bucket in front of
every reconcile let a herd of 1,000 resyncs delay a version bump by 3-8 s
(`make bench-operator`). A change to a failing fleet still wakes it at once.

Pure and clock-driven, so the bounds are tested as properties (tests/unit/test_ratelimit.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

# Retries after failures, across all fleets: a burst, then this rate.
RATE_PER_S = float(os.environ.get("WORKERFLEET_RECONCILE_QPS", "50"))
BURST = int(os.environ.get("WORKERFLEET_RECONCILE_BURST", "100"))
# Back-off after failures: base * 2^(failures - 1), capped.
BACKOFF_BASE_S = 2.0
BACKOFF_CAP_S = 60.0


@dataclass
class TokenBucket:
    """`burst` reconciles at once, then `rate` per second. `reserve(now)` takes a token and
    returns how long the caller must wait before using it (0 when one is free); tokens are
    handed out in the order they are reserved."""

    rate: float
    burst: int
    _tokens: float = field(init=False)
    _at: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("the reconcile rate must be positive and the burst at least 1")
        self._tokens = float(self.burst)

    def reserve(self, now: float) -> float:
        if self._at is not None:
            self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
        self._at = now
        self._tokens -= 1.0
        # A debt of d tokens is paid off after d / rate seconds.
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


@dataclass
class Backoff:
    """Per fleet: consecutive failures and the wait they earn."""

    base_s: float = BACKOFF_BASE_S
    cap_s: float = BACKOFF_CAP_S
    _failures: dict[tuple[str, str], int] = field(default_factory=dict)

    def record(self, key: tuple[str, str], *, failed: bool) -> None:
        if failed:
            self._failures[key] = self._failures.get(key, 0) + 1
        else:
            self._failures.pop(key, None)

    def failing(self, key: tuple[str, str]) -> bool:
        return key in self._failures

    def wait(self, key: tuple[str, str], otherwise: float) -> float:
        """The timer after a reconcile: `otherwise` (the fleet's usual wait) unless it has
        failed lately, then at least the back-off."""
        failures = self._failures.get(key, 0)
        if failures == 0:
            return otherwise
        return max(otherwise, min(self.cap_s, self.base_s * 2.0 ** (failures - 1)))

    def forget(self, key: tuple[str, str]) -> None:
        self._failures.pop(key, None)
