"""The protocol's fixed points, shared by the runtime, the migrator and the operator. No
I/O and no psycopg here, so the operator's pure planner can import it."""

from __future__ import annotations

from enum import StrEnum

# The core migrations a worker needs before it can register a pool: core/0001 creates the
# pools table, core/0002 the lease columns registration writes. A fresh database gets them
# first (self mode applies them; the operator runs them as a Job in external mode).
CORE_PROTOCOL = "core/0002"
LEASES = "core/0002"  # from here on, pools carry their own heartbeat interval and threshold


class PoolState(StrEnum):
    """A pool's state (the `pools.state` column; docs/protocol.md, Pool states). StrEnum:
    each compares equal to, and travels to PostgreSQL as, its text."""

    STARTING = "starting"  # registered; checking the schema
    WAITING_FOR_SCHEMA = "waiting-for-schema"  # its migrations are not all applied yet
    ACTIVE = "active"  # fetching and running jobs
    DRAINING = "draining"  # stopping: finishes what it runs, fetches nothing
    STOPPED = "stopped"  # exited cleanly, holds nothing
    DEAD = "dead"  # its lease expired, or its process ended; others released its jobs
    EVICTED = "evicted"  # lacked a breaking migration forced after maxMigrationWaitTime


# The states in which a pool may hold jobs (live, while its lease holds), and the final ones.
LIVE_STATES = (
    PoolState.STARTING, PoolState.WAITING_FOR_SCHEMA, PoolState.ACTIVE, PoolState.DRAINING,
)  # fmt: skip
TERMINAL_STATES = (PoolState.STOPPED, PoolState.DEAD, PoolState.EVICTED)
# Others made these final; the pool itself never leaves them (a heartbeat does not revive it).
FENCED_STATES = (PoolState.DEAD, PoolState.EVICTED)


class JobState(StrEnum):
    """A job's state as `job_list` (core/0005) derives it; see docs/worker.md#job-states."""

    WAITING = "waiting"  # due, waiting for a free worker
    SCHEDULED = "scheduled"  # not yet due, never attempted
    RETRYING = "retrying"  # an attempt failed; waits out its back-off
    RUNNING = "running"  # locked by a pool
    FAILED = "failed"  # no attempts left; kept for inspection
    COMPLETED = "completed"  # in job_history (pools run with --keep-history only)
