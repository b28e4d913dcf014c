"""The worker process: register a pool, reach a compatible schema, fetch and run jobs,
heartbeat, sweep, and stop without losing work.

Concurrency model: one asyncio loop. The hot path (fetch, complete, fail) uses one async
connection; LISTEN uses another; maintenance (heartbeat, sweep, migrations) runs on a sync
connection in a single dedicated thread so it never waits behind jobs. Sync tasks run on a
thread pool sized to `concurrency`. A lease watchdog (see fleet_worker.lease) cancels the
running jobs before others could take them when heartbeats stop being recorded.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import itertools
import logging
import math
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, LiteralString, TypeVar

import psycopg

from fleet_worker import migrate as migrations
from fleet_worker import queue_stats, retention
from fleet_worker.app import (
    App,
    JobCancelled,
    JobContext,
    OnOrphan,
    PermanentJobError,
    Task,
    task_args,
)
from fleet_worker.catalog import Catalog
from fleet_worker.compat import AppliedMigration, Assessment, assess
from fleet_worker.db import ReconnectingConnection, Schema, connect_async, first_line
from fleet_worker.errors import DatabaseUnavailableError, MigrationError
from fleet_worker.exit_codes import ExitCode
from fleet_worker.health import Counters, HealthServer, Snapshot
from fleet_worker.lease import Lease, lease_clock
from fleet_worker.periodic import Enqueued, enqueue_due, seconds_to_next_check
from fleet_worker.pools import (
    Heartbeat,
    PoolIdentity,
    heartbeat,
    record_intent,
    register_pool,
    stop_pool,
    waited_seconds,
)
from fleet_worker.protocol import CORE_PROTOCOL, FENCED_STATES, TERMINAL_STATES, PoolState
from fleet_worker.queue import (
    FETCH_SESSION,
    Job,
    QueueSQL,
    attempt_params,
    backoff_seconds,
    complete_jobs,
    fail_job,
    fetch_jobs,
)
from fleet_worker.queue_stats import QueueStats
from fleet_worker.recovery import NOT_RETRIED, SweepResult, release_pool_jobs, sweep
from fleet_worker.settings import WorkerSettings
from fleet_worker.termination import write_termination_message

log = logging.getLogger("fleet_worker")
T = TypeVar("T")
_TRANSIENT = (psycopg.OperationalError, psycopg.InterfaceError, DatabaseUnavailableError)
# A job fetched ahead waits at most this long for a slot; then the local queue goes back so
# other pools can run it (slots held by long jobs).
LOCAL_QUEUE_TTL_S = 60.0
MAX_RECORD_FAILURES = 5  # the database refusing a record (not the connection) this often


@dataclass
class Running:
    """One execution in progress. `cancel_reason` says who asked it to stop: "lease" (its
    lease is running out: give the job back unrecorded) or "shutdown" (forced stop)."""

    job: Job
    ctx: JobContext
    task: asyncio.Task[None] | None = None
    thread: concurrent.futures.Future[Any] | None = None
    cancel_reason: str | None = None
    recording: bool = False  # task code is done; its failure is being recorded

    def executing(self) -> bool:
        """Task code may still be running (a sync task's thread outlives its asyncio task)."""
        if self.recording:
            return False
        if self.thread is not None:
            return not self.thread.done()
        return self.task is not None and not self.task.done()


class Maintenance:
    """The sync connection for heartbeat, sweep and migrations, used from one thread only.
    It reconnects lazily after an error so a database restart costs one failed beat."""

    def __init__(self, url: str, timeout: float, name: str = "maintenance") -> None:
        # Any error drops the connection (a failover's read-only error, a dropped table):
        # start afresh next time rather than reuse a connection in an unknown state.
        self._conn = ReconnectingConnection(url, timeout=timeout, reset_on=(psycopg.Error,))
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def run(self, fn: Callable[[psycopg.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._conn.run, fn)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._thread.submit(self._conn.close).result(timeout=5)
        self._thread.shutdown(wait=False, cancel_futures=True)


class LazyConnection:
    """An async connection opened on first use and dropped after an error, so that the next
    use reconnects. `session` statements run on every new connection."""

    def __init__(self, url: str, session: Sequence[LiteralString] = ()) -> None:
        self._url = url
        self._session = session
        self._conn: psycopg.AsyncConnection | None = None

    async def get(self) -> psycopg.AsyncConnection:
        if self._conn is None or self._conn.closed:
            conn = await connect_async(self._url, timeout=5)
            try:
                for statement in self._session:
                    await conn.execute(statement)
            except BaseException:
                await conn.close()
                raise
            self._conn = conn
        return self._conn

    async def drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
        self._conn = None


def _schema_state(state: Assessment | None) -> str:
    if state is None:
        return "unknown"
    if state.mismatched:
        return "mismatch"
    if state.out_of_date:
        return "out-of-date"
    return "pending" if state.pending else "compatible"


def _failure(run: Running, task: Task, detail: str) -> tuple[str, bool]:
    """How an attempt that raised is recorded: the error, and whether it is permanent. One
    the worker had asked to stop that ended in an error rather than in the cancellation
    (often its cleanup's, the database being away) is as unknown in its outcome as any
    interrupted attempt: a task with `on_orphan="fail"` is not retried."""
    if run.cancel_reason is not None and task.on_orphan is OnOrphan.FAIL:
        return f"{detail} (after the worker asked it to stop: {run.cancel_reason})" + (
            NOT_RETRIED
        ), True
    return detail, False


class Worker:
    def __init__(self, settings: WorkerSettings, app: App) -> None:
        self.settings = settings
        self.app = app
        self.schema = Schema(settings.schema_name)
        self.catalog: Catalog = app.catalog()
        self.orphan_fail_tasks = app.orphan_fail_tasks()
        self.version = settings.version or app.version
        self.sql = QueueSQL(self.schema, history=settings.keep_history > 0)
        self._pruned_at = -math.inf  # lease_clock() of the last history prune
        self.url = settings.database_url.get_secret_value()
        self.maintenance = Maintenance(self.url, timeout=max(2.0, settings.heartbeat_interval))
        self.threads = ThreadPoolExecutor(
            max_workers=settings.concurrency, thread_name_prefix="job"
        )
        self.pool_id: str | None = None
        self.state: str = PoolState.STARTING
        self.counters = Counters()
        self.running: dict[int, Running] = {}
        self.exit_code: ExitCode | None = None
        self.exit_reason = ""
        self.lease = Lease(settings.heartbeat_interval, settings.sweep_threshold)
        self.fenced = False  # the lease ran low: running jobs cancelled, nothing fetched
        self.assessment: Assessment | None = None
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._wake = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._to_complete: list[Job] = []
        self._completing: list[Job] = []  # the batch whose completion is in flight
        self._abandoned: list[Job] = []  # cancelled for the lease; released once we can
        # Fetched ahead, not started (settings.local_queue_size), with the time of the fetch.
        self._local: collections.deque[tuple[float, Job]] = collections.deque()
        self._unstarted: list[Job] = []  # taken out of the local queue; handed back once we can
        self._completions = asyncio.Event()
        # Fetching and recording (completion, failure) on connections of their own: on one,
        # each fetch waited for the last completion batch and the other way round.
        self._fetch_conn = LazyConnection(self.url, FETCH_SESSION)
        self._record_conn = LazyConnection(self.url)
        self._exit_watch_stop = threading.Event()
        self._signals = 0
        self.health = HealthServer(self.snapshot, settings.health_host, settings.health_port)
        # Queue stats, cron checks and history pruning on a connection and thread of their
        # own: a slow count, a long backfill or a big prune must never delay a heartbeat.
        self.background = Maintenance(self.url, timeout=5.0, name="maintenance-background")
        self.queue_stats: QueueStats | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def request_stop(self, code: ExitCode, reason: str) -> None:
        if self.exit_code is None:
            self.exit_code, self.exit_reason = code, reason
            log.info("stopping: %s", reason)
        self._stop.set()
        self._wake.set()
        self._slot_free.set()

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals == 1:
            self.request_stop(ExitCode.OK, f"received {signal.Signals(signum).name}")
        else:
            log.warning("second signal: releasing running jobs now")
            self._force.set()

    async def run(self) -> ExitCode:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        background: list[asyncio.Task[None]] = []
        try:
            try:
                await self.health.start()
            except OSError as exc:
                where = f"{self.settings.health_host}:{self.settings.health_port}"
                self.request_stop(ExitCode.ERROR, f"cannot serve health checks on {where}: {exc}")
                return self._exit()
            if not await self._install_protocol():
                return self._exit()
            await self._register()
            threading.Thread(target=self._exit_watch, name="lease-exit", daemon=True).start()
            background = [
                self._service(self._heartbeat_loop(), "heartbeat"),
                self._service(self._lease_loop(), "lease"),
                self._service(self._sweep_loop(), "sweep"),
            ]
            try:
                if await self._reach_compatible_schema():
                    background += [
                        self._service(self._listen_loop(), "listen"),
                        self._service(self._complete_loop(), "complete"),
                    ]
                    if self.app.crontab:
                        background.append(self._service(self._cron_loop(), "cron"))
                    if self.settings.queue_stats_interval > 0:
                        background.append(self._service(self._stats_loop(), "queue stats"))
                    await self._fetch_loop()
            except Exception as exc:
                log.exception("worker failed")
                self.request_stop(ExitCode.ERROR, f"unexpected error: {exc}")
            finally:
                # Whatever happened, finished jobs are completed and the rest released.
                await self._drain()
        finally:
            self._exit_watch_stop.set()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self.health.stop()
            await self._fetch_conn.drop()
            await self._record_conn.drop()
            self.maintenance.close()
            self.background.close()
            self.threads.shutdown(wait=False, cancel_futures=True)
        return self._exit()

    def _service(self, loop: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """A background loop; if it ever dies, the worker stops rather than run on without
        heartbeats, sweeps or completions."""
        task = asyncio.create_task(loop, name=name)

        def died(t: asyncio.Task[None]) -> None:
            if not t.cancelled() and t.exception() is not None:
                log.error("%s loop died", name, exc_info=t.exception())
                self.request_stop(ExitCode.ERROR, f"internal error in the {name} loop")

        task.add_done_callback(died)
        return task

    def _exit(self) -> ExitCode:
        code = self.exit_code if self.exit_code is not None else ExitCode.OK
        log.info("exit %d (%s): %s", code, code.name, self.exit_reason)
        return code

    async def _install_protocol(self) -> bool:
        """The pools table comes from core migrations, so a fresh database needs them before
        this process can register: self mode applies the safe ones now (harmless to anyone),
        external mode waits for the migration Job. Unregistered, the worker is not ready."""
        announced = False
        while not self._stop.is_set():
            try:
                state = await self._assess()
                if state.mismatched:
                    self.request_stop(ExitCode.SCHEMA_ERROR, state.describe())
                    return False
                if not any(m.id == CORE_PROTOCOL for m in state.pending):
                    return True
                if self.settings.mode == "self":
                    await self.maintenance.run(
                        lambda c: migrations.migrate(
                            c, self.schema, self.catalog, to=CORE_PROTOCOL, breaking=False
                        )
                    )
                    continue
                if not announced:
                    log.info("waiting for the schema %s to be installed", self.schema.name)
                    announced = True
            except DatabaseUnavailableError as exc:
                self.request_stop(ExitCode.ERROR, str(exc))
                return False
            except MigrationError as exc:
                self.request_stop(ExitCode.SCHEMA_ERROR, str(exc))
                return False
            await self._sleep(self.settings.poll_interval)
        return False

    async def _register(self) -> None:
        who = PoolIdentity.from_env(fleet=self.settings.fleet, version=self.version)
        sent = lease_clock()
        self.pool_id = await self.maintenance.run(
            lambda c: register_pool(
                c,
                self.schema,
                who,
                self.catalog,
                mode=self.settings.mode,
                concurrency=self.settings.concurrency,
                heartbeat_interval_s=self.settings.heartbeat_interval,
                sweep_threshold_s=self.settings.sweep_threshold,
            )
        )
        self.lease.renewed(sent)  # the row's heartbeat_at is its first beat
        log.info(
            "registered pool %s (version %s, %d known migrations, mode %s)",
            self.pool_id,
            self.version,
            len(self.catalog.migrations),
            self.settings.mode,
        )

    async def _set_state(self, state: str, reason: str | None = None) -> None:
        self.state = state
        pool_id = self._pool()
        running = len(self.running)
        sent = lease_clock()
        beat = await self.maintenance.run(
            lambda c: heartbeat(
                c, self.schema, pool_id, running_jobs=running, state=state, reason=reason
            )
        )
        self._after_beat(beat.state, beat.reason, sent)

    def snapshot(self) -> Snapshot:
        """What the health port reports (fleet_worker/health.py)."""
        return Snapshot(
            pool_id=self.pool_id or "",
            state=self.state,
            fenced=self.fenced or self.lease.must_fence(lease_clock()),
            stopping=self._stop.is_set(),
            counters=self.counters,
            running=len(self.running),
            held=len(self._local),
            heartbeat_age_s=self.lease.silent_for(lease_clock()),
            schema_state=_schema_state(self.assessment),
            queue=self.queue_stats,
        )

    def _pool(self) -> str:
        assert self.pool_id is not None
        return self.pool_id

    # -- schema ----------------------------------------------------------------------------

    async def _assess(self) -> Assessment:
        applied = await self.maintenance.run(
            lambda c: migrations.applied_migrations(c, self.schema)
        )
        self.assessment = assess(self.catalog, applied)
        return self.assessment

    async def _reach_compatible_schema(self) -> bool:
        """Wait (external mode) or migrate (self mode) until the schema is what this release
        knows. False when the worker must not run (out of date, bad checksum, stop asked)."""
        while not self._stop.is_set():
            try:
                state = await self._assess()
                if state.mismatched:
                    self.request_stop(ExitCode.SCHEMA_ERROR, state.describe())
                    return False
                if state.out_of_date:
                    self.request_stop(ExitCode.OUT_OF_DATE, state.describe())
                    return False
                if state.compatible:
                    activated = await self._activate()
                    if activated.compatible:
                        return True
                    continue
                if self.state != PoolState.WAITING_FOR_SCHEMA:
                    log.info("waiting for schema: %s", state.describe())
                    await self._set_state(PoolState.WAITING_FOR_SCHEMA, state.describe())
                if self.settings.mode == "self":
                    await self._self_migrate(state)
                    continue
            except DatabaseUnavailableError as exc:
                log.warning("database unavailable while checking the schema: %s", exc)
            except MigrationError as exc:
                self.request_stop(ExitCode.SCHEMA_ERROR, str(exc))
                return False
            except psycopg.Error as exc:
                log.warning("schema check failed, retrying: %s", first_line(exc))
            await self._sleep(self.settings.poll_interval)
        return False

    async def _activate(self) -> Assessment:
        pool_id = self._pool()
        sent = lease_clock()
        state = await self.maintenance.run(
            lambda c: migrations.activate(
                c, self.schema, self.catalog, pool_id, orphan_fail_tasks=self.orphan_fail_tasks
            )
        )
        self.assessment = state
        if state.compatible:
            self.state = PoolState.ACTIVE
            self._after_beat(PoolState.ACTIVE, None, sent)
        return state

    async def _self_migrate(self, state: Assessment) -> None:
        if state.safe_prefix:
            result = await self.maintenance.run(
                lambda c: migrations.migrate(
                    c,
                    self.schema,
                    self.catalog,
                    to=state.safe_prefix[-1].id,
                    threshold_s=self.settings.sweep_threshold,
                    breaking=False,
                )
            )
            if result.applied:
                log.info("applied safe migration(s) %s", ", ".join(result.applied))
            return
        breaking = state.first_breaking
        assert breaking is not None
        pool_id = self._pool()
        threshold = self.settings.sweep_threshold

        def attempt(conn: psycopg.Connection) -> tuple[bool, list[str], float]:
            record_intent(conn, self.schema, pool_id, breaking.id)
            waited = waited_seconds(conn, self.schema, pool_id)
            # Judged on this thread, when the call runs: it may have waited behind another.
            # On probation (one threshold after the start or a failed beat) this pool cannot
            # tell an outdated pool's silence from its own outage: it declares none dead and
            # evicts none, and any outdated pool in a live state blocks. Pools that recorded
            # their own stop are facts, so the migration need not wait out the probation.
            judge = not self.lease.on_probation(lease_clock())
            force = judge and waited >= self.settings.max_migration_wait
            result = migrations.MigrationResult()
            done = migrations.apply_one(
                conn,
                self.schema,
                self.catalog,
                breaking,
                threshold_s=threshold,
                force=force,
                result=result,
                judge_silence=judge,
            )
            return done, result.evicted_pools, waited

        done, evicted, waited = await self.maintenance.run(attempt)
        if evicted:
            log.warning(
                "forced breaking migration %s after %.0fs: evicted pools %s and released "
                "their jobs",
                breaking.id,
                waited,
                ", ".join(evicted),
            )
        if done:
            log.info("applied breaking migration %s", breaking.id)
        else:
            await self._sleep(self.settings.poll_interval)

    # -- the job loop ----------------------------------------------------------------------

    def _may_fetch(self) -> bool:
        # A heartbeat that hangs (no error, no answer) fences as surely as one that fails.
        return (
            not self._stop.is_set()
            and not self.fenced
            and self.state == PoolState.ACTIVE
            and not self.lease.must_fence(lease_clock())
        )

    async def _fetch_loop(self) -> None:
        """Fill free slots, from the local queue first; with a local queue, also fetch ahead
        while every slot is busy, once it ran down to half. Jobs wait there only while this
        pool may fetch: fenced, not active or stopping, they are handed back unstarted."""
        tasks = sorted(self.app.tasks)
        ahead = self.settings.local_queue_size
        batch_limit = self.settings.batch_size or (self.settings.concurrency + ahead)
        more = True  # the last fetch filled its limit: fetching ahead may find more
        while not self._stop.is_set():
            if not self._may_fetch():
                self._hand_back_local()
                await self._sleep(self.settings.poll_interval)
                continue
            if self._local and self._local[0][0] < time.monotonic() - LOCAL_QUEUE_TTL_S:
                self._hand_back_local()  # slots stayed busy: let other pools run them
            free = self.settings.concurrency - len(self.running)
            while free > 0 and self._local:
                self._start(self._local.popleft()[1])
                free -= 1
            room = free + ahead - len(self._local)
            more = more or self._wake.is_set()  # a NOTIFY: new jobs
            if free <= 0 and (room <= 0 or len(self._local) > ahead // 2 or not more):
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            self._wake.clear()
            limit = min(room, batch_limit)
            try:
                conn = await self._fetch_conn.get()
                jobs = await fetch_jobs(
                    conn, self.sql, self._pool(), tasks, limit,
                    threshold_s=self.settings.sweep_threshold,
                )  # fmt: skip
            except (psycopg.Error, DatabaseUnavailableError) as e:
                log.warning("fetch failed, retrying: %s", str(e).strip().splitlines()[0])
                await self._fetch_conn.drop()
                await self._sleep(min(self.settings.poll_interval, 1.0))
                continue
            more = len(jobs) == limit
            if not jobs and self._local:
                continue  # nothing more to fetch for now; the local queue still has work
            if jobs:
                self.counters.fetch_batches += 1
                self.counters.fetched += len(jobs)
                free = self.settings.concurrency - len(self.running)
                for job in jobs[:free]:
                    self._start(job)
                fetched_at = time.monotonic()
                self._local.extend((fetched_at, job) for job in jobs[max(free, 0) :])
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_interval)

    def _hand_back_local(self) -> None:
        """The local queue's jobs will not start here: hand them back (with the attempt
        their fetch took) at the next heartbeat, or in the exit transaction."""
        if self._local:
            self._unstarted += [job for _, job in self._local]
            self._local.clear()

    def _start(self, job: Job) -> Running:
        run = Running(job, self._context(job))
        self.running[job.id] = run
        run.task = asyncio.create_task(self._run_job(run))
        run.task.add_done_callback(functools.partial(self._job_task_done, run))
        return run

    def _context(self, job: Job) -> JobContext:
        return JobContext(
            job_id=job.id,
            task=job.task_identifier,
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            queue=job.queue_name,
            pool_id=self._pool(),
        )

    async def _run_job(self, run: Running) -> None:
        job, ctx = run.job, run.ctx
        task = self.app.tasks[job.task_identifier]
        try:
            args = task_args(task, task.prepare(job.payload), ctx)
            if task.is_async:
                await task.fn(*args)
            else:
                run.thread = self.threads.submit(task.fn, *args)
                await asyncio.wrap_future(run.thread)
        except (asyncio.CancelledError, JobCancelled) as exc:
            me = asyncio.current_task()
            if run.cancel_reason == "shutdown":
                if isinstance(exc, JobCancelled):
                    return  # a sync task that stopped when asked; the drain releases it
                raise  # the drain releases it; the lock release is the record
            if run.cancel_reason == "lease":
                # Given back unrecorded once the database is reachable (or swept).
                self._abandoned.append(job)
                if me is not None and me.cancelling():
                    me.uncancel()
                return
            # Raised by the task itself, not by the worker: a failure like any other.
            detail = "".join(traceback.format_exception_only(exc)).strip()
            run.recording = True
            await self._fail(job, f"{detail} (raised by the task)", permanent=False)
        except PermanentJobError as exc:
            run.recording = True
            await self._fail(job, str(exc), permanent=True)
        except Exception as exc:
            run.recording = True
            detail = "".join(traceback.format_exception_only(exc)).strip()
            log.info(
                "job %d (%s) attempt %d failed: %s",
                job.id,
                job.task_identifier,
                job.attempts,
                detail,
            )
            error, permanent = _failure(run, task, detail)
            await self._fail(job, error, permanent=permanent)
        else:
            self._to_complete.append(job)
            self._completions.set()
        finally:
            self.running.pop(job.id, None)
            self._slot_free.set()
            if self._local and self._may_fetch():
                # The next held job takes the slot now, not when the fetch loop gets to it
                # (it may be waiting on a fetch ahead).
                self._start(self._local.popleft()[1])

    def _job_task_done(self, run: Running, task: asyncio.Task[None]) -> None:
        """A job task cancelled before it ever ran skips _run_job's own bookkeeping (its
        try/finally never started): do it here, or the job would stay ours forever."""
        if self.running.get(run.job.id) is not run:
            return
        self.running.pop(run.job.id, None)
        self._slot_free.set()
        if task.cancelled() and run.cancel_reason == "lease":
            self._abandoned.append(run.job)

    def _cancel_running(self, reason: str) -> None:
        """Ask every running execution to stop: async tasks are cancelled; sync tasks, which
        nothing can interrupt from outside, see ctx.cancelled (ctx.sleep raises)."""
        for run in list(self.running.values()):
            if reason == "lease" and (run.recording or run.cancel_reason is not None):
                continue  # finished (its record waits for the database), or already asked
            if run.cancel_reason is None:
                run.cancel_reason = reason
            run.ctx.cancelled.set()
            if run.task is not None and (run.thread is None or reason == "shutdown"):
                run.task.cancel()

    async def _fail(self, job: Job, error: str, *, permanent: bool) -> None:
        """Record a failure, fenced on the attempt. Connection errors are retried until the
        record lands or the worker stops (the drain then releases the job). A record the
        database itself refuses is retried with a minimal message; if even that is refused
        the pool stops, so the job is released instead of held by a live pool forever."""
        delay = backoff_seconds(
            job.attempts, self.settings.retry_delay, self.settings.retry_max_delay
        )
        refusals = 0
        for attempt in itertools.count():
            if attempt and self._stop.is_set():
                return
            try:
                ok = await fail_job(
                    await self._record_conn.get(), self.sql, self._pool(), job, error, delay,
                    permanent=permanent,
                )  # fmt: skip
                self.counters.failed += 1
                if ok:
                    last = permanent or job.attempts >= job.max_attempts
                    outcome = "failed" if last else "retried"
                    self.counters.outcomes[job.task_identifier, outcome] += 1
                else:
                    self.counters.completions_rejected += 1
                return
            except _TRANSIENT:
                await self._record_conn.drop()
                await asyncio.sleep(min(0.1 * 2 ** min(attempt, 6), 5))
            except psycopg.Error as exc:
                refusals += 1
                log.error("the database refused the failure of job %d: %s", job.id, first_line(exc))
                if refusals >= 2:
                    self.request_stop(ExitCode.ERROR, f"cannot record the failure of job {job.id}")
                    return
                error = f"{type(exc).__name__} while storing the error of {job.task_identifier}"

    async def _complete_loop(self) -> None:
        """Batch completions: whatever finished while the last batch was in flight."""
        backoff, refusals = 0.05, 0
        while True:
            await self._completions.wait()
            self._completions.clear()
            while self._to_complete:
                batch, self._to_complete = self._to_complete, []
                self._completing = batch
                try:
                    conn = await self._record_conn.get()
                    done = await complete_jobs(conn, self.sql, self._pool(), batch)
                except (psycopg.Error, DatabaseUnavailableError) as exc:
                    self._to_complete = batch + self._to_complete
                    await self._record_conn.drop()
                    if not isinstance(exc, _TRANSIENT):
                        refusals += 1
                        log.error("the database refused completions: %s", first_line(exc))
                        if refusals >= MAX_RECORD_FAILURES:
                            # Finished jobs held by a live pool forever would block their
                            # queues: stop, and let the drain release them.
                            self.request_stop(ExitCode.ERROR, "cannot record completions")
                            return
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5)
                    continue
                finally:
                    self._completing = []
                backoff, refusals = 0.05, 0
                self.counters.completed += len(done)
                for job in batch:
                    if job.id in done:
                        self.counters.outcomes[job.task_identifier, "completed"] += 1
                rejected = len(batch) - len(done)
                if rejected:
                    self.counters.completions_rejected += rejected
                    log.warning(
                        "%d completion(s) rejected: the jobs were taken from this pool", rejected
                    )

    async def _flush_completions(self, timeout: float) -> None:
        """Wait until every finished job is recorded as completed, including a batch already
        in flight: releasing this pool's jobs before that commits would hand a finished job
        to another worker, which would run it a second time."""
        deadline = time.monotonic() + timeout
        while (self._to_complete or self._completing) and time.monotonic() < deadline:
            self._completions.set()
            await asyncio.sleep(0.02)

    async def _listen_loop(self) -> None:
        while True:
            try:
                conn = await connect_async(self.url, timeout=5)
                async with conn:
                    await conn.execute(
                        psycopg.sql.SQL("listen {}").format(
                            psycopg.sql.Identifier(self.schema.notify_channel)
                        )
                    )
                    async for _ in conn.notifies():
                        self._wake.set()
            except (psycopg.Error, DatabaseUnavailableError) as exc:
                log.debug("listen connection lost: %s", exc)
                await asyncio.sleep(1)

    # -- maintenance -----------------------------------------------------------------------

    def _after_beat(self, db_state: str, reason: str | None, sent_at: float) -> None:
        self.lease.renewed(sent_at)
        if self.fenced:
            log.info("heartbeat restored; fetching again")
            self.fenced = False
        if db_state in FENCED_STATES:
            self.fenced = True
            # Eviction only happens to pools that lack a forced breaking migration.
            code = ExitCode.OUT_OF_DATE if db_state == PoolState.EVICTED else ExitCode.FENCED
            self.request_stop(code, f"pool marked {db_state} by others: {reason}")
            self._force.set()  # our jobs were already released; finishing them is pointless

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.heartbeat_interval
        while True:
            await asyncio.sleep(interval)
            sent = lease_clock()
            abandoned, unstarted = list(self._abandoned), list(self._unstarted)
            try:
                beat, applied, released, error = await self.maintenance.run(
                    functools.partial(
                        self._beat_and_read,
                        pool_id=self._pool(),
                        running=len(self.running),
                        abandoned=abandoned,
                        unstarted=unstarted,
                    )
                )
                self._after_beat(beat.state, beat.reason, sent)
                if error is not None:
                    # The beat landed (the lease is renewed); the rest is retried next beat.
                    log.warning("after the heartbeat: %s", first_line(error))
                    continue
                if unstarted:
                    gone = {j.id for j in unstarted}
                    self._unstarted = [j for j in self._unstarted if j.id not in gone]
                if abandoned:
                    gone = {j.id for j in abandoned}
                    self._abandoned = [j for j in self._abandoned if j.id not in gone]
                    log.warning("gave back %d job(s) cancelled while cut off", released)
                if self.state == PoolState.ACTIVE:
                    state = self.assessment = assess(self.catalog, applied)
                    if state.out_of_date or state.mismatched:
                        code = ExitCode.OUT_OF_DATE if state.out_of_date else ExitCode.SCHEMA_ERROR
                        self.request_stop(code, state.describe())
            except (DatabaseUnavailableError, psycopg.Error) as exc:
                self.counters.heartbeats_failed += 1
                self.lease.failed()
                silent = self.lease.silent_for(lease_clock())
                log.warning("heartbeat failed (%.1fs without one): %s", silent, exc)

    def _beat_and_read(
        self,
        conn: psycopg.Connection,
        *,
        pool_id: str,
        running: int,
        abandoned: list[Job],
        unstarted: list[Job],
    ) -> tuple[Heartbeat, list[AppliedMigration], int, psycopg.Error | None]:
        """One trip to the maintenance thread per beat: the beat, the schema it runs on, and
        the jobs cancelled while cut off or never started given back (fenced on their
        attempts). Once the beat is in, a later error is returned, not raised: the lease was
        renewed."""
        beat = heartbeat(conn, self.schema, pool_id, running_jobs=running)
        released = 0
        try:
            if unstarted and beat.state not in TERMINAL_STATES:
                conn.execute(self.sql.unfetch, attempt_params(unstarted, pool_id))
            if abandoned and beat.state not in TERMINAL_STATES:
                params = {**attempt_params(abandoned, pool_id), "reason": "interrupted: its "
                          "worker lost the database and cancelled it before its lease ran "
                          "out"}  # fmt: skip
                released = len(conn.execute(self.sql.release, params).fetchall())
            return beat, migrations.applied_migrations(conn, self.schema), released, None
        except psycopg.Error as exc:
            return beat, [], 0, exc

    async def _lease_loop(self) -> None:
        """The fence, independent of the heartbeat (which may hang on the network): at 3/4
        of the threshold without a recorded beat, fetch nothing and cancel the running jobs,
        again on every tick for jobs a fetch in flight brought in. The exit at 7/8 is
        enforced by a thread of its own (`_exit_watch`): task code that blocks this event
        loop would block a watchdog running on it."""
        lease = self.lease
        tick = min(self.settings.heartbeat_interval, lease.threshold / 32)
        while True:
            now = lease_clock()
            if lease.must_fence(now):
                if not self.fenced:
                    self.fenced = True
                    log.error(
                        "no heartbeat recorded for %.1fs (threshold %.1fs): not fetching, and "
                        "cancelling %d running job(s) before the lease runs out",
                        lease.silent_for(now),
                        lease.threshold,
                        len(self.running),
                    )
                self._cancel_running("lease")
                await asyncio.sleep(tick)
            else:
                assert lease.renewed_at is not None  # registered before this loop starts
                await asyncio.sleep(min(tick, lease.renewed_at + lease.fence_after - now))

    def _exit_watch(self) -> None:
        """Runs on its own thread: at 7/8 of the threshold without a recorded heartbeat, if
        any task code still runs (sync code ignoring ctx.cancelled, an async task that
        swallowed its cancellation, or one blocking the event loop), exit the process:
        nothing else stops it, and others may take its jobs at the threshold. Sleeps until
        the exact deadline, so the margin is what lease.py says."""
        lease = self.lease
        while not self._exit_watch_stop.is_set():
            renewed = lease.renewed_at
            now = lease_clock()
            if renewed is None or now < renewed + lease.exit_after:
                wait = lease.threshold / 32 if renewed is None else renewed + lease.exit_after - now
                self._exit_watch_stop.wait(min(max(wait, 0.001), 1.0))
                continue
            stubborn = [r.job.id for r in list(self.running.values()) if r.executing()]
            if stubborn:
                self._die(
                    f"lease expiring ({lease.silent_for(now):.1f}s without a recorded heartbeat, "
                    f"threshold {lease.threshold:.1f}s) and job(s) {stubborn} still run: exiting "
                    "so that no other worker runs them while they still run"
                )
            self._exit_watch_stop.wait(lease.threshold / 32)

    @staticmethod
    def _die(message: str) -> None:
        """Exit now, from any thread. No logging call: a full stderr pipe would block it."""
        write_termination_message(f"exit {int(ExitCode.FENCED)} (FENCED): {message}")
        with contextlib.suppress(OSError):
            os.set_blocking(2, False)
            os.write(2, f"CRITICAL fleet_worker: {message}\n".encode())
        os._exit(int(ExitCode.FENCED))

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval)
            if self.lease.on_probation(lease_clock()):
                continue  # others' silence may be our own outage's: judge no one yet
            try:
                result = await self.maintenance.run(self._sweep_unless_on_probation)
            except (DatabaseUnavailableError, psycopg.Error) as exc:
                log.warning("sweep skipped: %s", first_line(exc))
                continue
            if result.ran:
                self.counters.sweeps += 1
                self.counters.pools_swept += len(result.dead_pools)
                await self._prune_history()
            if result.dead_pools:
                log.warning(
                    "swept dead pool(s) %s; released %d job(s)",
                    ", ".join(result.dead_pools),
                    result.released_jobs,
                )

    async def _prune_history(self) -> None:
        """fleet_worker.retention, after a sweep this pool led."""
        keep = self.settings.keep_history
        if keep <= 0 or lease_clock() - self._pruned_at < retention.INTERVAL_S:
            return
        self._pruned_at = lease_clock()
        try:
            pruned = await self.background.run(
                lambda c: retention.prune_history(c, self.schema, keep)
            )
        except (DatabaseUnavailableError, psycopg.Error) as exc:
            log.warning("history prune skipped: %s", first_line(exc))
            return
        if pruned:
            log.info("pruned %d job history row(s) older than %.0fs", pruned, keep)

    def _sweep_unless_on_probation(self, conn: psycopg.Connection) -> SweepResult:
        # Checked again here, on the maintenance thread: the call may have waited behind a
        # slow one, long enough for a failure to put this pool back on probation.
        if self.lease.on_probation(lease_clock()):
            return SweepResult(False, [], 0)
        return sweep(conn, self.schema, self.settings.sweep_threshold, sweeper=self.pool_id)

    async def _stats_loop(self) -> None:
        """fleet_worker.queue_stats: recount if due (one pool per interval does), then read."""
        interval = self.settings.queue_stats_interval

        def refresh_and_read(conn: psycopg.Connection) -> QueueStats:
            queue_stats.refresh_if_due(conn, self.schema, interval)
            return queue_stats.read(conn, self.schema)

        while not self._stop.is_set():
            try:
                self.queue_stats = await self.background.run(refresh_and_read)
            except (DatabaseUnavailableError, psycopg.Error) as exc:
                log.debug("queue stats skipped: %s", first_line(exc))
            await self._sleep(interval)

    async def _cron_loop(self) -> None:
        """Periodic jobs (fleet_worker.periodic), checked at once (a restart's backfill), then
        just after every minute, while this pool may take work."""
        entries = self.app.crontab

        def check(conn: psycopg.Connection) -> tuple[list[Enqueued], datetime]:
            enqueued = enqueue_due(conn, self.schema, entries)
            row = conn.execute("select clock_timestamp()").fetchone()
            assert row is not None
            return enqueued, row[0]

        wait = 0.0
        while not self._stop.is_set():
            await self._sleep(wait)
            if not self._may_fetch():
                wait = 1.0
                continue
            try:
                enqueued, db_now = await self.background.run(check)
            except (DatabaseUnavailableError, psycopg.Error) as exc:
                log.warning("cron check skipped: %s", first_line(exc))
                wait = 5.0
                continue
            for e in enqueued:
                log.info("cron %s: enqueued job %d for %s", e.entry, e.job_id, e.tick.isoformat())
            self.counters.cron_enqueued += len(enqueued)
            wait = seconds_to_next_check(db_now)

    # -- shutdown --------------------------------------------------------------------------

    async def _drain(self) -> None:
        code = self.exit_code
        if self.pool_id is None:
            return
        if self.running:
            await self._wait_for_running()
        leftovers = list(self.running)
        still_running = await self._stop_running()
        await self._flush_completions(timeout=5)
        try:
            released = await self.maintenance.run(
                self._exit_transaction(self.pool_id, still_running)
            )
        except (DatabaseUnavailableError, psycopg.Error) as exc:
            log.error("could not release jobs at shutdown (the sweep will): %s", exc)
            if code in (None, ExitCode.OK):
                self.exit_code = ExitCode.ERROR
            return
        if leftovers or released:
            log.warning("released %d job(s) still running at shutdown: %s", released, leftovers)
        if still_running:
            log.warning(
                "job(s) %s ignore cancellation: left locked until this pool's lease runs out "
                "(%.0fs), so no other worker runs them alongside", still_running,
                self.lease.threshold,
            )  # fmt: skip
        self.exit_code = code

    async def _wait_for_running(self) -> None:
        """Up to the graceful timeout for the running jobs to end, or until forced."""
        with contextlib.suppress(DatabaseUnavailableError, psycopg.Error):
            await self._set_state(PoolState.DRAINING, self.exit_reason)
        log.info("draining: waiting for %d running job(s)", len(self.running))
        jobs = [r.task for r in self.running.values() if r.task is not None]

        async def all_finished() -> None:
            await asyncio.gather(*jobs, return_exceptions=True)

        async def forced() -> None:
            await self._force.wait()

        waiters = [asyncio.create_task(all_finished()), asyncio.create_task(forced())]
        await asyncio.wait(
            waiters,
            timeout=self.settings.graceful_shutdown_timeout,
            return_when=asyncio.FIRST_COMPLETED,
        )
        for waiter in waiters:
            waiter.cancel()

    async def _stop_running(self) -> list[int]:
        """Cancel what still runs; returns the jobs whose code carries on regardless."""
        # A snapshot: a sync job leaves `running` when its asyncio task is cancelled, while
        # its thread runs on.
        runs = list(self.running.values())
        self._cancel_running("shutdown")
        # Cooperative code stops within moments of being asked; what still runs after that
        # is not released (another worker would run it alongside): it stays locked and the
        # pool stays live-state, so the sweep frees it only once this process's lease ran out.
        for _ in range(int(min(5.0, self.lease.threshold / 8) / 0.02)):
            if not any(r.executing() for r in runs):
                break
            await asyncio.sleep(0.02)
        return [r.job.id for r in runs if r.executing()]

    def _exit_transaction(
        self, pool_id: str, still_running: list[int]
    ) -> Callable[[psycopg.Connection], int]:
        """The pool's last transaction: record what finished, give back what never started,
        release the rest (but `still_running`) and stop the pool. Returns the jobs released."""
        reason = self.exit_reason or "stopped"
        # Finished but not yet recorded (the jobs connection may be what failed): complete
        # them here first, fenced as always, so that releasing cannot hand them out again.
        finished = [*self._completing, *self._to_complete]
        self._hand_back_local()
        unstarted = list(self._unstarted)

        def finish(conn: psycopg.Connection) -> int:
            with conn.transaction():
                self._complete_at_exit(conn, finished, pool_id)
                if unstarted:  # before the release below, which would count their attempt
                    conn.execute(self.sql.unfetch, attempt_params(unstarted, pool_id))
                released = release_pool_jobs(
                    conn, self.schema, [pool_id], "interrupted: its worker shut down",
                    keep=still_running,
                )  # fmt: skip
                if not still_running:
                    stop_pool(conn, self.schema, pool_id, reason=reason)
            return released

        return finish

    def _complete_at_exit(
        self, conn: psycopg.Connection, finished: list[Job], pool_id: str
    ) -> None:
        """Record finished jobs inside the exit transaction; one the database refuses (a
        constraint of the app's) must not roll back the release of all the others."""
        if not finished:
            return
        try:
            with conn.transaction():
                conn.execute(self.sql.complete, attempt_params(finished, pool_id))
            return
        except psycopg.Error:
            pass
        for job in finished:
            try:
                with conn.transaction():
                    conn.execute(self.sql.complete, attempt_params([job], pool_id))
            except psycopg.Error as exc:
                log.error("could not complete job %d at exit: %s", job.id, first_line(exc))

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)


def stuck_threads() -> bool:
    """Job threads ignoring the shutdown, or a maintenance call hung on the network."""
    return any(
        t.is_alive() and t.name.startswith(("job", "maintenance")) for t in threading.enumerate()
    )


def run_worker(settings: WorkerSettings, app: App) -> int:
    """Run until stopped; returns the process exit code. Job threads that ignored the
    shutdown (sync code cannot be cancelled) must not keep the process alive: their jobs
    were already released and their completion would be rejected."""
    worker = Worker(settings, app)
    code = asyncio.run(worker.run())
    if code != ExitCode.OK:
        write_termination_message(f"exit {int(code)} ({code.name}): {worker.exit_reason}")
    if stuck_threads():
        logging.shutdown()
        os._exit(int(code))
    return int(code)
