"""The worker process: register a pool, reach a compatible schema, fetch and run jobs,
heartbeat, sweep, and stop without losing work.

Concurrency model: one asyncio loop. The hot path (fetch, complete, fail) uses one async
connection; LISTEN uses another; maintenance (heartbeat, sweep, migrations) runs on a sync
connection in a single dedicated thread so it never waits behind jobs. Sync tasks run on a
thread pool sized to `concurrency`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg

from fleet_worker import migrate as migrations
from fleet_worker.app import App, JobContext, PermanentJobError, call_task
from fleet_worker.catalog import Catalog
from fleet_worker.compat import AppliedMigration, Assessment, assess
from fleet_worker.db import (
    DatabaseUnavailableError,
    Schema,
    connect,
    connect_async,
    first_line,
)
from fleet_worker.exit_codes import ExitCode
from fleet_worker.health import HealthServer
from fleet_worker.pools import (
    Heartbeat,
    PoolIdentity,
    heartbeat,
    record_intent,
    register_pool,
    stop_pool,
    waited_seconds,
)
from fleet_worker.queue import Job, QueueSQL, backoff_seconds, complete_jobs, fail_job, fetch_jobs
from fleet_worker.recovery import release_pool_jobs, sweep
from fleet_worker.settings import WorkerSettings

log = logging.getLogger("fleet_worker")
CORE_PROTOCOL = "core/0001"  # the migration that creates the pools table
T = TypeVar("T")


@dataclass
class Counters:
    completed: int = 0
    failed: int = 0
    fetched: int = 0
    fetch_batches: int = 0
    completions_rejected: int = 0
    heartbeats_failed: int = 0
    sweeps: int = 0
    pools_swept: int = 0


class Maintenance:
    """The sync connection for heartbeat, sweep and migrations, used from one thread only.
    It reconnects lazily after an error so a database restart costs one failed beat."""

    def __init__(self, url: str, timeout: float) -> None:
        self._url = url
        self._timeout = timeout
        self._conn: psycopg.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="maintenance")

    def _with_conn(self, fn: Callable[[psycopg.Connection], T]) -> T:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self._url, timeout=self._timeout)
        try:
            return fn(self._conn)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self._reset()
            raise DatabaseUnavailableError(str(exc).strip().splitlines()[0]) from exc
        except psycopg.Error:
            # Anything else (a failover's read-only error, a dropped table): start afresh
            # next time rather than reuse a connection in an unknown state.
            self._reset()
            raise

    def _reset(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        self._conn = None

    async def run(self, fn: Callable[[psycopg.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._with_conn, fn)

    def close(self) -> None:
        def _close() -> None:
            if self._conn is not None:
                self._conn.close()

        with contextlib.suppress(Exception):
            self._thread.submit(_close).result(timeout=5)
        self._thread.shutdown(wait=False, cancel_futures=True)


class Worker:
    def __init__(self, settings: WorkerSettings, app: App) -> None:
        self.settings = settings
        self.app = app
        self.schema = Schema(settings.schema_name)
        self.catalog: Catalog = app.catalog()
        self.version = settings.version or app.version
        self.sql = QueueSQL(self.schema)
        self.url = settings.database_url.get_secret_value()
        self.maintenance = Maintenance(self.url, timeout=max(2.0, settings.heartbeat_interval))
        self.threads = ThreadPoolExecutor(
            max_workers=settings.concurrency, thread_name_prefix="job"
        )
        self.pool_id: str | None = None
        self.state = "starting"
        self.counters = Counters()
        self.running: dict[int, asyncio.Task[None]] = {}
        self.exit_code: ExitCode | None = None
        self.exit_reason = ""
        self.fenced = False  # no successful heartbeat for longer than the sweep threshold
        self.last_beat_ok = time.monotonic()
        self.assessment: Assessment | None = None
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._wake = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._to_complete: list[int] = []
        self._completing: list[int] = []  # the batch whose completion is in flight
        self._completions = asyncio.Event()
        self._jobs_conn: psycopg.AsyncConnection | None = None
        self._signals = 0
        self.health = HealthServer(self, settings.health_host, settings.health_port)

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
            background = [
                self._service(self._heartbeat_loop(), "heartbeat"),
                self._service(self._sweep_loop(), "sweep"),
            ]
            try:
                if await self._reach_compatible_schema():
                    background += [
                        self._service(self._listen_loop(), "listen"),
                        self._service(self._complete_loop(), "complete"),
                    ]
                    await self._fetch_loop()
            except Exception as exc:
                log.exception("worker failed")
                self.request_stop(ExitCode.ERROR, f"unexpected error: {exc}")
            finally:
                # Whatever happened, finished jobs are completed and the rest released.
                await self._drain()
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self.health.stop()
            if self._jobs_conn is not None:
                await self._jobs_conn.close()
            self.maintenance.close()
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
            except migrations.MigrationError as exc:
                self.request_stop(ExitCode.SCHEMA_ERROR, str(exc))
                return False
            await self._sleep(self.settings.poll_interval)
        return False

    async def _register(self) -> None:
        who = PoolIdentity.from_env(fleet=self.settings.fleet, version=self.version)
        self.pool_id = await self.maintenance.run(
            lambda c: register_pool(
                c,
                self.schema,
                who,
                self.catalog,
                mode=self.settings.mode,
                concurrency=self.settings.concurrency,
            )
        )
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
        beat = await self.maintenance.run(
            lambda c: heartbeat(
                c, self.schema, pool_id, running_jobs=running, state=state, reason=reason
            )
        )
        self._after_beat(beat.state, beat.reason)

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
                if self.state != "waiting-for-schema":
                    log.info("waiting for schema: %s", state.describe())
                    await self._set_state("waiting-for-schema", state.describe())
                if self.settings.mode == "self":
                    await self._self_migrate(state)
                    continue
            except DatabaseUnavailableError as exc:
                log.warning("database unavailable while checking the schema: %s", exc)
            except migrations.MigrationError as exc:
                self.request_stop(ExitCode.SCHEMA_ERROR, str(exc))
                return False
            except psycopg.Error as exc:
                log.warning("schema check failed, retrying: %s", first_line(exc))
            await self._sleep(self.settings.poll_interval)
        return False

    async def _activate(self) -> Assessment:
        pool_id = self._pool()
        state = await self.maintenance.run(
            lambda c: migrations.activate(c, self.schema, self.catalog, pool_id)
        )
        self.assessment = state
        if state.compatible:
            self.state = "active"
            self._after_beat("active", None)
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
            force = waited >= self.settings.max_migration_wait
            result = migrations.MigrationResult()
            done = migrations.apply_one(
                conn,
                self.schema,
                self.catalog,
                breaking,
                threshold_s=threshold,
                force=force,
                result=result,
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

    async def _jobs(self) -> psycopg.AsyncConnection:
        if self._jobs_conn is None or self._jobs_conn.closed:
            self._jobs_conn = await connect_async(self.url, timeout=5)
        return self._jobs_conn

    async def _drop_jobs_conn(self) -> None:
        if self._jobs_conn is not None:
            with contextlib.suppress(Exception):
                await self._jobs_conn.close()
        self._jobs_conn = None

    def _may_fetch(self) -> bool:
        # A heartbeat that hangs (no error, no answer) fences as surely as one that fails.
        silent = time.monotonic() - self.last_beat_ok
        return (
            not self._stop.is_set()
            and not self.fenced
            and self.state == "active"
            and silent < self.settings.sweep_threshold
        )

    async def _fetch_loop(self) -> None:
        tasks = sorted(self.app.tasks)
        batch_limit = self.settings.batch_size or self.settings.concurrency
        while not self._stop.is_set():
            if not self._may_fetch():
                await self._sleep(self.settings.poll_interval)
                continue
            free = self.settings.concurrency - len(self.running)
            if free <= 0:
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            self._wake.clear()
            try:
                conn = await self._jobs()
                jobs = await fetch_jobs(
                    conn, self.sql, self._pool(), tasks, min(free, batch_limit),
                    threshold_s=self.settings.sweep_threshold,
                )  # fmt: skip
            except (psycopg.Error, DatabaseUnavailableError) as e:
                log.warning("fetch failed, retrying: %s", str(e).strip().splitlines()[0])
                await self._drop_jobs_conn()
                await self._sleep(min(self.settings.poll_interval, 1.0))
                continue
            if jobs:
                self.counters.fetch_batches += 1
                self.counters.fetched += len(jobs)
                for job in jobs:
                    self.running[job.id] = asyncio.create_task(self._run_job(job))
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.poll_interval)

    async def _run_job(self, job: Job) -> None:
        task = self.app.tasks[job.task_identifier]
        ctx = JobContext(
            job_id=job.id,
            task=job.task_identifier,
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            queue=job.queue_name,
            pool_id=self._pool(),
        )
        try:
            await call_task(task, task.prepare(job.payload), ctx, self.threads)
        except asyncio.CancelledError:
            raise  # shutdown released it; the lock release is the record
        except PermanentJobError as exc:
            await self._fail(job, str(exc), permanent=True)
        except Exception as exc:
            detail = "".join(traceback.format_exception_only(exc)).strip()
            log.info(
                "job %d (%s) attempt %d failed: %s",
                job.id,
                job.task_identifier,
                job.attempts,
                detail,
            )
            await self._fail(job, detail, permanent=False)
        else:
            self._to_complete.append(job.id)
            self._completions.set()
        finally:
            self.running.pop(job.id, None)
            self._slot_free.set()

    async def _fail(self, job: Job, error: str, *, permanent: bool) -> None:
        delay = backoff_seconds(
            job.attempts, self.settings.retry_delay, self.settings.retry_max_delay
        )
        for attempt in range(20):
            try:
                ok = await fail_job(
                    await self._jobs(),
                    self.sql,
                    self._pool(),
                    job.id,
                    error,
                    delay,
                    permanent=permanent,
                )
                self.counters.failed += 1
                if not ok:
                    self.counters.completions_rejected += 1
                return
            except (psycopg.Error, DatabaseUnavailableError):
                await self._drop_jobs_conn()
                await asyncio.sleep(min(0.1 * 2**attempt, 5))
        # Gave up: the lock stays ours until the sweep or our shutdown releases it.
        log.error("could not record the failure of job %d; it will be recovered", job.id)

    async def _complete_loop(self) -> None:
        """Batch completions: whatever finished while the last batch was in flight."""
        backoff = 0.05
        while True:
            await self._completions.wait()
            self._completions.clear()
            while self._to_complete:
                batch, self._to_complete = self._to_complete, []
                self._completing = batch
                try:
                    done = await complete_jobs(await self._jobs(), self.sql, self._pool(), batch)
                except (psycopg.Error, DatabaseUnavailableError):
                    self._to_complete = batch + self._to_complete
                    await self._drop_jobs_conn()
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5)
                    continue
                finally:
                    self._completing = []
                backoff = 0.05
                self.counters.completed += len(done)
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

    def _after_beat(self, db_state: str, reason: str | None) -> None:
        self.last_beat_ok = time.monotonic()
        if self.fenced:
            log.info("heartbeat restored; fetching again")
            self.fenced = False
        if db_state in ("dead", "evicted"):
            self.fenced = True
            # Eviction only happens to pools that lack a forced breaking migration.
            code = ExitCode.OUT_OF_DATE if db_state == "evicted" else ExitCode.FENCED
            self.request_stop(code, f"pool marked {db_state} by others: {reason}")
            self._force.set()  # our jobs were already released; finishing them is pointless

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.heartbeat_interval
        while True:
            await asyncio.sleep(interval)
            try:
                beat, applied = await self.maintenance.run(
                    functools.partial(
                        self._beat_and_read, pool_id=self._pool(), running=len(self.running)
                    )
                )
                self._after_beat(beat.state, beat.reason)
                if self.state == "active":
                    state = self.assessment = assess(self.catalog, applied)
                    if state.out_of_date or state.mismatched:
                        code = ExitCode.OUT_OF_DATE if state.out_of_date else ExitCode.SCHEMA_ERROR
                        self.request_stop(code, state.describe())
            except (DatabaseUnavailableError, psycopg.Error) as exc:
                self.counters.heartbeats_failed += 1
                silent = time.monotonic() - self.last_beat_ok
                log.warning("heartbeat failed (%.1fs without one): %s", silent, exc)
                if silent > self.settings.sweep_threshold and not self.fenced:
                    log.error("no heartbeat for longer than the sweep threshold: not fetching")
                    self.fenced = True

    def _beat_and_read(
        self, conn: psycopg.Connection, *, pool_id: str, running: int
    ) -> tuple[Heartbeat, list[AppliedMigration]]:
        """One trip to the maintenance thread per beat: the beat and the schema it runs on."""
        beat = heartbeat(conn, self.schema, pool_id, running_jobs=running)
        return beat, migrations.applied_migrations(conn, self.schema)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sweep_interval)
            try:
                result = await self.maintenance.run(
                    lambda c: sweep(
                        c, self.schema, self.settings.sweep_threshold, sweeper=self.pool_id
                    )
                )
            except (DatabaseUnavailableError, psycopg.Error) as exc:
                log.warning("sweep skipped: %s", first_line(exc))
                continue
            if result.ran:
                self.counters.sweeps += 1
                self.counters.pools_swept += len(result.dead_pools)
            if result.dead_pools:
                log.warning(
                    "swept dead pool(s) %s; released %d job(s)",
                    ", ".join(result.dead_pools),
                    result.released_jobs,
                )

    # -- shutdown --------------------------------------------------------------------------

    async def _drain(self) -> None:
        code = self.exit_code
        if self.pool_id is None:
            return
        if self.running:
            with contextlib.suppress(DatabaseUnavailableError, psycopg.Error):
                await self._set_state("draining", self.exit_reason)
            log.info("draining: waiting for %d running job(s)", len(self.running))
            jobs = list(self.running.values())

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
        leftovers = list(self.running)
        for job_task in list(self.running.values()):
            job_task.cancel()
        await self._flush_completions(timeout=5)
        final_state = "stopped"
        reason = self.exit_reason or "stopped"
        pool_id = self.pool_id
        # Finished but not yet recorded (the jobs connection may be what failed): complete
        # them here first, fenced as always, so that releasing cannot hand them out again.
        finished = [*self._completing, *self._to_complete]

        def finish(conn: psycopg.Connection) -> int:
            with conn.transaction():
                if finished:
                    conn.execute(self.sql.complete, {"ids": finished, "pool": pool_id})
                released = release_pool_jobs(
                    conn, self.schema, [pool_id], "interrupted: its worker shut down"
                )
                stop_pool(conn, self.schema, pool_id, reason=reason, state=final_state)
            return released

        try:
            released = await self.maintenance.run(finish)
        except (DatabaseUnavailableError, psycopg.Error) as exc:
            log.error("could not release jobs at shutdown (the sweep will): %s", exc)
            if code in (None, ExitCode.OK):
                self.exit_code = ExitCode.ERROR
            return
        if leftovers or released:
            log.warning("released %d job(s) still running at shutdown: %s", released, leftovers)
        self.exit_code = code

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
    if stuck_threads():
        logging.shutdown()
        os._exit(int(code))
    return int(code)
