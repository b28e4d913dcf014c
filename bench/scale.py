"""Throughput as the queue grows: a near-empty queue against 1,000,000 runnable jobs and
against 100,000 jobs scheduled in the future, one worker process at its best setting, with
the plan of the fetch statement and the table's size in each case; then one against four
worker processes on one queue, checked to never hand a job to two of them.

    python -m bench.scale [--big N] [--scheduled N] [--window N] [--json PATH]

Progress is read from the worker's own /metrics (jobs completed), not from count(*) over a
million rows, which would load the database it measures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench.worker_throughput import ROOT, database, fresh_schema, start_worker, stop
from fleet_worker.db import Schema
from fleet_worker.queue import JobSpec, QueueSQL, add_jobs
from localcluster.procs import free_port

BEST = ("--concurrency", "100", "--local-queue-size", "1000")
CHUNK = 50_000


def fill(
    conn: psycopg.Connection, schema: Schema, n: int, *, run_at: datetime | None = None
) -> None:
    for start in range(0, n, CHUNK):
        add_jobs(
            conn, [JobSpec("noop", run_at=run_at) for _ in range(min(CHUNK, n - start))], schema
        )


def settle(conn: psycopg.Connection) -> None:
    """Analysed tables, and the fill's WAL checkpointed now rather than in the middle of
    the measurement (a checkpoint there cost a third of one run's throughput)."""
    conn.execute("vacuum analyze")
    # A DATABASE_URL role that may not checkpoint: measured with whatever comes.
    with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
        conn.execute("checkpoint")


def counter(port: int, name: str = "jobs_completed") -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    match = re.search(rf"^fleet_worker_{name}_total (\d+)", text, re.M)
    return int(match.group(1)) if match else 0


def completed(port: int) -> int:
    return counter(port)


def fetch_plan(conn: psycopg.Connection, schema: Schema) -> str:
    """EXPLAIN ANALYZE of one fetch of 1,100 jobs by a throwaway pool, rolled back."""
    q = QueueSQL(schema)
    with conn.transaction(force_rollback=True):
        pool = conn.execute(
            schema.q(
                "insert into {s}.pools (pool_id, version, mode, catalog, state, concurrency) "
                "values (gen_random_uuid(), 'plan', 'self', '[]', 'active', 1) returning pool_id"
            )
        ).fetchone()
        assert pool is not None
        params = q.fetch_params(pool[0], ["noop"], 1100, 60)
        rows = conn.execute(sql.SQL("explain (analyze, buffers, costs off) ") + q.fetch, params)
        return "\n".join(r[0] for r in rows.fetchall())


def measure(url: str, label: str, runnable: int, window: int, scheduled: int = 0) -> dict[str, Any]:
    """Jobs/s over the first `window` completions, `runnable` queued (and `scheduled` more
    due tomorrow)."""
    with psycopg.connect(url, autocommit=True) as conn:
        schema = fresh_schema(conn)
        fill(conn, schema, runnable)
        if scheduled:
            fill(conn, schema, scheduled, run_at=datetime.now(UTC) + timedelta(days=1))
        settle(conn)
        plan = fetch_plan(conn, schema)
        size_before = conn.execute(
            "select pg_total_relation_size(%s)", [f"{schema.name}.jobs"]
        ).fetchone()[0]  # type: ignore[index]
        port = free_port()
        proc = start_worker(url, schema, *BEST, "--health-port", str(port))
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if completed(port) > 0:
                        break
                except OSError:
                    pass
                time.sleep(0.01)
            began, start_count = time.perf_counter(), completed(port)
            while completed(port) - start_count < window:
                time.sleep(0.02)
            rate = (completed(port) - start_count) / (time.perf_counter() - began)
        finally:
            stop(proc)
    execution = re.search(r"Execution Time: ([\d.]+) ms", plan)
    return {
        "case": label,
        "runnable": runnable,
        "scheduled": scheduled,
        "jobs_per_s": rate,
        "fetch_of_1100_ms": float(execution.group(1)) if execution else None,
        "table_mb_before": size_before / 1e6,
        "fetch_plan": plan,
    }


def several(url: str, workers: int, jobs: int) -> dict[str, Any]:
    """`workers` processes on one queue of `jobs`: jobs/s from the first completion to the
    last, and the proof that none was handed to two of them (every completion accepted,
    and the completions add up to the jobs, no more)."""
    with psycopg.connect(url, autocommit=True) as conn:
        schema = fresh_schema(conn)
        fill(conn, schema, jobs)
        settle(conn)
        ports = [free_port() for _ in range(workers)]
        procs = [start_worker(url, schema, *BEST, "--health-port", str(p)) for p in ports]
        try:

            def total() -> int:
                try:
                    return sum(completed(p) for p in ports)
                except OSError:
                    return 0

            while total() == 0:
                time.sleep(0.01)
            began = time.perf_counter()
            while conn.execute(schema.q("select exists (select 1 from {s}.jobs)")).fetchone() == (
                True,
            ):
                time.sleep(0.02)
            elapsed = time.perf_counter() - began
            done = [completed(p) for p in ports]
            rejected = sum(counter(p, "completions_rejected") for p in ports)
        finally:
            for proc in procs:
                stop(proc)
    if sum(done) != jobs or rejected:
        raise AssertionError(f"{workers} workers: completions {done} (sum {sum(done)} of {jobs})"
                             f", {rejected} rejected: a job went to two workers")  # fmt: skip
    return {"case": f"{workers} worker processes", "jobs": jobs, "jobs_per_s": jobs / elapsed,
            "per_worker": done}  # fmt: skip


def main() -> int:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--big", type=int, default=1_000_000)
    parser.add_argument("--scheduled", type=int, default=100_000)
    parser.add_argument("--window", type=int, default=100_000)
    parser.add_argument("--json", type=Path, default=ROOT / "bench/results/scale.json")
    args = parser.parse_args()
    with database() as url:
        rows = [
            measure(url, "near-empty", args.window + 10_000, args.window),
            measure(url, f"{args.big:,} queued", args.big, args.window),
            measure(
                url,
                f"{args.scheduled:,} scheduled ahead",
                args.window + 10_000,
                args.window,
                scheduled=args.scheduled,
            ),
        ]
        together = [several(url, n, args.window) for n in (1, 4)]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"growth": rows, "workers": together}, indent=2))
    base = rows[0]["jobs_per_s"]
    print(
        f"{'case':<26} {'jobs/s':>10} {'vs near-empty':>14} {'fetch 1100 ms':>14} {'table MB':>9}"
    )
    for r in rows:
        fetch_ms = r["fetch_of_1100_ms"] or float("nan")
        print(
            f"{r['case']:<26} {r['jobs_per_s']:>10,.0f} {r['jobs_per_s'] / base:>13.2f}x "
            f"{fetch_ms:>14.1f} {r['table_mb_before']:>9.1f}"
        )
    print(f"\n{'workers on one queue':<26} {'jobs/s':>10} {'vs one':>8}  completions per worker")
    for t in together:
        ratio = t["jobs_per_s"] / together[0]["jobs_per_s"]
        print(f"{t['case']:<26} {t['jobs_per_s']:>10,.0f} {ratio:>7.2f}x  {t['per_worker']}")
    for r in rows:
        print(f"\n-- fetch plan, {r['case']}:\n{r['fetch_plan']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
