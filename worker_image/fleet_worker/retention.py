"""The history pruner: deletes completed-job history older than the pool's window.

Defaults: runs only in pools started with `--keep-history` (off by default), at most once a
minute, right after a sweep this pool led (the sweep's advisory lock picks one pool per
round, so pools do not prune side by side), in batches of 10,000 rows, at most 10 batches a
run so one run never holds the maintenance connection for long. Each pool prunes by its own
window: give every pool of a fleet the same one (the operator does).
"""

from __future__ import annotations

import psycopg

from fleet_worker.db import Schema

BATCH = 10_000
MAX_BATCHES = 10
INTERVAL_S = 60.0


def prune_history(conn: psycopg.Connection, schema: Schema, keep_s: float) -> int:
    """Delete history rows completed more than `keep_s` ago; returns how many."""
    deleted = 0
    for _ in range(MAX_BATCHES):
        cur = conn.execute(
            schema.q(
                """delete from {s}.job_history where id in (
                       select id from {s}.job_history
                       where completed_at < now() - make_interval(secs => %s)
                       order by completed_at limit %s)"""
            ),
            [keep_s, BATCH],
        )
        deleted += cur.rowcount
        if cur.rowcount < BATCH:
            break
    return deleted
