"""The protocol's fixed points, shared by the runtime, the migrator and the operator. No
I/O and no psycopg here, so the operator's pure planner can import it."""

from __future__ import annotations

from enum import StrEnum

# The core migrations a worker needs before it can register a pool: core/0001 creates the
# pools table, core/0002 the lease columns registration writes. A fresh database gets them
# first (self mode applies them; the operator runs them as a Job in external mode).
CORE_PROTOCOL = "core/0002"
LEASES = "core/0002"  # from here on, pools carry their own heartbeat interval and threshold

LIVE_STATES = ("starting", "waiting-for-schema", "active", "draining")
TERMINAL_STATES = ("stopped", "dead", "evicted")


class JobState(StrEnum):
    """A job's state as `job_list` (core/0005) derives it; see docs/worker.md#job-states."""

    WAITING = "waiting"  # due, waiting for a free worker
    SCHEDULED = "scheduled"  # not yet due, never attempted
    RETRYING = "retrying"  # an attempt failed; waits out its back-off
    RUNNING = "running"  # locked by a pool
    FAILED = "failed"  # no attempts left; kept for inspection
    COMPLETED = "completed"  # in job_history (pools run with --keep-history only)
