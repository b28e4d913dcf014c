"""Pool rows: one per worker process start, the heartbeat, and state changes."""

from __future__ import annotations

import json
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from fleet_worker.catalog import Catalog
from fleet_worker.db import Schema, lease_live, live_params
from fleet_worker.protocol import FENCED_STATES, LIVE_STATES, TERMINAL_STATES, PoolState
from fleet_worker.recovery import release_pool_jobs


@dataclass(frozen=True)
class PoolIdentity:
    """Who this process is, as recorded in its pool row. Pod and node names come from the
    downward API environment the operator sets; elsewhere they stay empty."""

    fleet: str
    version: str
    image: str | None
    pod_name: str | None
    pod_uid: str | None
    node_name: str | None
    hostname: str
    pid: int

    @classmethod
    def from_env(cls, *, fleet: str, version: str) -> PoolIdentity:
        return cls(
            fleet=fleet,
            version=version,
            image=os.environ.get("WORKER_IMAGE") or None,
            pod_name=os.environ.get("POD_NAME") or None,
            pod_uid=os.environ.get("POD_UID") or None,
            node_name=os.environ.get("NODE_NAME") or None,
            hostname=socket.gethostname(),
            pid=os.getpid(),
        )


def register_pool(
    conn: psycopg.Connection,
    schema: Schema,
    who: PoolIdentity,
    catalog: Catalog,
    *,
    mode: str,
    concurrency: int,
    heartbeat_interval_s: float,
    sweep_threshold_s: float,
) -> str:
    """A new pool row with its lease terms. `host_started_at` is this host's clock, not the
    database's: a supervisor on the same host compares it with container times."""
    pool_id = str(uuid.uuid4())
    conn.execute(
        schema.q(
            """insert into {s}.pools (pool_id, fleet, version, image, pod_name, node_name,
                   hostname, pid, mode, catalog, state, concurrency, heartbeat_interval_s,
                   sweep_threshold_s, host_started_at, pod_uid)
               values (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s,
                       %s, %s, %s)"""
        ),
        [
            pool_id,
            who.fleet,
            who.version,
            who.image,
            who.pod_name,
            who.node_name,
            who.hostname,
            who.pid,
            mode,
            json.dumps(catalog.to_json()),
            PoolState.STARTING,
            concurrency,
            heartbeat_interval_s,
            sweep_threshold_s,
            datetime.now(UTC),
            who.pod_uid,
        ],
    )
    return pool_id


@dataclass(frozen=True)
class Heartbeat:
    state: str  # the state in the database after the beat (others may have changed it)
    reason: str | None


def heartbeat(
    conn: psycopg.Connection,
    schema: Schema,
    pool_id: str,
    *,
    running_jobs: int,
    state: str | None = None,
    reason: str | None = None,
) -> Heartbeat:
    """Beat, optionally moving to `state`; a pool already dead, evicted or stopped stays so."""
    row = conn.execute(
        schema.q(
            """update {s}.pools set heartbeat_at = now(), running_jobs = %(running)s,
                   state = case when state = any(%(final)s) then state
                                else coalesce(%(state)s, state) end,
                   reason = case when state = any(%(final)s) then reason
                                 else coalesce(%(reason)s, reason) end
               where pool_id = %(pool)s returning state, reason"""
        ),
        {
            "running": running_jobs,
            "final": list(TERMINAL_STATES),
            "state": state,
            "reason": reason,
            "pool": pool_id,
        },
    ).fetchone()
    if row is None:
        return Heartbeat(PoolState.DEAD, "pool row was deleted")
    return Heartbeat(row[0], row[1])


def record_intent(
    conn: psycopg.Connection, schema: Schema, pool_id: str, migration_id: str
) -> None:
    """Self mode: this pool waits to apply a breaking migration (visible to others and the
    operator). The wait starts at the first recorded intent, on the database clock."""
    conn.execute(
        schema.q(
            """update {s}.pools set wants_migration = %s,
                   wants_migration_since = case when wants_migration = %s
                                                then wants_migration_since else now() end
               where pool_id = %s"""
        ),
        [migration_id, migration_id, pool_id],
    )


def waited_seconds(conn: psycopg.Connection, schema: Schema, pool_id: str) -> float:
    row = conn.execute(
        schema.q(
            "select extract(epoch from now() - wants_migration_since)::float8 "
            "from {s}.pools where pool_id = %s"
        ),
        [pool_id],
    ).fetchone()
    return float(row[0]) if row and row[0] is not None else 0.0


def stop_pool(
    conn: psycopg.Connection,
    schema: Schema,
    pool_id: str,
    *,
    reason: str,
    state: PoolState = PoolState.STOPPED,
) -> None:
    conn.execute(
        schema.q(
            """update {s}.pools set state = case when state = any(%(fenced)s) then state
                                                  else %(state)s end,
                   stopped_at = coalesce(stopped_at, now()), running_jobs = 0,
                   reason = case when state = any(%(fenced)s) then reason else %(reason)s end
               where pool_id = %(pool)s"""
        ),
        {"fenced": list(FENCED_STATES), "state": state, "reason": reason, "pool": pool_id},
    )


_POOL_COLUMNS = (
    "pool_id", "fleet", "version", "image", "pod_name", "node_name", "hostname", "pid", "mode",
    "state", "concurrency", "running_jobs", "reason", "wants_migration", "started_at",
    "heartbeat_at", "stopped_at", "heartbeat_age_s", "live", "catalog", "sweep_threshold_s",
    "host_started_at", "pod_uid",
)  # fmt: skip


def pools_report(
    conn: psycopg.Connection,
    schema: Schema,
    threshold_s: float,
    *,
    recent_only: bool = False,
    leased: bool = True,
) -> list[dict[str, Any]]:
    """Pools with liveness (each judged by its own lease; `threshold_s` for pools without
    one). `recent_only` keeps what a controller needs without reading years of history:
    live-state pools, the last hour, and the newest pool of every version (whose catalog
    tells what that version knows). `leased=False` for a schema before core/0002."""
    where = (
        schema.q(
            """where state = any(%(live_states)s)
              or started_at > now() - interval '1 hour'
              or pool_id in (select distinct on (version) pool_id from {s}.pools
                             order by version, started_at desc)"""
        )
        if recent_only
        else schema.q("")
    )
    lease_columns = (
        sql.SQL("p.sweep_threshold_s, p.host_started_at, p.pod_uid")
        if leased
        else sql.SQL("null::float8, null::timestamptz, null::text")
    )
    query = (
        schema.q(
            """select pool_id::text, fleet, version, image, pod_name, node_name, hostname, pid,
                  mode, state, concurrency, running_jobs, reason, wants_migration,
                  started_at, heartbeat_at, stopped_at,
                  extract(epoch from now() - heartbeat_at)::float8 as heartbeat_age, """
        )
        + lease_live(leased=leased)
        + sql.SQL(" as live, catalog, ")
        + lease_columns
        + schema.q(" from {s}.pools p ")
        + where
        + schema.q(" order by started_at")
    )
    rows = conn.execute(query, live_params(threshold_s)).fetchall()
    return [dict(zip(_POOL_COLUMNS, r, strict=True)) for r in rows]


def declare_dead(
    conn: psycopg.Connection,
    schema: Schema,
    pool_ids: list[str],
    reason: str,
    *,
    release: bool = True,
) -> list[str]:
    """Mark live-state pools dead and release their jobs, in one transaction: what the sweep
    does after the threshold, done at once when a supervisor saw the process end. With
    `release=False` (the process may still run) the pools are only fenced: they fetch
    nothing more and exit at their next heartbeat, and the sweep releases their jobs once
    their lease has run out."""
    with conn.transaction():
        rows = conn.execute(
            schema.q(
                """update {s}.pools set state = %(dead)s, stopped_at = now(), reason = %(reason)s
                   where pool_id = any(%(pools)s::uuid[]) and state = any(%(live_states)s)
                   returning pool_id::text"""
            ),
            {
                "dead": PoolState.DEAD,
                "reason": reason,
                "pools": pool_ids,
                "live_states": list(LIVE_STATES),
            },
        ).fetchall()
        dead = [r[0] for r in rows]
        if release:
            release_pool_jobs(conn, schema, dead, f"released: {reason}")
    return dead
