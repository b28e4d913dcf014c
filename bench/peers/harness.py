"""What every peer measurement shares: a fresh database per measurement, worker processes
that are always stopped, CPU seconds from /proc, and the drain and latency loops.

The drain loop is bench/worker_throughput.py's: the queue is filled before the worker
starts, the clock starts when the first job is gone and stops when none is left, and the
job table is polled with count(*) every 10 ms.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import LiteralString
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# Cumulative CPU seconds of something outside the worker (PostgreSQL, by default), read at
# the start and the end of each processing window.
CpuSampler = Callable[[], float]


class PeerError(RuntimeError):
    pass


@dataclass
class PeerResult:
    """One figure. `measure` is one of MEASURES; `setting` says how the peer ran."""

    name: str
    setting: str
    measure: str
    value: float
    unit: str
    cpu_s_per_10k: float | None = None
    db_cpu_s_per_10k: float | None = None


MEASURES = (
    "processing",  # jobs/s, one entry per setting
    "processing-c10",  # the same figure as the concurrency-10 "processing" entry
    "bulk-enqueue",  # jobs/s, one bulk call
    "single-enqueue",  # jobs/s, one call per job
    "latency-p50",  # ms, enqueue to start, idle worker
    "latency-p99",
)


@dataclass(frozen=True)
class Setting:
    """One way to start a peer's worker: extra argv and environment for its process."""

    label: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    # Also reported as measure "processing-c10" (concurrency 10 for every system).
    is_c10: bool = False


@dataclass(frozen=True)
class Command:
    argv: Sequence[str]
    env: Mapping[str, str]
    cwd: Path


# -- CPU from /proc ------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    return text[text.rindex(")") + 2 :].split()


def _children_by_parent() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def tree_cpu_seconds(pid: int) -> float:
    """User+system CPU of `pid` and its live descendants, plus what their reaped children
    used (cutime/cstime), in seconds."""
    children = _children_by_parent()
    total_ticks = 0
    stack = [pid]
    while stack:
        current = stack.pop()
        fields = _stat_fields(current)
        if fields is None:
            continue
        # Fields 14-17 of stat (utime, stime, cutime, cstime) sit at 11-14 after the name.
        total_ticks += sum(int(v) for v in fields[11:15])
        stack.extend(children.get(current, []))
    return total_ticks / CLOCK_TICKS


def postgres_cpu_sampler(url: str) -> CpuSampler | None:
    """CPU of the PostgreSQL server behind `url` (postmaster and all its processes) when it
    runs on this machine and /proc shows it, else None."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("select pg_backend_pid()").fetchone()
    if row is None:
        return None
    fields = _stat_fields(int(row[0]))
    if fields is None:
        return None
    postmaster = int(fields[1])
    try:
        name = Path(f"/proc/{postmaster}/comm").read_text().strip()
    except OSError:
        return None
    if "postgres" not in name and "postmaster" not in name:
        return None
    return lambda: tree_cpu_seconds(postmaster)


# -- databases -----------------------------------------------------------------------------


def with_database(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise PeerError(f"need a postgresql:// URL (node-postgres takes no other form): {url}")
    return urlunsplit(parts._replace(path="/" + dbname))


@contextmanager
def fresh_database(url: str, label: str) -> Iterator[str]:
    """An empty database for one measurement (each peer installs its own schema into it),
    dropped afterwards."""
    name = f"peer_{label}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        yield with_database(url, name)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
            )


def count(conn: psycopg.Connection, query: LiteralString) -> int:
    row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


# -- processes -----------------------------------------------------------------------------

_live: set[subprocess.Popen[bytes]] = set()


def _kill_leftovers() -> None:
    for proc in list(_live):
        _stop(proc, grace=2)


atexit.register(_kill_leftovers)


def _stop(proc: subprocess.Popen[bytes], grace: float = 30) -> None:
    """SIGTERM, then SIGKILL if it has not exited in `grace`; then SIGKILL to whatever is
    left of the process group it leads (children it may have left behind)."""
    try:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    finally:
        _live.discard(proc)


class Worker:
    """A peer's worker process, in a process group of its own; stderr goes to a file."""

    def __init__(self, command: Command) -> None:
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            list(command.argv),
            env={**os.environ, **command.env},
            cwd=command.cwd,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            start_new_session=True,
        )
        _live.add(self.proc)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, chars: int = 3000) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-chars:]

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise PeerError(f"worker exited with {self.proc.returncode}:\n{self.log_tail()}")

    def stop(self) -> None:
        _stop(self.proc)
        self._log.close()


@contextmanager
def running(command: Command) -> Iterator[Worker]:
    worker = Worker(command)
    try:
        yield worker
    finally:
        worker.stop()


def run_command(command: Command, timeout: float = 600) -> str:
    """Run to completion; its stdout, or PeerError with its output."""
    proc = subprocess.run(
        list(command.argv),
        env={**os.environ, **command.env},
        cwd=command.cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise PeerError(
            f"{' '.join(command.argv)} failed ({proc.returncode}):\n"
            f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        )
    return proc.stdout


def timed_seconds(output: str) -> float:
    """The {"seconds": ...} line the peer-side enqueue commands print last."""
    for line in reversed(output.strip().splitlines()):
        if line.startswith("{"):
            return float(json.loads(line)["seconds"])
    raise PeerError(f"no timing in output: {output[-500:]}")


# -- measurements --------------------------------------------------------------------------


@dataclass
class Drain:
    jobs_per_s: float
    cpu_s_per_10k: float
    db_cpu_s_per_10k: float | None


def drain(
    command: Command,
    url: str,
    pending_query: LiteralString,
    jobs: int,
    db_cpu: CpuSampler | None = None,
) -> Drain:
    """Start one worker on a queue of `jobs` pending jobs; time from the first job gone to
    none left, and the CPU the worker (and `db_cpu`) spent in that window."""
    with psycopg.connect(url, autocommit=True) as conn, running(command) as worker:
        deadline = time.monotonic() + 120  # start-up: interpreters, imports, connections
        while count(conn, pending_query) >= jobs:
            worker.check_alive()
            if time.monotonic() > deadline:
                raise PeerError(f"no job taken in 120 s:\n{worker.log_tail()}")
            time.sleep(0.005)
        cpu_before = tree_cpu_seconds(worker.pid)
        db_before = db_cpu() if db_cpu else 0.0
        began = time.perf_counter()
        limit = 60 + jobs / 20
        deadline = time.monotonic() + limit
        while count(conn, pending_query) > 0:
            worker.check_alive()
            if time.monotonic() > deadline:
                raise PeerError(f"queue not empty after {limit:.0f} s:\n{worker.log_tail()}")
            time.sleep(0.01)
        elapsed = time.perf_counter() - began
        cpu = tree_cpu_seconds(worker.pid) - cpu_before
        db = (db_cpu() - db_before) if db_cpu else None
    per_10k = 10_000 / jobs
    return Drain(jobs / elapsed, cpu * per_10k, db * per_10k if db is not None else None)


STAMPS_DDL = (
    "create table bench_stamps (id int primary key, enqueued_at timestamptz not null, "
    "started_at timestamptz not null)"
)


def create_stamps_table(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(STAMPS_DDL)


def wait_for_stamps(
    conn: psycopg.Connection, expected: int, worker: Worker, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while count(conn, "select count(*) from bench_stamps") < expected:
        worker.check_alive()
        if time.monotonic() > deadline:
            raise PeerError(f"{expected} stamp jobs not all started in {timeout} s")
        time.sleep(0.02)


def latency_ms(
    command: Command,
    url: str,
    send: Callable[[str, int, int, float], None],
    jobs: int,
    interval: float,
) -> tuple[float, float]:
    """(p50, p99) enqueue-to-start in ms for `jobs` stamp jobs sent one by one, `interval`
    seconds apart, to an idle worker. `send(url, first_id, count, interval)` enqueues."""
    create_stamps_table(url)
    with psycopg.connect(url, autocommit=True) as conn, running(command) as worker:
        send(url, 0, 1, 0.0)  # warm-up: the worker is up and listening once job 0 ran
        wait_for_stamps(conn, 1, worker, timeout=120)
        send(url, 1, jobs, interval)
        wait_for_stamps(conn, jobs + 1, worker, timeout=60)
        rows = conn.execute(
            "select extract(epoch from started_at - enqueued_at) * 1000 "
            "from bench_stamps where id > 0 order by 1"
        ).fetchall()
    values = [float(r[0]) for r in rows]
    return percentile(values, 0.50), percentile(values, 0.99)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]
