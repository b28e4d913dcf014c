"""Getting work back from pools that are gone: releasing their jobs and queue locks, the
periodic sweep that declares silent pools dead, and the one-time orphan unlock."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import psycopg

from fleet_worker.db import LIVE_STATES, TERMINAL_STATES, Schema, lease_live, live_params


def release_pool_jobs(
    conn: psycopg.Connection,
    schema: Schema,
    pool_ids: Sequence[str],
    reason: str,
    *,
    keep: Sequence[int] = (),
) -> int:
    """Unlock every job and queue held by these pools, except the jobs in `keep` (and their
    queues). The interrupted attempt still counts, so a job that kills its worker every time
    ends up permanently failed (inspectable) rather than looping forever. Returns the number
    of jobs released."""
    if not pool_ids:
        return 0
    params = {"pools": list(pool_ids), "keep": list(keep), "reason": reason}
    conn.execute(
        schema.q(
            """update {s}.job_queues set locked_by = null, locked_at = null
               where locked_by = any(%(pools)s::uuid[]) and queue_name not in (
                   select queue_name from {s}.jobs
                   where id = any(%(keep)s::bigint[]) and queue_name is not null)"""
        ),
        params,
    )
    cur = conn.execute(
        schema.q(
            """update {s}.jobs set locked_by = null, locked_at = null, run_at = now(),
                   last_error = %(reason)s, updated_at = now()
               where locked_by = any(%(pools)s::uuid[]) and id <> all(%(keep)s::bigint[])"""
        ),
        params,
    )
    return cur.rowcount


@dataclass(frozen=True)
class SweepResult:
    ran: bool  # False when another process held the sweep lock
    dead_pools: list[str]
    released_jobs: int


def sweep(
    conn: psycopg.Connection, schema: Schema, threshold_s: float, *, sweeper: str | None = None
) -> SweepResult:
    """One sweep, if no one else is sweeping: pools whose lease expired (each judged by its
    own threshold; `threshold_s` only for pools that registered none) become dead and lose
    their locks; locks still held by already-terminal pools are freed. A sweeping worker
    never declares itself dead: it is evidently running. The caller must be off probation
    (see fleet_worker.lease): right after its own outage, others' silence may be its own."""
    with conn.transaction():
        got = conn.execute(
            "select pg_try_advisory_xact_lock(hashtext(%s))", [schema.lock_key("sweep")]
        ).fetchone()
        if not got or not got[0]:
            return SweepResult(False, [], 0)
        rows = conn.execute(
            schema.q(
                """update {s}.pools p set state = 'dead', stopped_at = now(),
                       reason = format('no heartbeat for %%s (threshold %%s s)',
                                       date_trunc('second', now() - p.heartbeat_at),
                                       coalesce(p.sweep_threshold_s, %(threshold)s))
                   where p.state = any(%(live_states)s) and not """
            )
            + lease_live()
            + schema.q(
                """ and p.pool_id is distinct from %(sweeper)s::uuid
                   returning p.pool_id::text"""
            ),
            {**live_params(threshold_s), "sweeper": sweeper},
        ).fetchall()
        dead = [r[0] for r in rows]
        leftovers = conn.execute(
            schema.q(
                """select distinct j.locked_by::text from {s}.jobs j
                   join {s}.pools p on p.pool_id = j.locked_by
                   where j.locked_by is not null and p.state = any(%s)"""
            ),
            [list(TERMINAL_STATES)],
        ).fetchall()
        pools = sorted(set(dead) | {r[0] for r in leftovers})
        released = release_pool_jobs(conn, schema, pools, "released: its pool stopped heartbeating")
        return SweepResult(True, dead, released)


@dataclass(frozen=True)
class OrphanReport:
    jobs: list[int]
    queues: list[str]


def unlock_orphans(conn: psycopg.Connection, schema: Schema, *, dry_run: bool) -> OrphanReport:
    """Release jobs and queues locked by anything that is not a live registered pool: the
    one-time cleanup when adopting a database that older, pool-less workers used."""
    live_pool = schema.q("select pool_id from {s}.pools where state = any(%s)")
    with conn.transaction():
        jobs_sql = (
            schema.q("select id from {s}.jobs where locked_by is not null and locked_by not in (")
            + live_pool
            + schema.q(") order by id for update")
        )
        jobs = [r[0] for r in conn.execute(jobs_sql, [list(LIVE_STATES)]).fetchall()]
        queues_sql = (
            schema.q(
                "select queue_name from {s}.job_queues where locked_by is not null "
                "and locked_by not in ("
            )
            + live_pool
            + schema.q(") order by queue_name for update")
        )
        queues = [r[0] for r in conn.execute(queues_sql, [list(LIVE_STATES)]).fetchall()]
        if not dry_run:
            conn.execute(
                schema.q(
                    """update {s}.jobs set locked_by = null, locked_at = null, run_at = now(),
                           last_error = 'released by unlock-orphans', updated_at = now()
                       where id = any(%s)"""
                ),
                [jobs],
            )
            conn.execute(
                schema.q(
                    "update {s}.job_queues set locked_by = null, locked_at = null "
                    "where queue_name = any(%s)"
                ),
                [queues],
            )
    return OrphanReport(jobs, queues)
