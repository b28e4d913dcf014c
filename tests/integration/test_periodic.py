"""Periodic jobs against a real PostgreSQL: one enqueue per tick across concurrent checkers
and worker processes, restarts that enqueue nothing twice, backfill bounded per entry."""

from __future__ import annotations

import re
import signal
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from fleet_worker.cron import CronEntry, ticks
from fleet_worker.db import Schema
from fleet_worker.exit_codes import ExitCode
from fleet_worker.periodic import enqueue_due
from tests.helpers import FAST, WorkerProcess, q, wait_for
from tests.integration.test_worker_process import install, ledger

pytestmark = pytest.mark.integration
START = datetime(2026, 6, 1, 8, 0, 30, tzinfo=UTC)


def entry(name: str = "e", schedule: str = "* * * * *", backfill_s: float = 0.0) -> CronEntry:
    return CronEntry.build(
        schedule, "a", name=name, timezone="UTC", backfill_s=backfill_s, payload={"x": 1},
        queue=None, priority=None, max_attempts=None,
    )  # fmt: skip


def keys(conn: psycopg.Connection, schema: str) -> list[str]:
    return [str(r[0]) for r in q(conn, schema, "select key from {s}.jobs order by key")]


def test_concurrent_checkers_enqueue_each_tick_once(
    conn: psycopg.Connection, schema: Schema, database_url: str
) -> None:
    """Four connections check the same two entries over two simulated hours, each at its
    own times, interleaved: every tick is one job, no tick is missed. The backfill window
    spans the whole simulation: the threads run at the scheduler's whim, so one can get any
    distance ahead of the others in simulated time, and ticks it then finds older than the
    window are skipped by design (tested apart, below), not lost to a race."""
    span_s = 3 * 3600
    entries = [entry("minutely", backfill_s=span_s), entry("quarterly", "*/15 * * * *", span_s)]
    enqueue_due(conn, schema, entries, now=START)  # first seen: nothing before this
    errors: list[BaseException] = []
    enqueued: list[str] = []  # every enqueue, even one a job key would fold into another

    def checker(offset_s: int) -> None:
        try:
            with psycopg.connect(database_url, autocommit=True) as c:
                for step in range(0, 2 * 3600, 97):
                    done = enqueue_due(
                        c, schema, entries, now=START + timedelta(seconds=step + offset_s)
                    )
                    enqueued.extend(f"cron:{e.entry}:{e.tick:%Y-%m-%dT%H:%MZ}" for e in done)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=checker, args=(o,)) for o in (0, 13, 41, 89)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    end = START + timedelta(seconds=max(range(0, 2 * 3600, 97)) + 89)
    # A checker that found the row taken skipped it (the holder handled those ticks); the
    # last ticks fall to the next check, as they would a minute later.
    enqueued.extend(f"cron:{e.entry}:{e.tick:%Y-%m-%dT%H:%MZ}"
                    for e in enqueue_due(conn, schema, entries, now=end))  # fmt: skip
    got = keys(conn, schema.name)
    expected = sorted(e.job_key(t) for e in entries for t in ticks(e.schedule, e.zone, START, end))
    assert len(expected) > 120 and got == expected and sorted(enqueued) == expected


def test_a_restart_after_downtime_backfills_only_as_far_as_the_entry_allows(
    conn: psycopg.Connection, schema: Schema
) -> None:
    short, long = entry("short"), entry("long", backfill_s=1800.0)
    enqueue_due(conn, schema, [short, long], now=START)
    # Every worker down for three hours; the first one back checks at once.
    back = START + timedelta(hours=3)
    enqueued = enqueue_due(conn, schema, [short, long], now=back)
    by_entry = {n: [e.tick for e in enqueued if e.entry == n] for n in ("short", "long")}
    assert by_entry["short"] == [back.replace(second=0)]  # only the on-time tick
    assert len(by_entry["long"]) == 30 and by_entry["long"][0] == back.replace(
        second=0
    ) - timedelta(minutes=29)
    # A second worker starting a moment later finds nothing left to do.
    assert enqueue_due(conn, schema, [short, long], now=back + timedelta(seconds=5)) == []


def test_workers_of_one_fleet_enqueue_each_minute_once_and_a_restart_adds_none(
    conn: psycopg.Connection, schema_name: str, database_url: str, tmp_path: Path
) -> None:
    install(conn, schema_name)
    app = "fleet_test_apps.v1_cron"
    line = re.compile(r"cron every-minute: enqueued job (\d+) for (\S+)")
    workers = [WorkerProcess(database_url, schema_name, app, tmp_path, *FAST) for _ in range(3)]
    try:
        # The first tick is up to a minute after the first check (which needs the workers up).
        wait_for(lambda: q(conn, schema_name, "select 1 from {s}.cron_entries"), timeout=60,
                 what="the first check")  # fmt: skip
        wait_for(lambda: ledger(conn, schema_name), timeout=90, what="the first tick's job run")
        for w in workers:  # a graceful stop: a job in flight finishes, none is rerun
            w.signal(signal.SIGTERM)
        assert [w.wait() for w in workers] == [ExitCode.OK] * 3
        [(restart,)] = q(conn, schema_name, "select now()")
        workers.append(WorkerProcess(database_url, schema_name, app, tmp_path, *FAST))
        # The restarted worker checks at once; the tick already handled is not enqueued again.
        checked = "select checked_until > %s from {s}.cron_entries"
        wait_for(lambda: q(conn, schema_name, checked, [restart]) == [(True,)],
                 what="the restarted worker's check")  # fmt: skip
        wait_for(lambda: q(conn, schema_name, "select count(*) from {s}.jobs") == [(0,)],
                 what="every enqueued job run")  # fmt: skip
        workers[-1].signal(signal.SIGTERM)
        assert workers[-1].wait() == ExitCode.OK
    finally:
        for w in workers:
            w.stop()
    logged = [m.groups() for w in workers for m in line.finditer(w.log())]
    ticks = [tick for _, tick in logged]
    assert ticks and len(ticks) == len(set(ticks))  # each tick enqueued by one worker, once
    assert sorted(ledger(conn, schema_name)) == sorted(int(job) for job, _ in logged)


def test_a_pool_stalled_mid_check_does_not_stall_the_others(
    conn: psycopg.Connection, schema: Schema, database_url: str
) -> None:
    """Its row lock is skipped, not waited for: the others' checks return at once (and the
    stalled pool's own check, when it commits, handles those ticks)."""
    minutely = entry("minutely")
    enqueue_due(conn, schema, [minutely], now=START)
    with psycopg.connect(database_url) as stalled:  # a transaction left open mid-check
        stalled.execute(
            sql.SQL("select 1 from {}.cron_entries for update").format(sql.Identifier(schema.name))
        )
        started = time.monotonic()
        assert enqueue_due(conn, schema, [minutely], now=START + timedelta(minutes=1)) == []
        assert time.monotonic() - started < 4  # not the 5 s lock_timeout: the lock was skipped
    [tick] = [
        e.tick for e in enqueue_due(conn, schema, [minutely], now=START + timedelta(minutes=1))
    ]
    assert tick == START.replace(second=0) + timedelta(minutes=1)
