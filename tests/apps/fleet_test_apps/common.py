"""Tasks shared by the test apps. Each execution is written to the ledger table, so a test
can prove that no job was lost and none ran twice."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psycopg
import pydantic
from psycopg import sql

from fleet_worker import App, JobContext

_local = threading.local()


def db() -> psycopg.Connection:
    conn: psycopg.Connection | None = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = psycopg.connect(os.environ["DATABASE_URL"], autocommit=True)
        _local.conn = conn
    return conn


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
        time.sleep(float(payload.get("sleep", 0)))

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

    return app
