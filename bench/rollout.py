"""The rollout story as numbers (`make bench-rollout`): what an upgrade does to the jobs.

Two arms, one after the other in one run, on the local cluster (a real kube-apiserver and
kube-controller-manager, pods as local processes) and one embedded PostgreSQL (a database
per arm):

- **Deployment + Graphile Worker OSS**: what teams do today. A Deployment (RollingUpdate,
  maxSurge 1, maxUnavailable 0) of Graphile Worker processes, each of which applies the app
  migrations it has not seen when it starts, breaking or not; old pods keep running their
  code against the new schema until the Deployment replaces them.
- **WorkerFleet**: a WorkerFleet of fleet-worker pods and the operator at its defaults; a
  safe migration runs as a Job before the pods roll, a breaking one only once the outdated
  pools have drained.

Both run the same task (work for `--work-ms`, then insert into `widgets` and record the run
in `runs`, one transaction; bench/rollout_app.py and graphile_runner.mjs `app-worker`) and
the same three migrations (bench/rollout.py writes them from one source): release 2 adds a
nullable column (safe), release 3 renames the column releases 1 and 2 write (breaking).
A producer enqueues `--rate` jobs/s from before the first bump until after the last, then
the benchmark waits for the queue to finish.

Per arm: jobs enqueued, done, run twice (more than one committed run), attempts failed by
schema errors (and the jobs they hit), stuck locked, lost (no committed run and no longer in
the queue), not done at the end, the longest gap between two committed runs while the
stream ran, and how long each rollout took.

    python -m bench.rollout [--replicas 3] [--concurrency 4] [--rate 40] [--work-ms 50]

Prints a table and writes JSON (bench/results/rollout.json by default).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import shutil
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import yaml

from bench.operator_scale import Operator
from bench.peers import install
from bench.peers.harness import fresh_database, run_command
from bench.peers.peers import GraphileWorker
from bench.tables import side_by_side
from fleet_worker.db import Schema
from fleet_worker.queue import JobSpec, add_job
from localcluster.cluster import Cluster, create_namespace, install_crd
from localcluster.images import Image
from localcluster.kube import ApiError, Client
from workerfleet_dev import harness
from workerfleet_dev.harness import wait_for
from workerfleet_dev.postgres import LocalPostgres

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
RUNNER = ROOT / "bench" / "peers" / "graphile_runner.mjs"
RELEASES = (1, 2, 3)

# One source for both arms: (file, flag, SQL). Release N has the first N migrations.
MIGRATIONS = (
    ("0001_widgets.sql", "safe", """
create table :FLEET_SCHEMA.runs (
    id bigserial primary key,
    n bigint not null,           -- the producer's job number, the same in both arms
    worker text not null,
    release text not null,
    outcome text not null,       -- ok | schema_error | error
    error text,
    at timestamptz not null default clock_timestamp()
);
create table :FLEET_SCHEMA.widgets (
    id bigserial primary key, n bigint not null, name text not null
);
"""),
    ("0002_widget_color.sql", "safe", """
-- Expand: a nullable column the old code ignores.
alter table :FLEET_SCHEMA.widgets add column color text;
"""),
    ("0003_rename_widget_name.sql", "breaking", """
-- Contract: releases 1 and 2 insert into `name`, which no longer exists afterwards.
alter table :FLEET_SCHEMA.widgets rename column name to title;
"""),
)  # fmt: skip


def write_migrations(root: Path) -> dict[int, Path]:
    dirs: dict[int, Path] = {}
    for release in RELEASES:
        d = dirs[release] = root / f"migrations-{release}"
        d.mkdir(parents=True, exist_ok=True)
        for name, flag, text in MIGRATIONS[:release]:
            (d / name).write_text(f"--! {flag}\n{text.lstrip()}")
    return dirs


def db_now(url: str) -> datetime:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("select clock_timestamp()").fetchone()
        assert row is not None
        return row[0]  # type: ignore[no-any-return]


class Arm(ABC):
    """One way of rolling out: its deployment, its queue's SQL, its app tables' schema."""

    name: str
    app_schema: str

    def __init__(self, client: Client, ns: str, url: str, args: argparse.Namespace) -> None:
        self.client, self.ns, self.url, self.args = client, ns, url, args
        create_namespace(client, ns)
        client.create(f"/api/v1/namespaces/{ns}/secrets",
                      {"metadata": {"name": "db"}, "stringData": {"url": url}})  # fmt: skip

    @abstractmethod
    def deploy(self, release: int) -> None: ...

    @abstractmethod
    def bump(self, release: int) -> None: ...

    @abstractmethod
    def rolled_out(self, release: int) -> bool: ...

    @abstractmethod
    def enqueue(self, conn: psycopg.Connection, n: int) -> None: ...

    @abstractmethod
    def queued(self, conn: psycopg.Connection) -> dict[int, bool]:
        """The producer's numbers still in the queue, each with whether it is locked."""

    @abstractmethod
    def locked(self, conn: psycopg.Connection) -> list[dict[str, Any]]:
        """The jobs still locked: by whom, how often tried, the last error."""

    def stop(self) -> None:
        with contextlib.suppress(ApiError):
            self.client.delete(f"/api/v1/namespaces/{self.ns}")


class DeploymentGraphile(Arm):
    app_schema = "rollout_app"
    IMAGE = "bench.local/rollout-graphile"

    def __init__(
        self, client: Client, ns: str, url: str, args: argparse.Namespace, min_ready: int
    ) -> None:
        super().__init__(client, ns, url, args)
        # How long a new pod must be Ready before the Deployment counts it and stops an old
        # one: the overlap in which old code meets the new schema (a real pod's image pull,
        # start-up and readiness probe make it seconds).
        self.min_ready = min_ready
        self.name = f"Deployment + Graphile Worker 0.18, minReadySeconds {min_ready}"
        run_command(GraphileWorker()._node(url, "migrate"))  # its own schema, once
        self.path = f"/apis/apps/v1/namespaces/{ns}/deployments/workers"

    def _template(self, release: int) -> dict[str, Any]:
        env = [
            {"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "db", "key": "url"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ]
        return {
            "metadata": {"labels": {"app": "workers"}},
            "spec": {"containers": [
                {"name": "worker", "image": f"{self.IMAGE}:{release}", "env": env}
            ]},
        }  # fmt: skip

    def deploy(self, release: int) -> None:
        self.client.create(f"/apis/apps/v1/namespaces/{self.ns}/deployments", {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "workers"},
            "spec": {
                "replicas": self.args.replicas,
                "minReadySeconds": self.min_ready,
                "selector": {"matchLabels": {"app": "workers"}},
                "strategy": {"type": "RollingUpdate",
                             "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                "template": self._template(release),
            },
        })  # fmt: skip

    def bump(self, release: int) -> None:
        self.client.merge_patch(self.path, {"spec": {"template": self._template(release)}})

    def rolled_out(self, release: int) -> bool:
        """What `kubectl rollout status` waits for."""
        d = self.client.get(self.path)
        s, want = d.get("status") or {}, d["spec"]["replicas"]
        image = d["spec"]["template"]["spec"]["containers"][0]["image"]
        return bool(
            image.endswith(f":{release}")
            and s.get("observedGeneration", 0) >= d["metadata"]["generation"]
            and s.get("updatedReplicas") == want
            and s.get("replicas") == want
            and s.get("availableReplicas") == want
        )

    def enqueue(self, conn: psycopg.Connection, n: int) -> None:
        payload = json.dumps({"n": n, "work_ms": self.args.work_ms})
        conn.execute("select graphile_worker.add_job('make_widget', %s::json)", [payload])

    def queued(self, conn: psycopg.Connection) -> dict[int, bool]:
        rows = conn.execute(
            "select (payload->>'n')::bigint, locked_at is not null "
            "from graphile_worker._private_jobs"
        ).fetchall()
        return {int(n): bool(locked) for n, locked in rows}

    def locked(self, conn: psycopg.Connection) -> list[dict[str, Any]]:
        rows = conn.execute(
            "select (payload->>'n')::bigint, locked_by, locked_at, attempts, last_error "
            "from graphile_worker._private_jobs where locked_at is not null"
        ).fetchall()
        keys = ("n", "locked_by", "locked_at", "attempts", "last_error")
        return [dict(zip(keys, map(str, r), strict=True)) for r in rows]


class WorkerFleetArm(Arm):
    name = "WorkerFleet (operator defaults)"
    app_schema = "rollout_fleet"
    IMAGE = "bench.local/rollout-fleet"
    FLEETS = "/apis/workerfleet.dev/v1alpha1/namespaces/{ns}/workerfleets"

    def __init__(self, client: Client, ns: str, url: str, args: argparse.Namespace) -> None:
        super().__init__(client, ns, url, args)
        self.path = self.FLEETS.format(ns=ns) + "/workers"
        self.operator: Operator | None = None

    def deploy(self, release: int) -> None:
        self.operator = Operator(self.args.kubeconfig, self.args.workdir / "operator.log")
        self.client.create(self.FLEETS.format(ns=self.ns), {
            "apiVersion": "workerfleet.dev/v1alpha1", "kind": "WorkerFleet",
            "metadata": {"name": "workers"},
            "spec": {
                "version": str(release), "image": self.IMAGE, "replicas": self.args.replicas,
                "app": "bench.rollout_app", "schema": self.app_schema,
                "concurrency": self.args.concurrency,
                "database": {"secretRef": {"name": "db"}},
            },
        })  # fmt: skip

    def bump(self, release: int) -> None:
        self.client.merge_patch(self.path, {"spec": {"version": str(release)}})

    def rolled_out(self, release: int) -> bool:
        fleet = self.client.get(self.path)
        status = fleet.get("status") or {}
        ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), None)
        return bool(
            ready and ready["status"] == "True"
            and ready.get("observedGeneration") == fleet["metadata"]["generation"]
            and status.get("currentVersion") == str(release)
        )  # fmt: skip

    def enqueue(self, conn: psycopg.Connection, n: int) -> None:
        spec = JobSpec("make_widget", {"n": n, "work_ms": self.args.work_ms})
        add_job(conn, spec, Schema(self.app_schema))

    def queued(self, conn: psycopg.Connection) -> dict[int, bool]:
        rows = conn.execute(
            psycopg.sql.SQL(
                "select (payload->>'n')::bigint, locked_by is not null from {}.jobs"
            ).format(psycopg.sql.Identifier(self.app_schema))
        ).fetchall()
        return {int(n): bool(locked) for n, locked in rows}

    def locked(self, conn: psycopg.Connection) -> list[dict[str, Any]]:
        rows = conn.execute(
            psycopg.sql.SQL(
                "select (j.payload->>'n')::bigint, p.pod_name, j.locked_at, j.attempts, "
                "j.last_error from {s}.jobs j left join {s}.pools p on p.pool_id = j.locked_by "
                "where j.locked_by is not null"
            ).format(s=psycopg.sql.Identifier(self.app_schema))
        ).fetchall()
        keys = ("n", "locked_by", "locked_at", "attempts", "last_error")
        return [dict(zip(keys, map(str, r), strict=True)) for r in rows]

    def stop(self) -> None:
        with contextlib.suppress(ApiError):
            self.client.delete(self.path)
            wait_for(lambda: not self._exists(), 120, 0.5, "fleet deleted")
        if self.operator is not None:
            self.operator.stop()
        super().stop()

    def _exists(self) -> bool:
        try:
            self.client.get(self.path)
            return True
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise


def run_arm(arm: Arm, args: argparse.Namespace) -> dict[str, Any]:
    url = arm.url
    arm.deploy(1)
    wait_for(lambda: arm.rolled_out(1), 300, 0.5, f"{arm.name} at release 1")

    def enqueue(conn: psycopg.Connection, n: int) -> int:
        arm.enqueue(conn, n)
        return n  # the producer's numbers, which each arm's ledger records

    producer = harness.Producer(arm.url, enqueue, 1.0 / args.rate)
    stream_start = db_now(url)
    time.sleep(args.steady)
    rollouts: dict[str, float] = {}
    for release, kind in ((2, "safe"), (3, "breaking")):
        t0 = time.monotonic()
        arm.bump(release)
        wait_for(partial(arm.rolled_out, release), 600, 0.5, f"{arm.name} at release {release}")
        rollouts[kind] = round(time.monotonic() - t0, 1)
        time.sleep(args.steady)
    sent = producer.stop()
    stream_end = db_now(url)
    s = arm.app_schema

    def done() -> set[int]:
        with psycopg.connect(url, autocommit=True) as conn:
            rows = conn.execute(
                psycopg.sql.SQL("select distinct n from {}.runs where outcome = 'ok'").format(
                    psycopg.sql.Identifier(s)
                )
            ).fetchall()
        return {int(r[0]) for r in rows}

    with contextlib.suppress(AssertionError):  # what is not done by then is counted below
        wait_for(lambda: len(done()) >= len(sent), args.drain, 0.5, f"{arm.name}: all done")
    with psycopg.connect(url, autocommit=True) as conn:
        runs = conn.execute(
            psycopg.sql.SQL("select n, outcome, at from {}.runs order by at").format(
                psycopg.sql.Identifier(s)
            )
        ).fetchall()
        queued = arm.queued(conn)
        locked = arm.locked(conn)
    ok_times = [at for _, outcome, at in runs if outcome == "ok" and stream_start <= at]
    marks = [stream_start, *(t for t in ok_times if t <= stream_end), stream_end]
    longest_gap = max((b - a).total_seconds() for a, b in itertools.pairwise(marks))
    ok_count: dict[int, int] = {}
    for n, outcome, _ in runs:
        if outcome == "ok":
            ok_count[int(n)] = ok_count.get(int(n), 0) + 1
    not_done = [n for n in sent if n not in ok_count]
    schema_errors = [int(n) for n, outcome, _ in runs if outcome == "schema_error"]
    return {
        "arm": arm.name,
        "enqueued": len(sent),
        "done": sum(1 for n in sent if n in ok_count),
        "ran_twice": sum(1 for c in ok_count.values() if c > 1),
        "schema_error_attempts": len(schema_errors),
        "jobs_hit_by_schema_errors": len(set(schema_errors)),
        "other_error_attempts": sum(1 for _, outcome, _ in runs if outcome == "error"),
        # Locked by a worker that is gone, after the drain: a job not done waits out its
        # system's lock timeout; a job done whose completion was never recorded runs again.
        "stuck_locked": sum(1 for locked in queued.values() if locked),
        "stuck_locked_done": sum(1 for n, locked in queued.items() if locked and n in ok_count),
        "lost": sum(1 for n in not_done if n not in queued),
        "not_done": len(not_done),
        "longest_gap_s": round(longest_gap, 2),
        "rollout_safe_s": rollouts["safe"],
        "rollout_breaking_s": rollouts["breaking"],
        "locked_at_the_end": locked[:5],
    }


def register_images(
    cluster: Cluster, migrations: dict[int, Path], args: argparse.Namespace
) -> None:
    node = shutil.which("node")
    if node is None:
        raise SystemExit("bench-rollout needs node on PATH (Graphile Worker)")
    graphile = install.install_graphile()
    path = f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin"
    for release, d in migrations.items():
        env = {"ROLLOUT_RELEASE": str(release), "ROLLOUT_MIGRATIONS": str(d), "PATH": path}
        cluster.images.add(
            f"{WorkerFleetArm.IMAGE}:{release}",
            Image(command=[str(VENV_BIN / "fleet-worker")], env={**env, "PYTHONPATH": str(ROOT)}),
        )
        cluster.images.add(
            f"{DeploymentGraphile.IMAGE}:{release}",
            Image(
                command=[node, str(RUNNER), "app-worker"],
                env={**env, "GRAPHILE_WORKER_DIR": str(graphile),
                     "ROLLOUT_SCHEMA": DeploymentGraphile.app_schema,
                     "ROLLOUT_CONCURRENCY": str(args.concurrency)},
            ),
        )  # fmt: skip


COLUMNS = (
    ("jobs enqueued", "enqueued"),
    ("done", "done"),
    ("run twice", "ran_twice"),
    ("attempts failed by schema errors (jobs hit)", "schema"),
    ("other failed attempts", "other_error_attempts"),
    ("stuck locked at the end (of which already done)", "stuck"),
    ("lost", "lost"),
    ("not done at the end", "not_done"),
    ("longest gap between completions, s", "longest_gap_s"),
    ("safe / breaking rollout, s", "rollouts"),
)


def table(rows: list[dict[str, Any]]) -> str:
    def cell(r: dict[str, Any], key: str) -> str:
        if key == "schema":
            return f"{r['schema_error_attempts']} ({r['jobs_hit_by_schema_errors']})"
        if key == "stuck":
            return f"{r['stuck_locked']} ({r['stuck_locked_done']})"
        if key == "rollouts":
            return f"{r['rollout_safe_s']} / {r['rollout_breaking_s']}"
        return str(r[key])

    return side_by_side(rows, "arm", COLUMNS, cell)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4, help="jobs per worker process")
    parser.add_argument("--rate", type=float, default=40.0, help="jobs enqueued per second")
    parser.add_argument("--work-ms", type=int, default=50, help="each job's work before it writes")
    parser.add_argument("--steady", type=float, default=10.0, help="s of stream around bumps")
    parser.add_argument("--drain", type=float, default=120.0, help="s to wait for the rest")
    parser.add_argument(
        "--arms", default="graphile:0,graphile:10,fleet",
        help="graphile:<minReadySeconds> and/or fleet, in order",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "rollout.json")
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp, LocalPostgres() as pg:
        args.workdir = Path(tmp)
        migrations = write_migrations(Path(tmp))
        with Cluster(Path(tmp) / "cluster") as cluster:
            args.kubeconfig = cluster.kubeconfig
            client = cluster.client()
            install_crd(client, yaml.safe_load((ROOT / "crds/workerfleet.yaml").read_text()))
            register_images(cluster, migrations, args)
            for i, key in enumerate(args.arms.split(",")):
                kind, _, value = key.partition(":")
                ns = f"rollout-{i}-{kind}"
                with fresh_database(pg.url, f"rollout_{i}") as url:
                    arm: Arm = (
                        DeploymentGraphile(client, ns, url, args, int(value or 0))
                        if kind == "graphile"
                        else WorkerFleetArm(client, ns, url, args)
                    )
                    try:
                        row = run_arm(arm, args)
                    finally:
                        arm.stop()
                print(json.dumps(row), flush=True)
                rows.append(row)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(args, k) for k in ("replicas", "concurrency", "rate", "work_ms")}
    args.json.write_text(json.dumps({"settings": settings, "arms": rows}, indent=2))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
