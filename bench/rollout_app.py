"""The fleet-worker side of `make bench-rollout`: one task that does what an application's
job does (work, then write its result into a table whose schema changes between releases)
and records every attempt in `runs`, so the benchmark can count what ran twice and what
failed on the schema. Graphile Worker runs the same task (bench/peers/graphile_runner.mjs,
mode `app-worker`) against the same migrations.

Each "image" of the benchmark sets ROLLOUT_RELEASE (1, 2, 3) and ROLLOUT_MIGRATIONS (the
release's migration directory, written by bench/rollout.py from one source).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from fleet_worker import App, JobContext

RELEASE = int(os.environ.get("ROLLOUT_RELEASE", "1"))
# Release 3's breaking migration renames widgets.name to title; 1 and 2 write `name`.
COLUMN = "title" if RELEASE >= 3 else "name"

app = App(
    name="rollout",
    version=f"{RELEASE}.0.0",
    migrations=Path(os.environ.get("ROLLOUT_MIGRATIONS", ".")),
)

_local = threading.local()


def _db() -> psycopg.Connection:
    conn: psycopg.Connection | None = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = _local.conn = psycopg.connect(os.environ["DATABASE_URL"], autocommit=True)
    return conn


def _table(name: str) -> sql.Identifier:
    return sql.Identifier(os.environ.get("FLEET_SCHEMA", "fleet_worker"), name)


@app.task("make_widget")
def make_widget(payload: dict[str, Any], ctx: JobContext) -> None:
    n = int(payload["n"])
    time.sleep(float(payload.get("work_ms", 0)) / 1000)  # the job's own work, before it writes
    conn = _db()
    try:
        with conn.transaction():
            conn.execute(
                sql.SQL("insert into {} (n, {}) values (%s, %s)").format(
                    _table("widgets"), sql.Identifier(COLUMN)
                ),
                [n, f"widget-{n}"],
            )
            conn.execute(
                sql.SQL(
                    "insert into {} (n, worker, release, outcome) values (%s, %s, %s, 'ok')"
                ).format(_table("runs")),
                [n, ctx.pool_id, str(RELEASE)],
            )
    except psycopg.Error as exc:
        state = exc.sqlstate or ""
        conn.execute(
            sql.SQL(
                "insert into {} (n, worker, release, outcome, error) values (%s, %s, %s, %s, %s)"
            ).format(_table("runs")),
            # Class 42: undefined column or table, the old code meeting the new schema.
            [n, ctx.pool_id, str(RELEASE), "schema_error" if state.startswith("42") else "error",
             str(exc)[:500]],
        )  # fmt: skip
        raise
