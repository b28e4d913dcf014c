"""One JSON-able picture of a fleet's database: schema, pools with liveness, queue counts.
`fleet-worker status`, the operator and the demo all read this."""

from __future__ import annotations

from typing import Any

import psycopg

from fleet_worker.db import Schema
from fleet_worker.migrate import applied_migrations
from fleet_worker.pools import pools_report
from fleet_worker.protocol import LEASES


def job_counts(conn: psycopg.Connection, schema: Schema) -> dict[str, int]:
    row = conn.execute(
        schema.q(
            """select
                 count(*) filter (where locked_by is null and attempts < max_attempts
                                  and run_at <= now()),
                 count(*) filter (where locked_by is null and attempts < max_attempts
                                  and run_at > now()),
                 count(*) filter (where locked_by is not null),
                 count(*) filter (where locked_by is null and attempts >= max_attempts)
               from {s}.jobs"""
        )
    ).fetchone()
    assert row is not None
    return dict(zip(("runnable", "scheduled", "running", "failed"), row, strict=True))


def status_report(conn: psycopg.Connection, schema: Schema, threshold_s: float) -> dict[str, Any]:
    applied = applied_migrations(conn, schema)
    report: dict[str, Any] = {
        "schema": schema.name,
        "migrations": [
            {"id": m.id, "name": m.name, "breaking": m.breaking, "checksum": m.checksum}
            for m in applied
        ],
        "pools": [],
        "jobs": {"runnable": 0, "scheduled": 0, "running": 0, "failed": 0},
    }
    if applied:
        report["pools"] = pools_report(
            conn, schema, threshold_s, leased=any(m.id == LEASES for m in applied)
        )
        report["jobs"] = job_counts(conn, schema)
    return report
