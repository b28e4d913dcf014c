"""The demo's live terminal view: pods, pools, schema, fleet conditions and throughput."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from localcluster.kube import Client

if TYPE_CHECKING:
    from workerfleet_demo.run import Run


@dataclass
class Snapshot:
    at: float
    fleet: dict[str, Any]
    pods: list[dict[str, Any]]
    pools: list[tuple[Any, ...]]
    applied: list[str]
    completed: int
    queued: int
    rates: list[float] = field(default_factory=list)

    @classmethod
    def take(
        cls, client: Client, conn: psycopg.Connection, ns: str, fleet: str, schema: str
    ) -> Snapshot:
        obj = client.get(f"/apis/workerfleet.dev/v1alpha1/namespaces/{ns}/workerfleets/{fleet}")
        pods = client.get(f"/api/v1/namespaces/{ns}/pods")["items"]
        s = sql.Identifier(schema)
        try:
            pools = conn.execute(
                sql.SQL(
                    "select pool_id::text, version, coalesce(pod_name, 'outside'), state, "
                    "extract(epoch from now() - heartbeat_at)::float8, running_jobs "
                    "from {}.pools where state in ('starting', 'waiting-for-schema', 'active', "
                    "'draining') or stopped_at > now() - interval '20 seconds' order by started_at"
                ).format(s)
            ).fetchall()
            applied = [
                r[0]
                for r in conn.execute(
                    sql.SQL("select id from {}.migrations order by seq").format(s)
                ).fetchall()
            ]
            completed = conn.execute(
                sql.SQL("select count(*) from {}.demo_ledger").format(s)
            ).fetchone()
            queued = conn.execute(sql.SQL("select count(*) from {}.jobs").format(s)).fetchone()
        except psycopg.errors.UndefinedTable:
            return cls(time.monotonic(), obj, pods, [], [], 0, 0)
        return cls(
            time.monotonic(),
            obj,
            pods,
            pools,
            applied,
            int(completed[0]) if completed else 0,
            int(queued[0]) if queued else 0,
        )


def _render(run: Run) -> Group:
    snap = run.latest
    if snap is None:
        return Group(Panel("starting..."))
    status = snap.fleet.get("status") or {}
    spec = snap.fleet.get("spec") or {}
    window = [s for s in run.samples if s[0] >= run.samples[-1][0] - 5] if run.samples else []
    rate = (
        (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0])
        if len(window) > 1 and window[-1][0] > window[0][0]
        else 0.0
    )
    head = (
        f"[b]WorkerFleet demo/shop[/b]  version {spec.get('version')} "
        f"(running {status.get('currentVersion', '-')})  phase [b]{status.get('phase', '-')}"
        f"[/b]: {status.get('message', '')}\n"
        f"schema: {', '.join(snap.applied) or '-'}   jobs/s: [b]{rate:.0f}[/b]   completed "
        f"{snap.completed}   queued {snap.queued}   enqueued {len(run.enqueued)}"
    )
    pods = Table("pod", "version", "state", "restarts", title="pods", expand=True)
    for p in sorted(snap.pods, key=lambda p: p["metadata"]["creationTimestamp"]):
        meta, st = p["metadata"], p.get("status") or {}
        ready = any(
            c["type"] == "Ready" and c["status"] == "True" for c in st.get("conditions", [])
        )
        state = (
            "terminating"
            if meta.get("deletionTimestamp")
            else ("ready" if ready else st.get("phase", "Pending").lower())
        )
        restarts = sum(c.get("restartCount", 0) for c in st.get("containerStatuses", []))
        version = meta.get("annotations", {}).get("workerfleet.dev/version", "job")
        pods.add_row(meta["name"], version, state, str(restarts))
    pools = Table(
        "pool", "version", "pod", "state", "heartbeat", "running", title="pools", expand=True
    )
    for pool_id, version, pod, state, age, running in snap.pools[-10:]:
        pools.add_row(pool_id[:8], version, pod, state, f"{age:.1f}s ago", str(running))
    conds = Table("condition", "status", "reason", title="conditions", expand=True)
    for c in status.get("conditions", []):
        conds.add_row(c["type"], c["status"], c["reason"])
    phases = "  ".join(
        f"{p.name}: {((p.end or time.monotonic() - run.started) - p.start):.0f}s"
        for p in run.phases
        if p.name.startswith("rollout")
    )
    return Group(Panel(head), pods, pools, conds, Panel(phases or "no rollout yet"))


@contextlib.contextmanager
def live_view(run: Run, *, enabled: bool) -> Iterator[None]:
    if not enabled:
        stop = threading.Event()

        def log() -> None:
            last = ""
            while not stop.wait(2):
                snap = run.latest
                if snap is None:
                    continue
                status = snap.fleet.get("status") or {}
                if not status.get("phase"):
                    continue
                line = f"[demo] {status['phase']}: {status.get('message', '')}"
                if line != last:
                    print(line, flush=True)
                    last = line

        t = threading.Thread(target=log, daemon=True)
        t.start()
        try:
            yield
        finally:
            stop.set()
        return
    with Live(_render(run), refresh_per_second=2) as live:
        stop = threading.Event()

        def refresh() -> None:
            while not stop.wait(0.5):
                live.update(_render(run))

        t = threading.Thread(target=refresh, daemon=True)
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join(2)
