"""The operator's database change detector against a real PostgreSQL and real workers: one
poll per database covers every schema, and only the fleets whose pools changed wake."""

from __future__ import annotations

import signal
import uuid
from pathlib import Path

import psycopg
import pytest

from fleet_worker.catalog import Catalog
from fleet_worker.db import Schema
from fleet_worker.migrate import migrate
from tests.helpers import FAST, WorkerProcess, wait_for
from workerfleet_operator.dbwatch import DatabaseWatch
from workerfleet_operator.observe import Databases

pytestmark = pytest.mark.integration
APPS = Path(__file__).parents[1] / "apps" / "fleet_test_apps"


def test_one_poll_per_database_wakes_only_the_fleets_whose_pools_changed(
    conn: psycopg.Connection, database_url: str, tmp_path: Path
) -> None:
    names = [f"t_{uuid.uuid4().hex[:10]}" for _ in range(3)]
    a, b, fresh = names
    for s in (a, b):
        migrate(conn, Schema(s), Catalog.load(APPS / "migrations_v1"))
    woken: list[tuple[str, str]] = []
    dbs = Databases()
    watch = DatabaseWatch(dbs, 1.0, woken.append)
    worker = None
    try:
        for fleet, schema in (("fa", a), ("fb", b), ("fc", fresh)):
            watch.register(("ns", fleet), database_url, schema, 3.0)
        watch.poll_once()  # first sight of the installed schemas
        assert sorted(woken) == [("ns", "fa"), ("ns", "fb")]
        woken.clear()
        watch.poll_once()
        assert woken == [] and watch.polls == 2  # nothing changed; one poll per database

        worker = WorkerProcess(database_url, a, "fleet_test_apps.v1", tmp_path, *FAST)

        def woke_a() -> bool:
            watch.poll_once()
            return ("ns", "fa") in woken

        wait_for(woke_a, timeout=30, what="a registering pool wakes its fleet")
        assert ("ns", "fb") not in woken and ("ns", "fc") not in woken
        woken.clear()
        worker.signal(signal.SIGTERM)
        assert worker.wait() == 0
        wait_for(woke_a, timeout=30, what="a stopped pool wakes its fleet")
        assert ("ns", "fb") not in woken

        migrate(conn, Schema(fresh), Catalog.load(APPS / "migrations_v1"))
        woken.clear()
        watch.poll_once()
        assert woken == [("ns", "fc")]  # installed now: seen, and its fleet woken
    finally:
        if worker is not None:
            worker.stop()
        dbs.close()
        for s in names:
            conn.execute(f'drop schema if exists "{s}" cascade')
