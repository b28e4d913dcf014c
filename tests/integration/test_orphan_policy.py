"""The per-task orphan policy against a real PostgreSQL: an attempt of an `on_orphan="fail"`
task whose worker went away is failed for good by every path that gives jobs back (the
sweep, the operator's release after a pod ended, a forced eviction, the worker's own
shutdown, unlock-orphans), while the other tasks' attempts run again."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from fleet_worker.catalog import Catalog
from fleet_worker.db import Schema
from fleet_worker.exit_codes import ExitCode
from fleet_worker.migrate import activate, evict_outdated_pools, migrate
from fleet_worker.pools import PoolIdentity, declare_dead, register_pool
from fleet_worker.queue import JobSpec, add_jobs
from fleet_worker.recovery import sweep, unlock_orphans
from tests.helpers import FAST, TcpProxy, WorkerProcess, q, wait_for
from tests.integration.test_leases import make_spans, spans
from tests.integration.test_queue import fetch
from tests.integration.test_worker_process import V1, install, remaining

pytestmark = pytest.mark.integration
FAILED_FOR_GOOD = 'not retried: its task has on_orphan="fail"'


def job_rows(conn: psycopg.Connection, schema: str) -> dict[int, tuple[object, ...]]:
    rows = q(
        conn,
        schema,
        "select id, locked_by, attempts, max_attempts, last_error from {s}.jobs order by id",
    )
    return {int(r[0]): tuple(r[1:]) for r in rows}


def pool_holding(
    conn: psycopg.Connection, url: str, schema: Schema, *, fail_tasks: list[str]
) -> tuple[str, int, int]:
    """A registered, activated pool (threshold 60 s) that fetched one `a` and one `b` job."""
    pool = register_pool(
        conn, schema, PoolIdentity.from_env(fleet="t", version="1"), Catalog.load(),
        mode="self", concurrency=2, heartbeat_interval_s=10, sweep_threshold_s=60,
    )  # fmt: skip
    catalog = Catalog.load()
    assert activate(conn, schema, catalog, pool, orphan_fail_tasks=fail_tasks).compatible
    a, b = add_jobs(conn, [JobSpec("a"), JobSpec("b", queue="serial")], schema)
    assert {j.id for j in fetch(url, schema, pool)} == {a, b}
    return pool, a, b


def _sweep(conn: psycopg.Connection, schema: Schema, pool: str) -> None:
    q(
        conn,
        schema.name,
        "update {s}.pools set heartbeat_at = now() - interval '2 minutes' returning 1",
    )
    assert sweep(conn, schema, 60).dead_pools == [pool]


def _declare_dead(conn: psycopg.Connection, schema: Schema, pool: str) -> None:
    assert declare_dead(conn, schema, [pool], "its pod ended (exit code 137)") == [pool]


def _evict(conn: psycopg.Connection, schema: Schema, pool: str) -> None:
    # The pool's catalog lacks app/0001: a breaking migration past maxMigrationWaitTime.
    q(conn, schema.name, "update {s}.pools set catalog = '[]'::jsonb returning 1")
    with conn.transaction():
        assert evict_outdated_pools(conn, schema, "app/0001", 60, "evicted: waited 10m") == [pool]


def _unlock_orphans(conn: psycopg.Connection, schema: Schema, pool: str) -> None:
    q(conn, schema.name, "update {s}.pools set state = 'stopped' returning 1")
    report = unlock_orphans(conn, schema, dry_run=False)
    assert len(report.jobs) == 2 and report.queues == ["serial"]


RELEASERS: dict[str, Callable[[psycopg.Connection, Schema, str], None]] = {
    "sweep": _sweep,
    "operator's release after the pod ended": _declare_dead,
    "forced eviction": _evict,
    "unlock-orphans": _unlock_orphans,
}


@pytest.mark.parametrize("release", RELEASERS.values(), ids=list(RELEASERS))
def test_every_release_path_fails_the_orphans_of_a_fail_task_and_retries_the_rest(
    conn: psycopg.Connection,
    schema_name: str,
    database_url: str,
    release: Callable[[psycopg.Connection, Schema, str], None],
) -> None:
    schema = Schema(schema_name)
    migrate(conn, schema, Catalog.load())
    pool, a, b = pool_holding(conn, database_url, schema, fail_tasks=["b"])
    release(conn, schema, pool)
    rows = job_rows(conn, schema_name)
    locked_a, attempts_a, _, error_a = rows[a]
    assert locked_a is None and attempts_a == 1 and FAILED_FOR_GOOD not in str(error_a)
    locked_b, attempts_b, max_b, error_b = rows[b]
    assert locked_b is None and attempts_b == max_b and FAILED_FOR_GOOD in str(error_b)
    # The failed job gave its serial queue back: the queue's next job can run.
    assert q(conn, schema_name, "select locked_by from {s}.job_queues") == [(None,)]
    other = register_pool(
        conn, schema, PoolIdentity.from_env(fleet="t", version="1"), Catalog.load(),
        mode="self", concurrency=2, heartbeat_interval_s=10, sweep_threshold_s=60,
    )  # fmt: skip
    activate(conn, schema, Catalog.load(), other)
    assert [j.id for j in fetch(database_url, schema, other)] == [a]


def test_a_schema_before_the_policy_is_released_as_before(
    conn: psycopg.Connection, schema_name: str, database_url: str
) -> None:
    """An operator of this release releasing the pools of a fleet whose schema stops at
    core/0002 (no orphan_fail_tasks column): every attempt is retried, nothing errors."""
    schema = Schema(schema_name)
    migrate(conn, schema, Catalog.load(), to="core/0002")
    pool = register_pool(
        conn, schema, PoolIdentity.from_env(fleet="t", version="0"), Catalog.load(),
        mode="self", concurrency=2, heartbeat_interval_s=10, sweep_threshold_s=60,
    )  # fmt: skip
    q(conn, schema_name, "update {s}.pools set state = 'active' returning 1")
    [job] = add_jobs(conn, [JobSpec("b")], schema)
    assert [j.id for j in fetch(database_url, schema, pool)] == [job]
    assert declare_dead(conn, schema, [pool], "its pod ended") == [pool]
    assert job_rows(conn, schema_name)[job][:2] == (None, 1)


def test_a_killed_worker_s_charge_is_failed_and_its_other_work_runs_again(
    conn: psycopg.Connection, schema_name: str, database_url: str, tmp_path: Path
) -> None:
    """SIGKILL mid-attempt; another worker's sweep finds the pool dead after the threshold."""
    s = install(conn, schema_name)
    make_spans(conn, schema_name)
    charge, other = add_jobs(
        conn, [JobSpec("charge", {"s": 30}), JobSpec("span_cooperative", {"s": 30})], s
    )
    victim = WorkerProcess(database_url, schema_name, V1, tmp_path, *FAST)
    rescuer: WorkerProcess | None = None
    try:
        wait_for(lambda: len(spans(conn, schema_name)) == 2, what="both jobs started")
        victim.kill()
        q(conn, schema_name, "update {s}.jobs set payload = '{{\"s\": 0}}' returning id")
        rescuer = WorkerProcess(database_url, schema_name, V1, tmp_path, *FAST)
        wait_for(lambda: remaining(conn, schema_name) == 1, timeout=30, what="the retry done")
        rescuer.signal(signal.SIGTERM)
        assert rescuer.wait() == ExitCode.OK
    finally:
        for w in (victim, rescuer):
            if w is not None:
                w.stop()
    runs = [job for job, _, _ in spans(conn, schema_name)]
    assert sorted(runs) == sorted([charge, other, other])  # the charge never ran again
    locked, attempts, max_attempts, error = job_rows(conn, schema_name)[charge]
    assert locked is None and attempts == max_attempts
    assert "stopped heartbeating" in str(error) and FAILED_FOR_GOOD in str(error)


def test_a_charge_cut_by_the_shutdown_is_failed_not_released(
    conn: psycopg.Connection, schema_name: str, database_url: str, tmp_path: Path
) -> None:
    s = install(conn, schema_name)
    make_spans(conn, schema_name)
    charge, other = add_jobs(
        conn, [JobSpec("charge", {"s": 60}), JobSpec("span_cooperative", {"s": 60})], s
    )
    args = [*FAST, "--graceful-shutdown-timeout", "0.5s"]
    worker = WorkerProcess(database_url, schema_name, V1, tmp_path, *args)
    try:
        wait_for(lambda: len(spans(conn, schema_name)) == 2, what="both jobs started")
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=15) == ExitCode.OK
    finally:
        worker.stop()
    rows = job_rows(conn, schema_name)
    assert rows[charge][:2] == (None, rows[charge][2]) and FAILED_FOR_GOOD in str(rows[charge][3])
    assert rows[other][:2] == (None, 1) and "shut down" in str(rows[other][3])
    assert FAILED_FOR_GOOD not in str(rows[other][3])


def test_a_worker_cut_off_gives_back_its_charge_failed_when_the_database_returns(
    conn: psycopg.Connection, schema_name: str, database_url: str, tmp_path: Path
) -> None:
    """Both jobs stop when asked (their spans end through LEDGER_URL, which the cut spares);
    the worker gives them back itself once its heartbeat lands again, before anyone swept."""
    s = install(conn, schema_name)
    make_spans(conn, schema_name)
    charge, other = add_jobs(
        conn, [JobSpec("charge", {"s": 30}), JobSpec("span_cooperative", {"s": 30})], s
    )
    proxy = TcpProxy.for_url(database_url)
    worker = WorkerProcess(
        proxy.url(database_url), schema_name, V1, tmp_path, *FAST,
        env={"LEDGER_URL": database_url},
    )  # fmt: skip
    try:
        wait_for(lambda: len(spans(conn, schema_name)) == 2, what="both jobs started")
        q(conn, schema_name, "update {s}.jobs set payload = '{{\"s\": 0}}' returning id")
        proxy.cut()
        wait_for(lambda: "cancelling 2 running job(s)" in worker.log(), what="self-fencing")
        wait_for(
            lambda: [o for _, _, o in spans(conn, schema_name)] == ["cancelled", "cancelled"],
            what="both executions stopped",
        )
        proxy.restore()
        wait_for(lambda: "gave back 2 job(s)" in worker.log(), what="the give-back")
        wait_for(lambda: remaining(conn, schema_name) == 1, what="the retry done")
        worker.signal(signal.SIGTERM)
        assert worker.wait() == ExitCode.OK
    finally:
        proxy.close()
        worker.stop()
    assert sorted(j for j, _, _ in spans(conn, schema_name)) == sorted([charge, other, other])
    locked, attempts, max_attempts, error = job_rows(conn, schema_name)[charge]
    assert locked is None and attempts == max_attempts
    assert "lost the database" in str(error) and FAILED_FOR_GOOD in str(error)
    assert q(conn, schema_name, "select count(*) from {s}.pools where state = 'dead'") == [(0,)]


def test_unlock_orphans_frees_what_pool_less_workers_held_and_spares_live_pools(
    conn: psycopg.Connection, schema_name: str, database_url: str
) -> None:
    schema = Schema(schema_name)
    migrate(conn, schema, Catalog.load())
    live, a, b = pool_holding(conn, database_url, schema, fail_tasks=["b"])
    [old] = add_jobs(conn, [JobSpec("b", queue="legacy")], schema)
    stranger = "00000000-0000-4000-8000-000000000001"  # a worker that never registered
    q(conn, schema_name, "update {s}.jobs set locked_by = %s where id = %s returning 1",
      [stranger, old])  # fmt: skip
    q(conn, schema_name, "update {s}.job_queues set locked_by = %s where queue_name = 'legacy' "
      "returning 1", [stranger])  # fmt: skip
    assert unlock_orphans(conn, schema, dry_run=True).jobs == [old]
    assert job_rows(conn, schema_name)[old][0] is not None  # a dry run changes nothing
    report = unlock_orphans(conn, schema, dry_run=False)
    assert report.jobs == [old] and report.queues == ["legacy"]
    rows = job_rows(conn, schema_name)
    assert rows[old][:2] == (None, 0)  # no pool row, no policy: runnable again
    assert str(rows[a][0]) == live and str(rows[b][0]) == live
