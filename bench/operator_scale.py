"""What the operator costs as the number of fleets grows (`make bench-operator`).

For each size N: N fleets at `replicas: 0` (nothing to do) on the local cluster, one
operator process, then over a window after a settle:

- operator CPU seconds per minute and resident memory (from /proc);
- reconciles per second and reconcile p50 / p99 (from the operator's own histogram,
  interpolated within its buckets);
- API requests per second caused by the operator (the apiserver's request counter, minus
  the idle cluster's rate measured before the operator started);
- reaction time: a version bump on one fleet until its status carries the new generation
  (median of 3).

Then, under load (`--load`): 200 idle fleets beside 10 fleets of 2 real worker pods each
(the e2e test app) rolling from release 1 to 2 (a safe migration Job, then pods one at a
time): reconcile p50 / p99 during the rollouts, and how fast a version bump on an idle
fleet is acted on meanwhile.

    python -m bench.operator_scale [--sizes 1,10,100,200,1000] [--window 30] [--load]

Prints a table and writes JSON (bench/results/operator.json by default).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
import yaml

from bench.tables import one_row_each
from fleet_worker.catalog import Catalog
from fleet_worker.db import Schema
from fleet_worker.migrate import migrate
from localcluster.cluster import Cluster, create_namespace, install_crd
from localcluster.kube import ApiError, Client
from workerfleet_dev import harness
from workerfleet_dev.harness import wait_for
from workerfleet_dev.postgres import LocalPostgres
from workerfleet_operator.metrics import PHASES

ROOT = Path(__file__).resolve().parents[1]
APPS = ROOT / "tests" / "apps"
FLEETS = "/apis/workerfleet.dev/v1alpha1/namespaces/{ns}/workerfleets"
SCHEMA = "bench_fleets"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def apiserver_requests(client: Client) -> float:
    text = client.get_text("/metrics")
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("apiserver_request_total{")
    )


WRITES = ('verb="POST"', 'verb="PATCH"', 'verb="PUT"', 'verb="DELETE"')
APISERVER_WRITES = "apiserver_write_seconds_bucket{"


def apiserver_write_buckets(client: Client) -> dict[str, float]:
    """The API server's own latency histogram of writes (every resource and verb that
    writes), summed into one, keyed as `quantile` reads buckets."""
    sums: dict[str, float] = {}
    for line in client.get_text("/metrics").splitlines():
        if line.startswith("apiserver_request_duration_seconds_bucket{") and any(
            w in line for w in WRITES
        ):
            key, value = line.rsplit(" ", 1)
            le = key.split('le="', 1)[1].split('"', 1)[0]
            name = f'{APISERVER_WRITES}le="{le}"}}'
            sums[name] = sums.get(name, 0.0) + float(value)
    return sums


RECONCILE = "workerfleet_reconcile_seconds_bucket{"


def _buckets(m: dict[str, float], prefix: str) -> list[tuple[float, float]]:
    out = []
    for key, value in m.items():
        if key.startswith(prefix):
            le = key.split('le="', 1)[1].rstrip('"}')
            out.append((float("inf") if le == "+Inf" else float(le), value))
    return sorted(out)


def quantile(
    before: dict[str, float], after: dict[str, float], q: float, prefix: str = RECONCILE
) -> float | None:
    """The q-quantile of the reconciles (or of one phase of them: `prefix`) between two
    scrapes, linear within a bucket."""
    b0 = dict(_buckets(before, prefix))
    deltas = [(le, n - b0.get(le, 0.0)) for le, n in _buckets(after, prefix)]
    total = deltas[-1][1] if deltas else 0
    if total <= 0:
        return None
    rank, low, prev = q * total, 0.0, 0.0
    for le, cum in deltas:
        if cum >= rank:
            if le == float("inf"):
                return low
            return low + (le - low) * ((rank - prev) / max(cum - prev, 1e-9))
        low, prev = le, cum
    return low


def fleet_body(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "workerfleet.dev/v1alpha1",
        "kind": "WorkerFleet",
        "metadata": {"name": f"f{i:04d}"},
        "spec": {
            "version": "1", "image": "bench.local/app", "replicas": 0, "app": "bench_app",
            "schema": SCHEMA, "database": {"secretRef": {"name": "db"}},
        },
    }  # fmt: skip


def settled(client: Client, ns: str, n: int) -> bool:
    items = client.get(FLEETS.format(ns=ns))["items"]
    done = [
        f
        for f in items
        if (f.get("status") or {}).get("observedGeneration") == f["metadata"]["generation"]
    ]
    return len(done) >= n


def react(client: Client, ns: str, name: str, version: str, timeout: float = 120) -> float:
    path = FLEETS.format(ns=ns) + f"/{name}"
    t0 = time.monotonic()
    generation = client.merge_patch(path, {"spec": {"version": version}})["metadata"]["generation"]
    while time.monotonic() - t0 < timeout:
        status = client.get(path).get("status") or {}
        if status.get("observedGeneration") == generation:
            return time.monotonic() - t0
        time.sleep(0.02)
    return float("inf")


class Operator(harness.OperatorProcess):
    """The operator at its defaults, started and serving once constructed."""

    def __init__(self, kubeconfig: Path, log: Path) -> None:
        super().__init__(kubeconfig, log, env={"WORKERFLEET_LEADER_IDENTITY": "bench"})
        self.start()
        self.wait_serving(60)

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the operator was stopped"
        return self.proc.pid


def measure(cluster: Cluster, url: str, n: int, window: float, workdir: Path) -> dict[str, Any]:
    client = cluster.client()
    ns = f"bench-{n}"
    create_namespace(client, ns)
    client.create(f"/api/v1/namespaces/{ns}/secrets",
                  {"metadata": {"name": "db"}, "stringData": {"url": url}})  # fmt: skip
    for i in range(n):
        client.create(FLEETS.format(ns=ns), fleet_body(i))
    time.sleep(3)
    r0, t0 = apiserver_requests(client), time.monotonic()
    time.sleep(10)
    idle_rps = (apiserver_requests(client) - r0) / (time.monotonic() - t0)
    op = Operator(cluster.kubeconfig, workdir / f"operator-{n}.log")
    try:
        wait_for(lambda: settled(client, ns, n), max(120, n * 0.5), 1, f"{n} fleets settled")
        time.sleep(5)
        m0, r0, c0, t0 = op.metrics(), apiserver_requests(client), cpu_seconds(
            op.pid), time.monotonic()  # fmt: skip
        time.sleep(window)
        m1, r1, c1, t1 = op.metrics(), apiserver_requests(client), cpu_seconds(
            op.pid), time.monotonic()  # fmt: skip
        elapsed = t1 - t0
        count = (
            m1["workerfleet_reconcile_seconds_count"] - m0["workerfleet_reconcile_seconds_count"]
        )
        reactions = [react(client, ns, f"f{n // 2:04d}", str(v)) for v in (2, 3, 4)]
        p50, p99 = quantile(m0, m1, 0.5), quantile(m0, m1, 0.99)
        return {
            "fleets": n,
            "cpu_s_per_min": round((c1 - c0) / elapsed * 60, 2),
            "rss_mib": round(rss_mib(op.pid), 1),
            "reconciles_per_s": round(count / elapsed, 2),
            "reconcile_p50_ms": None if p50 is None else round(p50 * 1000, 1),
            "reconcile_p99_ms": None if p99 is None else round(p99 * 1000, 1),
            "api_requests_per_s": round(max((r1 - r0) / elapsed - idle_rps, 0.0), 2),
            "reaction_s_median": round(statistics.median(reactions), 2),
            "reaction_s_max": round(max(reactions), 2),
        }
    finally:
        op.stop()
        with contextlib.suppress(ApiError):
            client.delete(f"/api/v1/namespaces/{ns}")


ROLLING = 10
PHASE = "workerfleet_reconcile_phase_seconds_bucket"


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


FAST = {"heartbeatInterval": "500ms", "sweepInterval": "1s", "sweepThreshold": "5s",
        "gracefulShutdownTimeout": "5s", "concurrency": 2}  # fmt: skip


def _ready(client: Client, ns: str, name: str, version: str) -> bool:
    fleet = client.get(FLEETS.format(ns=ns) + f"/{name}")
    status = fleet.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), None)
    return bool(
        ready and ready["status"] == "True"
        and ready.get("observedGeneration") == fleet["metadata"]["generation"]
        and status.get("currentVersion") == version
    )  # fmt: skip


def _wait_all(client: Client, ns: str, names: list[str], version: str, timeout: float) -> None:
    wait_for(lambda: all(_ready(client, ns, n, version) for n in names), timeout, 1,
             f"the fleets Ready at {version}")  # fmt: skip


def measure_load(cluster: Cluster, url: str, workdir: Path, idle: int = 200) -> dict[str, Any]:
    client = cluster.client()
    ns = "bench-load"
    create_namespace(client, ns)
    client.create(f"/api/v1/namespaces/{ns}/secrets",
                  {"metadata": {"name": "db"}, "stringData": {"url": url}})  # fmt: skip
    for i in range(idle):
        client.create(FLEETS.format(ns=ns), fleet_body(i))
    rolling = [f"r{i:02d}" for i in range(ROLLING)]
    for name in rolling:
        body = fleet_body(0)
        body["metadata"]["name"] = name
        body["spec"].update(image="workerfleet.test/app", app="fleet_e2e_app", replicas=2,
                            schema=f"bench_{name}", **FAST)  # fmt: skip
        client.create(FLEETS.format(ns=ns), body)
    op = Operator(cluster.kubeconfig, workdir / "operator-load.log")
    try:
        _wait_all(client, ns, rolling, "1", 300)
        m0, t0 = op.metrics(), time.monotonic()
        w0 = apiserver_write_buckets(client)
        for name in rolling:
            client.merge_patch(FLEETS.format(ns=ns) + f"/{name}", {"spec": {"version": "2"}})
        reactions, version = [], 10
        while not all(_ready(client, ns, n, "2") for n in rolling):
            if time.monotonic() - t0 > 300:
                raise TimeoutError("rollouts did not finish in 300s")
            version += 1
            reactions.append(react(client, ns, f"f{version % idle:04d}", str(version)))
            time.sleep(2)
        m1, elapsed = op.metrics(), time.monotonic() - t0
        w1 = apiserver_write_buckets(client)
        p50, p99 = quantile(m0, m1, 0.5), quantile(m0, m1, 0.99)
        count = (
            m1["workerfleet_reconcile_seconds_count"] - m0["workerfleet_reconcile_seconds_count"]
        )
        return {
            "idle_fleets": idle,
            "rolling_fleets": ROLLING,
            "rollouts_s": round(elapsed, 1),
            "reconciles_per_s": round(count / elapsed, 2),
            "reconcile_p50_ms": None if p50 is None else round(p50 * 1000, 1),
            "reconcile_p99_ms": None if p99 is None else round(p99 * 1000, 1),
            # Where the tail goes: each phase's own p99 (metrics.PHASES).
            "phase_p99_ms": {
                phase: _ms(quantile(m0, m1, 0.99, f'{PHASE}{{phase="{phase}",')) for phase in PHASES
            },
            # The API server's own time for every write in the window (all clients): what
            # the operator's act and status phases wait on, measured on the server side.
            "apiserver_write_p50_ms": _ms(quantile(w0, w1, 0.5, APISERVER_WRITES)),
            "apiserver_write_p99_ms": _ms(quantile(w0, w1, 0.99, APISERVER_WRITES)),
            "idle_bumps": len(reactions),
            "reaction_s_median": round(statistics.median(reactions), 2) if reactions else None,
            "reaction_s_max": round(max(reactions), 2) if reactions else None,
        }
    finally:
        op.stop()
        with contextlib.suppress(ApiError):
            client.delete(f"/api/v1/namespaces/{ns}")


COLUMNS = (
    ("fleets", "fleets"),
    ("operator CPU s/min", "cpu_s_per_min"),
    ("RSS MiB", "rss_mib"),
    ("reconciles/s", "reconciles_per_s"),
    ("reconcile p50 / p99 ms", "latency"),
    ("API requests/s", "api_requests_per_s"),
    ("version bump acted on, median / max s", "reaction"),
)


def table(rows: list[dict[str, Any]]) -> str:
    def cell(r: dict[str, Any], key: str) -> str:
        if key == "latency":
            return f"{r['reconcile_p50_ms']} / {r['reconcile_p99_ms']}"
        if key == "reaction":
            return f"{r['reaction_s_median']} / {r['reaction_s_max']}"
        return str(r[key])

    return one_row_each(rows, COLUMNS, cell)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,10,100,200,1000")
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--load", action="store_true", help="also 10 rollouts among idle ones")
    parser.add_argument("--load-idle", type=int, default=200, help="idle fleets beside them")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "operator.json")
    args = parser.parse_args(argv)
    sizes = [int(x) for x in args.sizes.split(",") if x]
    rows: list[dict[str, Any]] = []
    load: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="bench-operator-") as tmp, LocalPostgres() as pg:
        with psycopg.connect(pg.url, autocommit=True) as conn:
            migrate(conn, Schema(SCHEMA), Catalog.load(APPS / "fleet_test_apps" / "migrations_v1"))
        with Cluster(Path(tmp) / "cluster") as cluster:
            install_crd(
                cluster.client(), yaml.safe_load((ROOT / "crds/workerfleet.yaml").read_text())
            )
            for n in sizes:
                row = measure(cluster, pg.url, n, args.window, Path(tmp))
                print(json.dumps(row), flush=True)
                rows.append(row)
            if args.load:
                from tests.e2e.operator_env import register_app_images

                register_app_images(cluster, Path(tmp) / "apps")
                load = measure_load(cluster, pg.url, Path(tmp), idle=args.load_idle)
                print(json.dumps(load), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"idle": rows, "load": load}, indent=2))
    if rows:
        print(table(rows))
    if load:
        print("| under load | " + " | ".join(f"{k}: {v}" for k, v in load.items()) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
