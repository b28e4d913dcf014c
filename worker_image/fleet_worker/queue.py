"""The job queue: enqueue, batch fetch with SKIP LOCKED, fenced completion and failure."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, LiteralString

import psycopg
from psycopg import sql

from fleet_worker.db import Schema
from fleet_worker.errors import InvalidJobError
from fleet_worker.protocol import PoolState
from fleet_worker.recovery import INTERRUPTED_ATTEMPT

MAX_ERROR_LENGTH = 8000


@dataclass(frozen=True)
class Job:
    id: int
    task_identifier: str
    payload: Any
    queue_name: str | None
    priority: int
    run_at: datetime
    attempts: int
    max_attempts: int
    key: str | None
    lock_token: int  # this attempt's fence: completion and failure must present it


@dataclass(frozen=True)
class JobSpec:
    task: str
    payload: Any = None
    queue: str | None = None
    run_at: datetime | None = None
    priority: int | None = None
    max_attempts: int | None = None
    job_key: str | None = None

    def _validate(self) -> None:
        if not self.task or len(self.task) > 128:
            raise InvalidJobError("task identifier must be 1-128 characters")
        if self.max_attempts is not None and not 1 <= self.max_attempts <= 32767:
            raise InvalidJobError("max_attempts must be between 1 and 32767")

    def params(self) -> list[Any]:
        """The arguments of the schema's add_job(), in order."""
        self._validate()
        return [
            self.task,
            _json(self.payload),
            self.queue,
            self.run_at,
            self.max_attempts,
            self.job_key,
            self.priority,
        ]

    def row(self) -> dict[str, Any]:
        """One element of the bulk insert's JSON array (keys as in `_BULK_INSERT`)."""
        self._validate()
        return {
            "task": self.task,
            "payload": {} if self.payload is None else self.payload,
            "queue": self.queue,
            "run_at": None if self.run_at is None else self.run_at.isoformat(),
            "max_attempts": self.max_attempts,
            "priority": self.priority,
        }


def _json(value: Any) -> str:
    try:
        return json.dumps({} if value is None else value)
    except (TypeError, ValueError) as exc:
        raise InvalidJobError(f"payload is not JSON-serialisable: {exc}") from exc


# Keyless jobs need no per-row logic: one INSERT ... SELECT over a JSON array of specs (its
# queues created in the same statement) instead of one add_job() call per job. Ids come from
# the sequence in row order, so sorted they line up with the specs.
_BULK_INSERT = """
with specs as (
    select * from jsonb_to_recordset(%s::jsonb) as s(
        ord int, task text, payload jsonb, queue text, run_at timestamptz,
        max_attempts int, priority int)
), queues as (
    insert into {s}.job_queues (queue_name)
    select distinct queue from specs where queue is not null
    on conflict do nothing
)
insert into {s}.jobs (task_identifier, payload, queue_name, run_at, max_attempts, priority)
select task, coalesce(payload, '{{}}'::jsonb), queue, coalesce(run_at, now()),
       coalesce(max_attempts, 25), coalesce(priority, 0)
from specs order by ord
returning id"""


def _add_job_sql(schema: Schema) -> sql.Composed:
    return schema.q(
        "select (j).id from (select {s}.add_job(%s, %s::jsonb, %s, %s, %s, %s, %s) as j) x"
    )


def add_job(conn: psycopg.Connection, spec: JobSpec, schema: Schema | None = None) -> int:
    """Enqueue one job through the schema's add_job() so Python and SQL callers behave alike."""
    row = conn.execute(_add_job_sql(schema or Schema()), spec.params()).fetchone()
    assert row is not None
    return int(row[0])


def add_jobs(
    conn: psycopg.Connection, specs: Sequence[JobSpec], schema: Schema | None = None
) -> list[int]:
    """Enqueue many jobs in one transaction; returns their ids in the order of `specs`.
    Keyless jobs go in one statement; keyed ones through add_job() (replacing an existing
    job by key needs its per-row logic), pipelined in one round trip."""
    schema = schema or Schema()
    keyless = [(i, s.row()) for i, s in enumerate(specs) if s.job_key is None]
    keyed = [(i, s.params()) for i, s in enumerate(specs) if s.job_key is not None]
    ids: list[int] = [0] * len(specs)
    with conn.transaction(), conn.cursor() as cur:
        if keyless:
            rows = [{**row, "ord": n} for n, (_, row) in enumerate(keyless)]
            try:
                array = json.dumps(rows)
            except (TypeError, ValueError) as exc:
                raise InvalidJobError(f"payload is not JSON-serialisable: {exc}") from exc
            cur.execute(schema.q(_BULK_INSERT), [array])
            new = sorted(int(r[0]) for r in cur.fetchall())
            for (i, _), job_id in zip(keyless, new, strict=True):
                ids[i] = job_id
        if keyed:
            cur.executemany(_add_job_sql(schema), [p for _, p in keyed], returning=True)
            for i, _ in keyed:
                row = cur.fetchone()
                assert row is not None
                ids[i] = int(row[0])
                cur.nextset()
    if len(keyless) >= ANALYZE_BATCH_ROWS:
        _analyze_if_unknown(conn, schema, len(keyless))
    return ids


def _analyze_if_unknown(conn: psycopg.Connection, schema: Schema, added: int) -> None:
    """A jobs table never analysed (or analysed when it held less than this one call just
    added) makes the planner believe the queue nearly empty: it fetches by a bitmap scan that
    reads and sorts every runnable row instead of walking the index in order (4,500 instead
    of 15,000 jobs/s right after 20,000 were added), until autovacuum gets to it a minute or
    more later. Analysed once with rows in it, the planner scales its estimate with the
    table's size. A table the caller does not own only warns."""
    row = conn.execute(
        "select reltuples from pg_class where oid = %s::regclass", [f'"{schema.name}".jobs']
    ).fetchone()
    if row is not None and row[0] < added:
        conn.execute(schema.q("analyze {s}.jobs"))


ANALYZE_BATCH_ROWS = 1_000  # add_jobs() calls this large check the planner's statistics


# The fetch connection's session: the fetch must walk jobs_fetch_idx in order and stop at
# its limit, whatever the statistics say. With none yet (a new table filled by small
# enqueues, before autovacuum's first analyze) or stale ones, the planner takes the queue
# for nearly empty and reads every runnable row by a bitmap scan, then sorts them: 11 ms
# instead of 4 ms for 500 of 20,000 here, and worse as the queue grows. Only alternatives
# to the index are removed: on a well-analysed table the plan is the same.
FETCH_SESSION: tuple[LiteralString, ...] = (
    "set enable_bitmapscan = off",
    "set enable_seqscan = off",
)


class QueueSQL:
    """The runtime's hot-path statements, composed once per schema."""

    def __init__(self, schema: Schema, *, history: bool = False) -> None:
        self.tokens_seq = f'"{schema.name}".lock_tokens'  # a validated identifier
        # One statement: pick runnable jobs (serial queues must be free), keep at most one per
        # queue, lock the chosen queues and jobs. The pool must still be active: a pool that
        # others declared dead or evicted cannot take new work even if it does not know yet.
        self.fetch = schema.q(
            """with candidates as (
                   select j.id, j.queue_name, j.priority, j.run_at from {s}.jobs j
                   where j.locked_by is null and j.attempts < j.max_attempts
                     and j.run_at <= now() and j.task_identifier = any(%(tasks)s)
                     and (j.queue_name is null or exists (
                         select 1 from {s}.job_queues q
                         where q.queue_name = j.queue_name and q.locked_by is null
                         for update skip locked))
                     and exists (select 1 from {s}.pools p
                                 where p.pool_id = %(pool)s and p.state = %(active)s
                                   and p.heartbeat_at > now() - make_interval(
                                       secs => %(threshold)s)
                                 for share)
                   order by j.priority, j.run_at, j.id
                   limit %(limit)s
                   for update of j skip locked
               ), chosen as (
                   select id, queue_name from (
                       select c.id, c.queue_name, row_number() over (
                           partition by c.queue_name order by c.priority, c.run_at, c.id) as rn
                       from candidates c) ranked
                   where queue_name is null or rn = 1
               ), queues as (
                   update {s}.job_queues q set locked_by = %(pool)s, locked_at = now()
                   from chosen where q.queue_name = chosen.queue_name
                   returning q.queue_name
               )
               update {s}.jobs j set locked_by = %(pool)s, locked_at = now(),
                   attempts = j.attempts + 1, updated_at = now(),
                   lock_token = nextval(%(tokens_seq)s::regclass)
               where j.id = any(array(select id from chosen))
               returning j.id, j.task_identifier, j.payload, j.queue_name, j.priority,
                         j.run_at, j.attempts, j.max_attempts, j.key, j.lock_token"""
        )
        self._active = PoolState.ACTIVE
        # (A pool whose own heartbeat is older than the threshold is not live to others:
        # it must not take work either, whatever it believes about itself.) The chosen ids
        # as an array: joined as a CTE, the planner expects few rows and past a few hundred
        # it scans the whole table (3.5 ms of a 15 ms fetch of 500 from 20,000 queued).
        # With a history window (core/0005), the completed attempt is recorded in the same
        # statement that deletes it: no completion without its history row, nor the reverse.
        self.complete = (
            _fenced(schema, "delete from {s}.jobs where {fence}", also=_RECORD_HISTORY)
            if history
            else _fenced(schema, "delete from {s}.jobs where {fence}")
        )
        self.fail = _fenced(
            schema,
            """update {s}.jobs set locked_by = null, locked_at = null, last_error = %(error)s,
                   run_at = now() + make_interval(secs => %(delay)s),
                   attempts = case when %(permanent)s then max_attempts else attempts end,
                   updated_at = now()
               where id = %(id)s and locked_by = %(pool)s and lock_token = %(token)s""",
        )
        # Jobs fetched ahead into the local queue and never started, handed back: their
        # fetch took an attempt that did not happen, so it is returned; they keep their place.
        self.unfetch = _fenced(
            schema,
            """update {s}.jobs set locked_by = null, locked_at = null,
                   attempts = greatest(attempts - 1, 0), updated_at = now()
               where {fence}""",
        )
        # Give attempts back unrecorded (the worker cancelled them when its lease ran out):
        # they end as any interrupted attempt does, by their task's orphan policy.
        self.release = _fenced(schema, "update {s}.jobs j set {interrupted} where {fence}")

    def fetch_params(
        self, pool_id: str, tasks: Sequence[str], limit: int, threshold_s: float
    ) -> dict[str, Any]:
        """The parameters of `fetch` (also for EXPLAINs of it, in tests and benchmarks)."""
        return {"tasks": list(tasks), "active": self._active, "pool": pool_id, "limit": limit,
                "threshold": threshold_s, "tokens_seq": self.tokens_seq}  # fmt: skip


# Fenced on the attempt: only the pool that holds the lock, and only for the attempt it
# fetched (tokens are unique), may finish, fail or give back a job.
_MANY_ATTEMPTS = "id = any(%(ids)s) and locked_by = %(pool)s and lock_token = any(%(tokens)s)"


_RECORD_HISTORY = """history as (
    insert into {s}.job_history (id, task_identifier, queue_name, payload, priority, attempts,
                                 key, pool_id, created_at)
    select id, task_identifier, queue_name, payload, priority, attempts, key, %(pool)s::uuid,
           created_at
    from touched),"""


def _fenced(schema: Schema, change: LiteralString, *, also: LiteralString = "") -> sql.Composed:
    """`change` (a delete or update of this pool's attempts; `{fence}` says which), then
    the serial queues of the jobs it touched unlocked; returns the ids touched (the others
    were taken from us). `also`: one more statement over `touched` (the history)."""
    return sql.SQL(
        """with touched as ({change} returning {returning}), {also}
           queues as (update {s}.job_queues q set locked_by = null, locked_at = null
                      from touched where q.queue_name = touched.queue_name
                        and q.locked_by = %(pool)s)
           select id from touched"""
    ).format(
        returning=sql.SQL("*" if also else "id, queue_name"),
        also=sql.SQL(also).format(s=schema.ident),
        change=sql.SQL(change).format(
            s=schema.ident,
            fence=sql.SQL(_MANY_ATTEMPTS),
            interrupted=sql.SQL(INTERRUPTED_ATTEMPT).format(s=schema.ident),
        ),
        s=schema.ident,
    )


async def fetch_jobs(
    conn: psycopg.AsyncConnection,
    q: QueueSQL,
    pool_id: str,
    tasks: list[str],
    limit: int,
    *,
    threshold_s: float = 60.0,
) -> list[Job]:
    cur = await conn.execute(q.fetch, q.fetch_params(pool_id, tasks, limit, threshold_s))
    rows = await cur.fetchall()
    jobs = [Job(*row) for row in rows]
    jobs.sort(key=lambda j: (j.priority, j.run_at, j.id))
    return jobs


def attempt_params(jobs: Sequence[Job], pool_id: str) -> dict[str, Any]:
    """Parameters of `complete` and `release`: the attempts, fenced by their tokens."""
    return {"ids": [j.id for j in jobs], "tokens": [j.lock_token for j in jobs], "pool": pool_id}


async def complete_jobs(
    conn: psycopg.AsyncConnection, q: QueueSQL, pool_id: str, jobs: Sequence[Job]
) -> set[int]:
    """Returns the ids actually completed; the others were taken from us (fencing)."""
    cur = await conn.execute(q.complete, attempt_params(jobs, pool_id))
    return {r[0] for r in await cur.fetchall()}


def storable_text(text: str) -> str:
    """What PostgreSQL's text type accepts, every time: no NUL byte, valid UTF-8 (a lone
    surrogate from a decoding error would make every attempt to record it fail), bounded."""
    cleaned = text.replace("\x00", "\\x00")
    cleaned = cleaned.encode("utf-8", "backslashreplace").decode("utf-8")
    return cleaned[:MAX_ERROR_LENGTH]


async def fail_job(
    conn: psycopg.AsyncConnection,
    q: QueueSQL,
    pool_id: str,
    job: Job,
    error: str,
    delay_s: float,
    *,
    permanent: bool = False,
) -> bool:
    cur = await conn.execute(
        q.fail,
        {
            "id": job.id,
            "token": job.lock_token,
            "pool": pool_id,
            "error": storable_text(error),
            "delay": delay_s,
            "permanent": permanent,
        },
    )
    return (await cur.fetchone()) is not None


def backoff_seconds(attempts: int, base_s: float, cap_s: float) -> float:
    """Exponential back-off after the `attempts`-th failed attempt: base, 2*base, 4*base..."""
    if attempts < 1:
        return base_s
    exponent = min(attempts - 1, 62)
    return float(min(cap_s, base_s * (2**exponent)))
