"""Job admin and history against a real PostgreSQL: the derived job states, the SQL admin
functions and their refusal to touch running jobs, unlocking a pool, the completed-job
history a worker records and prunes, and `fleet-worker jobs` as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from fleet_worker import admin
from fleet_worker.catalog import Catalog
from fleet_worker.db import Schema
from fleet_worker.errors import AdminError
from fleet_worker.exit_codes import ExitCode
from fleet_worker.migrate import activate
from fleet_worker.pools import PoolIdentity, register_pool
from fleet_worker.protocol import JobState
from fleet_worker.queue import JobSpec, add_jobs
from fleet_worker.recovery import sweep
from fleet_worker.retention import prune_history
from tests.helpers import FAST, WorkerProcess, q, wait_for
from tests.integration.test_queue import fail, fetch
from tests.integration.test_worker_process import V1, install, remaining

pytestmark = pytest.mark.integration


def active_pool(conn: psycopg.Connection, schema: Schema, fail_tasks: list[str] = ()) -> str:  # type: ignore[assignment]
    pool = register_pool(
        conn, schema, PoolIdentity.from_env(fleet="t", version="1"), Catalog.load(),
        mode="self", concurrency=5, heartbeat_interval_s=10, sweep_threshold_s=60,
    )  # fmt: skip
    activate(conn, schema, Catalog.load(), pool, orphan_fail_tasks=list(fail_tasks))
    return pool


def states(conn: psycopg.Connection, schema: Schema) -> dict[int, str]:
    return {r["id"]: r["state"] for r in admin.list_jobs(conn, schema, limit=100)}


def test_each_job_has_one_state_and_the_list_filters_by_it(
    conn: psycopg.Connection, schema: Schema, database_url: str
) -> None:
    later = datetime.now(UTC) + timedelta(hours=1)
    running, retrying, failed, scheduled, waiting = add_jobs(
        conn, [JobSpec("a"), JobSpec("a"), JobSpec("a", max_attempts=1),
               JobSpec("b", run_at=later, queue="q1"), JobSpec("b", queue="q2")], schema,
    )  # fmt: skip
    pool = active_pool(conn, schema)
    jobs = {j.id: j for j in fetch(database_url, schema, pool, tasks=["a"])}
    assert fail(database_url, schema, pool, jobs[retrying], delay=600)
    assert fail(database_url, schema, pool, jobs[failed], delay=0)
    assert states(conn, schema) == {
        running: "running", retrying: "retrying", failed: "failed", scheduled: "scheduled",
        waiting: "waiting",
    }  # fmt: skip
    assert [r["id"] for r in admin.list_jobs(conn, schema, state=JobState.FAILED)] == [failed]
    assert [r["id"] for r in admin.list_jobs(conn, schema, task="b")] == [waiting, scheduled]
    assert [r["id"] for r in admin.list_jobs(conn, schema, queue="q1")] == [scheduled]
    shown = admin.show_job(conn, schema, running)
    assert shown is not None and shown["pool"]["pool_id"] == pool
    assert shown["pool"]["state"] == "active"


def test_admin_changes_spare_running_jobs_and_say_why(
    conn: psycopg.Connection, schema: Schema, database_url: str
) -> None:
    running, failed, waiting = add_jobs(
        conn, [JobSpec("a"), JobSpec("b", max_attempts=1), JobSpec("b", run_at=None)], schema
    )
    pool = active_pool(conn, schema)
    [run] = fetch(database_url, schema, pool, tasks=["a"])
    [f] = fetch(database_url, schema, pool, limit=1, tasks=["b"])
    assert f.id == failed and fail(database_url, schema, pool, f, delay=0)
    missing = 999_999

    retried = admin.retry_jobs(conn, schema, [failed, running, missing])
    assert retried.changed == [failed]
    assert "running" in retried.skipped[running] and "no such job" in retried.skipped[missing]
    assert states(conn, schema)[failed] == "waiting"

    when = datetime.now(UTC) + timedelta(days=1)
    moved = admin.reschedule_jobs(conn, schema, [waiting, running], when, priority=7)
    assert moved.changed == [waiting] and list(moved.skipped) == [running]
    [(run_at, priority)] = q(conn, schema.name, "select run_at, priority from {s}.jobs "
                             "where id = %s", [waiting])  # fmt: skip
    assert run_at == when and priority == 7

    failed_by_hand = admin.fail_jobs(conn, schema, [waiting, running], "refunded by hand")
    assert failed_by_hand.changed == [waiting]
    assert admin.show_job(conn, schema, waiting)["last_error"] == "refunded by hand"  # type: ignore[index]
    with pytest.raises(AdminError, match="give a reason"):
        admin.fail_jobs(conn, schema, [waiting], " ")

    cancelled = admin.cancel_jobs(conn, schema, [waiting, failed, running])
    assert cancelled.changed == [failed, waiting] and list(cancelled.skipped) == [running]
    assert sorted(states(conn, schema)) == [running]  # the running job is untouched
    assert run.id == running


def test_the_sql_functions_are_there_for_sql_users(
    conn: psycopg.Connection, schema: Schema
) -> None:
    [job] = add_jobs(conn, [JobSpec("a", max_attempts=3)], schema)
    sql_fail = "select * from {s}.fail_jobs(array[%s]::bigint[], 'from psql')"
    assert q(conn, schema.name, sql_fail, [job]) == [(job,)]
    assert q(conn, schema.name, "select state from {s}.job_list") == [("failed",)]
    assert q(conn, schema.name, "select * from {s}.retry_jobs(array[%s]::bigint[])", [job]) == [
        (job,)
    ]
    assert q(conn, schema.name, "select state, attempts from {s}.job_list") == [("waiting", 0)]


def test_unlocking_a_live_pool_needs_force_and_fences_it(
    conn: psycopg.Connection, schema: Schema, database_url: str
) -> None:
    a, b = add_jobs(conn, [JobSpec("a"), JobSpec("b")], schema)
    pool = active_pool(conn, schema, fail_tasks=["b"])
    assert len(fetch(database_url, schema, pool)) == 2
    with pytest.raises(AdminError, match=r"is live .* pass --force"):
        admin.unlock_pool(conn, schema, pool, force=False, threshold_s=60)
    done = admin.unlock_pool(conn, schema, pool, force=True, threshold_s=60)
    assert done.declared_dead and (done.released, done.held) == (0, 2)
    assert q(conn, schema.name, "select state from {s}.pools") == [("dead",)]
    # Fenced: it cannot fetch again; but it may still run its jobs until it sees its state,
    # so they are not handed out while its lease holds, not even by a sweep.
    assert fetch(database_url, schema, pool) == []
    assert sweep(conn, schema, 60).ran
    assert states(conn, schema) == {a: "running", b: "running"}
    # Its lease ran out: the sweep gives them back, the charge-like task failed, not rerun.
    q(conn, schema.name, "update {s}.pools set heartbeat_at = now() - interval '2 minutes' "
      "returning 1")  # fmt: skip
    assert sweep(conn, schema, 60).released_jobs == 2
    assert states(conn, schema) == {a: "waiting", b: "failed"}
    with pytest.raises(AdminError, match="no pool"):
        admin.unlock_pool(conn, schema, "00000000-0000-4000-8000-000000000000", force=True,
                          threshold_s=60)  # fmt: skip


def completed_long_ago(conn: psycopg.Connection, schema: str, job_id: int, age: timedelta) -> None:
    at = datetime.now(UTC) - age
    q(conn, schema, "insert into {s}.job_history (id, task_identifier, payload, priority, "
      "attempts, pool_id, created_at, completed_at) values (%s, 'a', '{{}}', 0, 1, "
      "gen_random_uuid(), %s, %s) returning 1", [job_id, at, at])  # fmt: skip


def test_prune_deletes_only_history_past_the_window(
    conn: psycopg.Connection, schema: Schema
) -> None:
    for job_id, hours in ((1, 50), (2, 30), (3, 1)):
        completed_long_ago(conn, schema.name, job_id, timedelta(hours=hours))
    assert prune_history(conn, schema, 24 * 3600) == 2
    assert [r["id"] for r in admin.job_history(conn, schema)] == [3]


def fleet_worker(database_url: str, schema: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url, "FLEET_SCHEMA": schema}
    return subprocess.run(
        [sys.executable, "-m", "fleet_worker.cli", *args], env=env, capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip


def test_a_worker_keeping_history_records_where_jobs_ran_and_prunes_old_rows(
    conn: psycopg.Connection, schema_name: str, database_url: str, tmp_path: Path
) -> None:
    s = install(conn, schema_name)
    completed_long_ago(conn, schema_name, -1, timedelta(days=3))
    ids = add_jobs(conn, [JobSpec("work") for _ in range(5)], s)
    worker = WorkerProcess(database_url, schema_name, V1, tmp_path, *FAST, "--keep-history", "1h")
    try:
        wait_for(lambda: remaining(conn, schema_name) == 0, what="jobs done")
        wait_for(lambda: "pruned 1 job history row(s)" in worker.log(), what="the prune")
        [(pool,)] = q(conn, schema_name, "select pool_id::text from {s}.pools")
        listed = fleet_worker(database_url, schema_name, "jobs", "history", "--json")
        assert listed.returncode == 0, listed.stderr
        history = json.loads(listed.stdout)
        assert sorted(h["id"] for h in history) == sorted(ids)
        assert {h["pool_id"] for h in history} == {pool} and {h["state"] for h in history} == {
            "completed"
        }
        shown = fleet_worker(database_url, schema_name, "jobs", "show", str(ids[0]))
        assert json.loads(shown.stdout)["pool"]["pool_id"] == pool
        worker.signal(signal.SIGTERM)
        assert worker.wait() == ExitCode.OK
    finally:
        worker.stop()


def test_the_jobs_command_reports_skips_and_usage_errors(
    conn: psycopg.Connection, schema_name: str, database_url: str
) -> None:
    s = install(conn, schema_name)
    [job] = add_jobs(conn, [JobSpec("work", max_attempts=1)], s)
    listed = fleet_worker(database_url, schema_name, "jobs", "list", "--state", "waiting")
    assert listed.returncode == 0 and f"{job:>8}  waiting" in listed.stdout
    retried = fleet_worker(database_url, schema_name, "jobs", "retry", str(job), "424242")
    assert retried.returncode == 1
    assert f"retried 1 job(s): {job}" in retried.stdout and "skipped 424242" in retried.stdout
    moved = fleet_worker(database_url, schema_name, "jobs", "reschedule", str(job), "--in", "2h")
    assert moved.returncode == 0 and "rescheduled 1" in moved.stdout
    naive = fleet_worker(
        database_url, schema_name, "jobs", "reschedule", str(job), "--run-at", "2030-01-01T00:00"
    )
    assert naive.returncode == ExitCode.USAGE and "needs a time zone" in naive.stderr
    unknown = fleet_worker(database_url, schema_name, "jobs", "show", "424242")
    assert unknown.returncode == ExitCode.USAGE and "no job 424242" in unknown.stderr
