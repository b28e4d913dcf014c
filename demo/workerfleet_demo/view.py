"""The demo's live terminal view: pods, pools, schema, fleet conditions and throughput."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from workerfleet_demo.progress import Run


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
