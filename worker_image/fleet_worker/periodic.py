"""The periodic-job service: every active pool checks its App's crontab once a minute and
enqueues the ticks that are due. Exactly once per tick across pools, versions and restarts:
each entry's row in `cron_entries` is locked while it is checked, and records how far its
ticks were handled, in the same transaction as the jobs it enqueued.

Defaults: checked a moment (0.2-1.2 s, spread at random) after each minute starts, on the
pool's background connection (never the heartbeat's); an entry whose row another pool holds is
skipped, not waited for (that pool handles those ticks; the next check takes the rest), so a
pool stalled mid-check cannot stall the others. A new entry starts ticking from when a worker
first saw it (nothing before that is backfilled).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg

from fleet_worker.cron import CronEntry
from fleet_worker.db import Schema
from fleet_worker.queue import JobSpec, add_job


@dataclass(frozen=True)
class Enqueued:
    entry: str
    tick: datetime
    job_id: int


def enqueue_due(
    conn: psycopg.Connection,
    schema: Schema,
    entries: Sequence[CronEntry],
    *,
    now: datetime | None = None,
) -> list[Enqueued]:
    """Check each entry once: enqueue its due ticks and move its row on. `now` (tests only)
    replaces the database clock."""
    out: list[Enqueued] = []
    for entry in entries:
        try:
            out += _check(conn, schema, entry, now)
        except psycopg.errors.LockNotAvailable:
            continue  # another pool's first sight of the entry is in flight: next minute
    return out


def _check(
    conn: psycopg.Connection, schema: Schema, entry: CronEntry, now: datetime | None
) -> list[Enqueued]:
    with conn.transaction():
        # The first sight of an entry by two pools at once: the second insert waits for the
        # first; bounded, so it cannot hang.
        conn.execute("set local lock_timeout = '5s'")
        conn.execute(
            schema.q(
                "insert into {s}.cron_entries (name, checked_until) "
                "values (%s, coalesce(%s, clock_timestamp())) on conflict do nothing"
            ),
            [entry.name, now],
        )
        row = conn.execute(
            schema.q(
                "select checked_until from {s}.cron_entries where name = %s for update skip locked"
            ),
            [entry.name],
        ).fetchone()
        if row is None:
            return []  # another pool is checking this entry right now
        # Read after the lock: a transaction's now() is its start, which may precede the
        # check of the pool that held the lock.
        clock = now or conn.execute("select clock_timestamp()").fetchone()[0]  # type: ignore[index]
        last: datetime = row[0]
        if clock <= last:
            return []
        out = []
        for tick in entry.due(last, clock):
            spec = JobSpec(
                entry.task, entry.payload, queue=entry.queue, priority=entry.priority,
                max_attempts=entry.max_attempts, job_key=entry.job_key(tick),
            )  # fmt: skip
            out.append(Enqueued(entry.name, tick, add_job(conn, spec, schema)))
        conn.execute(
            schema.q(
                "update {s}.cron_entries set checked_until = %s, updated_at = now() where name = %s"
            ),
            [clock, entry.name],
        )
        return out


def seconds_to_next_check(db_now: datetime) -> float:
    """From a database time to the next check: just after the next minute starts, spread so
    that many pools do not all queue on the same row lock at once."""
    into_minute = db_now.second + db_now.microsecond / 1e6
    return 60.0 - into_minute + random.uniform(0.2, 1.2)  # noqa: S311 - jitter, not security
