"""What the tests, the demo and the benchmarks drive a fleet with, in one copy: the wait
helper, the worker and operator process launchers, the job producer and the tally of what a
ledger shows ran. Each of the three had grown its own, and they drifted apart (one waited
with a fixed pace, one producer drifted with the load): a change to how a worker is started
or how "nothing lost, nothing twice" is counted now reaches all of them at once."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from signal import SIGKILL, SIGTERM, Signals
from typing import Any, TypeVar

import psycopg

from fleet_worker.db import Schema
from fleet_worker.queue import JobSpec, add_job
from localcluster.procs import free_port
from workerfleet_operator.metrics import scrape

T = TypeVar("T")
VENV_BIN = Path(sys.executable).parent


class WaitTimeout(AssertionError):
    """A condition did not hold in time. An AssertionError, so a test that waits reads as a
    failed assertion naming what it waited for, and pytest shows it as such."""


def wait_for(
    cond: Callable[[], T | None],
    timeout: float = 20.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll `cond` until it returns something truthy, and return that. The condition is
    tried once more after the deadline's check fails, never fewer than once."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


# -- what ran -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Tally:
    """The enqueued job ids against the ids a ledger says ran, one entry per run."""

    enqueued: int
    completed: int  # distinct enqueued jobs that ran at least once
    lost: tuple[int, ...]  # enqueued, never ran
    twice: tuple[int, ...]  # ran more than once
    unexpected: tuple[int, ...]  # ran, but not in the enqueued list

    @classmethod
    def of(cls, enqueued: Iterable[int], ran: Iterable[int]) -> Tally:
        sent, runs = set(enqueued), Counter(ran)
        return cls(
            enqueued=len(sent),
            completed=len(sent & runs.keys()),
            lost=tuple(sorted(sent - runs.keys())),
            twice=tuple(sorted(j for j, n in runs.items() if n > 1)),
            unexpected=tuple(sorted(runs.keys() - sent)),
        )

    @property
    def exactly_once(self) -> bool:
        return not (self.lost or self.twice or self.unexpected)

    def describe(self) -> str:
        def ids(xs: tuple[int, ...]) -> str:
            return ", ".join(map(str, xs[:10])) + (" ..." if len(xs) > 10 else "")

        parts = [f"{self.completed} of {self.enqueued} enqueued job(s) ran"]
        parts += [f"{len(xs)} {word}: {ids(xs)}" for word, xs in (
            ("lost", self.lost), ("ran twice", self.twice), ("not enqueued", self.unexpected)
        ) if xs]  # fmt: skip
        return "; ".join(parts)


def longest_gap_s(times: Iterable[datetime]) -> float:
    """The longest pause between consecutive completions: how long the fleet stood still."""
    ordered = sorted(times)
    return max(((b - a).total_seconds() for a, b in pairwise(ordered)), default=0.0)


# -- producing jobs -----------------------------------------------------------------------

Enqueue = Callable[[psycopg.Connection, int], int]  # (conn, n from 1) -> the job's id


def enqueue(
    schema: str, task: str, payload: Mapping[str, Any] | Callable[[int], Mapping[str, Any]]
) -> Enqueue:
    """Add a `task` job with `payload` (or `payload(n)` for the n-th) through the queue's
    own add_job, as an application enqueues."""
    target = Schema(schema)

    def add(conn: psycopg.Connection, n: int) -> int:
        body = payload(n) if callable(payload) else payload
        return add_job(conn, JobSpec(task, dict(body)), target)

    return add


class Producer:
    """Enqueues one job every `every_s` from a background thread on its own connection,
    remembering each id. The n-th job is due at start + n * every_s, so a slow enqueue does
    not lower the rate. Errors of the types in `tolerate` skip that job (the demo starts
    producing before the schema exists); any other stops the stream and is raised by stop()."""

    def __init__(
        self,
        url: str,
        enqueue: Enqueue,
        every_s: float,
        tolerate: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.ids: list[int] = []
        self._url, self._enqueue, self._every, self._tolerate = url, enqueue, every_s, tolerate
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="producer")
        self._thread.start()

    def _run(self) -> None:
        try:
            with psycopg.connect(self._url, autocommit=True) as conn:
                start, n = time.monotonic(), 0
                while not self._stop.is_set():
                    n += 1
                    with contextlib.suppress(*self._tolerate):
                        self.ids.append(self._enqueue(conn, n))
                    self._stop.wait(max(0.0, start + n * self._every - time.monotonic()))
        except BaseException as exc:  # handed to stop(), which the caller is waiting on
            self._error = exc

    def stop(self) -> list[int]:
        self._stop.set()
        self._thread.join(30)
        if self._error is not None:
            raise RuntimeError(f"the producer stopped: {self._error}") from self._error
        return self.ids


# -- processes ----------------------------------------------------------------------------


def _stop(proc: subprocess.Popen[bytes], sig: Signals, grace_s: float) -> int:
    """Signal, wait out the grace, then kill: a process that ignores the signal ends."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            return proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(10)


def worker_argv(app: str, *args: str, log_level: str | None = None) -> list[str]:
    """The command line of `fleet-worker run` for `app`, through this interpreter."""
    level = ["--log-level", log_level] if log_level else []
    return [sys.executable, "-m", "fleet_worker.cli", *level, "run", "--app", app, *args]


class WorkerProcess:
    """A real `fleet-worker run` process. Its output goes to a log file in `log_dir` (or to
    this process's own when there is none, as the benchmarks want); the health port is
    picked by the OS unless the arguments name one."""

    def __init__(
        self,
        url: str,
        schema: str,
        app: str,
        log_dir: Path | None,
        *args: str,
        env: Mapping[str, str] | None = None,
        pythonpath: Sequence[str | Path] = (),
        log_level: str | None = None,
    ) -> None:
        self.log_path = (
            log_dir / f"worker-{app.replace(':', '_')}-{time.monotonic_ns()}.log"
            if log_dir is not None
            else None
        )
        paths = [*map(str, pythonpath), os.environ.get("PYTHONPATH", "")]
        full_env = {
            **os.environ,
            "DATABASE_URL": url,
            "FLEET_SCHEMA": schema,
            "PYTHONPATH": os.pathsep.join(p for p in paths if p),
            **(env or {}),
        }
        port = ["--health-port", "0"] if "--health-port" not in args else []
        self._log = self.log_path.open("wb") if self.log_path is not None else None
        self.proc = subprocess.Popen(
            worker_argv(app, *port, *args, log_level=log_level),
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT if self._log is not None else None,
        )  # fmt: skip

    def signal(self, sig: Signals) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        self.proc.send_signal(SIGKILL)
        self.proc.wait(10)

    def wait(self, timeout: float = 30) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self._log is not None:
                self._log.flush()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop(self, sig: Signals = SIGKILL, grace_s: float = 10) -> int:
        """End the process (by default at once: a test's leftovers need no drain)."""
        try:
            return _stop(self.proc, sig, grace_s)
        finally:
            if self._log is not None:
                self._log.close()


class OperatorProcess:
    """`kopf run` of the operator's handlers for all namespaces, as a developer runs it,
    with its metrics on a free loopback port. `env` adds settings (a reconcile interval, a
    leader identity); the name is kept across restarts, and so is the log, appended to."""

    def __init__(
        self, kubeconfig: Path, log_path: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.kubeconfig, self.log_path, self.env = kubeconfig, log_path, dict(env or {})
        self.metrics_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "WORKERFLEET_METRICS_PORT": str(self.metrics_port),
            "WORKERFLEET_METRICS_HOST": "127.0.0.1",
            **self.env,
        }
        with self.log_path.open("ab") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [str(VENV_BIN / "kopf"), "run", "--standalone", "--all-namespaces",
                 "-m", "workerfleet_operator.handlers"],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def wait_serving(self, timeout: float = 60) -> None:
        """Until the metrics endpoint answers: the handlers are loaded and running."""

        def serving() -> bool:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"the operator exited; see {self.log_path}")
            try:
                scrape(self.metrics_port, timeout=2)
                return True
            except OSError:
                return False

        wait_for(serving, timeout, 0.3, f"the operator to serve (log: {self.log_path})")

    def metrics(self) -> dict[str, float]:
        """The operator's Prometheus metrics, as name{labels} -> value."""
        return scrape(self.metrics_port)

    def stop(self, sig: Signals = SIGTERM) -> None:
        if self.proc is not None:
            _stop(self.proc, sig, 20)
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")
