"""Getting work back from pools that are gone: releasing their jobs and queue locks, the
periodic sweep that declares silent pools dead, and the one-time orphan unlock."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, LiteralString

import psycopg
from psycopg import sql

from fleet_worker.db import Schema, lease_live, live_params
from fleet_worker.protocol import LIVE_STATES, TERMINAL_STATES, PoolState

# Whether job `j`'s interrupted attempt must not run again: the pool that ran it listed the
# task as `on_orphan="fail"` when it turned active (core/0003). Read through to_jsonb, not
# the column, so the statement also runs on a schema before core/0003 (an operator releasing
# an older fleet's pools), where no pool lists any task.
_FAILS_WHEN_ORPHANED = """j.task_identifier in (
    select jsonb_array_elements_text(coalesce(to_jsonb(p) -> 'orphan_fail_tasks', '[]'))
    from {s}.pools p where p.pool_id = j.locked_by)"""

# Appended to the reason of an attempt its orphan policy failed (no quote in it: it is also
# a SQL literal below).
NOT_RETRIED: LiteralString = '; not retried: its task has on_orphan="fail"'

# The end of an attempt that started and reported no outcome: retried at once, or failed
# for good by the task's orphan policy. Either way the attempt counts, so a job that kills
# its worker every time ends up permanently failed (inspectable) rather than looping.
INTERRUPTED_ATTEMPT: LiteralString = (
    """locked_by = null, locked_at = null, run_at = now(), updated_at = now(),
    attempts = case when """
    + _FAILS_WHEN_ORPHANED
    + """ then j.max_attempts else j.attempts end,
    last_error = case when """
    + _FAILS_WHEN_ORPHANED
    + " then %(reason)s || '"
    + NOT_RETRIED
    + "' else %(reason)s end"
)


def release_pool_jobs(
    conn: psycopg.Connection,
    schema: Schema,
    pool_ids: Sequence[str],
    reason: str,
    *,
    keep: Sequence[int] = (),
) -> int:
    """Unlock every job and queue held by these pools, except the jobs in `keep` (and their
    queues); each attempt ends as INTERRUPTED_ATTEMPT says. Returns the number of jobs
    released (retried or failed)."""
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
        schema.q("update {s}.jobs j set ")
        + schema.q(INTERRUPTED_ATTEMPT)
        + schema.q(
            " where j.locked_by = any(%(pools)s::uuid[]) and j.id <> all(%(keep)s::bigint[])"
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
                """update {s}.pools p set state = %(dead)s, stopped_at = now(),
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
            {**live_params(threshold_s), "sweeper": sweeper, "dead": PoolState.DEAD},
        ).fetchall()
        dead = [r[0] for r in rows]
        # Locks still held by pools others made terminal without releasing (fenced by hand:
        # `jobs unlock --force`): only once their lease ran out, since the process may
        # still be running those jobs until it sees its state.
        leftovers = conn.execute(
            schema.q(
                """select distinct j.locked_by::text from {s}.jobs j
                   join {s}.pools p on p.pool_id = j.locked_by
                   where j.locked_by is not null and p.state = any(%(terminal)s)
                     and p.heartbeat_at <= now() - make_interval(
                         secs => coalesce(p.sweep_threshold_s, %(threshold)s))"""
            ),
            {"terminal": list(TERMINAL_STATES), "threshold": threshold_s},
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
    one-time cleanup when adopting a database that older, pool-less workers used. Terminal
    pools' attempts end by their orphan policy, as the sweep would end them."""
    held: dict[str, list[tuple[Any, str]]] = {}
    with conn.transaction():
        for table, key in (("jobs", "id"), ("job_queues", "queue_name")):
            query = sql.SQL(
                "select {key}, locked_by::text from {s}.{table} where locked_by is not null "
                "and locked_by not in (select pool_id from {s}.pools where state = any(%s)) "
                "order by {key} for update"
            ).format(key=sql.Identifier(key), s=schema.ident, table=sql.Identifier(table))
            held[table] = [(r[0], r[1]) for r in conn.execute(query, [list(LIVE_STATES)])]
        if not dry_run:
            holders = sorted({pool for rows in held.values() for _, pool in rows})
            release_pool_jobs(conn, schema, holders, "released by unlock-orphans")
    return OrphanReport([r[0] for r in held["jobs"]], [r[0] for r in held["job_queues"]])
