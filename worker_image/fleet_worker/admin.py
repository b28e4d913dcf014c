"""Job admin: list and inspect jobs, retry, reschedule, cancel or fail them, unlock a pool's
jobs, and read the completed-job history. The changes go through the SQL functions of
core/0005 (so SQL users get the same rules), which touch only jobs no pool holds; what they
skip is reported with the reason. Used by `fleet-worker jobs` and `kubectl workerfleet jobs`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, LiteralString

import psycopg
from psycopg import sql

from fleet_worker.db import Schema, lease_live, live_params
from fleet_worker.errors import AdminError
from fleet_worker.pools import declare_dead
from fleet_worker.protocol import TERMINAL_STATES, JobState
from fleet_worker.recovery import release_pool_jobs

_LIST_COLUMNS = (
    "id", "state", "task_identifier", "queue_name", "priority", "run_at", "attempts",
    "max_attempts", "last_error", "key", "locked_by", "locked_at", "created_at", "payload",
)  # fmt: skip


def list_jobs(
    conn: psycopg.Connection,
    schema: Schema,
    *,
    state: JobState | None = None,
    task: str | None = None,
    queue: str | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Jobs by state, task and queue, oldest due first. COMPLETED reads the history."""
    if state is JobState.COMPLETED:
        return job_history(conn, schema, task=task, queue=queue, limit=limit)
    query = sql.SQL(
        "select {cols} from {s}.job_list where (%(state)s::text is null or state = %(state)s) "
        "and (%(task)s::text is null or task_identifier = %(task)s) "
        "and (%(queue)s::text is null or queue_name = %(queue)s) "
        "order by run_at, id limit %(limit)s"
    ).format(cols=sql.SQL(", ").join(map(sql.Identifier, _LIST_COLUMNS)), s=schema.ident)
    params = {"state": state and state.value, "task": task, "queue": queue, "limit": limit}
    rows = conn.execute(query, params).fetchall()
    return [_jsonable(dict(zip(_LIST_COLUMNS, r, strict=True))) for r in rows]


def show_job(conn: psycopg.Connection, schema: Schema, job_id: int) -> dict[str, Any] | None:
    """One job, with the pool that runs it (pod, node, version, heartbeat age) if any; a
    completed one from the history, with the pool that ran it."""
    query = sql.SQL("select {cols} from {s}.job_list where id = %s").format(
        cols=sql.SQL(", ").join(map(sql.Identifier, _LIST_COLUMNS)), s=schema.ident
    )
    row = conn.execute(query, [job_id]).fetchone()
    if row is not None:
        job = dict(zip(_LIST_COLUMNS, row, strict=True))
    else:
        history = job_history(conn, schema, job_id=job_id, limit=1)
        if not history:
            return None
        job = history[0]
    pool = job.get("locked_by") or job.get("pool_id")
    if pool is not None:
        job["pool"] = _pool_summary(conn, schema, str(pool))
    return _jsonable(job)


def _pool_summary(conn: psycopg.Connection, schema: Schema, pool_id: str) -> dict[str, Any]:
    row = conn.execute(
        schema.q(
            """select pool_id::text, version, pod_name, node_name, hostname, state,
                   extract(epoch from now() - heartbeat_at)::float8
               from {s}.pools where pool_id = %s"""
        ),
        [pool_id],
    ).fetchone()
    if row is None:
        return {"pool_id": pool_id, "state": "unregistered"}
    keys = ("pool_id", "version", "pod_name", "node_name", "hostname", "state", "heartbeat_age_s")
    return dict(zip(keys, row, strict=True))


def job_history(
    conn: psycopg.Connection,
    schema: Schema,
    *,
    task: str | None = None,
    queue: str | None = None,
    since_s: float | None = None,
    job_id: int | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Completed jobs, newest first, with where they ran (empty unless pools keep history)."""
    rows = conn.execute(
        schema.q(
            """select h.id, h.task_identifier, h.queue_name, h.priority, h.attempts, h.key,
                   h.pool_id::text, p.pod_name, p.node_name, p.version, h.created_at,
                   h.completed_at, h.payload
               from {s}.job_history h left join {s}.pools p on p.pool_id = h.pool_id
               where (%(task)s::text is null or h.task_identifier = %(task)s)
                 and (%(queue)s::text is null or h.queue_name = %(queue)s)
                 and (%(id)s::bigint is null or h.id = %(id)s)
                 and (%(since)s::float8 is null
                      or h.completed_at > now() - make_interval(secs => %(since)s))
               order by h.completed_at desc, h.id desc limit %(limit)s"""
        ),
        {"task": task, "queue": queue, "id": job_id, "since": since_s, "limit": limit},
    ).fetchall()
    keys = (
        "id", "task_identifier", "queue_name", "priority", "attempts", "key", "pool_id",
        "pod_name", "node_name", "version", "created_at", "completed_at", "payload",
    )  # fmt: skip
    return [_jsonable({**dict(zip(keys, r, strict=True)), "state": JobState.COMPLETED.value})
            for r in rows]  # fmt: skip


@dataclass(frozen=True)
class Outcome:
    """What an admin change did: the ids it changed, and the others with the reason."""

    changed: list[int]
    skipped: dict[int, str] = field(default_factory=dict)


def _outcome(
    conn: psycopg.Connection, schema: Schema, ids: Sequence[int], changed: list[int]
) -> Outcome:
    done = set(changed)
    rest = [i for i in ids if i not in done]
    if not rest:
        return Outcome(sorted(changed))
    running = {
        int(r[0])
        for r in conn.execute(
            schema.q("select id from {s}.jobs where id = any(%s) and locked_by is not null"),
            [rest],
        ).fetchall()
    }
    skipped = {
        i: "running: a pool holds it (wait for it to end, or unlock its pool)"
        if i in running
        else "no such job (completed, cancelled, or never existed)"
        for i in rest
    }
    return Outcome(sorted(changed), skipped)


def _call(
    conn: psycopg.Connection, schema: Schema, function: LiteralString, ids: Sequence[int],
    *args: Any,
) -> Outcome:  # fmt: skip
    placeholders = sql.SQL(", ").join([sql.Placeholder()] * (1 + len(args)))
    query = sql.SQL("select * from {s}.{fn}({args})").format(
        s=schema.ident, fn=sql.Identifier(function), args=placeholders
    )
    with conn.transaction():
        changed = [int(r[0]) for r in conn.execute(query, [list(ids), *args]).fetchall()]
        return _outcome(conn, schema, ids, changed)


def retry_jobs(conn: psycopg.Connection, schema: Schema, ids: Sequence[int]) -> Outcome:
    """Run now with every attempt back (permanently failed jobs included)."""
    return _call(conn, schema, "retry_jobs", ids)


def reschedule_jobs(
    conn: psycopg.Connection,
    schema: Schema,
    ids: Sequence[int],
    run_at: datetime,
    *,
    priority: int | None = None,
    max_attempts: int | None = None,
) -> Outcome:
    if max_attempts is not None and not 1 <= max_attempts <= 32767:
        raise AdminError("max_attempts must be between 1 and 32767")
    return _call(conn, schema, "reschedule_jobs", ids, run_at, priority, max_attempts)


def cancel_jobs(conn: psycopg.Connection, schema: Schema, ids: Sequence[int]) -> Outcome:
    """Delete jobs that are not running."""
    return _call(conn, schema, "cancel_jobs", ids)


def fail_jobs(conn: psycopg.Connection, schema: Schema, ids: Sequence[int], reason: str) -> Outcome:
    if not reason.strip():
        raise AdminError("give a reason: it is stored as the job's last error")
    return _call(conn, schema, "fail_jobs", ids, reason)


@dataclass(frozen=True)
class Unlocked:
    pool_id: str
    declared_dead: bool  # the pool was live-state and is now dead (fenced)
    released: int  # jobs given back now
    held: int  # jobs left for the sweep, once the fenced pool's lease has run out


def unlock_pool(
    conn: psycopg.Connection, schema: Schema, pool_id: str, *, force: bool, threshold_s: float
) -> Unlocked:
    """Give back every job a pool holds. A pool whose lease is still live is running them:
    refused unless `force`, which declares it dead (it fetches nothing more, its late
    results are rejected, it exits 58 at its next heartbeat) and leaves its jobs to the
    sweep, which releases them once its lease has run out: never while it may still run
    them. A pool whose lease already ran out, or a terminal one, is released now."""
    row = conn.execute(
        schema.q("select p.state, ")
        + lease_live()
        + schema.q(" from {s}.pools p where p.pool_id = %(pool)s"),
        {**live_params(threshold_s), "pool": pool_id},
    ).fetchone()
    if row is None:
        raise AdminError(f"no pool {pool_id}; `fleet-worker status` lists them")
    state, live = str(row[0]), bool(row[1])
    if live and not force:
        raise AdminError(
            f"pool {pool_id} is live (state {state}, heartbeat within its threshold): it is "
            "running its jobs. Stop its pod or process, or pass --force to declare it dead "
            "(it is fenced off; its jobs run again elsewhere, or fail by their orphan policy)"
        )
    reason = "declared dead by hand (fleet-worker jobs unlock)"
    if live:
        dead = declare_dead(conn, schema, [pool_id], reason, release=False)
        return Unlocked(pool_id, bool(dead), 0, _held(conn, schema, pool_id))
    if state in TERMINAL_STATES:
        with conn.transaction():
            released = release_pool_jobs(conn, schema, [pool_id], "released: unlocked by hand")
        return Unlocked(pool_id, False, released, 0)
    # Live state but silent past its lease: what the sweep would do, now.
    held = _held(conn, schema, pool_id)
    dead = declare_dead(conn, schema, [pool_id], reason)
    return Unlocked(pool_id, bool(dead), held, 0)


def _held(conn: psycopg.Connection, schema: Schema, pool_id: str) -> int:
    row = conn.execute(
        schema.q("select count(*) from {s}.jobs where locked_by = %s"), [pool_id]
    ).fetchone()
    return int(row[0]) if row else 0


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v.isoformat() if isinstance(v, datetime) else str(v) if k == "locked_by" and v else v
        for k, v in row.items()
    }
