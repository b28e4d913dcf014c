"""Prometheus metrics of the operator, served over plain HTTP from a daemon thread."""

from __future__ import annotations

import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reconciles: dict[str, int] = defaultdict(int)  # by outcome
        self.actions: dict[str, int] = defaultdict(int)  # by action type
        self._latency_buckets = [0] * len(BUCKETS)
        self._latency_sum = 0.0
        self._latency_count = 0

    def observe_reconcile(self, seconds: float, outcome: str, action: str) -> None:
        with self._lock:
            self.reconciles[outcome] += 1
            self.actions[action] += 1
            self._latency_sum += seconds
            self._latency_count += 1
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    self._latency_buckets[i] += 1

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
            for bound, count in zip(BUCKETS, self._latency_buckets, strict=True):
                lines.append(f'workerfleet_reconcile_seconds_bucket{{le="{bound}"}} {count}')
            lines.append(f'workerfleet_reconcile_seconds_bucket{{le="+Inf"}} {self._latency_count}')
            lines.append(f"workerfleet_reconcile_seconds_sum {self._latency_sum:.6f}")
            lines.append(f"workerfleet_reconcile_seconds_count {self._latency_count}")
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
