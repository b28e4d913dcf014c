"""Real `fleet-worker run` processes against a real PostgreSQL: crash recovery, graceful
shutdown, fencing, external migration mode."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest

from fleet_worker.catalog import Catalog
from fleet_worker.db import Schema
from fleet_worker.exit_codes import ExitCode
from fleet_worker.migrate import migrate
from fleet_worker.queue import JobSpec, add_jobs
from tests.helpers import FAST, WorkerProcess, pool_states, q, wait_for

pytestmark = pytest.mark.integration
V1 = "fleet_test_apps.v1"
V2 = "fleet_test_apps.v2"


def install(conn: psycopg.Connection, schema: str, app_dir: str = "migrations_v1") -> Schema:
    s = Schema(schema)
    migrate(conn, s, Catalog.load(Path(__file__).parents[1] / "apps/fleet_test_apps" / app_dir))
    return s


def ledger(conn: psycopg.Connection, schema: str) -> list[int]:
    return [int(r[0]) for r in q(conn, schema, "select job_id from {s}.ledger order by id")]


def remaining(conn: psycopg.Connection, schema: str) -> int:
    return int(q(conn, schema, "select count(*) from {s}.jobs")[0][0])


def active_pools(conn: psycopg.Connection, schema: str) -> list[str]:
    return [p for p, st in pool_states(conn, schema).items() if st == "active"]


def run_the_rest(
    conn: psycopg.Connection, schema: str, url: str, tmp_path: Path, *args: str
) -> None:
    """A second worker runs what the first left, then stops cleanly."""
    second = WorkerProcess(url, schema, V1, tmp_path, *FAST, *args)
    wait_for(lambda: remaining(conn, schema) == 0, what="the rest done")
    second.signal(signal.SIGTERM)
    assert second.wait() == ExitCode.OK


def test_sigkill_mid_job_the_job_runs_again_after_the_threshold(
    conn: psycopg.Connection, schema_name: str, database_url: str, tmp_path: Path
) -> None:
    s = install(conn, schema_name)
    ids = add_jobs(conn, [JobSpec("work", {"sleep": 30}) for _ in range(3)], s)
    victim = WorkerProcess(database_url, schema_name, V1, tmp_path, *FAST)
    rescuer: WorkerProcess | None = None
    try:
        wait_for(lambda: len(ledger(conn, schema_name)) == 3, what="jobs started")
        [dead_pool] = active_pools(conn, schema_name)
        victim.kill()
        # Make the rerun fast: the recovered attempts should not sleep again.
        q(conn, schema_name, "update {s}.jobs set payload = '{{}}' returning id")
        rescuer = WorkerProcess(database_url, schema_name, V1, tmp_path, *FAST)
        wait_for(lambda: remaining(conn, schema_name) == 0, timeout=30, what="recovery")
        rescuer.signal(signal.SIGTERM)
        assert rescuer.wait() == ExitCode.OK
    finally:
        for w in (victim, rescuer):  # a failed wait must not leave a worker running
            if w is not None:
                w.stop()
    runs = ledger(conn, schema_name)
    assert sorted(runs) == sorted(ids * 2)  # each job: the killed attempt, then the rerun
    assert pool_states(conn, schema_name)[dead_pool] == "dead"
    reasons = q(conn, schema_name, "select reason from {s}.pools where pool_id = %s", [dead_pool])
    assert "no heartbeat" in str(reasons[0][0])


def test_sigterm_finishes_running_jobs_and_loses_nothing(
    conn: psycopg.Connection, schema_name: str, database_url: str, tmp_path: Path
) -> None:
    s = install(conn, schema_name)
    ids = add_jobs(conn, [JobSpec("work", {"sleep": 0.2}) for _ in range(60)], s)
    worker = WorkerProcess(database_url, schema_name, V1, tmp_path, *FAST, "--concurrency", "4")
    try:
        wait_for(lambda: len(ledger(conn, schema_name)) >= 8, what="some jobs done")
        worker.signal(signal.SIGTERM)
        assert worker.wait() == ExitCode.OK
        first_runs = ledger(conn, schema_name)
        assert len(first_runs) < len(ids), "the test must stop the worker mid-stream"
        # Every job it started, it finished: none is left locked or half-done.
        assert q(
            conn, schema_name, "select count(*) from {s}.jobs where locked_by is not null"
        ) == [(0,)]
        assert remaining(conn, schema_name) == len(ids) - len(first_runs)
        [(state, reason)] = q(conn, schema_name, "select state, reason from {s}.pools")
        assert state == "stopped" and "SIGTERM" in str(reason)
        run_the_rest(conn, schema_name, database_url, tmp_path)
    finally:
        worker.stop()
    runs = ledger(conn, schema_name)
    assert sorted(runs) == sorted(ids)  # nothing lost, nothing run twice


def test_jobs_over_the_graceful_timeout_are_released_not_lost(
    conn: psycopg.Connection, schema_name: str, database_url: str, tmp_path: Path
) -> None:
    s = install(conn, schema_name)
    from tests.integration.test_leases import make_spans, spans

    make_spans(conn, schema_name)
    [slow] = add_jobs(conn, [JobSpec("span_cooperative", {"s": 60})], s)
    args = [*FAST, "--graceful-shutdown-timeout", "0.5s"]
    worker = WorkerProcess(database_url, schema_name, V1, tmp_path, *args)
    try:
        wait_for(lambda: spans(conn, schema_name), what="slow job started")
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=15) == ExitCode.OK
    finally:
        worker.stop()
    [(locked_by, attempts, error)] = q(
        conn, schema_name, "select locked_by, attempts, last_error from {s}.jobs"
    )
    assert locked_by is None and attempts == 1 and "shut down" in str(error)
    assert "released 1 job(s)" in worker.log()
    assert [(j, outcome) for j, _, outcome in spans(conn, schema_name)] == [(slow, "cancelled")]


def test_a_job_that_ignores_the_shutdown_is_not_released_while_it_runs(
    conn: psycopg.Connection, schema_name: str, database_url: str, tmp_path: Path
) -> None:
    """Sync code that ignores the request to stop still runs until the process exits;
    releasing its job at shutdown would let another worker start it alongside. It stays
    locked until the pool's lease ran out, then the sweep hands it on."""
    from tests.integration.test_leases import make_spans, overlaps, spans, wait_exit

    s = install(conn, schema_name)
    make_spans(conn, schema_name)
    # Longer than any machine takes to start the rescuer below (the first attempt must still
    # run at the SIGTERM); the rerun, once its payload is cut to nothing, is quick.
    [job] = add_jobs(conn, [JobSpec("span_stubborn", {"s": 60})], s)
    args = [*FAST, "--graceful-shutdown-timeout", "0.2s"]
    worker = WorkerProcess(database_url, schema_name, V1, tmp_path, *args)
    rescuer = None
    try:
        wait_for(lambda: spans(conn, schema_name), what="the job started")
        [pool] = {p for _, p, _ in spans(conn, schema_name)}
        q(conn, schema_name, """update {s}.jobs set payload = '{{"s": 0}}' returning id""")
        rescuer = WorkerProcess(database_url, schema_name, V1, tmp_path, *FAST)
        wait_for(lambda: len(active_pools(conn, schema_name)) == 2, what="the rescuer")
        worker.signal(signal.SIGTERM)
        _, exited = wait_exit(worker, conn, timeout=15)
        [(locked_by,)] = q(conn, schema_name, "select locked_by::text from {s}.jobs")
        assert locked_by == pool, "released while its code still ran"
        assert "ignore cancellation" in worker.log()
        wait_for(lambda: len(spans(conn, schema_name)) == 2, timeout=20, what="the rerun")
        # The execution cut short by the exit never recorded its end: the exit is its end.
        q(conn, schema_name, "update {s}.spans set ended_at = %s where ended_at is null "
          "and pool_id = %s returning 1", [exited, pool])  # fmt: skip
        assert overlaps(conn, schema_name) == []
        assert [j for j, _, _ in spans(conn, schema_name)] == [job, job]
    finally:
        if rescuer is not None:
            rescuer.stop()
        worker.stop()


def test_second_signal_forces_the_stop(
    conn: psycopg.Connection, schema_name: str, database_url: str, tmp_path: Path
) -> None:
    s = install(conn, schema_name)
    add_jobs(conn, [JobSpec("work", {"sleep": 60})], s)
    args = [*FAST, "--graceful-shutdown-timeout", "60s"]
    worker = WorkerProcess(database_url, schema_name, V1, tmp_path, *args)
    try:
        wait_for(lambda: len(ledger(conn, schema_name)) == 1, what="job started")
        worker.signal(signal.SIGTERM)
        wait_for(lambda: "draining" in worker.log(), what="draining")
        worker.signal(signal.SIGINT)
        assert worker.wait(timeout=10) == ExitCode.OK
    finally:
        worker.stop()
    assert q(conn, schema_name, "select locked_by from {s}.jobs") == [(None,)]
    assert q(conn, schema_name, "select state from {s}.pools") == [("stopped",)]


def test_a_pool_declared_dead_exits_fenced(
    conn: psycopg.Connection, schema_name: str, database_url: str, tmp_path: Path
) -> None:
    install(conn, schema_name)
    worker = WorkerProcess(database_url, schema_name, V1, tmp_path, *FAST)
    try:
        [pool] = wait_for(lambda: active_pools(conn, schema_name), what="active pool")
        q(
            conn,
            schema_name,
            "update {s}.pools set state = 'dead' where pool_id = %s returning 1",
            [pool],
        )
        assert worker.wait(timeout=10) == ExitCode.FENCED
    finally:
        worker.stop()
    assert "marked dead" in worker.log()


def test_external_mode_waits_not_ready_until_the_schema_arrives(
    conn: psycopg.Connection, schema_name: str, database_url: str, tmp_path: Path
) -> None:
    install(conn, schema_name, "migrations_v1")
    worker = WorkerProcess(
        database_url, schema_name, V2, tmp_path, *FAST, "--migrations", "external"
    )
    try:
        wait_for(
            lambda: "waiting-for-schema" in pool_states(conn, schema_name).values(),
            what="waiting pool",
        )
        port = wait_for(lambda: _health_port(worker), what="health port")
        assert _get(port, "/readyz")[0] == 503
        assert _get(port, "/healthz")[0] == 200
        # The worker never applies anything itself in external mode.
        assert [r[0] for r in q(conn, schema_name, "select id from {s}.migrations")] == [
            *Catalog.load().ids,
            "app/0001",
        ]
        install(conn, schema_name, "migrations_v2")  # what the operator's Job does
        wait_for(lambda: active_pools(conn, schema_name), what="active after migration")
        wait_for(lambda: _get(port, "/readyz")[0] == 200, what="ready")
        status, body = _get(port, "/metrics")
        assert status == 200 and 'fleet_worker_pool_state{state="active"' in body
        worker.signal(signal.SIGTERM)
        assert worker.wait() == ExitCode.OK
    finally:
        worker.stop()


def _health_port(worker: WorkerProcess) -> int | None:
    for line in worker.log().splitlines():
        if "health endpoint on" in line:
            return int(line.rsplit(":", 1)[1])
    return None


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_a_database_outage_fences_the_worker_and_loses_nothing(tmp_path: Path) -> None:
    """Stop PostgreSQL under a running job for longer than the sweep threshold: the worker
    stops fetching and cancels the job before its lease could expire in anyone's eyes; when
    the database returns it gives the job back and runs it again, once, and its pool lives
    on (no one declared it dead)."""
    from tests.integration.test_leases import make_spans, spans
    from workerfleet_dev.postgres import LocalPostgres

    pg = LocalPostgres()
    pg.start()
    worker: WorkerProcess | None = None
    try:
        with psycopg.connect(pg.url, autocommit=True) as conn:
            s = install(conn, "outage")
            make_spans(conn, "outage")
            job, charge = add_jobs(
                conn, [JobSpec("span_cooperative", {"s": 20}), JobSpec("charge", {"s": 20})], s
            )
        worker = WorkerProcess(pg.url, "outage", V1, tmp_path, *FAST)
        with psycopg.connect(pg.url, autocommit=True) as conn:
            wait_for(lambda: len(spans(conn, "outage")) == 2, what="jobs started")
            # The rerun need not take as long.
            q(conn, "outage", "update {s}.jobs set payload = %s::jsonb returning 1", ['{"s": 0.1}'])
        pg.stop_server()
        wait_for(lambda: "not fetching" in worker.log(), what="self-fencing", timeout=10)
        pg.start()
        wait_for(lambda: "heartbeat restored" in worker.log(), what="heartbeat restored")
        with psycopg.connect(pg.url, autocommit=True) as conn:
            wait_for(lambda: remaining(conn, "outage") == 1, what="job completed")
            # The job's execution was cut short while the database was away (so it could not
            # record its end: the same server was down), then ran again, once, to the end.
            # The charge, cut short too, is failed for good: its task says never twice.
            assert sorted((j, outcome or "") for j, _, outcome in spans(conn, "outage")) == [
                (job, ""),
                (job, "done"),
                (charge, ""),
            ]
            [(attempts, max_attempts, error)] = q(
                conn, "outage", "select attempts, max_attempts, last_error from {s}.jobs"
            )
            assert attempts == max_attempts and 'on_orphan="fail"' in str(error)
            assert active_pools(conn, "outage")
            [(dead,)] = q(conn, "outage", "select count(*) from {s}.pools where state = 'dead'")
            assert dead == 0
        assert "cancelling 2 running job(s)" in worker.log()
        worker.signal(signal.SIGTERM)
        assert worker.wait() == ExitCode.OK
    finally:
        if worker is not None:
            worker.stop()
        pg.stop()


def test_rolling_restarts_under_a_stream_run_every_job_exactly_once(
    conn: psycopg.Connection, schema_name: str, database_url: str, tmp_path: Path
) -> None:
    """SIGTERM workers one after another while jobs stream in: completions in flight at
    shutdown must land before the pool releases what it holds, or a finished job reruns."""
    from tests.helpers import stream_jobs

    install(conn, schema_name)
    workers = [WorkerProcess(database_url, schema_name, V1, tmp_path, *FAST) for _ in range(2)]
    producer = stream_jobs(database_url, schema_name, every_s=0.002, sleep_s=0.0)
    try:
        for _ in range(8):
            wait_for(lambda: len(active_pools(conn, schema_name)) >= 2, what="two active pools")
            old = workers.pop(0)
            old.signal(signal.SIGTERM)
            assert old.wait() == ExitCode.OK
            old.stop()
            workers.append(WorkerProcess(database_url, schema_name, V1, tmp_path, *FAST))
        enqueued = producer.stop()
        wait_for(lambda: remaining(conn, schema_name) == 0, what="queue drained")
    finally:
        producer.stop()
        for w in workers:
            w.stop()
    runs = ledger(conn, schema_name)
    assert len(runs) == len(set(runs)), "a finished job ran again after a graceful stop"
    assert sorted(runs) == sorted(enqueued)


def test_sigterm_stops_a_waiting_migrate_with_nothing_half_done(
    conn: psycopg.Connection, schema_name: str, database_url: str, tmp_path: Path
) -> None:
    """`fleet-worker migrate` waiting for a live outdated pool stops at SIGTERM, says so
    and exits 143; the breaking migration it waited for is not applied. (In a container
    this process is PID 1, where a signal without a handler is dropped: tests/e2e/
    test_containers.py shows the pod side on the real node.)"""
    s = schema_name
    install(conn, s)
    old = WorkerProcess(database_url, s, V1, tmp_path, *FAST)
    try:
        wait_for(lambda: active_pools(conn, s), what="v1 active")
        env = {**os.environ, "DATABASE_URL": database_url, "FLEET_SCHEMA": s,
               "PYTHONPATH": str(Path(__file__).parents[1] / "apps")}  # fmt: skip
        mig = subprocess.Popen(
            [sys.executable, "-m", "fleet_worker.cli", "migrate", "--app", "fleet_test_apps.v3",
             "--sweep-threshold", "3s"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        applied = "select 1 from {s}.migrations where id = 'app/0002'"
        wait_for(lambda: q(conn, s, applied), what="app/0002 applied, app/0003 waiting")
        time.sleep(0.5)
        mig.send_signal(signal.SIGTERM)
        _, err = mig.communicate(timeout=10)
        assert mig.returncode == ExitCode.TERMINATED, err
        assert "stopped by SIGTERM" in err
        assert not q(conn, s, "select 1 from {s}.migrations where id = 'app/0003'")
    finally:
        old.stop()


def test_a_local_queue_runs_each_job_once_and_hands_back_the_unstarted_at_sigterm(
    conn: psycopg.Connection, schema_name: str, database_url: str, tmp_path: Path
) -> None:
    """Fetched ahead, a job is locked by the pool before a slot is free: the queue holds it.
    At SIGTERM the running ones finish and the held ones go back unstarted, with the attempt
    their fetch took returned, so another worker runs each exactly once."""
    s = install(conn, schema_name)
    ids = add_jobs(conn, [JobSpec("work", {"sleep": 0.2}) for _ in range(60)], s)
    worker = WorkerProcess(
        database_url, schema_name, V1, tmp_path, *FAST,
        "--concurrency", "2", "--local-queue-size", "10",
    )  # fmt: skip
    try:
        locked = "select count(*) from {s}.jobs where locked_by is not null"
        wait_for(lambda: q(conn, schema_name, locked)[0][0] > 2, what="jobs held ahead")
        port = wait_for(lambda: _health_port(worker), what="health port")
        wait_for(
            lambda: re.search(r"^fleet_worker_jobs_held [1-9]", _get(port, "/metrics")[1], re.M),
            what="the held jobs in /metrics",
        )
        wait_for(lambda: len(ledger(conn, schema_name)) >= 4, what="some jobs done")
        worker.signal(signal.SIGTERM)
        assert worker.wait() == ExitCode.OK
        first_runs = ledger(conn, schema_name)
        assert q(conn, schema_name, locked) == [(0,)]
        assert remaining(conn, schema_name) == len(ids) - len(first_runs)
        # Not one attempt spent on a job that never started.
        assert q(conn, schema_name, "select count(*) from {s}.jobs where attempts > 0") == [(0,)]
        run_the_rest(conn, schema_name, database_url, tmp_path, "--local-queue-size", "5")
    finally:
        worker.stop()
    runs = ledger(conn, schema_name)
    assert sorted(runs) == sorted(ids)  # nothing lost, nothing run twice
