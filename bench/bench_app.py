"""The benchmark's app: a no-op async task (measures the runtime, not the work), a task
that sleeps (holds a job while the benchmark kills its worker) and one that stamps its
start (enqueue-to-start latency)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from fleet_worker import App, JobContext

app = App(name="bench", version="1.0.0")


@app.task("noop")
async def noop(payload: Any) -> None:
    return None


@app.task("hold")
async def hold(payload: Any) -> None:
    await asyncio.sleep(float(payload.get("seconds", 3600)))


_stamps: dict[str, Any] = {}  # the stamp task's own connection, opened on first use


@app.task("stamp")
async def stamp(payload: Any, ctx: JobContext) -> None:
    """Records enqueue (the job's created_at) and start, both on the database's clock."""
    import psycopg
    from psycopg import sql

    conn = _stamps.get("conn")
    if conn is None or conn.closed:
        url = os.environ["DATABASE_URL"]
        conn = _stamps["conn"] = await psycopg.AsyncConnection.connect(url, autocommit=True)
    query = sql.SQL(
        "insert into {s}.stamps select id, created_at, clock_timestamp() from {s}.jobs "
        "where id = %s"
    ).format(s=sql.Identifier(os.environ["BENCH_SCHEMA"]))
    await conn.execute(query, [ctx.job_id])
