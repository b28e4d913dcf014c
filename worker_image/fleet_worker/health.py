"""`/healthz`, `/readyz` and `/metrics` over a deliberately tiny HTTP/1.0 server: probes and
Prometheus need nothing more, and the worker image stays free of a web framework. The server
knows nothing of the worker: it renders a Snapshot the worker hands it on each request."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from fleet_worker.protocol import LIVE_STATES, PoolState
from fleet_worker.queue_stats import QueueStats

log = logging.getLogger("fleet_worker")
# A pool reports its own state; the fenced ones others set it reports by exiting.
_STATES = (*LIVE_STATES, PoolState.STOPPED)
SCHEMA_STATES = ("compatible", "pending", "out-of-date", "mismatch", "unknown")
_TEXT = "text/plain; charset=utf-8"
MAX_CLIENTS = 64  # kubelet probes and a Prometheus scrape need a handful
MAX_REQUEST_BYTES = 8192  # request line and headers
REQUEST_TIMEOUT_S = 5.0  # for the whole request, not per line


@dataclass
class Counters:
    completed: int = 0
    failed: int = 0
    fetched: int = 0
    fetch_batches: int = 0
    completions_rejected: int = 0
    heartbeats_failed: int = 0
    sweeps: int = 0
    pools_swept: int = 0
    cron_enqueued: int = 0
    # (task, outcome): completed, retried (failed with attempts left), failed (for good)
    outcomes: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)


@dataclass(frozen=True)
class Snapshot:
    """The worker as the health port reports it, taken when a request arrives."""

    pool_id: str
    state: str  # the pool's state
    fenced: bool  # fenced, or about to be: no recent heartbeat
    stopping: bool
    counters: Counters
    running: int
    held: int  # fetched ahead, waiting for a slot
    heartbeat_age_s: float
    schema_state: str  # one of SCHEMA_STATES
    queue: QueueStats | None = None


class HealthServer:
    def __init__(self, snapshot: Callable[[], Snapshot], host: str, port: int) -> None:
        self.snapshot = snapshot
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
        snap = self.snapshot()
        if snap.state != PoolState.ACTIVE:
            return False, f"pool state is {snap.state}"
        if snap.fenced:
            return False, "no recent heartbeat"
        if snap.stopping:
            return False, "stopping"
        return True, "ready"

    def live(self) -> tuple[bool, str]:
        # Alive while the event loop answers; a database outage is not a reason to restart.
        return True, "alive"

    def metrics(self) -> str:
        return render_metrics(self.snapshot())

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


_COUNTERS = (
    ("fleet_worker_jobs_completed_total", "completed"),
    ("fleet_worker_jobs_failed_total", "failed"),
    ("fleet_worker_jobs_fetched_total", "fetched"),
    ("fleet_worker_fetch_batches_total", "fetch_batches"),
    ("fleet_worker_completions_rejected_total", "completions_rejected"),
    ("fleet_worker_heartbeats_failed_total", "heartbeats_failed"),
    ("fleet_worker_sweeps_total", "sweeps"),
    ("fleet_worker_pools_swept_total", "pools_swept"),
    ("fleet_worker_cron_jobs_enqueued_total", "cron_enqueued"),
)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(snap: Snapshot) -> str:
    """The Prometheus text exposition; docs/operations.md, Monitoring, lists every metric."""
    c, pool = snap.counters, snap.pool_id
    lines: list[str] = []
    for name, attr in _COUNTERS:
        lines += [f"# TYPE {name} counter", f"{name} {getattr(c, attr)}"]
    lines.append("# TYPE fleet_worker_task_outcomes_total counter")
    for (task, outcome), n in sorted(c.outcomes.items()):
        lines.append(
            f'fleet_worker_task_outcomes_total{{task="{_label(task)}",outcome="{outcome}"}} {n}'
        )
    lines += [
        "# TYPE fleet_worker_jobs_running gauge",
        f"fleet_worker_jobs_running {snap.running}",
        "# TYPE fleet_worker_jobs_held gauge",
        f"fleet_worker_jobs_held {snap.held}",
        "# TYPE fleet_worker_heartbeat_age_seconds gauge",
        f"fleet_worker_heartbeat_age_seconds {snap.heartbeat_age_s:.3f}",
        "# TYPE fleet_worker_pool_state gauge",
    ]
    for state in _STATES:
        value = 1 if snap.state == state else 0
        lines.append(f'fleet_worker_pool_state{{state="{state}",pool="{pool}"}} {value}')
    lines.append("# TYPE fleet_worker_schema_state gauge")
    for schema_state in SCHEMA_STATES:
        value = 1 if snap.schema_state == schema_state else 0
        lines.append(f'fleet_worker_schema_state{{state="{schema_state}"}} {value}')
    if snap.queue is not None:
        lines += _queue_lines(snap.queue)
    return "\n".join(lines) + "\n"


def _queue_lines(stats: QueueStats) -> list[str]:
    lines = ["# TYPE fleet_worker_queue_jobs gauge"]
    for (task, queue, state), n in sorted(stats.jobs.items()):
        labels = f'task="{_label(task)}",queue="{_label(queue)}",state="{state}"'
        lines.append(f"fleet_worker_queue_jobs{{{labels}}} {n}")
    lines.append("# TYPE fleet_worker_queue_oldest_waiting_seconds gauge")
    for (task, queue), age in sorted(stats.oldest_waiting_s.items()):
        labels = f'task="{_label(task)}",queue="{_label(queue)}"'
        lines.append(f"fleet_worker_queue_oldest_waiting_seconds{{{labels}}} {age:.3f}")
    if stats.age_s is not None:
        lines += [
            "# TYPE fleet_worker_queue_stats_age_seconds gauge",
            f"fleet_worker_queue_stats_age_seconds {stats.age_s:.3f}",
        ]
    return lines
