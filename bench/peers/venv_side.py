"""The pgqueuer and procrastinate side of bench/peers: runs in the peers' venv, never in the
project's (neither library is a project dependency, hence the ignored imports below).

The procrastinate worker is started with its own CLI, which imports this module:

    python -m procrastinate --app venv_side.procrastinate_app worker [-c N ...]

The rest goes through main() (called as `python -c "import venv_side; venv_side.main()"`
so that procrastinate's App lives in an importable module, not in __main__):

    pgq-worker [--batch-size N] [--max-concurrent-tasks M]
    enqueue {pgqueuer|procrastinate} {bulk|single} COUNT
    stamps {pgqueuer|procrastinate} FIRST_ID COUNT INTERVAL_S

`pgq-worker` is what `pgq run venv_side:pgq_factory` does, through `pgqueuer.run` (the
library's programmatic twin of its CLI): the 1.6.0 CLI's `run` fails before starting with
typer 0.29 (`'str' object has no attribute 'name'` in its log-level setup). Without that
setup the pgqueuer logger reports warnings and errors only, like the other workers here.

`enqueue` prints one JSON line {"seconds": ...} timing only the library calls. `stamps`
enqueues `stamp` jobs one at a time, each carrying its id and the enqueue time (this host's
clock, which the database on localhost shares); the handler stores both beside the
database's clock_timestamp() at start in bench_stamps.

The connection string comes from PEER_DATABASE_URL; PEER_POOL_MAX_SIZE optionally sizes
procrastinate's connection pool.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg  # type: ignore[import-not-found]
import pgqueuer  # type: ignore[import-not-found]
import procrastinate  # type: ignore[import-not-found]

STAMP_SQL = (
    "insert into bench_stamps (id, enqueued_at, started_at) "
    "values ({id}, {enq}::timestamptz, clock_timestamp())"
)


def database_url() -> str:
    return os.environ["PEER_DATABASE_URL"]


# -- pgqueuer ------------------------------------------------------------------------------


@asynccontextmanager
async def pgq_factory() -> AsyncIterator[Any]:
    """The factory `pgq run` calls: a PgQueuer on one asyncpg connection (the library's
    advice for a QueueManager) with a `noop` and a `stamp` entrypoint. `stamp` writes on a
    small pool of its own: an asyncpg connection runs one statement at a time."""
    connection = await asyncpg.connect(dsn=database_url())
    stamp_pool = await asyncpg.create_pool(dsn=database_url(), min_size=1, max_size=2)
    pgq = pgqueuer.PgQueuer(pgqueuer.AsyncpgDriver(connection))
    stamp_sql = STAMP_SQL.format(id="$1", enq="$2::text")

    async def noop(job: Any) -> None:
        return None

    async def stamp(job: Any) -> None:
        payload = json.loads(job.payload)
        await stamp_pool.execute(stamp_sql, payload["id"], payload["enq"])

    pgq.entrypoint("noop")(noop)
    pgq.entrypoint("stamp")(stamp)
    try:
        yield pgq
    finally:
        await stamp_pool.close()
        await connection.close()


async def pgq_worker(batch_size: int, max_concurrent_tasks: int | None) -> None:
    """Run until SIGTERM/SIGINT (pgqueuer installs the handlers)."""
    await pgqueuer.run(
        pgq_factory, batch_size=batch_size, max_concurrent_tasks=max_concurrent_tasks
    )


async def pgq_enqueue(bulk: bool, count: int) -> float:
    connection = await asyncpg.connect(dsn=database_url())
    try:
        queries = pgqueuer.Queries(pgqueuer.AsyncpgDriver(connection))
        began = time.perf_counter()
        if bulk:
            await queries.enqueue(["noop"] * count, [None] * count, [0] * count)
        else:
            for _ in range(count):
                await queries.enqueue("noop", None)
        return time.perf_counter() - began
    finally:
        await connection.close()


async def pgq_stamps(first: int, count: int, interval: float) -> None:
    connection = await asyncpg.connect(dsn=database_url())
    try:
        queries = pgqueuer.Queries(pgqueuer.AsyncpgDriver(connection))
        async for job_id in paced(first, count, interval):
            payload = json.dumps({"id": job_id, "enq": now_iso()}).encode()
            await queries.enqueue("stamp", payload)
    finally:
        await connection.close()


# -- procrastinate -------------------------------------------------------------------------


def _procrastinate_connector() -> Any:
    pool_args: dict[str, Any] = {"conninfo": os.environ.get("PEER_DATABASE_URL", "")}
    if os.environ.get("PEER_POOL_MAX_SIZE"):
        size = int(os.environ["PEER_POOL_MAX_SIZE"])
        pool_args.update(min_size=min(4, size), max_size=size)
    return procrastinate.PsycopgConnector(**pool_args)


procrastinate_app: Any = procrastinate.App(connector=_procrastinate_connector())


async def _proc_noop() -> None:
    return None


async def _proc_stamp(context: Any, job_id: int, enq: str) -> None:
    await context.app.connector.execute_query_async(
        STAMP_SQL.format(id="%(job_id)s", enq="%(enq)s"), job_id=job_id, enq=enq
    )


proc_noop: Any = procrastinate_app.task(name="noop")(_proc_noop)
proc_stamp: Any = procrastinate_app.task(name="stamp", pass_context=True)(_proc_stamp)


async def procrastinate_enqueue(bulk: bool, count: int) -> float:
    async with procrastinate_app.open_async():
        began = time.perf_counter()
        if bulk:
            await proc_noop.batch_defer_async(*({} for _ in range(count)))
        else:
            for _ in range(count):
                await proc_noop.defer_async()
        return time.perf_counter() - began


async def procrastinate_stamps(first: int, count: int, interval: float) -> None:
    async with procrastinate_app.open_async():
        async for job_id in paced(first, count, interval):
            await proc_stamp.defer_async(job_id=job_id, enq=now_iso())


# -- shared --------------------------------------------------------------------------------


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


async def paced(first: int, count: int, interval: float) -> AsyncIterator[int]:
    """Job ids first..first+count-1, one every `interval` seconds (on a fixed schedule, so
    a slow enqueue does not push every later one back)."""
    start = time.perf_counter()
    for i in range(count):
        delay = start + i * interval - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        yield first + i


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("pgq-worker")
    worker.add_argument("--batch-size", type=int, default=10)  # pgqueuer's default
    worker.add_argument("--max-concurrent-tasks", type=int, default=None)  # unlimited
    enqueue = sub.add_parser("enqueue")
    enqueue.add_argument("peer", choices=["pgqueuer", "procrastinate"])
    enqueue.add_argument("style", choices=["bulk", "single"])
    enqueue.add_argument("count", type=int)
    stamps = sub.add_parser("stamps")
    stamps.add_argument("peer", choices=["pgqueuer", "procrastinate"])
    stamps.add_argument("first", type=int)
    stamps.add_argument("count", type=int)
    stamps.add_argument("interval", type=float)
    args = parser.parse_args(argv)
    if args.command == "pgq-worker":
        asyncio.run(pgq_worker(args.batch_size, args.max_concurrent_tasks))
    elif args.command == "enqueue":
        run = pgq_enqueue if args.peer == "pgqueuer" else procrastinate_enqueue
        seconds = asyncio.run(run(args.style == "bulk", args.count))
        print(json.dumps({"seconds": seconds}), flush=True)
    else:
        send = pgq_stamps if args.peer == "pgqueuer" else procrastinate_stamps
        asyncio.run(send(args.first, args.count, args.interval))
    return 0


if __name__ == "__main__":
    sys.exit(main())
