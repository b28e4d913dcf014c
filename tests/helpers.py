"""Test helpers: worker subprocesses of the test apps, a job stream, SQL shortcuts and a TCP
proxy to cut. The launchers and the wait helper themselves are workerfleet_dev.harness, which
the demo and the benchmarks use too."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from tests.conftest import APPS_DIR
from workerfleet_dev import harness
from workerfleet_dev.harness import Tally, wait_for

__all__ = ["FAST", "Tally", "TcpProxy", "WorkerProcess", "pool_states", "q", "stream_jobs",
           "wait_for"]  # fmt: skip

# Fast but not twitchy: 15 missed heartbeats before a pool counts as dead, so a loaded CI
# machine does not declare a busy worker dead (which would rerun its jobs, by design).
FAST = [
    "--heartbeat-interval", "0.2s",
    "--sweep-interval", "0.3s",
    "--sweep-threshold", "3s",
    "--poll-interval", "0.2s",
    "--retry-delay", "50ms",
    "--graceful-shutdown-timeout", "10s",
]  # fmt: skip


class WorkerProcess(harness.WorkerProcess):
    """A real `fleet-worker run` process of a test app, its log in a file in `log_dir`."""

    def __init__(
        self,
        url: str,
        schema: str,
        app: str,
        log_dir: Path,
        *args: str,
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(url, schema, app, log_dir, *args, env=env, pythonpath=[APPS_DIR])


def q(
    conn: psycopg.Connection, schema: str, template: str, params: list[object] | None = None
) -> list[tuple[Any, ...]]:
    query = sql.SQL(template).format(s=sql.Identifier(schema))
    return conn.execute(query, params or []).fetchall()


def pool_states(conn: psycopg.Connection, schema: str) -> dict[str, str]:
    return {str(r[0]): str(r[1]) for r in q(conn, schema, "select pool_id, state from {s}.pools")}


def stream_jobs(
    url: str,
    schema: str,
    every_s: float = 0.02,
    sleep_s: float = 0.05,
    task: str = "work",
    payload: dict[str, Any] | None = None,
) -> harness.Producer:
    """A steady stream of `task` jobs (by default `work` sleeping `sleep_s`)."""
    job_payload = payload if payload is not None else {"sleep": sleep_s}
    return harness.Producer(url, harness.enqueue(schema, task, job_payload), every_s)


class TcpProxy:
    """A TCP relay in front of PostgreSQL that a test can cut: `cut()` drops every relayed
    connection and refuses new ones until `restore()`, so one worker loses the database
    while others (and the test) keep theirs."""

    def __init__(self, target_host: str, target_port: int) -> None:
        import socket
        import threading

        self._target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._cut = False
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @classmethod
    def for_url(cls, url: str) -> TcpProxy:
        info = psycopg.conninfo.conninfo_to_dict(url)
        return cls(str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432))

    def url(self, url: str) -> str:
        """`url` routed through this proxy."""
        return psycopg.conninfo.make_conninfo(url, host="127.0.0.1", port=str(self.port))

    def _accept(self) -> None:
        import socket
        import threading

        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._cut:
                    client.close()
                    continue
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open |= {client, upstream}
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: Any, dst: Any) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                self._close(s)

    def _close(self, s: Any) -> None:
        import socket

        with self._lock:
            self._open.discard(s)
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            victims = list(self._open)
        for s in victims:
            self._close(s)

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()


ARGOCD_HEALTH = Path(__file__).resolve().parents[1] / "deploy" / "argocd" / "health.lua"


def argocd_health(obj: dict[str, Any]) -> dict[str, str]:
    """What Argo CD's health check (deploy/argocd/health.lua) says about a WorkerFleet: the
    script run as Argo CD runs it, with `obj` global, in Lua 5.1 (gopher-lua's dialect)."""
    import lupa.lua51

    lua = lupa.lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(ARGOCD_HEALTH.read_text())
    return {str(k): str(v) for k, v in dict(result).items()}
