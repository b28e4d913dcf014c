"""fleet-worker benchmarks: processing and enqueue throughput, each beside its baseline in
the same run, and the time from SIGKILL to recovery with default settings.

    python -m bench.worker_throughput [--jobs N] [--skip-recovery] [--json PATH]

Prints a table and writes JSON (bench/results/worker.json by default).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from bench.peers.harness import Command, CpuSampler, Drain, drain
from fleet_worker.catalog import Catalog
from fleet_worker.db import Schema
from fleet_worker.migrate import migrate
from fleet_worker.queue import JobSpec, add_job, add_jobs
from workerfleet_dev import harness

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def database() -> Iterator[str]:
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    from workerfleet_dev.postgres import LocalPostgres

    with LocalPostgres() as pg:
        yield pg.url


def fresh_schema(conn: psycopg.Connection) -> Schema:
    schema = Schema(f"bench_{uuid.uuid4().hex[:8]}")
    migrate(conn, schema, Catalog.load())
    return schema


BENCH_APP = "bench.bench_app"


def worker_argv(schema: Schema, *args: str) -> list[str]:
    """`fleet-worker run` of the benchmark's app (env: worker_env), for the peer harness."""
    return harness.worker_argv(BENCH_APP, "--schema", schema.name, "--health-port", "0", *args,
                               log_level="WARNING")  # fmt: skip


def worker_env(url: str) -> dict[str, str]:
    return {"DATABASE_URL": url, "PYTHONPATH": str(ROOT)}


def start_worker(url: str, schema: Schema, *args: str) -> harness.WorkerProcess:
    """A worker of the benchmark's app, its output on this process's."""
    return harness.WorkerProcess(
        url, schema.name, BENCH_APP, None, *args, pythonpath=[ROOT], log_level="WARNING"
    )


def count(conn: psycopg.Connection, schema: Schema) -> int:
    row = conn.execute(schema.q("select count(*) from {s}.jobs")).fetchone()
    assert row is not None
    return int(row[0])


def stop(proc: harness.WorkerProcess) -> None:
    """A graceful stop: SIGTERM, then the drain of what it holds."""
    proc.stop(signal.SIGTERM, grace_s=60)


def drain_queue(
    url: str, schema: Schema, jobs: int, *args: str, db_cpu: CpuSampler | None = None
) -> Drain:
    """One worker on `schema`'s `jobs` queued jobs, timed and costed as the peers are
    (bench.peers.harness.drain)."""
    command = Command(worker_argv(schema, *args), worker_env(url), ROOT)
    pending = f'select count(*) from "{schema.name}".jobs'
    return drain(command, url, pending, jobs, db_cpu)


def processing_rate(url: str, jobs: int, *worker_args: str, small: bool = False) -> float:
    """No-op jobs per second through one worker process, queue pre-filled (in batches of
    1,000, not analysed: the planner sees what a fresh bulk load leaves it). `small`: filled
    by 100-job SQL enqueues with autovacuum off on the table, so it has no statistics at all,
    as a new queue has until autovacuum's first analyze (a minute or more)."""
    with psycopg.connect(url, autocommit=True) as conn:
        schema = fresh_schema(conn)
        if small:
            conn.execute(schema.q("alter table {s}.jobs set (autovacuum_enabled = false)"))
        for start in range(0, jobs, 1000):
            if small:
                for _ in range(10):
                    conn.execute(
                        schema.q("select {s}.add_job('noop') from generate_series(1, 100)")
                    )
                continue
            add_jobs(conn, [JobSpec("noop") for _ in range(min(1000, jobs - start))], schema)
    return drain_queue(url, schema, jobs, "--concurrency", "50", *worker_args).jobs_per_s


def enqueue_rates(url: str, jobs: int) -> tuple[float, float]:
    """(one add_job round trip per job, pipelined batches of 500)."""
    with psycopg.connect(url, autocommit=True) as conn:
        schema = fresh_schema(conn)
        single = max(1000, jobs // 10)
        began = time.perf_counter()
        for _ in range(single):
            add_job(conn, JobSpec("noop"), schema)
        one_by_one = single / (time.perf_counter() - began)
        began = time.perf_counter()
        for start in range(0, jobs, 500):
            add_jobs(conn, [JobSpec("noop") for _ in range(min(500, jobs - start))], schema)
        batched = jobs / (time.perf_counter() - began)
    return one_by_one, batched


def recovery_seconds(url: str, *worker_args: str) -> float:
    """SIGKILL a worker holding a job; seconds until another worker holds it again."""
    with psycopg.connect(url, autocommit=True) as conn:
        schema = fresh_schema(conn)
        job = add_job(conn, JobSpec("hold"), schema)
        victim = start_worker(url, schema, *worker_args)
        first_pool = None
        while first_pool is None:
            got = conn.execute(
                schema.q("select locked_by from {s}.jobs where id = %s"), [job]
            ).fetchone()
            first_pool = got[0] if got else None
            time.sleep(0.01)
        rescuer = start_worker(url, schema, *worker_args)
        time.sleep(2)  # the rescuer is up and heartbeating before the crash
        victim.kill()
        killed = time.perf_counter()
        try:
            while True:
                row = conn.execute(
                    schema.q("select locked_by from {s}.jobs where id = %s"), [job]
                ).fetchone()
                if row and row[0] is not None and row[0] != first_pool:
                    return time.perf_counter() - killed
                time.sleep(0.05)
        finally:
            rescuer.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument(
        "--skip-recovery",
        action="store_true",
        help="skip the ~90 s default-settings recovery measurement",
    )
    parser.add_argument("--json", type=Path, default=ROOT / "bench/results/worker.json")
    args = parser.parse_args()
    results: dict[str, Any] = {"jobs": args.jobs, "cpu_count": os.cpu_count()}
    with database() as url:
        results["process_batched_jobs_per_s"] = processing_rate(url, args.jobs)
        results["process_unanalysed_jobs_per_s"] = processing_rate(url, args.jobs, small=True)
        results["process_with_history_jobs_per_s"] = processing_rate(
            url, args.jobs, "--keep-history", "1h"
        )
        results["process_unbatched_jobs_per_s"] = processing_rate(
            url, args.jobs // 4, "--batch-size", "1"
        )
        single, batched = enqueue_rates(url, args.jobs)
        results["enqueue_single_jobs_per_s"] = single
        results["enqueue_batched_jobs_per_s"] = batched
        results["recovery_fast_settings_s"] = recovery_seconds(
            url, "--heartbeat-interval", "1s", "--sweep-interval", "1s", "--sweep-threshold", "3s"
        )
        if not args.skip_recovery:
            results["recovery_default_settings_s"] = recovery_seconds(url)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    rows = [
        (
            "processing, no-op jobs, 1 process",
            "batched fetch",
            results["process_batched_jobs_per_s"],
            "batch size 1",
            results["process_unbatched_jobs_per_s"],
            "jobs/s",
        ),
        (
            "processing, no statistics yet",
            "100-job enqueues",
            results["process_unanalysed_jobs_per_s"],
            "bulk load, analysed",
            results["process_batched_jobs_per_s"],
            "jobs/s",
        ),
        (
            "processing, completed-job history",
            "--keep-history 1h",
            results["process_with_history_jobs_per_s"],
            "no history (default)",
            results["process_batched_jobs_per_s"],
            "jobs/s",
        ),
        (
            "enqueue",
            "pipelined batches of 500",
            results["enqueue_batched_jobs_per_s"],
            "one add_job per call",
            results["enqueue_single_jobs_per_s"],
            "jobs/s",
        ),
        (
            "SIGKILL to job re-locked",
            "heartbeat 1s/threshold 3s",
            results["recovery_fast_settings_s"],
            "defaults 10s/30s/60s",
            results.get("recovery_default_settings_s", float("nan")),
            "s",
        ),
    ]
    print(json.dumps(results, indent=2))
    print(f"\n{'measure':<34} {'ours':<28} {'value':>10}   {'baseline':<22} {'value':>10}")
    for name, ours, a, base, b, unit in rows:
        print(f"{name:<34} {ours:<28} {a:>10.1f}   {base:<22} {b:>10.1f} {unit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
