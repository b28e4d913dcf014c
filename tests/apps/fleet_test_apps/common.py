"""Tasks shared by the test apps. Each execution is written to the ledger table, so a test
can prove that no job was lost and none ran twice."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pydantic
from psycopg import sql

from fleet_worker import App, JobContext

_local = threading.local()


def db() -> psycopg.Connection:
    """The tasks' own connection. LEDGER_URL, when set, bypasses the worker's route to the
    database, so a test can cut the worker off while its tasks still report what they do."""
    conn: psycopg.Connection | None = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        url = os.environ.get("LEDGER_URL") or os.environ["DATABASE_URL"]
        conn = psycopg.connect(url, autocommit=True)
        _local.conn = conn
    return conn


def span_start(ctx: JobContext, kind: str) -> None:
    """An execution span (tests create the `spans` table): start now, end in span_end."""
    db().execute(
        sql.SQL("insert into {} (job_id, pool_id, kind) values (%s, %s, %s)").format(
            table("spans")
        ),
        [ctx.job_id, ctx.pool_id, kind],
    )


@contextlib.contextmanager
def span(ctx: JobContext, kind: str) -> Iterator[None]:
    """An execution span around the block: "done" if it ends, "cancelled" if it is cut."""
    span_start(ctx, kind)
    outcome = "cancelled"
    try:
        yield
        outcome = "done"
    finally:
        span_end(ctx, outcome)


def span_end(ctx: JobContext, outcome: str) -> None:
    db().execute(
        sql.SQL(
            "update {t} set ended_at = clock_timestamp(), outcome = %s where id = "
            "(select max(id) from {t} where job_id = %s and pool_id = %s)"
        ).format(t=table("spans")),
        [outcome, ctx.job_id, ctx.pool_id],
    )


def table(name: str) -> sql.Identifier:
    return sql.Identifier(os.environ.get("FLEET_SCHEMA", "fleet_worker"), name)


class StrictPayload(pydantic.BaseModel):
    n: int


def build(version: str, migrations: str, widget_column: str) -> App:
    app = App(
        name="fleet-test",
        version=version,
        migrations=__import__("pathlib").Path(__file__).parent / migrations,
    )

    @app.task("work")
    def work(payload: dict[str, Any], ctx: JobContext) -> None:
        conn = db()
        conn.execute(
            sql.SQL("insert into {} (job_id, pool_id, version) values (%s, %s, %s)").format(
                table("ledger")
            ),
            [ctx.job_id, ctx.pool_id, version],
        )
        conn.execute(
            sql.SQL("insert into {} (job_id, {}) values (%s, %s)").format(
                table("widgets"), sql.Identifier(widget_column)
            ),
            [ctx.job_id, f"widget-{ctx.job_id}"],
        )
        ctx.sleep(float(payload.get("sleep", 0)))  # stops when the worker asks

    @app.task("flaky")
    def flaky(payload: dict[str, Any], ctx: JobContext) -> None:
        if ctx.attempts < int(payload["succeed_on"]):
            raise RuntimeError(f"flaky failure on attempt {ctx.attempts}")

    @app.task("strict", payload=StrictPayload)
    def strict(payload: StrictPayload) -> None:
        assert payload.n >= 0

    @app.task("noop")
    async def noop(payload: Any) -> None:
        return None

    # Tasks that record their execution as a span (start, end, outcome), to prove that two
    # executions of one job never overlap.
    @app.task("span_async")
    async def span_async(payload: dict[str, Any], ctx: JobContext) -> None:
        with span(ctx, "async"):
            await asyncio.sleep(float(payload["s"]))

    @app.task("span_cooperative")
    def span_cooperative(payload: dict[str, Any], ctx: JobContext) -> None:
        with span(ctx, "cooperative"):
            ctx.sleep(float(payload["s"]))  # raises JobCancelled when the worker asks

    # Work that must never run twice: an attempt its worker did not see through is failed,
    # not retried.
    @app.task("charge", on_orphan="fail")
    def charge(payload: dict[str, Any], ctx: JobContext) -> None:
        with span(ctx, "charge"):
            ctx.sleep(float(payload["s"]))

    @app.task("span_stubborn")
    def span_stubborn(payload: dict[str, Any], ctx: JobContext) -> None:
        span_start(ctx, "stubborn")
        time.sleep(float(payload["s"]))  # ignores every request to stop
        span_end(ctx, "done")

    @app.task("span_blocking")
    async def span_blocking(payload: dict[str, Any], ctx: JobContext) -> None:
        # An async task that blocks the event loop: no heartbeat, no watchdog on the loop.
        span_start(ctx, "blocking")
        time.sleep(float(payload["s"]))  # noqa: ASYNC251 - the point of this task
        span_end(ctx, "done")

    @app.task("fail_after")
    async def fail_after(payload: dict[str, Any]) -> None:
        await asyncio.sleep(float(payload["s"]))
        raise RuntimeError("failed on purpose")

    @app.task("nul_error")
    def nul_error(payload: Any) -> None:
        raise RuntimeError("bad\x00byte and a lone surrogate \udc80")

    @app.task("cancels_itself")
    async def cancels_itself(payload: Any) -> None:
        raise asyncio.CancelledError("raised by the task, not by the worker")

    return app
