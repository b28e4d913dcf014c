"""Live migration in self mode with three releases of one app, under a steady job stream:
v1 (core + ledger), v2 (adds a safe migration), v3 (adds a breaking one)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import psycopg
import pytest

from fleet_worker.catalog import Catalog
from fleet_worker.exit_codes import ExitCode
from tests.helpers import FAST, Tally, WorkerProcess, q, stream_jobs, wait_for

pytestmark = pytest.mark.integration
V1, V2, V3 = (f"fleet_test_apps.v{i}" for i in (1, 2, 3))


def applied(conn: psycopg.Connection, schema: str) -> list[str]:
    try:
        return [str(r[0]) for r in q(conn, schema, "select id from {s}.migrations order by seq")]
    except psycopg.errors.UndefinedTable:
        return []


def pools_by_version(conn: psycopg.Connection, schema: str) -> dict[str, tuple[str, str]]:
    try:
        rows = q(conn, schema, "select pool_id::text, version, state from {s}.pools")
    except psycopg.errors.UndefinedTable:  # the first worker has not installed it yet
        return {}
    return {str(r[0]): (str(r[1]), str(r[2])) for r in rows}


def active_versions(conn: psycopg.Connection, schema: str) -> list[str]:
    return sorted(v for v, st in pools_by_version(conn, schema).values() if st == "active")


def ledger_versions(conn: psycopg.Connection, schema: str) -> set[str]:
    return {str(r[0]) for r in q(conn, schema, "select distinct version from {s}.ledger")}


def assert_nothing_lost_nothing_twice(
    conn: psycopg.Connection, schema: str, enqueued: list[int]
) -> None:
    wait_for(
        lambda: q(conn, schema, "select count(*) from {s}.jobs") == [(0,)],
        timeout=30,
        what="queue drained",
    )
    runs = [int(r[0]) for r in q(conn, schema, "select job_id from {s}.ledger")]
    tally = Tally.of(enqueued, runs)
    assert tally.exactly_once, tally.describe()


def test_safe_then_breaking_rollout_loses_nothing(
    conn: psycopg.Connection, schema_name: str, database_url: str, tmp_path: Path
) -> None:
    url, s = database_url, schema_name
    workers: list[WorkerProcess] = []

    def start(app: str, *extra: str) -> WorkerProcess:
        w = WorkerProcess(url, s, app, tmp_path, *FAST, *extra)
        workers.append(w)
        return w

    try:
        v1 = start(V1)
        wait_for(lambda: active_versions(conn, s) == ["1.0.0"], what="v1 active")
        producer = stream_jobs(url, s)

        # v2's migration is safe: applied at once, v1 keeps running beside v2.
        v2 = start(V2)
        wait_for(lambda: active_versions(conn, s) == ["1.0.0", "2.0.0"], what="v1+v2 active")
        assert applied(conn, s) == [*Catalog.load().ids, "app/0001", "app/0002"]
        wait_for(lambda: ledger_versions(conn, s) >= {"1.0.0", "2.0.0"}, what="both working")

        # v3's migration is breaking: v3 records its intent and waits for v1 and v2 to go.
        v3 = start(V3, "--max-migration-wait-time", "5m")
        wait_for(
            lambda: q(
                conn,
                s,
                "select 1 from {s}.pools where version = '3.0.0' "
                "and state = 'waiting-for-schema' and wants_migration = 'app/0003'",
            ),
            what="v3 waiting with intent",
        )
        time.sleep(1.5)  # several heartbeats and polls: the migration must still wait
        assert "app/0003" not in applied(conn, s)
        assert active_versions(conn, s) == ["1.0.0", "2.0.0"]

        v1.signal(signal.SIGTERM)
        assert v1.wait() == ExitCode.OK
        time.sleep(0.5)
        assert "app/0003" not in applied(conn, s), "v2 is still live"
        v2.signal(signal.SIGTERM)
        assert v2.wait() == ExitCode.OK
        wait_for(lambda: "app/0003" in applied(conn, s), what="breaking migration applied")
        wait_for(lambda: active_versions(conn, s) == ["3.0.0"], what="v3 active")

        # A v2 started now is out of date: it exits with "do not restart" and fetches nothing.
        late_v2 = start(V2)
        assert late_v2.wait(timeout=20) == ExitCode.OUT_OF_DATE
        assert "out of date" in late_v2.log()

        time.sleep(0.5)
        enqueued = producer.stop()
        assert_nothing_lost_nothing_twice(conn, s, enqueued)
        v3.signal(signal.SIGTERM)
        assert v3.wait() == ExitCode.OK
    finally:
        for w in workers:
            w.stop()

    # No old worker ran a job on the new schema, and the migration came after both stopped.
    [(migrated_at,)] = q(conn, s, "select applied_at from {s}.migrations where id = 'app/0003'")
    old_stops = q(
        conn,
        s,
        "select max(stopped_at) from {s}.pools where version in "
        "('1.0.0', '2.0.0') and reason not like 'out of date%%'",
    )
    assert old_stops[0][0] < migrated_at
    late_old = q(
        conn,
        s,
        "select count(*) from {s}.ledger where version <> '3.0.0' and started_at >= %s",
        [migrated_at],
    )
    assert late_old == [(0,)]
    assert q(conn, s, "select count(*) from {s}.widgets where title is null") == [(0,)]


def test_a_stuck_old_pool_is_evicted_after_the_wait(
    conn: psycopg.Connection, schema_name: str, database_url: str, tmp_path: Path
) -> None:
    url, s = database_url, schema_name
    workers: list[WorkerProcess] = []
    try:
        stuck = WorkerProcess(url, s, V2, tmp_path, *FAST)
        workers.append(stuck)
        wait_for(lambda: active_versions(conn, s) == ["2.0.0"], what="v2 active")
        # One long job keeps the old pool busy; it never drains on its own.
        long_id = int(q(conn, s, "select ({s}.add_job('work', '{{\"sleep\": 120}}')).id")[0][0])
        wait_for(
            lambda: q(conn, s, "select 1 from {s}.ledger where job_id = %s", [long_id]),
            what="long job running",
        )
        # The running attempt already holds its payload; the rerun after eviction is quick.
        q(conn, s, "update {s}.jobs set payload = '{{}}' where id = %s returning 1", [long_id])
        producer = stream_jobs(url, s)
        v3 = WorkerProcess(url, s, V3, tmp_path, *FAST, "--max-migration-wait-time", "3s")
        workers.append(v3)
        wait_for(lambda: "app/0003" in applied(conn, s), timeout=30, what="forced migration")
        [(state, reason)] = q(
            conn, s, "select state, reason from {s}.pools where version = '2.0.0'"
        )
        assert state == "evicted" and "forced" in str(reason)
        assert stuck.wait(timeout=20) == ExitCode.OUT_OF_DATE
        assert "evicted" in v3.log()
        time.sleep(0.5)
        enqueued = producer.stop()
        wait_for(
            lambda: q(conn, s, "select count(*) from {s}.jobs") == [(0,)],
            timeout=30,
            what="queue drained",
        )
        v3.signal(signal.SIGTERM)
        assert v3.wait() == ExitCode.OK
    finally:
        for w in workers:
            w.stop()
    runs = q(conn, s, "select job_id, version from {s}.ledger order by id")
    ids = [int(r[0]) for r in runs]
    assert set(ids) == {*enqueued, long_id}, "a job was lost"
    # At-least-once is the price of forcing: only jobs the evicted pool held when it was
    # evicted run again, once, on v3; every other job ran exactly once.
    twice = {j for j in ids if ids.count(j) > 1}
    assert long_id in twice
    for job in twice:
        assert [str(v) for j, v in runs if j == job] == ["2.0.0", "3.0.0"]
    # Only one completion per job: the evicted pool's late completion was rejected.
    assert q(conn, s, "select count(*) from {s}.jobs") == [(0,)]


def test_breaking_migration_declares_silent_outdated_pools_dead_and_activation_is_checked(
    conn: psycopg.Connection, schema_name: str
) -> None:

    from fleet_worker.db import Schema
    from fleet_worker.migrate import MigrationResult, activate, apply_one, migrate
    from fleet_worker.pools import PoolIdentity, heartbeat, register_pool
    from fleet_worker.queue import JobSpec, add_job
    from tests.conftest import APPS_DIR

    s = Schema(schema_name)
    v2 = Catalog.load(APPS_DIR / "fleet_test_apps/migrations_v2")
    v3 = Catalog.load(APPS_DIR / "fleet_test_apps/migrations_v3")
    migrate(conn, s, v2)
    silent = register_pool(conn, s, PoolIdentity.from_env(fleet="", version="2"), v2,
                           mode="self", concurrency=1, heartbeat_interval_s=10,
                           sweep_threshold_s=60)  # fmt: skip
    heartbeat(conn, s, silent, running_jobs=0, state="active")
    job = add_job(conn, JobSpec("work"), s)
    q(conn, s.name, "update {s}.jobs set locked_by = %s, locked_at = now() returning 1", [silent])
    q(conn, s.name, "update {s}.pools set heartbeat_at = now() - interval '5 minutes' "
      "returning 1")  # fmt: skip
    # Fresh out of an outage, a migrator cannot tell a dead pool from one about to beat
    # again: for one threshold it declares none dead, and the migration waits.
    blocked = MigrationResult()
    assert not apply_one(conn, s, v3, v3.get("app/0003"), threshold_s=60, force=True,
                         result=blocked, judge_silence=False)  # fmt: skip
    assert blocked.applied == [] and blocked.evicted_pools == []
    assert q(conn, s.name, "select state from {s}.pools") == [("active",)]
    # Past its probation (here: none, the test vouches for the database's view) it does.
    result = migrate(conn, s, v3, threshold_s=60, force_after_s=3600, probation_s=0)
    assert result.applied == ["app/0003"] and result.evicted_pools == []
    # The silent pool is dead, not merely ignored: if it comes back it finds out and exits.
    [(state, reason)] = q(conn, s.name, "select state, reason from {s}.pools")
    assert state == "dead" and "breaking migration" in str(reason)
    assert q(conn, s.name, "select locked_by from {s}.jobs where id = %s", [job]) == [(None,)]
    # A v2 pool registering now cannot turn active: activation re-checks under the lock.
    late = register_pool(conn, s, PoolIdentity.from_env(fleet="", version="2"), v2,
                         mode="external", concurrency=1, heartbeat_interval_s=10,
                         sweep_threshold_s=60)  # fmt: skip
    assert activate(conn, s, v2, late).out_of_date
    assert q(conn, s.name, "select state from {s}.pools where pool_id = %s", [late]) == [
        ("starting",)
    ]


def test_a_breaking_migration_after_old_pools_stopped_does_not_wait_out_probation(
    conn: psycopg.Connection, schema_name: str, database_url: str, tmp_path: Path
) -> None:
    """A new worker is on probation for one threshold after its start, but the old pools'
    own record of their stop is no silence to judge: with every outdated pool stopped, the
    breaking migration runs at once, not a threshold (60 s here) later."""
    url, s = database_url, schema_name
    slow = [*FAST, "--sweep-threshold", "60s"]
    v2 = WorkerProcess(url, s, V2, tmp_path, *slow)
    v3: WorkerProcess | None = None
    try:
        wait_for(lambda: active_versions(conn, s) == ["2.0.0"], what="v2 active")
        v2.signal(signal.SIGTERM)
        assert v2.wait() == ExitCode.OK
        started = time.monotonic()
        v3 = WorkerProcess(url, s, V3, tmp_path, *slow)
        wait_for(lambda: "app/0003" in applied(conn, s), timeout=20, what="app/0003 applied")
        assert time.monotonic() - started < 20
        wait_for(lambda: active_versions(conn, s) == ["3.0.0"], what="v3 active")
    finally:
        v2.stop()
        if v3 is not None:
            v3.stop()
