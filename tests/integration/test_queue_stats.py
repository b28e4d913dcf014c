"""Queue statistics against a real PostgreSQL: one recount per interval however many pools
ask, the per-entity queues folded, and what a real worker exports on /metrics."""

from __future__ import annotations

import re
import signal
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from fleet_worker import queue_stats
from fleet_worker.db import Schema
from fleet_worker.exit_codes import ExitCode
from fleet_worker.queue import JobSpec, add_jobs
from tests.helpers import FAST, WorkerProcess, q, wait_for
from tests.integration.test_worker_process import V1, _health_port, install

pytestmark = pytest.mark.integration


def test_one_recount_per_interval_and_the_long_tail_of_queues_folded(
    conn: psycopg.Connection, schema: Schema, database_url: str
) -> None:
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    specs = [JobSpec("a", run_at=hour_ago)] + [JobSpec("a") for _ in range(3)]
    specs += [JobSpec("b", queue=f"user-{i}") for i in range(30)]  # a queue per entity
    specs += [JobSpec("b", queue="user-0") for _ in range(5)]
    add_jobs(conn, specs, schema)
    assert queue_stats.read(conn, schema).age_s is None  # never counted
    assert queue_stats.refresh_if_due(conn, schema, 60)
    with psycopg.connect(database_url, autocommit=True) as other:
        assert not queue_stats.refresh_if_due(other, schema, 60)  # counted a moment ago
    stats = queue_stats.read(conn, schema)
    assert stats.age_s is not None and stats.age_s < 5
    assert stats.jobs[("a", "", "waiting")] == 4
    assert 3590 < stats.oldest_waiting_s[("a", "")] < 3700
    assert stats.jobs[("b", "user-0", "waiting")] == 6
    queues = {queue for task, queue, _ in stats.jobs if task == "b"}
    assert len(queues) == queue_stats.TOP_QUEUES + 1 and queue_stats.OTHER in queues
    assert sum(n for (task, _, _), n in stats.jobs.items() if task == "b") == 35
    # Counted again once the interval passed, by whoever asks first.
    q(conn, schema.name, "update {s}.maintenance_runs set ran_at = now() - interval '2 minutes' "
      "returning 1")  # fmt: skip
    with psycopg.connect(database_url, autocommit=True) as other:
        assert queue_stats.refresh_if_due(other, schema, 60)


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def test_a_worker_exports_queue_counts_and_task_outcomes(
    conn: psycopg.Connection, schema_name: str, database_url: str, tmp_path: Path
) -> None:
    s = install(conn, schema_name)
    later = datetime.now(UTC) + timedelta(hours=1)
    add_jobs(conn, [JobSpec("work"), JobSpec("work"), JobSpec("flaky", {"succeed_on": 2}),
                    JobSpec("work", run_at=later)], s)  # fmt: skip
    args = [*FAST, "--queue-stats-interval", "0.5s"]
    worker = WorkerProcess(database_url, schema_name, V1, tmp_path, *args)
    try:
        port = wait_for(lambda: _health_port(worker), what="health port")
        done = 'fleet_worker_task_outcomes_total{task="work",outcome="completed"} 2'
        wait_for(lambda: done in metrics(port), what="two work jobs completed")
        scheduled = 'fleet_worker_queue_jobs{task="work",queue="",state="scheduled"} 1'

        def counted() -> str | None:
            body = metrics(port)
            return body if scheduled in body else None

        body = wait_for(counted, what="the scheduled job counted")
        assert 'fleet_worker_task_outcomes_total{task="flaky",outcome="retried"} 1' in body
        assert 'fleet_worker_schema_state{state="compatible"} 1' in body
        assert re.search(r"^fleet_worker_queue_stats_age_seconds \d", body, re.M)
        worker.signal(signal.SIGTERM)
        assert worker.wait() == ExitCode.OK
    finally:
        worker.stop()
