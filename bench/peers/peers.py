"""The three peers: how each installs its schema, enqueues, starts its worker at each
setting, and which query counts the jobs it has not finished.

Settings per peer: its defaults, concurrency 10, and its best documented setting for many
short jobs. Enqueueing uses each peer's own client library (Graphile's Node `WorkerUtils`,
pgqueuer's `Queries.enqueue`, procrastinate's `defer_async`/`batch_defer_async`).
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from abc import ABC, abstractmethod
from dataclasses import replace
from pathlib import Path
from typing import LiteralString

import psycopg

from bench.peers import install
from bench.peers.harness import (
    Command,
    CpuSampler,
    PeerError,
    PeerResult,
    Setting,
    drain,
    fresh_database,
    latency_ms,
    run_command,
    timed_seconds,
)

HERE = Path(__file__).resolve().parent


class Peer(ABC):
    name: str
    version: str
    # Jobs not finished yet: the drain loop waits for this to reach 0.
    pending_query: LiteralString
    # The worker setting for the latency measurement (an idle worker).
    latency_setting_index = 0
    # Where the two ends of a latency sample come from.
    latency_clocks = "host clock -> DB clock"

    @abstractmethod
    def install(self) -> None: ...

    @abstractmethod
    def settings(self) -> list[Setting]: ...

    @abstractmethod
    def migrate(self, url: str) -> None: ...

    @abstractmethod
    def enqueue_seconds(self, url: str, jobs: int, bulk: bool) -> float:
        """Seconds the peer's client took for `jobs` no-op jobs: one bulk call, or one call
        per job."""

    @abstractmethod
    def worker(self, url: str, setting: Setting) -> Command: ...

    @abstractmethod
    def send_stamps(self, url: str, first: int, count: int, interval: float) -> None:
        """Enqueue `stamp` jobs first..first+count-1, one every `interval` seconds."""

    @property
    def db_label(self) -> str:
        return self.name.replace("-", "_")


# -- Graphile Worker -----------------------------------------------------------------------


class GraphileWorker(Peer):
    name = "graphile-worker"
    version = install.GRAPHILE_WORKER_VERSION
    pending_query = "select count(*) from graphile_worker._private_jobs"
    latency_clocks = "DB clock both ends"

    def install(self) -> None:
        install.install_graphile()

    def _typings(self) -> str:
        dist = install.graphile_dir() / "node_modules" / "graphile-worker" / "dist"
        return "".join(p.read_text() for p in dist.glob("*.d.ts"))

    def settings(self) -> list[Setting]:
        best: dict[str, object] = {"concurrentJobs": 50, "maxPoolSize": 52}
        label = "best: jobs 50, pool 52"
        typings = self._typings()
        # Batching arrived in 0.16; the pinned version has it, an older pin might not.
        if "localQueue" in typings:
            best["localQueue"] = {"size": 500}
            label += ", localQueue 500"
        if "completeJobBatchDelay" in typings and "failJobBatchDelay" in typings:
            best.update(completeJobBatchDelay=0, failJobBatchDelay=0)
            label += ", batch delays 0"
        return [
            Setting("defaults (jobs 1, pool 10)"),
            Setting("concurrency 10", env=self._options({"concurrentJobs": 10}), is_c10=True),
            Setting(label, env=self._options(best)),
        ]

    @staticmethod
    def _options(options: dict[str, object]) -> dict[str, str]:
        return {"PEER_WORKER_OPTIONS": json.dumps(options)}

    def _node(self, url: str, *args: str, env: dict[str, str] | None = None) -> Command:
        node = shutil.which("node")
        if node is None:
            raise PeerError("node is not on PATH")
        return Command(
            [node, str(HERE / "graphile_runner.mjs"), *args],
            {
                "DATABASE_URL": url,
                "GRAPHILE_WORKER_DIR": str(install.graphile_dir()),
                **(env or {}),
            },
            install.graphile_dir(),
        )

    def migrate(self, url: str) -> None:
        run_command(self._node(url, "migrate"))

    def enqueue_seconds(self, url: str, jobs: int, bulk: bool) -> float:
        mode = "enqueue-bulk" if bulk else "enqueue-single"
        return timed_seconds(run_command(self._node(url, mode, str(jobs))))

    def worker(self, url: str, setting: Setting) -> Command:
        return self._node(url, "worker", *setting.args, env=dict(setting.env))

    def send_stamps(self, url: str, first: int, count: int, interval: float) -> None:
        # The SQL API (what addJob calls): the payload carries the DB clock at enqueue.
        with psycopg.connect(url, autocommit=True) as conn:
            start = time.perf_counter()
            for i in range(count):
                delay = start + i * interval - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                conn.execute(
                    "select graphile_worker.add_job('stamp', "
                    "json_build_object('id', %s::int, 'enq', clock_timestamp()))",
                    [first + i],
                )


# -- the Python peers ----------------------------------------------------------------------


class PythonPeer(Peer):
    """pgqueuer and procrastinate: bench/peers/venv_side.py in the peers' venv."""

    def install(self) -> None:
        install.install_pyvenv()

    def _python(self, url: str, *argv: str, env: dict[str, str] | None = None) -> Command:
        return Command(
            [str(install.pyvenv_python()), *argv],
            {"PEER_DATABASE_URL": url, "PYTHONPATH": str(HERE), **(env or {})},
            HERE,
        )

    def _venv_side(self, url: str, *args: str) -> Command:
        return self._python(url, "-c", "import venv_side; venv_side.main()", *args)

    def enqueue_seconds(self, url: str, jobs: int, bulk: bool) -> float:
        style = "bulk" if bulk else "single"
        return timed_seconds(
            run_command(self._venv_side(url, "enqueue", self.name, style, str(jobs)))
        )

    def send_stamps(self, url: str, first: int, count: int, interval: float) -> None:
        run_command(
            self._venv_side(url, "stamps", self.name, str(first), str(count), str(interval))
        )


class PgQueuer(PythonPeer):
    name = "pgqueuer"
    version = install.PGQUEUER_VERSION
    # Finished jobs move to pgqueuer_log; queued and picked ones stay here.
    pending_query = "select count(*) from pgqueuer"

    def settings(self) -> list[Setting]:
        return [
            Setting("defaults (batch_size 10, no task cap)"),
            # run() wants max_concurrent_tasks >= 2 * batch_size.
            Setting(
                "concurrency 10 (batch_size 5)",
                ("--max-concurrent-tasks", "10", "--batch-size", "5"),
                is_c10=True,
            ),
            # The performance guide: raise batch_size for short jobs.
            Setting("best: batch_size 50, no task cap", ("--batch-size", "50")),
        ]

    def migrate(self, url: str) -> None:
        run_command(self._python(url, "-m", "pgqueuer", "--pg-dsn", url, "install"))

    def worker(self, url: str, setting: Setting) -> Command:
        return self._python(
            url,
            "-c",
            "import venv_side; venv_side.main()",
            "pgq-worker",
            *setting.args,
            env=dict(setting.env),
        )


class Procrastinate(PythonPeer):
    name = "procrastinate"
    version = install.PROCRASTINATE_VERSION
    # Finished jobs stay in the table (delete_jobs defaults to never) with another status.
    pending_query = "select count(*) from procrastinate_jobs where status in ('todo', 'doing')"
    APP = ("-m", "procrastinate", "--app", "venv_side.procrastinate_app")

    def settings(self) -> list[Setting]:
        return [
            Setting("defaults (concurrency 1, pool 4)"),
            Setting("concurrency 10", ("--concurrency", "10"), is_c10=True),
            Setting(
                "best: concurrency 50, pool 50",
                ("--concurrency", "50"),
                {"PEER_POOL_MAX_SIZE": "50"},
            ),
        ]

    def migrate(self, url: str) -> None:
        run_command(self._python(url, *self.APP, "schema", "--apply"))

    def worker(self, url: str, setting: Setting) -> Command:
        return self._python(
            url,
            *self.APP,
            "--log-level",
            "warning",
            "worker",
            *setting.args,
            env=dict(setting.env),
        )


PEERS: dict[str, type[Peer]] = {
    peer.name: peer for peer in (GraphileWorker, PgQueuer, Procrastinate)
}


# -- one peer, every measure ---------------------------------------------------------------


def vacuum_analyze(url: str) -> None:
    """Every system starts draining from analysed tables (as bench/compare.py does for ours)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("vacuum analyze")


def measure_peer(
    peer: Peer,
    url: str,
    jobs: int,
    single: int,
    *,
    latency_jobs: int = 500,
    latency_interval: float = 0.02,
    db_cpu: CpuSampler | None = None,
) -> list[PeerResult]:
    """Processing at each setting, bulk and single enqueue, latency; each in a fresh
    database on the server at `url`."""
    results: list[PeerResult] = []
    bulk_rates: list[float] = []
    for setting in peer.settings():
        with fresh_database(url, peer.db_label) as db:
            peer.migrate(db)
            # The fill is the bulk-enqueue measurement too: one call of `jobs`.
            bulk_rates.append(jobs / peer.enqueue_seconds(db, jobs, bulk=True))
            vacuum_analyze(db)
            run = drain(peer.worker(db, setting), db, peer.pending_query, jobs, db_cpu)
        figure = PeerResult(
            peer.name,
            f"{setting.label}; {jobs} no-op jobs, 1 process",
            "processing",
            run.jobs_per_s,
            "jobs/s",
            run.cpu_s_per_10k,
            run.db_cpu_s_per_10k,
        )
        results.append(figure)
        if setting.is_c10:
            results.append(replace(figure, measure="processing-c10"))
    bulk_label = f"one call of {jobs} jobs (median of {len(bulk_rates)} queue fills)"
    results.append(
        PeerResult(peer.name, bulk_label, "bulk-enqueue", statistics.median(bulk_rates), "jobs/s")
    )
    with fresh_database(url, peer.db_label) as db:
        peer.migrate(db)
        seconds = peer.enqueue_seconds(db, single, bulk=False)
    results.append(
        PeerResult(
            peer.name,
            f"one call per job, {single} jobs",
            "single-enqueue",
            single / seconds,
            "jobs/s",
        )
    )
    if latency_jobs > 0:
        setting = peer.settings()[peer.latency_setting_index]
        with fresh_database(url, peer.db_label) as db:
            peer.migrate(db)
            p50, p99 = latency_ms(
                peer.worker(db, setting), db, peer.send_stamps, latency_jobs, latency_interval
            )
        label = (
            f"{setting.label}, idle; {latency_jobs} x 1 job / "
            f"{latency_interval * 1000:.0f} ms; {peer.latency_clocks}"
        )
        results.append(PeerResult(peer.name, label, "latency-p50", p50, "ms"))
        results.append(PeerResult(peer.name, label, "latency-p99", p99, "ms"))
    return results
