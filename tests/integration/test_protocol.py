"""The protocol's words (fleet_worker.protocol) against what the schema itself enforces."""

from __future__ import annotations

import re

import psycopg
import pytest

from fleet_worker.db import Schema
from fleet_worker.protocol import LIVE_STATES, TERMINAL_STATES, JobState, PoolState
from tests.helpers import q

pytestmark = pytest.mark.integration


def test_the_pools_check_constraint_allows_exactly_the_pool_states(
    conn: psycopg.Connection, schema: Schema
) -> None:
    [(definition,)] = q(
        conn, schema.name,
        """select pg_get_constraintdef(c.oid) from pg_constraint c
           join pg_class t on t.oid = c.conrelid join pg_namespace n on n.oid = t.relnamespace
           where n.nspname = %s and t.relname = 'pools' and c.contype = 'c'
             and pg_get_constraintdef(c.oid) like '%%state%%'""",
        [schema.name],
    )  # fmt: skip
    allowed = set(re.findall(r"'([a-z-]+)'::text", definition))
    assert allowed == {s.value for s in PoolState}
    assert set(LIVE_STATES) | set(TERMINAL_STATES) == set(PoolState)
    assert not set(LIVE_STATES) & set(TERMINAL_STATES)


def test_job_list_derives_only_the_job_states(conn: psycopg.Connection, schema: Schema) -> None:
    [(definition,)] = q(conn, schema.name, "select pg_get_viewdef(%s::regclass)",
                        [f'"{schema.name}".job_list'])  # fmt: skip
    derived = set(re.findall(r"THEN '([a-z]+)'::text|ELSE '([a-z]+)'::text", definition))
    states = {a or b for a, b in derived}
    assert states == {s.value for s in JobState} - {JobState.COMPLETED}
