"""`make demo`: a local Kubernetes, an embedded PostgreSQL, the operator, and a fleet of the
demo shop rolled from release 1 to 2 (safe migration) to 3 (breaking migration) under a
steady stream of jobs; then a summary, as text, JSON and a PNG chart.

    python -m workerfleet_demo.run [--keep] [--real-node] [--replicas 3] [--rate 40] [--out DIR]

`--real-node` runs it on a real kubelet with containerd instead of the process agent: the
images are built from the project's Dockerfiles and the operator is installed from deploy/
as a pod under its ServiceAccount (root on Debian; see docs/localcluster.md).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import yaml

from fleet_worker.db import Schema
from localcluster.bins import ensure as ensure_binaries
from localcluster.cluster import Cluster, install_crd
from localcluster.images import Image, ImageTable
from localcluster.kube import ApiError, Client
from localcluster.realnode import network
from localcluster.realnode.cluster import RealNodeCluster
from workerfleet_demo.progress import Phase, Run, Snapshot
from workerfleet_demo.view import live_view
from workerfleet_dev.deploy import apply_deploy, wait_operator_ready
from workerfleet_dev.harness import (
    OperatorProcess,
    Producer,
    Tally,
    enqueue,
    longest_gap_s,
    wait_for,
)
from workerfleet_dev.images import node_archive
from workerfleet_dev.postgres import LocalPostgres

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE, FLEET, SCHEMA = "demo", "shop", "shop_queue"
IMAGE = "workerfleet/demo-app"
FLEET_PATH = f"/apis/workerfleet.dev/v1alpha1/namespaces/{NAMESPACE}/workerfleets/{FLEET}"


def images(workdir: Path) -> ImageTable:
    """`workerfleet/demo-app:N` runs release N of the shop as the module the fleet names."""
    table = ImageTable()
    bin_dir = Path(sys.executable).parent
    for release in ("1", "2", "3"):
        shim = workdir / f"image-{release}"
        shim.mkdir(parents=True, exist_ok=True)
        (shim / "workerfleet_demo_app.py").write_text(
            f"from workerfleet_demo.v{release} import app\n"
        )
        table.add(
            f"{IMAGE}:{release}",
            Image(command=[str(bin_dir / "fleet-worker")],
                  env={"PYTHONPATH": str(shim), "PATH": f"{bin_dir}:/usr/bin:/bin"}),
        )  # fmt: skip
    return table


def install(client: Client, url: str, replicas: int) -> None:
    install_crd(client, yaml.safe_load((ROOT / "crds" / "workerfleet.yaml").read_text()))
    client.create("/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
    wait_for(lambda: _exists(client, f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/default"),
             30, 0.3, "the namespace's default ServiceAccount")  # fmt: skip
    client.create(f"/api/v1/namespaces/{NAMESPACE}/secrets",
                  {"metadata": {"name": "shop-db"}, "stringData": {"url": url}})  # fmt: skip
    client.create(
        f"/apis/workerfleet.dev/v1alpha1/namespaces/{NAMESPACE}/workerfleets",
        {
            "apiVersion": "workerfleet.dev/v1alpha1",
            "kind": "WorkerFleet",
            "metadata": {"name": FLEET},
            "spec": {
                "version": "1", "image": IMAGE, "replicas": replicas, "app":
                "workerfleet_demo_app", "schema": SCHEMA, "concurrency": 8,
                "database": {"secretRef": {"name": "shop-db"}},
                "heartbeatInterval": "1s", "sweepInterval": "2s", "sweepThreshold": "5s",
                "gracefulShutdownTimeout": "10s", "maxMigrationWaitTime": "2m",
            },
        },
    )  # fmt: skip


def _exists(client: Client, path: str) -> bool:
    try:
        client.get(path)
        return True
    except ApiError:
        return False


def fleet_ready(client: Client, version: str) -> bool:
    fleet = client.get(FLEET_PATH)
    status = fleet.get("status") or {}
    ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), None)
    return bool(ready and ready["status"] == "True"
                and ready["observedGeneration"] == fleet["metadata"]["generation"]
                and status.get("currentVersion") == version)  # fmt: skip


def sample(client: Client, url: str, run: Run, stop: threading.Event) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        while not stop.is_set():
            try:
                run.latest = Snapshot.take(client, conn, NAMESPACE, FLEET, SCHEMA)
                run.samples.append((time.monotonic() - run.started, run.latest.completed))
            except (ApiError, psycopg.Error):
                pass
            stop.wait(0.5)


def step(run: Run, client: Client, name: str, version: str | None, timeout: float) -> None:
    phase = Phase(name, time.monotonic() - run.started)
    run.phases.append(phase)
    if version is not None:
        client.merge_patch(FLEET_PATH, {"spec": {"version": version}})
        wait_for(lambda: fleet_ready(client, version), timeout, 0.3, f"release {version} ready")
    phase.end = time.monotonic() - run.started


def summarize(url: str, run: Run) -> dict[str, Any]:
    schema = Schema(SCHEMA)
    with psycopg.connect(url, autocommit=True) as conn:
        wait_for(lambda: conn.execute(schema.q("select count(*) from {s}.jobs")).fetchone() == (0,),
                 60, 0.3, "queue drained")  # fmt: skip
        rows = conn.execute(
            schema.q("select job_id, finished_at from {s}.demo_ledger order by finished_at")
        ).fetchall()
    tally = Tally.of(run.enqueued, (int(r[0]) for r in rows))
    return {
        "jobs_enqueued": tally.enqueued,
        "jobs_completed": tally.completed,
        "jobs_lost": len(tally.lost),
        "jobs_completed_twice": len(tally.twice),
        "longest_processing_gap_s": round(longest_gap_s(r[1] for r in rows), 2),
        "rollouts_s": {
            p.name: round((p.end or p.start) - p.start, 1)
            for p in run.phases
            if p.name.startswith("rollout")
        },
    }


def chart(run: Run, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs, ys = [], []
    for (t0, c0), (t1, c1) in itertools.pairwise(run.samples):
        if t1 > t0:
            xs.append(t1)
            ys.append((c1 - c0) / (t1 - t0))
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(xs, ys, color="#2060a0", linewidth=1.2, label="jobs completed / s")
    colors = {"rollout 1 -> 2 (safe)": "#80c080", "rollout 2 -> 3 (breaking)": "#e0a060"}
    for p in run.phases:
        if p.name in colors and p.end is not None:
            ax.axvspan(p.start, p.end, color=colors[p.name], alpha=0.35, label=p.name)
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("jobs / s")
    ax.set_title("WorkerFleet demo: throughput during two rollouts")
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the cluster up at the end and print its kubeconfig",
    )
    parser.add_argument(
        "--real-node",
        action="store_true",
        help="a real kubelet, containerd and images built here instead of the process agent",
    )
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--rate", type=float, default=40.0, help="jobs enqueued per second")
    parser.add_argument("--out", type=Path, default=ROOT / "demo-output")
    parser.add_argument("--no-live", action="store_true", help="plain log lines, no live view")
    args = parser.parse_args(argv)
    try:
        return _demo(args)
    except KeyboardInterrupt:
        # The ExitStack has already stopped the operator, the cluster and PostgreSQL.
        print("\n[demo] interrupted: everything was torn down", file=sys.stderr)
        return 130


def _demo(args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    print("[demo] control-plane binaries (a first build takes several minutes)...", flush=True)
    ensure_binaries()
    workdir = Path(tempfile.mkdtemp(prefix="workerfleet-demo-"))
    run = Run()
    stop = threading.Event()
    with contextlib.ExitStack() as stack:
        cluster, pg = _start(stack, args, workdir)
        client = cluster.client()
        # Enqueued from the start, before release 1 created the schema: those few are skipped.
        producer = Producer(
            pg.url, enqueue(SCHEMA, "send_receipt", lambda n: {"order_id": n}), 1 / args.rate,
            tolerate=(psycopg.errors.UndefinedFunction, psycopg.errors.InvalidSchemaName),
        )  # fmt: skip
        run.enqueued = producer.ids
        sampler = threading.Thread(target=sample, args=(client, pg.url, run, stop))
        sampler.start()

        def stop_threads() -> None:
            stop.set()
            producer.stop()
            sampler.join(10)

        stack.callback(stop_threads)
        with live_view(run, enabled=not args.no_live):
            step(run, client, "start release 1", "1", 240)
            step(run, client, "steady", None, 0)
            time.sleep(8)
            step(run, client, "rollout 1 -> 2 (safe)", "2", 240)
            time.sleep(8)
            step(run, client, "rollout 2 -> 3 (breaking)", "3", 240)
            time.sleep(5)
            stop_threads()
        summary = summarize(pg.url, run)
        _report(summary, run, args, cluster.kubeconfig)
    return 0 if summary["jobs_lost"] == 0 and summary["jobs_completed_twice"] == 0 else 1


def _start(
    stack: contextlib.ExitStack[bool | None], args: argparse.Namespace, workdir: Path
) -> tuple[Cluster | RealNodeCluster, LocalPostgres]:
    """PostgreSQL, the cluster, the fleet and the operator, each torn down by `stack`."""
    cluster: Cluster | RealNodeCluster
    if args.real_node:
        print("[demo] building images and starting the real node...", flush=True)
        archive = node_archive(["demo"])
        cluster = stack.enter_context(
            RealNodeCluster(workdir / "cluster", image_archives=[archive])
        )
        pg = stack.enter_context(
            LocalPostgres(also_listen=network.GATEWAY, trust_cidr=network.SUBNET)
        )
    else:
        print("[demo] starting PostgreSQL and the local cluster...", flush=True)
        pg = stack.enter_context(LocalPostgres())
        cluster = stack.enter_context(Cluster(workdir / "cluster", images(workdir)))
    client = cluster.client()
    install(client, pg.url, args.replicas)
    if args.real_node:
        apply_deploy(client)
        wait_operator_ready(client)
    else:
        op = OperatorProcess(cluster.kubeconfig, args.out / "operator.log",
                             env={"WORKERFLEET_RECONCILE_INTERVAL": "1"})  # fmt: skip
        op.start()
        stack.callback(op.stop)
    return cluster, pg


def _report(summary: dict[str, Any], run: Run, args: argparse.Namespace, kubeconfig: Path) -> None:
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    chart(run, args.out / "throughput.png")
    print("\n[demo] summary")
    for key, value in summary.items():
        print(f"  {key:<28} {value}")
    print(f"  written: {args.out / 'summary.json'}, {args.out / 'throughput.png'}")
    if args.keep:
        print(f"\n[demo] cluster kept up. Try:\n  export KUBECONFIG={kubeconfig}\n"
              f"  kubectl get wf -n {NAMESPACE} -w\n  kubectl describe wf -n {NAMESPACE} "
              f"{FLEET}\n  kubectl-workerfleet -n {NAMESPACE} status {FLEET}\n"
              "Ctrl-C tears everything down.")  # fmt: skip
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    sys.exit(main())
