"""Table size over a long run: a steady stream of jobs through one worker for minutes,
sampling the jobs table's size, its dead tuples, autovacuum's passes and the queue's depth.
Completed jobs are deleted, so with autovacuum keeping up the table stays the size of its
backlog plus the dead rows between two vacuums.

    python -m bench.steady [--seconds N] [--rate JOBS_PER_S] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from bench.scale import BEST
from bench.worker_throughput import ROOT, database, fresh_schema, start_worker, stop
from fleet_worker.db import Schema
from fleet_worker.queue import JobSpec, add_jobs

BATCH = 500


def produce(url: str, schema: Schema, rate: int, until: float, added: list[int]) -> None:
    """`rate` jobs a second in batches of BATCH until `until` (monotonic)."""
    interval = BATCH / rate
    with psycopg.connect(url, autocommit=True) as conn:
        next_at = time.monotonic()
        while next_at < until:
            add_jobs(conn, [JobSpec("noop") for _ in range(BATCH)], schema)
            added[0] += BATCH
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))


def sample(conn: psycopg.Connection, schema: Schema, t: float, added: int) -> dict[str, Any]:
    row = conn.execute(
        """select pg_total_relation_size(c.oid), s.n_live_tup, s.n_dead_tup,
                  s.autovacuum_count, s.autoanalyze_count
           from pg_class c join pg_stat_user_tables s on s.relid = c.oid
           where c.oid = %s::regclass""",
        [f'"{schema.name}".jobs'],
    ).fetchone()
    assert row is not None
    depth = conn.execute(schema.q("select count(*) from {s}.jobs")).fetchone()
    assert depth is not None
    return {"t_s": round(t, 1), "added": added, "queued": int(depth[0]),
            "table_mb": row[0] / 1e6, "live": int(row[1]), "dead": int(row[2]),
            "autovacuums": int(row[3]), "autoanalyzes": int(row[4])}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=180)
    parser.add_argument("--rate", type=int, default=5_000)
    parser.add_argument("--every", type=float, default=10.0)
    parser.add_argument("--json", type=Path, default=ROOT / "bench/results/steady.json")
    args = parser.parse_args()
    samples: list[dict[str, Any]] = []
    with database() as url, psycopg.connect(url, autocommit=True) as conn:
        schema = fresh_schema(conn)
        proc = start_worker(url, schema, *BEST)
        added = [0]
        began = time.monotonic()
        producer = threading.Thread(
            target=produce, args=(url, schema, args.rate, began + args.seconds, added)
        )
        producer.start()
        try:
            while producer.is_alive():
                time.sleep(args.every)
                samples.append(sample(conn, schema, time.monotonic() - began, added[0]))
                print(json.dumps(samples[-1]), flush=True)
        finally:
            producer.join()
            stop(proc)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(samples, indent=2))
    print(f"\n{'t (s)':>6} {'added':>9} {'queued':>7} {'table MB':>9} {'dead':>7} {'autovac':>8}")
    for s in samples:
        print(f"{s['t_s']:>6} {s['added']:>9,} {s['queued']:>7,} {s['table_mb']:>9.1f} "
              f"{s['dead']:>7,} {s['autovacuums']:>8}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
