"""Prometheus metrics of the operator, served over plain HTTP from a daemon thread."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from workerfleet_operator.models import WorkerFleetStatus

BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Where a reconcile's time goes: reading (cache, Secret, database), the planner, the action's
# API calls, the Events it posts, the status write.
PHASES = ("observe", "plan", "act", "events", "status")


class Histogram:
    """Cumulative buckets, sum and count; the caller holds the lock."""

    def __init__(self) -> None:
        self.buckets = [0] * len(BUCKETS)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.sum += seconds
        self.count += 1
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                self.buckets[i] += 1

    def render(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        lines = [
            f'{name}_bucket{{{labels}{sep}le="{bound}"}} {count}'
            for bound, count in zip(BUCKETS, self.buckets, strict=True)
        ]
        lines.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}')
        suffix = f"{{{labels}}}" if labels else ""
        lines.append(f"{name}_sum{suffix} {self.sum:.6f}")
        lines.append(f"{name}_count{suffix} {self.count}")
        return lines


# A fleet this replica has not reconciled for this long is no longer exported: it lost the
# leadership (the new leader exports the fleet), or the fleet is gone. Fleets at rest are
# reconciled every 30 s (WORKERFLEET_RESYNC_INTERVAL).
FLEET_GAUGE_TTL_S = 300.0


@dataclass(frozen=True)
class _FleetGauges:
    phase: str
    since: float  # time.monotonic() when this phase was first seen
    seen: float  # time.monotonic() of the last reconcile
    stalled: str | None  # the Stalled condition's reason, when True
    wait: tuple[str, float] | None  # (breaking migration, seconds it has waited for drain)


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reconciles: dict[str, int] = defaultdict(int)  # by outcome
        self.actions: dict[str, int] = defaultdict(int)  # by action type
        self._latency = Histogram()
        self._phases = {phase: Histogram() for phase in PHASES}
        self._fleets: dict[tuple[str, str], _FleetGauges] = {}

    def observe_reconcile(
        self, seconds: float, outcome: str, action: str, phases: dict[str, float] | None = None
    ) -> None:
        with self._lock:
            self.reconciles[outcome] += 1
            self.actions[action] += 1
            self._latency.observe(seconds)
            for phase, spent in (phases or {}).items():
                self._phases[phase].observe(spent)

    def observe_fleet(self, namespace: str, name: str, status: WorkerFleetStatus) -> None:
        """The fleet's phase (and since when, on this operator's clock: it restarts with the
        operator), whether it is Stalled, and how long a breaking migration has waited."""
        key = (namespace, name)
        now = time.monotonic()
        stalled = next(
            (c.reason for c in status.conditions if c.type == "Stalled" and c.status == "True"),
            None,
        )
        wait = None
        if status.migration_wait_started_at and status.migration_wait_for:
            started = datetime.fromisoformat(status.migration_wait_started_at)
            waited = (datetime.now(UTC) - started).total_seconds()
            wait = (status.migration_wait_for, max(0.0, waited))
        with self._lock:
            old = self._fleets.get(key)
            since = old.since if old is not None and old.phase == status.phase else now
            self._fleets[key] = _FleetGauges(status.phase, since, now, stalled, wait)

    def forget_fleet(self, namespace: str, name: str) -> None:
        with self._lock:
            self._fleets.pop((namespace, name), None)

    def _fleet_lines(self) -> list[str]:
        now = time.monotonic()
        phase = ["# TYPE workerfleet_fleet_phase gauge"]
        since = ["# TYPE workerfleet_fleet_phase_seconds gauge"]
        stalled = ["# TYPE workerfleet_fleet_stalled gauge"]
        waits = ["# TYPE workerfleet_fleet_migration_wait_seconds gauge"]
        for (ns, name), g in sorted(self._fleets.items()):
            if now - g.seen > FLEET_GAUGE_TTL_S:
                continue
            who = f'namespace="{ns}",fleet="{name}"'
            phase.append(f'workerfleet_fleet_phase{{{who},phase="{g.phase}"}} 1')
            since.append(f"workerfleet_fleet_phase_seconds{{{who}}} {now - g.since:.1f}")
            if g.stalled is not None:
                stalled.append(f'workerfleet_fleet_stalled{{{who},reason="{g.stalled}"}} 1')
            if g.wait is not None:
                migration, waited = g.wait
                waits.append(
                    f'workerfleet_fleet_migration_wait_seconds{{{who},migration="{migration}"}} '
                    f"{waited:.1f}"
                )
        return phase + since + stalled + waits

    def render(self) -> str:
        with self._lock:
            lines = ["# TYPE workerfleet_reconciles_total counter"]
            lines += [
                f'workerfleet_reconciles_total{{outcome="{k}"}} {v}'
                for k, v in sorted(self.reconciles.items())
            ]
            lines.append("# TYPE workerfleet_actions_total counter")
            lines += [
                f'workerfleet_actions_total{{action="{k}"}} {v}'
                for k, v in sorted(self.actions.items())
            ]
            lines.append("# TYPE workerfleet_reconcile_seconds histogram")
            lines += self._latency.render("workerfleet_reconcile_seconds")
            lines.append("# TYPE workerfleet_reconcile_phase_seconds histogram")
            for phase, histogram in self._phases.items():
                lines += histogram.render("workerfleet_reconcile_phase_seconds", f'phase="{phase}"')
            lines += self._fleet_lines()
        return "\n".join(lines) + "\n"

    def serve(self, host: str, port: int) -> ThreadingHTTPServer:
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/metrics":
                    self.send_error(404)
                    return
                data = metrics.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                return  # scrapes are not worth a log line

        server = ThreadingHTTPServer((host, port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True, name="metrics").start()
        return server


METRICS = Metrics()


def scrape(port: int, host: str = "127.0.0.1", timeout: float = 10) -> dict[str, float]:
    """A running operator's metrics as `name{labels}` -> value (tests and benchmarks)."""
    import urllib.request

    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out
