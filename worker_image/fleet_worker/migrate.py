"""Applying migrations: one transaction per migration under a transaction-scoped advisory
lock, checksums verified, breaking ones only once no live outdated pool remains (or after the
wait, by evicting those pools first)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from fleet_worker.catalog import SCHEMA_PLACEHOLDER, Catalog, Migration
from fleet_worker.compat import AppliedMigration, Assessment, assess
from fleet_worker.db import Schema, first_line, lease_live, live_params
from fleet_worker.errors import MigrationError
from fleet_worker.protocol import LEASES, PoolState
from fleet_worker.recovery import release_pool_jobs


def bootstrap(conn: psycopg.Connection, schema: Schema) -> None:
    """The schema and the ledger of applied migrations; everything else is a migration."""
    conn.execute(schema.q("create schema if not exists {s}"))
    conn.execute(
        schema.q(
            """create table if not exists {s}.migrations (
                id text primary key,
                name text not null,
                breaking boolean not null,
                checksum text not null,
                applied_at timestamptz not null default now(),
                seq bigserial not null
            )"""
        )
    )


def applied_migrations(conn: psycopg.Connection, schema: Schema) -> list[AppliedMigration]:
    exists = conn.execute(
        "select to_regclass(%s) is not null", [f"{schema.name}.migrations"]
    ).fetchone()
    if not exists or not exists[0]:
        return []
    rows = conn.execute(
        schema.q("select id, name, breaking, checksum from {s}.migrations order by seq")
    ).fetchall()
    return [AppliedMigration(r[0], r[1], r[2], r[3]) for r in rows]


def render(migration: Migration, schema: Schema) -> str:
    # Safe to splice: the schema name was validated as a plain identifier.
    return migration.sql.replace(SCHEMA_PLACEHOLDER, f'"{schema.name}"')


@dataclass(frozen=True)
class OutdatedPool:
    pool_id: str
    version: str
    pod_name: str | None
    state: str
    running_jobs: int


_LACKS = " and not p.catalog @> jsonb_build_array(jsonb_build_object('id', %(migration)s::text))"


def live_outdated_pools(
    conn: psycopg.Connection, schema: Schema, migration_id: str, threshold_s: float
) -> list[OutdatedPool]:
    """Live pools whose catalog lacks the migration: the ones a breaking migration waits for.
    Each is judged by its own lease (`threshold_s` only for pools that registered none)."""
    rows = conn.execute(
        schema.q(
            "select pool_id::text, version, pod_name, state, running_jobs from {s}.pools p where "
        )
        + lease_live(leased=_leased(conn, schema))
        + sql.SQL(_LACKS)
        + sql.SQL(" order by started_at"),
        {**live_params(threshold_s), "migration": migration_id},
    ).fetchall()
    return [OutdatedPool(*r) for r in rows]


def outdated_pools_in_live_state(
    conn: psycopg.Connection, schema: Schema, migration_id: str
) -> bool:
    """Whether any pool lacking the migration is in a live state, fresh lease or not."""
    row = conn.execute(
        schema.q("select exists (select 1 from {s}.pools p where p.state = any(%(live_states)s)")
        + sql.SQL(_LACKS)
        + sql.SQL(")"),
        {**live_params(0), "migration": migration_id},
    ).fetchone()
    return bool(row and row[0])


def _leased(conn: psycopg.Connection, schema: Schema) -> bool:
    """Whether the schema has the lease columns (core/0002); `plan` may run before it."""
    row = conn.execute(
        schema.q("select exists (select 1 from {s}.migrations where id = %s)"), [LEASES]
    ).fetchone()
    return bool(row and row[0])


def activate(
    conn: psycopg.Connection,
    schema: Schema,
    catalog: Catalog,
    pool_id: str,
    *,
    orphan_fail_tasks: Sequence[str] = (),
) -> Assessment:
    """Turn a pool active only if the schema is compatible, atomically with respect to
    migrations: the shared lock waits out a migration in progress (whose row this pool would
    not see yet), and a migration that starts later sees this pool active. The pool's orphan
    policy is recorded in the same statement, so it is in place before the first fetch
    (compatible means this release's core/0003 is applied)."""
    with conn.transaction():
        lock_migrations(conn, schema, shared=True)
        state = assess(catalog, applied_migrations(conn, schema))
        if state.compatible:
            conn.execute(
                schema.q(
                    """update {s}.pools set state = %s, heartbeat_at = now(), reason = null,
                           orphan_fail_tasks = %s
                       where pool_id = %s and state = any(%s)"""
                ),
                [
                    PoolState.ACTIVE,
                    list(orphan_fail_tasks),
                    pool_id,
                    [PoolState.STARTING, PoolState.WAITING_FOR_SCHEMA],
                ],
            )
    return state


def declare_stale_outdated_dead(
    conn: psycopg.Connection, schema: Schema, migration_id: str, threshold_s: float
) -> list[str]:
    """Inside the caller's transaction: pools lacking the migration whose state says live but
    whose lease expired are dead; make it so before migrating, so a silent old worker that
    comes back finds itself dead instead of fetching."""
    rows = conn.execute(
        schema.q(
            """update {s}.pools p set state = %(dead)s, stopped_at = now(),
                   reason = 'no heartbeat when a breaking migration needed it gone'
               where p.state = any(%(live_states)s) and not """
        )
        + lease_live()
        + sql.SQL(_LACKS)
        + sql.SQL(" returning p.pool_id::text"),
        {**live_params(threshold_s), "migration": migration_id, "dead": PoolState.DEAD},
    ).fetchall()
    dead = [r[0] for r in rows]
    release_pool_jobs(conn, schema, dead, "released: its pool stopped heartbeating")
    return dead


def lock_migrations(conn: psycopg.Connection, schema: Schema, *, shared: bool = False) -> None:
    """Inside the caller's transaction, the schema's migration lock: exclusive to migrate or
    evict, shared to turn a pool active (which must not interleave with a migration)."""
    if shared:
        conn.execute(
            "select pg_advisory_xact_lock_shared(hashtext(%s))", [schema.lock_key("migrate")]
        )
    else:
        conn.execute("select pg_advisory_xact_lock(hashtext(%s))", [schema.lock_key("migrate")])


def evict_outdated_pools(
    conn: psycopg.Connection, schema: Schema, migration_id: str, threshold_s: float, reason: str
) -> list[str]:
    """Inside the caller's transaction: mark live outdated pools evicted, release their jobs."""
    rows = conn.execute(
        schema.q(
            "update {s}.pools p set state = %(evicted)s, stopped_at = now(), "
            "reason = %(reason)s where "
        )
        + lease_live()
        + sql.SQL(_LACKS)
        + sql.SQL(" returning p.pool_id::text"),
        {
            **live_params(threshold_s),
            "migration": migration_id,
            "reason": reason,
            "evicted": PoolState.EVICTED,
        },
    ).fetchall()
    pool_ids = [r[0] for r in rows]
    if pool_ids:
        release_pool_jobs(conn, schema, pool_ids, reason)
    return pool_ids


@dataclass
class MigrationResult:
    applied: list[str] = field(default_factory=list)
    evicted_pools: list[str] = field(default_factory=list)


def apply_one(
    conn: psycopg.Connection,
    schema: Schema,
    catalog: Catalog,
    migration: Migration,
    *,
    threshold_s: float,
    force: bool,
    result: MigrationResult,
    judge_silence: bool = True,
) -> bool:
    """Apply `migration` if still pending. Returns False when a breaking migration is blocked
    by live outdated pools and `force` is off. Re-checks everything under the lock, so racing
    workers and a migration Job can never apply the same migration twice.
    `judge_silence=False` (the caller is on probation: its view of the database may be an
    outage's) also counts outdated pools whose lease expired as blocking, instead of
    declaring them dead."""
    with conn.transaction():
        lock_migrations(conn, schema)
        bootstrap(conn, schema)
        state = assess(catalog, applied_migrations(conn, schema))
        _raise_on_mismatch(state)
        if migration.id not in {m.id for m in state.pending}:
            return True
        if migration.breaking:
            if not judge_silence:
                if outdated_pools_in_live_state(conn, schema, migration.id):
                    return False
            else:
                declare_stale_outdated_dead(conn, schema, migration.id, threshold_s)
            if force:
                reason = f"evicted: breaking migration {migration.id} forced after the wait"
                result.evicted_pools += evict_outdated_pools(
                    conn, schema, migration.id, threshold_s, reason
                )
            elif live_outdated_pools(conn, schema, migration.id, threshold_s):
                return False
        try:
            conn.execute(render(migration, schema).encode())
        except (
            psycopg.ProgrammingError,
            psycopg.DataError,
            psycopg.IntegrityError,
            psycopg.NotSupportedError,
            psycopg.InternalError,
        ) as exc:
            raise MigrationError(
                f"migration {migration.id} ({migration.name}) failed: {first_line(exc)}"
            ) from exc
        conn.execute(
            schema.q(
                "insert into {s}.migrations (id, name, breaking, checksum) values (%s, %s, %s, %s)"
            ),
            [migration.id, migration.name, migration.breaking, migration.checksum],
        )
    result.applied.append(migration.id)
    return True


def _raise_on_mismatch(state: Assessment) -> None:
    if state.mismatched:
        raise MigrationError(state.describe())
    if state.out_of_date:
        raise MigrationError(state.describe())


def migrate(
    conn: psycopg.Connection,
    schema: Schema,
    catalog: Catalog,
    *,
    to: str | None = None,
    threshold_s: float = 60,
    force_after_s: float = 600,
    poll_s: float = 1.0,
    on_wait: Callable[[Migration, list[OutdatedPool]], None] | None = None,
    breaking: bool = True,
    probation_s: float | None = None,
) -> MigrationResult:
    """Bring the schema up to `to` (default: the whole catalog). Safe migrations apply at
    once; a breaking one waits for live outdated pools to go, up to `force_after_s`, then
    evicts them. With `breaking=False` it stops before the first breaking migration.
    For `probation_s` (default: the threshold) after it starts, this process declares no
    silent pool dead and evicts none: it may have just come out of an outage (a Job pod
    retried after one), and a silent pool may be about to beat again."""
    targets = _targets(catalog, to)
    result = MigrationResult()
    began = _db_now(conn)
    probation = threshold_s if probation_s is None else probation_s
    for migration in targets:
        if migration.breaking and not breaking:
            break
        started = _db_now(conn)  # each breaking migration gets its own full wait
        while not apply_one(
            conn, schema, catalog, migration, threshold_s=threshold_s, force=False,
            result=result, judge_silence=_db_now(conn) - began >= probation,
        ):  # fmt: skip
            waited = _db_now(conn) - started
            if waited >= force_after_s and _db_now(conn) - began >= probation:
                apply_one(
                    conn,
                    schema,
                    catalog,
                    migration,
                    threshold_s=threshold_s,
                    force=True,
                    result=result,
                )
                break
            if on_wait is not None:
                on_wait(migration, live_outdated_pools(conn, schema, migration.id, threshold_s))
            time.sleep(poll_s)
    return result


def _targets(catalog: Catalog, to: str | None) -> list[Migration]:
    if to is None:
        return list(catalog.migrations)
    catalog.get(to)  # raises with the known ids when `to` is unknown
    out = []
    for m in catalog.migrations:
        out.append(m)
        if m.id == to:
            break
    return out


def _db_now(conn: psycopg.Connection) -> float:
    row = conn.execute("select extract(epoch from clock_timestamp())::float8").fetchone()
    assert row is not None
    return float(row[0])


def plan(
    conn: psycopg.Connection, schema: Schema, catalog: Catalog, threshold_s: float = 60
) -> dict[str, object]:
    """What `migrate` would do, as JSON-able data (for `--plan --json` and the operator)."""
    applied = applied_migrations(conn, schema)
    state = assess(catalog, applied)
    steps = []
    for m in state.pending:
        blockers = live_outdated_pools(conn, schema, m.id, threshold_s) if m.breaking else []
        steps.append(
            {
                **m.summary(),
                "blocked_by_pools": [
                    {"pool_id": p.pool_id, "version": p.version, "pod_name": p.pod_name}
                    for p in blockers
                ],
            }
        )
    return {
        "schema": schema.name,
        "applied": [a.id for a in applied],
        "target": catalog.last_id,
        "pending": steps,
        "out_of_date": state.out_of_date,
        "problem": None if state.compatible or state.pending else state.describe(),
    }
