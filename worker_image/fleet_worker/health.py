"""`/healthz`, `/readyz` and `/metrics` over a deliberately tiny HTTP/1.0 server: probes and
Prometheus need nothing more, and the worker image stays free of a web framework."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fleet_worker.runtime import Worker

log = logging.getLogger("fleet_worker")
_STATES = ("starting", "waiting-for-schema", "active", "draining", "stopped")


class HealthServer:
    def __init__(self, worker: Worker, host: str, port: int) -> None:
        self.worker = worker
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("health endpoint on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def ready(self) -> tuple[bool, str]:
        w = self.worker
        if w.state != "active":
            return False, f"pool state is {w.state}"
        if w.fenced or time.monotonic() - w.last_beat_ok > w.settings.sweep_threshold:
            return False, "no recent heartbeat"
        if w._stop.is_set():
            return False, "stopping"
        return True, "ready"

    def live(self) -> tuple[bool, str]:
        # Alive while the event loop answers; a database outage is not a reason to restart.
        return True, "alive"

    def metrics(self) -> str:
        w = self.worker
        c = w.counters
        pool = w.pool_id or ""
        lines = [
            "# TYPE fleet_worker_jobs_completed_total counter",
            f"fleet_worker_jobs_completed_total {c.completed}",
            "# TYPE fleet_worker_jobs_failed_total counter",
            f"fleet_worker_jobs_failed_total {c.failed}",
            "# TYPE fleet_worker_jobs_fetched_total counter",
            f"fleet_worker_jobs_fetched_total {c.fetched}",
            "# TYPE fleet_worker_fetch_batches_total counter",
            f"fleet_worker_fetch_batches_total {c.fetch_batches}",
            "# TYPE fleet_worker_completions_rejected_total counter",
            f"fleet_worker_completions_rejected_total {c.completions_rejected}",
            "# TYPE fleet_worker_heartbeats_failed_total counter",
            f"fleet_worker_heartbeats_failed_total {c.heartbeats_failed}",
            "# TYPE fleet_worker_sweeps_total counter",
            f"fleet_worker_sweeps_total {c.sweeps}",
            "# TYPE fleet_worker_jobs_running gauge",
            f"fleet_worker_jobs_running {len(w.running)}",
            "# TYPE fleet_worker_heartbeat_age_seconds gauge",
            f"fleet_worker_heartbeat_age_seconds {time.monotonic() - w.last_beat_ok:.3f}",
            "# TYPE fleet_worker_pool_state gauge",
        ]
        for state in _STATES:
            value = 1 if w.state == state else 0
            lines.append(f'fleet_worker_pool_state{{state="{state}",pool="{pool}"}} {value}')
        return "\n".join(lines) + "\n"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            parts = request.decode("latin-1").split()
            path = parts[1] if len(parts) >= 2 else ""
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            content_type = "text/plain; charset=utf-8"
            if path == "/healthz":
                ok, body = self.live()
            elif path == "/readyz":
                ok, body = self.ready()
            elif path == "/metrics":
                ok, body = True, self.metrics()
                content_type = "text/plain; version=0.0.4"
            else:
                ok, body, status = False, "not found", "404 Not Found"
            if path in ("/healthz", "/readyz", "/metrics"):
                status = "200 OK" if ok else "503 Service Unavailable"
            data = body.encode()
            writer.write(
                f"HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
                + data
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
