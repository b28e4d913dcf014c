"""One change detector per database, shared by every fleet on it: the way database changes
wake a fleet at rest (a pool registering, draining, stopping or going stale, a migration
applied), instead of each fleet polling PostgreSQL on a clock.

Every `interval_s` one thread asks each database, in one statement over all the schemas its
fleets use, which pools are in a live state and whether each is live by its own lease, and
the newest applied migration. A schema whose answer differs from the last one wakes its
fleets; their reconcile then reads what it needs itself, so the detector never decides
anything and a missed wake costs at most the slow resync.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
from psycopg import sql

from fleet_worker.db import lease_live, live_params
from fleet_worker.errors import DatabaseUnavailableError
from workerfleet_operator.observe import Databases

log = logging.getLogger("workerfleet_operator")

Key = tuple[str, str]  # (namespace, fleet)
Fingerprint = tuple[Any, ...]

# Which of the requested schemas have the tables yet, and whether pools carry their own
# lease (core/0002): a fresh schema is skipped until its protocol is installed.
_PROBE = """
select n, to_regclass(format('%%I.pools', n)) is not null
          and to_regclass(format('%%I.migrations', n)) is not null,
       exists (select 1 from information_schema.columns
               where table_schema = n and table_name = 'pools'
                 and column_name = 'sweep_threshold_s')
from unnest(%(schemas)s::text[]) as n
"""


def detector_query(schemas: Iterable[tuple[str, bool]]) -> sql.Composed:
    """One statement over all ready schemas: (schema, pool, state, live) per pool in a live
    state, and (schema, '', newest migration, false) per schema."""
    parts = []
    for name, leased in schemas:
        ident = sql.Identifier(name)
        parts.append(
            sql.SQL(
                "(select {lit}, p.pool_id::text, p.state, {live} from {s}.pools p "
                "where p.state = any(%(live_states)s))"
                " union all (select {lit}, '', coalesce(max(seq), 0)::text, false "
                "from {s}.migrations)"
            ).format(lit=sql.Literal(name), live=lease_live(leased=leased), s=ident)
        )
    return sql.SQL(" union all ").join(parts)


def fingerprints(rows: Iterable[tuple[str, str, str, bool]]) -> dict[str, Fingerprint]:
    by_schema: dict[str, list[tuple[str, str, bool]]] = {}
    for schema, pool, state, live in rows:
        by_schema.setdefault(schema, []).append((pool, state, bool(live)))
    return {schema: tuple(sorted(rows_)) for schema, rows_ in by_schema.items()}


class DatabaseWatch:
    def __init__(self, dbs: Databases, interval_s: float, wake: Callable[[Key], None]) -> None:
        self._dbs, self._interval, self._wake = dbs, interval_s, wake
        self._fleets: dict[Key, tuple[str, str, float]] = {}  # key -> (url, schema, threshold)
        self._last: dict[tuple[str, str], Fingerprint] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.polls = 0  # statements sent, for tests and metrics

    def register(self, key: Key, url: str, schema: str, threshold_s: float) -> None:
        with self._lock:
            self._fleets[key] = (url, schema, threshold_s)

    def unregister(self, key: Key) -> None:
        with self._lock:
            self._fleets.pop(key, None)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dbwatch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.poll_once()

    def poll_once(self) -> None:
        with self._lock:
            fleets = dict(self._fleets)
        by_url: dict[str, dict[str, float]] = {}
        for url, schema, threshold in fleets.values():
            schemas = by_url.setdefault(url, {})
            schemas[schema] = max(threshold, schemas.get(schema, 0.0))
        for url, schemas in by_url.items():
            try:
                changed = self._poll(url, schemas)
            except (DatabaseUnavailableError, psycopg.Error) as exc:
                # The fleets' own reconciles report the outage; the detector just waits.
                log.debug("database watch: %s", str(exc).splitlines()[0])
                continue
            for key, (u, schema, _) in fleets.items():
                if u == url and schema in changed:
                    self._wake(key)

    def _poll(self, url: str, schemas: dict[str, float]) -> set[str]:
        def read(conn: psycopg.Connection) -> list[tuple[str, str, str, bool]]:
            ready = conn.execute(_PROBE, {"schemas": list(schemas)}).fetchall()
            usable = [(n, bool(leased)) for n, ok, leased in ready if ok]
            if not usable:
                return []
            # Pools of releases before core/0002 have no lease of their own: the strictest
            # (longest) threshold of the fleets on the schema judges them.
            params = live_params(max(schemas[n] for n, _ in usable))
            return list(conn.execute(detector_query(usable), params).fetchall())

        rows = self._dbs.run(url, read)
        self.polls += 1
        now = fingerprints(rows)
        changed = set()
        for schema in schemas:
            key = (url, schema)
            if now.get(schema) != self._last.get(key):
                if key in self._last or schema in now:
                    changed.add(schema)
                self._last[key] = now.get(schema, ())
        return changed
