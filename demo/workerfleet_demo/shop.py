"""The demo shop's tasks, parameterised by release. Each release writes receipts the way its
schema expects; every execution lands in the ledger."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import psycopg
import pydantic
from psycopg import sql

from fleet_worker import App, JobContext

_local = threading.local()


def _db() -> psycopg.Connection:
    conn: psycopg.Connection | None = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = psycopg.connect(os.environ["DATABASE_URL"], autocommit=True)
        _local.conn = conn
    return conn


class Receipt(pydantic.BaseModel):
    order_id: int
    work_ms: int = 20


def build(version: str, release: str) -> App:
    app = App(
        name="shop", version=version, migrations=Path(__file__).parent / release / "migrations"
    )
    schema = os.environ.get("FLEET_SCHEMA", "fleet_worker")
    columns = {
        "v1": ["order_id", "body"],
        "v2": ["order_id", "body", "channel"],
        "v3": ["order_id", "message", "channel"],
    }[release]

    @app.task("send_receipt", payload=Receipt)
    def send_receipt(payload: Receipt, ctx: JobContext) -> None:
        time.sleep(payload.work_ms / 1000)  # talking to a mail service
        values = [payload.order_id, f"Thanks for order {payload.order_id}", "email"]
        conn = _db()
        with conn.transaction():
            conn.execute(
                sql.SQL("insert into {} ({}) values ({})").format(
                    sql.Identifier(schema, "receipts"),
                    sql.SQL(", ").join(sql.Identifier(c) for c in columns),
                    sql.SQL(", ").join(sql.Placeholder() * len(columns)),
                ),
                values[: len(columns)],
            )
            conn.execute(
                sql.SQL("insert into {} (job_id, version, pool_id) values (%s, %s, %s)").format(
                    sql.Identifier(schema, "demo_ledger")
                ),
                [ctx.job_id, version, ctx.pool_id],
            )

    return app
