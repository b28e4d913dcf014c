"""SQL composition against the configurable schema, and connection helpers."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import LiteralString, TypeVar

import psycopg
from psycopg import sql

from fleet_worker.errors import DatabaseUnavailableError
from fleet_worker.identifiers import DEFAULT_SCHEMA, schema_ident
from fleet_worker.protocol import LIVE_STATES, TERMINAL_STATES

T = TypeVar("T")

__all__ = ["LIVE_STATES", "TERMINAL_STATES", "Schema", "connect", "connect_async", "lease_live"]


class Schema:
    """A validated schema name and a way to write queries against it: `{s}` in a template
    becomes the quoted schema identifier; values always travel as parameters."""

    def __init__(self, name: str = DEFAULT_SCHEMA) -> None:
        self.ident = schema_ident(name)
        self.name = name

    def q(self, template: LiteralString) -> sql.Composed:
        return sql.SQL(template).format(s=self.ident)

    def lock_key(self, purpose: str) -> str:
        """Text hashed into an advisory-lock key; scoping by schema keeps fleets that share
        a database from serialising on each other."""
        return f"fleet_worker:{self.name}:{purpose}"

    @property
    def notify_channel(self) -> str:
        return f"{self.name}.jobs"


def lease_live(*, leased: bool = True) -> sql.SQL:
    """The one definition of "pool `p` is live", for every query that judges other pools:
    a live state and a heartbeat younger than the threshold the pool registered with
    (`%(threshold)s`, the observer's, only for pools of releases before core/0002, or for a
    schema that predates it: `leased=False`). Parameters: `%(live_states)s`, `%(threshold)s`.
    Whoever judges must be off probation (fleet_worker.lease): after an outage of its own,
    others' silence may be the outage's."""
    threshold = "coalesce(p.sweep_threshold_s, %(threshold)s)" if leased else "%(threshold)s"
    return sql.SQL(
        "(p.state = any(%(live_states)s) and p.heartbeat_at > now() - make_interval(secs => "
        + threshold
        + "))"
    )


def live_params(threshold_s: float) -> dict[str, object]:
    return {"live_states": list(LIVE_STATES), "threshold": threshold_s}


# A peer that vanishes without a FIN (a dead host, a dropped route) must surface as an error
# within seconds, or a heartbeat could hang instead of failing and fencing the worker.
_KEEPALIVE = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}


def _with_keepalive(url: str) -> str:
    return psycopg.conninfo.make_conninfo(url, **_KEEPALIVE)


def _connect_error(exc: psycopg.Error) -> DatabaseUnavailableError:
    if isinstance(exc, psycopg.ProgrammingError):
        # libpq quotes the offending part of a malformed URL, which may be the password.
        return DatabaseUnavailableError("invalid database URL (check its syntax)")
    return DatabaseUnavailableError(f"cannot connect to the database: {first_line(exc)}")


def connect(url: str, *, autocommit: bool = True, timeout: float = 10) -> psycopg.Connection:
    try:
        return psycopg.connect(
            _with_keepalive(url), autocommit=autocommit, connect_timeout=max(1, int(timeout))
        )
    except (psycopg.OperationalError, psycopg.ProgrammingError) as exc:
        raise _connect_error(exc) from exc


async def connect_async(url: str, *, timeout: float = 10) -> psycopg.AsyncConnection:
    try:
        return await psycopg.AsyncConnection.connect(
            _with_keepalive(url), autocommit=True, connect_timeout=max(1, int(timeout))
        )
    except (psycopg.OperationalError, psycopg.ProgrammingError) as exc:
        raise _connect_error(exc) from exc


class ReconnectingConnection:
    """One sync connection to `url`, opened on first use and dropped after an error so that
    the next use reconnects: a database restart costs one failed call. Errors of the
    connection itself come out as DatabaseUnavailableError. `reset_on`: which other psycopg
    errors also drop it (a failover's read-only error is one: a fresh connection through
    the same URL reaches the new primary). One caller at a time: the owner serialises."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 10,
        reset_on: tuple[type[psycopg.Error], ...] = (),
    ) -> None:
        self._url = url
        self._timeout = timeout
        self._reset_on = reset_on
        self._conn: psycopg.Connection | None = None

    def run(self, fn: Callable[[psycopg.Connection], T]) -> T:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self._url, timeout=self._timeout)
        try:
            return fn(self._conn)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self.close()
            raise DatabaseUnavailableError(first_line(exc)) from exc
        except self._reset_on:
            self.close()
            raise

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        self._conn = None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
