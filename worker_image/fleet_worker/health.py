"""`/healthz`, `/readyz` and `/metrics` over a deliberately tiny HTTP/1.0 server: probes and
Prometheus need nothing more, and the worker image stays free of a web framework."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from fleet_worker.lease import lease_clock

if TYPE_CHECKING:
    from fleet_worker.runtime import Worker

log = logging.getLogger("fleet_worker")
_STATES = ("starting", "waiting-for-schema", "active", "draining", "stopped")
_TEXT = "text/plain; charset=utf-8"
MAX_CLIENTS = 64  # kubelet probes and a Prometheus scrape need a handful
MAX_REQUEST_BYTES = 8192  # request line and headers
REQUEST_TIMEOUT_S = 5.0  # for the whole request, not per line


class HealthServer:
    def __init__(self, worker: Worker, host: str, port: int) -> None:
        self.worker = worker
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._clients: dict[asyncio.StreamWriter, None] = {}  # insertion order: oldest first

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
        if w.fenced or w.lease.must_fence(lease_clock()):
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
            "# TYPE fleet_worker_jobs_held gauge",  # fetched ahead, waiting for a slot
            f"fleet_worker_jobs_held {len(w._local)}",
            "# TYPE fleet_worker_heartbeat_age_seconds gauge",
            f"fleet_worker_heartbeat_age_seconds {w.lease.silent_for(lease_clock()):.3f}",
            "# TYPE fleet_worker_pool_state gauge",
        ]
        for state in _STATES:
            value = 1 if w.state == state else 0
            lines.append(f'fleet_worker_pool_state{{state="{state}",pool="{pool}"}} {value}')
        return "\n".join(lines) + "\n"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Unauthenticated and reachable by anything in the pod network: bound the clients
        # served at once, the bytes one may send, and the time it may take to send them.
        # Full: the oldest client goes, not the newcomer, so a few idle connections cannot
        # lock the kubelet's probes out.
        while len(self._clients) >= MAX_CLIENTS:
            oldest = next(iter(self._clients))
            del self._clients[oldest]
            oldest.close()
        self._clients[writer] = None
        try:
            path = await asyncio.wait_for(_read_request(reader), REQUEST_TIMEOUT_S)
            if path is None:
                status, body, content_type = "431 Request Header Fields Too Large", "", _TEXT
            else:
                status, body, content_type = self._respond(path)
            data = body.encode()
            writer.write(
                f"HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
                + data
            )
            await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT_S)
            if path is None:
                # Closing with unread input resets the connection, and the client may never
                # see the answer: read on a little, discarding.
                writer.write_eof()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(reader.read(64 * 1024), 1.0)
        except (TimeoutError, ConnectionError):
            pass
        finally:
            self._clients.pop(writer, None)
            writer.close()

    def _respond(self, path: str) -> tuple[str, str, str]:
        if path == "/healthz":
            ok, body = self.live()
        elif path == "/readyz":
            ok, body = self.ready()
        elif path == "/metrics":
            return "200 OK", self.metrics(), "text/plain; version=0.0.4"
        else:
            return "404 Not Found", "not found", _TEXT
        return ("200 OK" if ok else "503 Service Unavailable"), body, _TEXT


async def _read_request(reader: asyncio.StreamReader) -> str | None:
    """The request path, after reading (and ignoring) the headers; None when the request
    head exceeds MAX_REQUEST_BYTES."""
    head = b""
    while b"\r\n\r\n" not in head and b"\n\n" not in head:
        chunk = await reader.read(1024)
        if not chunk:
            break
        head += chunk
        if len(head) > MAX_REQUEST_BYTES:
            return None
    parts = head.split(b"\n", 1)[0].decode("latin-1").split()
    return parts[1] if len(parts) >= 2 else ""
