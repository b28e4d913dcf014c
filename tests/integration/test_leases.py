"""Leases: real worker processes and PostgreSQL, some of them cut off from the database by a
TCP proxy while the others keep their connection. Two executions of one job must never
overlap, whatever the outage, and a job must never stay locked by a live pool."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from fleet_worker.exit_codes import ExitCode
from fleet_worker.queue import JobSpec, add_jobs
from tests.helpers import FAST, TcpProxy, WorkerProcess, pool_states, q, stream_jobs, wait_for
from tests.integration.test_worker_process import V1, active_pools, install, remaining

pytestmark = pytest.mark.integration
V3 = "fleet_test_apps.v3"
# Beats slower than others sweep: after an outage a sweeper then meets pools that have not
# beaten again yet, as it does with the defaults (10 s beats, 30 s sweeps at random phases
# across many workers). Five beats to the threshold, so that a loaded machine's stall of a
# second or two is not an outage of its own.
SLOW_BEATS_THRESHOLD_S = 5
SLOW_BEATS = [*FAST, "--heartbeat-interval", "1s",
              "--sweep-threshold", f"{SLOW_BEATS_THRESHOLD_S}s"]  # fmt: skip


def make_spans(conn: psycopg.Connection, schema: str) -> None:
    conn.execute(
        sql.SQL(
            """create table {}.spans (
                   id bigserial primary key, job_id bigint not null, pool_id uuid not null,
                   kind text not null, started_at timestamptz not null default clock_timestamp(),
                   ended_at timestamptz, outcome text)"""
        ).format(sql.Identifier(schema))
    )


def spans(conn: psycopg.Connection, schema: str) -> list[tuple[int, str, str | None]]:
    rows = q(conn, schema, "select job_id, pool_id::text, outcome from {s}.spans order by id")
    return [(int(r[0]), str(r[1]), r[2]) for r in rows]


def overlaps(conn: psycopg.Connection, schema: str) -> list[tuple[int, float]]:
    """Pairs of executions of one job that overlapped (an unfinished one runs forever), with
    the overlap in seconds."""
    rows = q(
        conn,
        schema,
        """select a.job_id, extract(epoch from
                  least(coalesce(a.ended_at, 'infinity'), coalesce(b.ended_at, 'infinity'))
                  - greatest(a.started_at, b.started_at))::float8
           from {s}.spans a join {s}.spans b on a.job_id = b.job_id and a.id < b.id
           where coalesce(a.ended_at, 'infinity') > b.started_at
             and coalesce(b.ended_at, 'infinity') > a.started_at""",
    )
    return [(int(r[0]), float(r[1])) for r in rows]


def gaps(conn: psycopg.Connection, schema: str) -> list[float]:
    """Seconds between the end of one execution of a job and the start of the next."""
    rows = q(
        conn,
        schema,
        """select extract(epoch from b.started_at - a.ended_at)::float8
           from {s}.spans a join {s}.spans b on a.job_id = b.job_id and b.id = (
               select min(id) from {s}.spans c where c.job_id = a.job_id and c.id > a.id)
           where a.ended_at is not null""",
    )
    return [float(r[0]) for r in rows]


def wait_exit(worker: WorkerProcess, conn: psycopg.Connection, timeout: float) -> tuple[int, str]:
    """The exit code, and an upper bound of when the process ended on the database clock."""
    wait_for(lambda: worker.proc.poll() is not None, timeout, 0.01, "the worker to exit")
    [(now,)] = conn.execute("select clock_timestamp()::text").fetchall()
    return int(worker.proc.returncode), str(now)


def test_each_pool_is_judged_by_its_own_lease(
    conn: psycopg.Connection, schema_name: str, database_url: str, tmp_path: Path
) -> None:
    """A worker with a 0.5 s threshold must not declare dead a pool that beats every 1.5 s
    with a 5 s threshold of its own: that would rerun its job while it still runs."""
    s = install(conn, schema_name)
    make_spans(conn, schema_name)
    [job] = add_jobs(conn, [JobSpec("span_async", {"s": 6})], s)
    slow_args = ["--heartbeat-interval", "1.5s", "--sweep-threshold", "5s", "--poll-interval",
                 "0.2s", "--sweep-interval", "1s"]  # fmt: skip
    fast_args = ["--heartbeat-interval", "0.1s", "--sweep-threshold", "0.5s", "--poll-interval",
                 "0.1s", "--sweep-interval", "0.1s"]  # fmt: skip
    slow = WorkerProcess(database_url, schema_name, V1, tmp_path, *slow_args)
    fast = None
    try:
        wait_for(lambda: spans(conn, schema_name), what="the job started")
        [slow_pool] = active_pools(conn, schema_name)
        fast = WorkerProcess(database_url, schema_name, V1, tmp_path, *fast_args)
        wait_for(lambda: len(active_pools(conn, schema_name)) == 2, what="both pools active")
        time.sleep(4)  # many of the fast worker's sweeps, within the slow pool's lease
        assert pool_states(conn, schema_name)[slow_pool] == "active"
        wait_for(lambda: remaining(conn, schema_name) == 0, timeout=15, what="job completed")
    finally:
        for w in (slow, fast):
            if w is not None:
                w.signal(signal.SIGTERM)
                w.wait()
                w.stop()
    assert spans(conn, schema_name) == [(job, slow_pool, "done")]


@pytest.mark.parametrize(
    "task", ["span_async", "span_cooperative", "span_stubborn", "span_blocking"]
)
def test_a_worker_cut_off_stops_its_jobs_before_its_lease_expires(
    conn: psycopg.Connection, schema_name: str, database_url: str, tmp_path: Path, task: str
) -> None:
    """Cut one worker off; another, with the database, takes its job once the lease expired.
    The first execution must have ended by then: async tasks are cancelled, cooperative sync
    tasks are told to stop, and a sync task that ignores it, or an async one that blocks the
    event loop (and with it the heartbeat), is stopped with its process."""
    s = install(conn, schema_name)
    make_spans(conn, schema_name)
    [job] = add_jobs(conn, [JobSpec(task, {"s": 20})], s)
    proxy = TcpProxy.for_url(database_url)
    cut_off = WorkerProcess(
        proxy.url(database_url), schema_name, V1, tmp_path, *FAST, "--concurrency", "1",
        env={"LEDGER_URL": database_url},
    )  # fmt: skip
    rescuer = None
    try:
        wait_for(lambda: spans(conn, schema_name), what="the job started")
        proxy.cut()
        rescuer = WorkerProcess(database_url, schema_name, V1, tmp_path, *FAST)
        if task in ("span_stubborn", "span_blocking"):
            code, ended = wait_exit(cut_off, conn, timeout=10)
            assert code == ExitCode.FENCED
            assert "lease" in cut_off.log()
            q(conn, schema_name, "update {s}.spans set ended_at = %s, outcome = 'killed' "
              "where ended_at is null returning 1", [ended])  # fmt: skip
        wait_for(lambda: len(spans(conn, schema_name)) == 2, timeout=20, what="the rerun")
        assert overlaps(conn, schema_name) == []
        [gap] = gaps(conn, schema_name)
        assert gap > 0
        print(f"{task}: {gap:.3f}s from the end of the cut-off execution to the rerun")
        first = spans(conn, schema_name)[0]
        assert first[0] == job and first[2] in ("cancelled", "killed")
    finally:
        proxy.close()
        for w in (cut_off, rescuer):
            if w is not None:
                w.stop()


def test_a_failure_that_waits_for_the_database_is_recorded_when_it_returns(
    conn: psycopg.Connection, schema_name: str, database_url: str, tmp_path: Path
) -> None:
    """A job that failed while its worker was cut off is no longer running: the lease must
    not cancel its pending failure record, or the job would stay locked by a live pool."""
    s = install(conn, schema_name)
    [job] = add_jobs(conn, [JobSpec("fail_after", {"s": 1}, max_attempts=1)], s)
    proxy = TcpProxy.for_url(database_url)
    worker = WorkerProcess(proxy.url(database_url), schema_name, V1, tmp_path, *FAST)
    try:
        wait_for(
            lambda: q(conn, schema_name, "select 1 from {s}.jobs where locked_by is not null"),
            what="the job started",
        )
        proxy.cut()
        wait_for(lambda: "cancelling" in worker.log(), timeout=10, what="the lease ran low")
        proxy.restore()
        [(error,)] = wait_for(
            lambda: q(conn, schema_name, "select last_error from {s}.jobs where id = %s "
                      "and locked_by is null", [job]),
            timeout=10, what="the failure recorded",
        )  # fmt: skip
        assert "failed on purpose" in error
        assert active_pools(conn, schema_name)
    finally:
        proxy.close()
        worker.stop()


def test_an_unstorable_failure_message_still_releases_the_job(
    conn: psycopg.Connection, schema_name: str, database_url: str, tmp_path: Path
) -> None:
    """PostgreSQL refuses a NUL byte in text, every time: the failure is stored sanitised
    instead of being retried until the pool gives up and keeps the job locked."""
    s = install(conn, schema_name)
    add_jobs(conn, [JobSpec("nul_error", max_attempts=1)], s)
    worker = WorkerProcess(database_url, schema_name, V1, tmp_path, *FAST)
    try:
        row = wait_for(
            lambda: q(
                conn, schema_name,
                "select attempts, last_error from {s}.jobs where locked_by is null "
                "and last_error is not null",
            ),
            timeout=10, what="the failure recorded",
        )  # fmt: skip
        [(attempts, error)] = row
        assert attempts == 1 and "bad" in error and "byte" in error and "\x00" not in error
        assert active_pools(conn, schema_name)
    finally:
        worker.stop()


def test_a_cancelled_error_raised_by_a_task_is_a_failure(
    conn: psycopg.Connection, schema_name: str, database_url: str, tmp_path: Path
) -> None:
    """Only the worker's own shutdown may leave a job unrecorded; a task that raises
    CancelledError itself has failed, and its job must not stay locked."""
    s = install(conn, schema_name)
    add_jobs(conn, [JobSpec("cancels_itself", max_attempts=1)], s)
    worker = WorkerProcess(database_url, schema_name, V1, tmp_path, *FAST)
    try:
        [(error,)] = wait_for(
            lambda: q(
                conn, schema_name,
                "select last_error from {s}.jobs where locked_by is null and attempts = 1",
            ),
            timeout=10, what="the failure recorded",
        )  # fmt: skip
        assert "CancelledError" in error
        assert active_pools(conn, schema_name)
    finally:
        worker.stop()


def test_an_outage_of_twice_the_threshold_under_a_stream(
    conn: psycopg.Connection, schema_name: str, database_url: str, tmp_path: Path
) -> None:
    """Three workers lose the database together for 2x the threshold while jobs stream in.
    Whoever reconnects first must not declare the others dead (they are on their way back):
    zero jobs lost, none completed twice, no two executions overlapping, no pool dead."""
    install(conn, schema_name)
    make_spans(conn, schema_name)
    proxy = TcpProxy.for_url(database_url)
    workers = [
        WorkerProcess(
            proxy.url(database_url),
            schema_name,
            V1,
            tmp_path,
            *SLOW_BEATS,
            "--concurrency",
            "4",
            env={"LEDGER_URL": database_url},
        )
        for _ in range(3)
    ]
    producer = stream_jobs(
        database_url, schema_name, every_s=0.02, task="span_async", payload={"s": 0.3}
    )
    try:
        wait_for(lambda: len(active_pools(conn, schema_name)) == 3, what="three active pools")
        wait_for(lambda: len(spans(conn, schema_name)) > 20, what="work flowing")
        proxy.cut()
        time.sleep(2 * SLOW_BEATS_THRESHOLD_S)
        proxy.restore()
        wait_for(lambda: len(active_pools(conn, schema_name)) == 3, timeout=15, what="all back")
        time.sleep(SLOW_BEATS_THRESHOLD_S + 1)  # past every pool's probation: sweeps run again
        enqueued = producer.stop()
        wait_for(lambda: remaining(conn, schema_name) == 0, timeout=30, what="queue drained")
        assert "dead" not in pool_states(conn, schema_name).values()
    finally:
        producer.stop()
        proxy.close()
        for w in workers:
            w.stop()
    assert overlaps(conn, schema_name) == []
    done = [j for j, _, outcome in spans(conn, schema_name) if outcome == "done"]
    assert sorted(done) == sorted(enqueued)  # each job completed once, none lost


def test_no_breaking_migration_right_after_an_outage(
    conn: psycopg.Connection, schema_name: str, database_url: str, tmp_path: Path
) -> None:
    """A self-mode v3 worker waits for a live v1 pool before its breaking migration. After an
    outage both come back; v3 must not take v1's silence during the outage for its end."""
    install(conn, schema_name)
    proxy = TcpProxy.for_url(database_url)
    url = proxy.url(database_url)
    old = WorkerProcess(url, schema_name, V1, tmp_path, *SLOW_BEATS)
    new = None
    try:
        wait_for(lambda: active_pools(conn, schema_name), what="v1 active")
        new = WorkerProcess(
            url, schema_name, V3, tmp_path, *FAST, "--max-migration-wait-time", "5m"
        )
        wait_for(
            lambda: q(conn, schema_name, "select 1 from {s}.pools where wants_migration "
                      "is not null"),
            what="v3 waiting for the breaking migration",
        )  # fmt: skip
        proxy.cut()
        time.sleep(SLOW_BEATS_THRESHOLD_S + 3)  # v1 silent for longer than its threshold
        proxy.restore()
        wait_for(lambda: len(pool_states(conn, schema_name)) == 2 and all(
            st in ("active", "waiting-for-schema") for st in pool_states(conn, schema_name)
            .values()), timeout=15, what="both pools back")  # fmt: skip
        time.sleep(5)  # past v3's probation
        applied = [r[0] for r in q(conn, schema_name, "select id from {s}.migrations")]
        assert "app/0003" not in applied
        assert sorted(pool_states(conn, schema_name).values()) == ["active", "waiting-for-schema"]
    finally:
        proxy.close()
        for w in (old, new):
            if w is not None:
                w.stop()
