"""Queue semantics against a real PostgreSQL: ordering, serial queues, retries, job keys,
fencing. These drive the queue functions directly with a registered pool."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from fleet_worker.catalog import Catalog
from fleet_worker.db import Schema
from fleet_worker.errors import InvalidJobError
from fleet_worker.pools import PoolIdentity, heartbeat, register_pool
from fleet_worker.queue import (
    ANALYZE_BATCH_ROWS,
    FETCH_SESSION,
    Job,
    JobSpec,
    QueueSQL,
    add_job,
    add_jobs,
    complete_jobs,
    fail_job,
    fetch_jobs,
)
from fleet_worker.recovery import sweep
from fleet_worker.runtime import LazyConnection
from tests.helpers import q

pytestmark = pytest.mark.integration
TASKS = ["a", "b"]


def new_pool(conn: psycopg.Connection, schema: Schema) -> str:
    who = PoolIdentity.from_env(fleet="test", version="1")
    pool = register_pool(
        conn,
        schema,
        who,
        Catalog.load(),
        mode="self",
        concurrency=10,
        heartbeat_interval_s=10,
        sweep_threshold_s=60,
    )
    heartbeat(conn, schema, pool, running_jobs=0, state="active")
    return pool


def fetch(
    url: str, schema: Schema, pool: str, limit: int = 10, tasks: list[str] | None = None
) -> list[Job]:
    async def go() -> list[Job]:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as c:
            return await fetch_jobs(c, QueueSQL(schema), pool, tasks or TASKS, limit)

    return asyncio.run(go())


def complete(url: str, schema: Schema, pool: str, jobs: list[Job]) -> set[int]:
    async def go() -> set[int]:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as c:
            return await complete_jobs(c, QueueSQL(schema), pool, jobs)

    return asyncio.run(go())


def fail(
    url: str, schema: Schema, pool: str, job: Job, delay: float, permanent: bool = False
) -> bool:
    async def go() -> bool:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as c:
            return await fail_job(
                c, QueueSQL(schema), pool, job, "boom", delay, permanent=permanent
            )

    return asyncio.run(go())


def test_fetch_orders_by_priority_then_run_at(
    conn: psycopg.Connection, schema: Schema, database_url: str
) -> None:
    now = datetime.now(UTC)
    late = add_job(conn, JobSpec("a", run_at=now - timedelta(seconds=1)), schema)
    early = add_job(conn, JobSpec("a", run_at=now - timedelta(seconds=10)), schema)
    urgent = add_job(conn, JobSpec("b", priority=-5), schema)
    future = add_job(conn, JobSpec("a", run_at=now + timedelta(hours=1)), schema)
    pool = new_pool(conn, schema)
    jobs = fetch(database_url, schema, pool)
    assert [j.id for j in jobs] == [urgent, early, late]
    assert future not in {j.id for j in jobs}
    assert all(j.attempts == 1 for j in jobs)


def test_only_known_tasks_are_fetched(
    conn: psycopg.Connection, schema: Schema, database_url: str
) -> None:
    unknown = add_job(conn, JobSpec("not_mine"), schema)
    pool = new_pool(conn, schema)
    assert fetch(database_url, schema, pool) == []
    row = q(conn, schema.name, "select locked_by, attempts from {s}.jobs where id = %s", [unknown])
    assert row == [(None, 0)]


def test_named_queue_runs_one_job_at_a_time(
    conn: psycopg.Connection, schema: Schema, database_url: str
) -> None:
    first, second = add_jobs(conn, [JobSpec("a", queue="q1"), JobSpec("a", queue="q1")], schema)
    other = add_job(conn, JobSpec("a", queue="q2"), schema)
    free = add_job(conn, JobSpec("b"), schema)
    pool = new_pool(conn, schema)
    fetched = fetch(database_url, schema, pool)
    assert {j.id for j in fetched} == {first, other, free}
    # The queue stays locked while its job runs, so a second fetch finds nothing of it.
    assert fetch(database_url, schema, new_pool(conn, schema)) == []
    assert complete(database_url, schema, pool, [j for j in fetched if j.id == first]) == {first}
    assert [j.id for j in fetch(database_url, schema, pool)] == [second]


def test_skip_locked_never_hands_a_job_to_two_pools(
    conn: psycopg.Connection, schema: Schema, database_url: str
) -> None:
    ids = add_jobs(conn, [JobSpec("a") for _ in range(200)], schema)
    pools = [new_pool(conn, schema) for _ in range(4)]

    async def grab(pool: str) -> list[int]:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as c:
            out: list[int] = []
            while True:
                jobs = await fetch_jobs(c, QueueSQL(schema), pool, TASKS, 7)
                if not jobs:
                    return out
                out += [j.id for j in jobs]

    async def all_pools() -> list[list[int]]:
        return await asyncio.gather(*(grab(p) for p in pools))

    taken = asyncio.run(all_pools())
    flat = [i for chunk in taken for i in chunk]
    assert sorted(flat) == sorted(ids)
    assert len(flat) == len(set(flat))


def test_failure_retries_with_backoff_then_fails_permanently(
    conn: psycopg.Connection, schema: Schema, database_url: str
) -> None:
    job = add_job(conn, JobSpec("a", max_attempts=2), schema)
    pool = new_pool(conn, schema)
    [j] = fetch(database_url, schema, pool)
    assert fail(database_url, schema, pool, j, delay=3600)
    row = q(
        conn,
        schema.name,
        "select attempts, last_error, run_at > now() + interval '59 min', "
        "locked_by from {s}.jobs where id = %s",
        [job],
    )
    assert row == [(1, "boom", True, None)]
    assert fetch(database_url, schema, pool) == []  # backing off
    q(conn, schema.name, "update {s}.jobs set run_at = now() returning id")
    [j] = fetch(database_url, schema, pool)
    assert j.attempts == 2
    assert fail(database_url, schema, pool, j, delay=0)
    assert fetch(database_url, schema, pool) == []  # attempts exhausted
    # Permanently failed jobs stay inspectable.
    row = q(conn, schema.name, "select attempts, max_attempts, last_error from {s}.jobs")
    assert row == [(2, 2, "boom")]


def test_permanent_failure_skips_the_remaining_attempts(
    conn: psycopg.Connection, schema: Schema, database_url: str
) -> None:
    add_job(conn, JobSpec("a", max_attempts=10), schema)
    pool = new_pool(conn, schema)
    [j] = fetch(database_url, schema, pool)
    assert fail(database_url, schema, pool, j, delay=0, permanent=True)
    assert q(conn, schema.name, "select attempts, max_attempts from {s}.jobs") == [(10, 10)]


def test_job_key_replaces_a_waiting_job(
    conn: psycopg.Connection, schema: Schema, database_url: str
) -> None:
    first = add_job(conn, JobSpec("a", payload={"v": 1}, job_key="k"), schema)
    second = add_job(conn, JobSpec("b", payload={"v": 2}, job_key="k"), schema)
    assert first == second
    rows = q(conn, schema.name, "select task_identifier, payload from {s}.jobs")
    assert rows == [("b", {"v": 2})]


def test_job_key_of_a_running_job_goes_to_a_new_job(
    conn: psycopg.Connection, schema: Schema, database_url: str
) -> None:
    first = add_job(conn, JobSpec("a", payload={"v": 1}, job_key="k"), schema)
    pool = new_pool(conn, schema)
    [running] = fetch(database_url, schema, pool)
    assert running.id == first
    second = add_job(conn, JobSpec("a", payload={"v": 2}, job_key="k"), schema)
    assert second != first
    rows = q(conn, schema.name, "select id, key, payload from {s}.jobs order by id")
    assert rows == [(first, None, {"v": 1}), (second, "k", {"v": 2})]


def test_add_job_from_sql(conn: psycopg.Connection, schema: Schema, database_url: str) -> None:
    q(conn, schema.name, "select {s}.add_job('a', '{{\"x\": 1}}', queue_name => 'sqlq')")
    pool = new_pool(conn, schema)
    [job] = fetch(database_url, schema, pool)
    assert (job.task_identifier, job.payload, job.queue_name) == ("a", {"x": 1}, "sqlq")


def test_stale_completion_after_a_sweep_is_rejected(
    conn: psycopg.Connection, schema: Schema, database_url: str
) -> None:
    job = add_job(conn, JobSpec("a"), schema)
    stale = new_pool(conn, schema)
    [taken] = fetch(database_url, schema, stale)
    assert taken.id == job
    # The pool stops heartbeating; the sweep declares it dead and frees the job.
    q(
        conn,
        schema.name,
        "update {s}.pools set heartbeat_at = now() - interval '1 hour' "
        "where pool_id = %s returning 1",
        [stale],
    )
    result = sweep(conn, schema, threshold_s=60)
    assert result.ran and result.dead_pools == [stale] and result.released_jobs == 1
    fresh = new_pool(conn, schema)
    [again] = fetch(database_url, schema, fresh)
    assert again.id == job and again.attempts == 2
    # The stale worker finishes late: rejected, the job stays with the fresh pool.
    assert complete(database_url, schema, stale, [taken]) == set()
    assert not fail(database_url, schema, stale, taken, delay=0)
    assert q(conn, schema.name, "select locked_by::text from {s}.jobs") == [(fresh,)]
    # Nor can the fresh pool finish with the stale attempt's token.
    assert complete(database_url, schema, fresh, [taken]) == set()
    assert complete(database_url, schema, fresh, [again]) == {job}
    # A dead pool cannot take new work either, even before it learns it is dead.
    add_job(conn, JobSpec("a"), schema)
    assert fetch(database_url, schema, stale) == []


def test_sweep_runs_one_at_a_time(
    conn: psycopg.Connection, schema: Schema, database_url: str
) -> None:
    with psycopg.connect(database_url, autocommit=True) as other, other.transaction():
        other.execute("select pg_advisory_xact_lock(hashtext(%s))", [schema.lock_key("sweep")])
        assert not sweep(conn, schema, threshold_s=60).ran
    assert sweep(conn, schema, threshold_s=60).ran


def test_a_pool_with_a_stale_heartbeat_cannot_fetch(
    conn: psycopg.Connection, schema: Schema, database_url: str
) -> None:
    add_job(conn, JobSpec("a"), schema)
    pool = new_pool(conn, schema)
    q(conn, schema.name, "update {s}.pools set heartbeat_at = now() - interval '2 minutes' "
      "where pool_id = %s returning 1", [pool])  # fmt: skip
    # Still 'active' in its own row, but not live to anyone else: it must not take work.
    assert fetch(database_url, schema, pool) == []
    heartbeat(conn, schema, pool, running_jobs=0)
    assert len(fetch(database_url, schema, pool)) == 1


def test_a_replayed_failure_cannot_release_a_later_attempt(
    conn: psycopg.Connection, schema: Schema, database_url: str
) -> None:
    """A failure whose commit landed but whose answer was lost is retried: the retry must
    not unlock the next attempt of the same job by the same pool."""
    job_id = add_job(conn, JobSpec("a"), schema)
    pool = new_pool(conn, schema)
    [first] = fetch(database_url, schema, pool)
    assert fail(database_url, schema, pool, first, 0)
    [second] = fetch(database_url, schema, pool)
    assert second.id == job_id and second.attempts == 2
    assert not fail(database_url, schema, pool, first, 0)  # the replay of attempt 1
    [(locked_by, attempts)] = q(conn, schema.name, "select locked_by, attempts from {s}.jobs")
    assert str(locked_by) == pool and attempts == 2


def test_add_jobs_returns_each_specs_id_in_order_keyed_or_not(
    conn: psycopg.Connection, schema: Schema
) -> None:
    """Keyless specs go in one statement, keyed ones through add_job(): the ids still line
    up with the specs, every field lands, and a key still replaces its waiting job."""
    later = datetime(2030, 1, 1, tzinfo=UTC)
    old = add_job(conn, JobSpec("a", {"v": "old"}, job_key="k1"), schema)
    specs = [
        JobSpec("a", {"n": 0}),
        JobSpec("b", {"n": 1}, queue="fresh-queue", priority=-3),
        JobSpec("a", {"v": "new"}, job_key="k1", max_attempts=2),
        JobSpec("b", None, run_at=later, max_attempts=7),
        JobSpec("a", {"n": 4}, job_key="k2"),
        *(JobSpec("a", {"n": i}) for i in range(5, 300)),
    ]
    ids = add_jobs(conn, specs, schema)
    assert len(ids) == len(specs) == len(set(ids))
    assert ids[2] == old  # replaced by key, same row
    rows = {
        r[0]: r[1:]
        for r in q(
            conn,
            schema.name,
            "select id, task_identifier, payload, queue_name, priority, run_at, max_attempts, "
            "key from {s}.jobs",
        )
    }
    for job_id, spec in zip(ids, specs, strict=True):
        task, payload, queue, priority, run_at, max_attempts, key = rows[job_id]
        assert (task, payload, queue, key) == (spec.task, spec.payload or {}, spec.queue,
                                               spec.job_key)  # fmt: skip
        assert priority == (spec.priority or 0) and max_attempts == (spec.max_attempts or 25)
        if spec.run_at is not None:
            assert run_at == spec.run_at
    assert q(conn, schema.name, "select queue_name from {s}.job_queues") == [("fresh-queue",)]


def test_add_jobs_refuses_a_bad_spec_and_adds_none(
    conn: psycopg.Connection, schema: Schema
) -> None:
    with pytest.raises(InvalidJobError):
        add_jobs(conn, [JobSpec("a"), JobSpec("a", {"x": object()})], schema)
    with pytest.raises(InvalidJobError):
        add_jobs(conn, [JobSpec("a"), JobSpec("")], schema)
    assert q(conn, schema.name, "select count(*) from {s}.jobs") == [(0,)]


def test_a_bulk_load_into_an_unanalysed_queue_analyses_it_once(
    conn: psycopg.Connection, schema: Schema
) -> None:
    """Right after a bulk load into a table never analysed, the planner believes the queue
    empty and fetches by reading and sorting every runnable row; the first large add_jobs()
    analyses it, later ones (the planner scales from there) do not."""
    stats = (
        "select analyze_count from pg_stat_user_tables where schemaname = %s and relname = 'jobs'"
    )
    add_jobs(conn, [JobSpec("a") for _ in range(100)], schema)
    assert conn.execute(stats, [schema.name]).fetchone() == (0,)
    add_jobs(conn, [JobSpec("a") for _ in range(ANALYZE_BATCH_ROWS)], schema)
    assert conn.execute(stats, [schema.name]).fetchone() == (1,)
    add_jobs(conn, [JobSpec("a") for _ in range(ANALYZE_BATCH_ROWS)], schema)
    assert conn.execute(stats, [schema.name]).fetchone() == (1,)
    plan = "\n".join(
        r[0]
        for r in q(
            conn, schema.name,
            "explain select id from {s}.jobs where locked_by is null and attempts < max_attempts"
            " and run_at <= now() order by priority, run_at, id limit 100",
        )
    )  # fmt: skip
    assert "Bitmap" not in plan and "jobs_fetch_idx" in plan, plan


def test_the_workers_fetch_walks_the_index_whatever_the_statistics(
    conn: psycopg.Connection, schema: Schema, database_url: str
) -> None:
    """A new table filled by small enqueues has no statistics until autovacuum's first
    analyze: the planner takes it for nearly empty and fetches by a bitmap scan that reads and
    sorts every runnable row. On the worker's fetch connection the plan walks the index."""
    conn.execute(schema.q("alter table {s}.jobs set (autovacuum_enabled = false)"))
    conn.execute(schema.q("select {s}.add_job('a') from generate_series(1, 20000)"))
    assert q(conn, schema.name, "select reltuples from pg_class where oid = '{s}.jobs'::regclass"
             ) == [(-1.0,)]  # fmt: skip
    pool = new_pool(conn, schema)
    sql_ = QueueSQL(schema)
    params = sql_.fetch_params(pool, TASKS, 500, 60.0)

    async def plan() -> str:
        fetch_conn = LazyConnection(database_url, FETCH_SESSION)  # as the runtime opens it
        try:
            c = await fetch_conn.get()
            async with c.transaction(force_rollback=True):
                cur = await c.execute(
                    psycopg.sql.SQL("explain (analyze, costs off, timing off) ") + sql_.fetch,
                    params,
                )
                return "\n".join(str(r[0]) for r in await cur.fetchall())
        finally:
            await fetch_conn.drop()

    text = asyncio.run(plan())
    assert "Index Scan using jobs_fetch_idx" in text and "Bitmap" not in text, text
    assert "Seq Scan" not in text, text
