"""What the demo run records as it goes and what the live view shows: its phases, the jobs
it enqueued, and snapshots of the fleet, its pods and its pools."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from fleet_worker.protocol import LIVE_STATES
from localcluster.kube import Client


@dataclass
class Snapshot:
    at: float
    fleet: dict[str, Any]
    pods: list[dict[str, Any]]
    pools: list[tuple[Any, ...]]
    applied: list[str]
    completed: int
    queued: int
    rates: list[float] = field(default_factory=list)

    @classmethod
    def take(
        cls, client: Client, conn: psycopg.Connection, ns: str, fleet: str, schema: str
    ) -> Snapshot:
        obj = client.get(f"/apis/workerfleet.dev/v1alpha1/namespaces/{ns}/workerfleets/{fleet}")
        pods = client.get(f"/api/v1/namespaces/{ns}/pods")["items"]
        s = sql.Identifier(schema)
        try:
            pools = conn.execute(
                sql.SQL(
                    "select pool_id::text, version, coalesce(pod_name, 'outside'), state, "
                    "extract(epoch from now() - heartbeat_at)::float8, running_jobs "
                    "from {}.pools where state = any(%s) "
                    "or stopped_at > now() - interval '20 seconds' order by started_at"
                ).format(s),
                [list(LIVE_STATES)],
            ).fetchall()
            applied = [
                r[0]
                for r in conn.execute(
                    sql.SQL("select id from {}.migrations order by seq").format(s)
                ).fetchall()
            ]
            completed = conn.execute(
                sql.SQL("select count(*) from {}.demo_ledger").format(s)
            ).fetchone()
            queued = conn.execute(sql.SQL("select count(*) from {}.jobs").format(s)).fetchone()
        except psycopg.errors.UndefinedTable:
            return cls(time.monotonic(), obj, pods, [], [], 0, 0)
        return cls(
            time.monotonic(),
            obj,
            pods,
            pools,
            applied,
            int(completed[0]) if completed else 0,
            int(queued[0]) if queued else 0,
        )


@dataclass
class Phase:
    name: str
    start: float
    end: float | None = None


@dataclass
class Run:
    started: float = field(default_factory=time.monotonic)
    enqueued: list[int] = field(default_factory=list)
    phases: list[Phase] = field(default_factory=list)
    samples: list[tuple[float, int]] = field(default_factory=list)  # (t, completed)
    latest: Snapshot | None = None
