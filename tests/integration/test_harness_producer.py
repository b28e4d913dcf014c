"""The shared job producer against a real database: what it reports enqueued is what the
queue holds, and an error it was not told to expect is not swallowed."""

from __future__ import annotations

import psycopg
import pytest

from fleet_worker.db import Schema
from workerfleet_dev.harness import Producer, enqueue, wait_for


def test_the_ids_it_reports_are_the_jobs_the_queue_holds(
    conn: psycopg.Connection, schema: Schema, database_url: str
) -> None:
    producer = Producer(database_url, enqueue(schema.name, "work", lambda n: {"n": n}), 0.01)
    wait_for(lambda: len(producer.ids) >= 20, 10, what="20 jobs enqueued")
    ids = producer.stop()
    rows = conn.execute(schema.q("select id, payload->>'n' from {s}.jobs order by id")).fetchall()
    assert [r[0] for r in rows] == ids
    assert [int(r[1]) for r in rows] == list(range(1, len(ids) + 1))


def test_an_unexpected_error_reaches_stop_and_a_tolerated_one_skips_the_job(
    database_url: str,
) -> None:
    missing = enqueue("no_such_schema", "work", {})
    calls: list[int] = []

    def counted(conn: psycopg.Connection, n: int) -> int:
        calls.append(n)
        return missing(conn, n)

    failing = Producer(database_url, counted, 0.01)
    wait_for(lambda: calls, 10, what="the first enqueue")
    with pytest.raises(RuntimeError, match=r"the producer stopped: .*no_such_schema"):
        failing.stop()
    calls.clear()
    tolerant = Producer(database_url, counted, 0.01, tolerate=(psycopg.errors.Error,))
    wait_for(lambda: len(calls) >= 3, 10, what="three enqueues tried")
    assert tolerant.stop() == []
