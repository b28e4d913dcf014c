"""Shared fixtures: one real PostgreSQL per test session (embedded unless DATABASE_URL is
set) and a fresh schema per test, so tests never see each other's jobs or pools."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from hypothesis import settings

from fleet_worker.catalog import Catalog
from fleet_worker.db import Schema
from fleet_worker.migrate import migrate

APPS_DIR = Path(__file__).parent / "apps"
sys.path.insert(0, str(APPS_DIR))

# Properties are about results, not speed: on a loaded CI machine one slow example (a GC
# pause, a cold import) must not fail a property with DeadlineExceeded.
settings.register_profile("workerfleet", deadline=None)
settings.load_profile("workerfleet")


def postgres_url(also_listen: str | None = None, trust_cidr: str | None = None) -> Iterator[str]:
    """DATABASE_URL if set, else an embedded server for the session (optionally also on an
    address pods reach, see LocalPostgres)."""
    external = os.environ.get("DATABASE_URL")
    if external:
        yield external
        return
    from workerfleet_dev.postgres import LocalPostgres

    with LocalPostgres(also_listen=also_listen, trust_cidr=trust_cidr) as pg:
        yield pg.url


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    yield from postgres_url()


@pytest.fixture
def schema_name(database_url: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'drop schema if exists "{name}" cascade')


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as c:
        yield c


@pytest.fixture
def schema(conn: psycopg.Connection, schema_name: str) -> Schema:
    """A fresh schema with the core migrations applied (no app's)."""
    s = Schema(schema_name)
    migrate(conn, s, Catalog.load())
    return s
