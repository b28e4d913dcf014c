"""`make bench`: fleet-worker beside Graphile Worker, pgqueuer and procrastinate on one
PostgreSQL in one run: processing no-op jobs (each system at its defaults, at concurrency 10
and at its best documented setting), bulk and single enqueue, enqueue-to-start latency with
an idle worker, and CPU seconds per 10,000 jobs of the worker and of PostgreSQL.

    python -m bench.compare [--jobs N] [--single N] [--only ours|peers] [--json PATH]

The peers are installed into ~/.cache/workerfleet/peers by bench.peers, never into the
project's environment. Prints a table with each figure's ratio to Graphile Worker's and
writes JSON and a PNG chart (bench/results/compare.json, compare.png).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import psycopg

from bench.peers.harness import (
    CpuSampler,
    PeerResult,
    percentile,
    postgres_cpu_sampler,
)
from bench.worker_throughput import (
    ROOT,
    count,
    database,
    drain_queue,
    fresh_schema,
    start_worker,
    stop,
)
from fleet_worker.queue import JobSpec, add_job, add_jobs

Figure = PeerResult  # one figure of any system, ours or a peer's


def ours_processing(
    url: str, pg_cpu: CpuSampler | None, jobs: int, setting: str, *args: str
) -> Figure:
    with psycopg.connect(url, autocommit=True) as conn:
        schema = fresh_schema(conn)
        add_jobs(conn, [JobSpec("noop") for _ in range(jobs)], schema)
        conn.execute("vacuum analyze")  # every system starts from analysed tables
    d = drain_queue(url, schema, jobs, *args, db_cpu=pg_cpu)
    return Figure("fleet-worker", setting, "processing", d.jobs_per_s, "jobs/s",
                  d.cpu_s_per_10k, d.db_cpu_s_per_10k)  # fmt: skip


def ours_enqueue(url: str, jobs: int, single: int) -> list[Figure]:
    with psycopg.connect(url, autocommit=True) as conn:
        schema = fresh_schema(conn)
        began = time.perf_counter()
        add_jobs(conn, [JobSpec("noop") for _ in range(jobs)], schema)
        bulk = jobs / (time.perf_counter() - began)
        began = time.perf_counter()
        for _ in range(single):
            add_job(conn, JobSpec("noop"), schema)
        one = single / (time.perf_counter() - began)
    return [
        Figure(
            "fleet-worker", f"add_jobs, {jobs} specs in one call", "bulk-enqueue", bulk, "jobs/s"
        ),
        Figure("fleet-worker", "add_job per job", "single-enqueue", one, "jobs/s"),
    ]


def ours_latency(url: str, samples: int) -> list[Figure]:
    """An idle worker; one job every 20 ms; created_at to the task's first line, both on
    the database's clock."""
    with psycopg.connect(url, autocommit=True) as conn:
        schema = fresh_schema(conn)
        conn.execute(schema.q("create table {s}.stamps (id bigint, created timestamptz, "
                              "started timestamptz)"))  # fmt: skip
        os.environ["BENCH_SCHEMA"] = schema.name
        proc = start_worker(url, schema)
        try:
            time.sleep(3)  # registered, listening, idle
            for _ in range(samples):
                add_job(conn, JobSpec("stamp"), schema)
                time.sleep(0.02)
            deadline = time.monotonic() + 30
            while count(conn, schema) > 0 and time.monotonic() < deadline:
                time.sleep(0.05)
            rows = conn.execute(
                schema.q("select extract(epoch from started - created) * 1000 from {s}.stamps")
            ).fetchall()
        finally:
            stop(proc)
    ms = sorted(float(r[0]) for r in rows)
    if len(ms) < samples:
        raise RuntimeError(f"latency: only {len(ms)} of {samples} jobs ran")
    setting = "defaults, LISTEN/NOTIFY"
    return [
        Figure("fleet-worker", setting, "latency-p50", percentile(ms, 0.50), "ms"),
        Figure("fleet-worker", setting, "latency-p99", percentile(ms, 0.99), "ms"),
    ]


# fleet-worker's settings: its defaults, more slots, and the local queue (fetch ahead).
SETTINGS: list[tuple[str, tuple[str, ...]]] = [
    ("concurrency 50", ("--concurrency", "50")),
    ("concurrency 50, local queue 500", ("--concurrency", "50", "--local-queue-size", "500")),
    (
        "concurrency 100, local queue 1000",
        ("--concurrency", "100", "--local-queue-size", "1000"),
    ),
]


def ours(url: str, pg_cpu: CpuSampler | None, jobs: int, single: int, samples: int) -> list[Figure]:
    c10 = ours_processing(url, pg_cpu, jobs, "defaults (concurrency 10)")
    out = [c10, replace(c10, measure="processing-c10")]
    out += [ours_processing(url, pg_cpu, jobs, label, *args) for label, args in SETTINGS]
    out += ours_enqueue(url, jobs, single)
    out += ours_latency(url, samples)
    return out


def best(figures: list[Figure], system: str, measure: str) -> Figure | None:
    mine = [f for f in figures if f.name == system and f.measure == measure]
    if not mine:
        return None
    low_is_good = measure.startswith("latency")
    return min(mine, key=lambda f: f.value) if low_is_good else max(mine, key=lambda f: f.value)


def table(figures: list[Figure]) -> str:
    measures = ["processing", "processing-c10", "bulk-enqueue", "single-enqueue",
                "latency-p50", "latency-p99"]  # fmt: skip
    systems = sorted({f.name for f in figures}, key=lambda s: (s != "fleet-worker", s))
    lines = [f"{'measure':<16} " + " ".join(f"{s:>26}" for s in systems)]
    for m in measures:
        cells = []
        base = best(figures, "graphile-worker", m)
        for s in systems:
            f = best(figures, s, m)
            if f is None:
                cells.append(f"{'-':>26}")
                continue
            ratio = ""
            if base is not None and base.value:
                r = f.value / base.value
                ratio = f" ({r:.2f}x)"
            cells.append(f"{f.value:>14,.1f}{ratio:>12}")
        lines.append(f"{m:<16} " + " ".join(cells))
    lines.append("")
    lines.append(
        "CPU s per 10k jobs (worker / PostgreSQL), at each system's best processing setting:"
    )
    for s in systems:
        f = best(figures, s, "processing")
        if f is not None and f.cpu_s_per_10k is not None:
            pg = f.db_cpu_s_per_10k
            lines.append(f"  {s:<16} {f.cpu_s_per_10k:6.2f} / "
                         f"{'-' if pg is None else f'{pg:.2f}'}   ({f.setting})")  # fmt: skip
    lines.append("")
    lines.append("every figure:")
    for f in figures:
        lines.append(f"  {f.name:<16} {f.measure:<15} {f.value:>12,.1f} {f.unit:<7} {f.setting}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--single", type=int, default=2_000)
    parser.add_argument("--latency-samples", type=int, default=500)
    parser.add_argument("--only", choices=["ours", "peers"])
    parser.add_argument("--json", type=Path, default=ROOT / "bench/results/compare.json")
    args = parser.parse_args()
    figures: list[Figure] = []
    meta: dict[str, Any] = {"cpu_count": os.cpu_count(), "jobs": args.jobs}
    with database() as url:
        pg_cpu = postgres_cpu_sampler(url)
        if args.only != "peers":
            figures += ours(url, pg_cpu, args.jobs, args.single, args.latency_samples)
        if args.only != "ours":
            from bench import peers

            meta["peer_versions"] = peers.install_all()
            figures += peers.run_all(url, None, args.jobs, args.single, args.latency_samples)
        with psycopg.connect(url) as conn:
            meta["postgres"] = conn.execute("select version()").fetchone()[0]  # type: ignore[index]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({**meta, "figures": [asdict(f) for f in figures]}, indent=2))
    print(table(figures))
    print(f"\nJSON: {args.json}")
    from bench.chart import render

    print(f"chart: {render(args.json, args.json.with_suffix('.png'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
