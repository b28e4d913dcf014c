"""The queue-stats collector: how many jobs each task and named queue has in each state, and
how long the oldest waiting one has been due, for `/metrics`.

Defaults: every pool reads the `queue_stats` table every 15 s (`--queue-stats-interval`; 0
turns it off) on a connection of its own, so a slow count never delays a heartbeat. When the
table is older than the interval, the first pool to get the row lock of
`maintenance_runs.queue_stats` recounts (with a 5 s statement timeout) and the others skip:
one count per interval for the whole fleet. Named queues beyond the 20 with the most jobs are
summed under queue "(other)", so per-entity queues cannot flood Prometheus with series.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg

from fleet_worker.db import Schema

TOP_QUEUES = 20
OTHER = "(other)"


@dataclass(frozen=True)
class QueueStats:
    age_s: float | None  # since the count; None: never counted
    jobs: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (task, queue, state)
    oldest_waiting_s: dict[tuple[str, str], float] = field(default_factory=dict)


def refresh_if_due(conn: psycopg.Connection, schema: Schema, interval_s: float) -> bool:
    """Recount if the stats are older than the interval and no other pool is at it."""
    with conn.transaction():
        conn.execute(
            schema.q(
                "insert into {s}.maintenance_runs (name, ran_at) values ('queue_stats', "
                "'-infinity') on conflict do nothing"
            )
        )
        row = conn.execute(
            schema.q(
                """select ran_at < now() - make_interval(secs => %s) from {s}.maintenance_runs
                   where name = 'queue_stats' for update skip locked"""
            ),
            [interval_s],
        ).fetchone()
        if row is None or not row[0]:
            return False  # another pool is counting, or counted recently
        # The attempt counts even if the count times out (rolled back alone below), so a
        # queue too big to count in 5 s costs one attempt per interval, not one per pool.
        conn.execute(
            schema.q("update {s}.maintenance_runs set ran_at = now() where name = 'queue_stats'")
        )
        try:
            with conn.transaction():
                _recount(conn, schema)
        except psycopg.errors.QueryCanceled:
            return False
        return True


def _recount(conn: psycopg.Connection, schema: Schema) -> None:
    conn.execute("set local statement_timeout = '5s'")
    conn.execute(schema.q("delete from {s}.queue_stats"))
    conn.execute(
        schema.q(
            """with counted as (
                   select task_identifier, queue_name, state, count(*) as jobs,
                          min(run_at) filter (where state = 'waiting') as oldest
                   from {s}.job_list group by 1, 2, 3
               ), top as (
                   select queue_name from counted where queue_name is not null
                   group by queue_name order by sum(jobs) desc limit %s
               )
               insert into {s}.queue_stats
               select task_identifier,
                      case when queue_name is null then ''
                           when queue_name in (select queue_name from top) then queue_name
                           else %s end,
                      state, sum(jobs), min(oldest)
               from counted group by 1, 2, 3"""
        ),
        [TOP_QUEUES, OTHER],
    )
    # The counts' own time, for freshness: the attempt's (above) may be a failed one.
    conn.execute(
        schema.q(
            "insert into {s}.maintenance_runs (name, ran_at) values ('queue_stats_counted', "
            "now()) on conflict (name) do update set ran_at = excluded.ran_at"
        )
    )


def read(conn: psycopg.Connection, schema: Schema) -> QueueStats:
    age = conn.execute(
        schema.q(
            "select extract(epoch from now() - ran_at)::float8 from {s}.maintenance_runs "
            "where name = 'queue_stats_counted'"
        )
    ).fetchone()
    rows = conn.execute(
        schema.q(
            """select task_identifier, queue_name, state, jobs,
                      extract(epoch from now() - oldest_run_at)::float8
               from {s}.queue_stats"""
        )
    ).fetchall()
    jobs = {(r[0], r[1], r[2]): int(r[3]) for r in rows}
    oldest = {(r[0], r[1]): max(0.0, float(r[4])) for r in rows if r[4] is not None}
    return QueueStats(age[0] if age else None, jobs, oldest)
