"""What a user writes: an App with named tasks (sync or async callables) and, optionally,
its own migrations directory."""

from __future__ import annotations

import importlib
import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import pydantic

from fleet_worker.catalog import Catalog
from fleet_worker.cron import CronEntry
from fleet_worker.durations import parse_duration
from fleet_worker.errors import AppDefinitionError, AppLoadError, CronError


class JobCancelled(BaseException):
    """Raised inside a sync task by `ctx.sleep` or `ctx.check_cancelled` once the worker asked
    the job to stop: its lease on the job is about to run out (the database is unreachable)
    or the shutdown is forced. A BaseException, so `except Exception` in task code does not
    swallow it; let it propagate. The job is released and runs again later."""


@dataclass(frozen=True)
class JobContext:
    job_id: int
    task: str
    attempts: int
    max_attempts: int
    queue: str | None
    pool_id: str
    # Set by the worker when this execution must stop. Async tasks are cancelled outright;
    # sync tasks cannot be interrupted from outside, so they poll this (or use `sleep`).
    cancelled: threading.Event = field(default_factory=threading.Event, compare=False)

    def check_cancelled(self) -> None:
        """Raise JobCancelled if the worker asked this job to stop."""
        if self.cancelled.is_set():
            raise JobCancelled(f"job {self.job_id} cancelled by the worker")

    def sleep(self, seconds: float) -> None:
        """time.sleep that a cancellation interrupts (raising JobCancelled)."""
        self.cancelled.wait(seconds)
        self.check_cancelled()


TaskFn = Callable[..., Any]


class OnOrphan(StrEnum):
    """What becomes of an attempt that started but never reported an outcome: its worker
    died, was evicted, lost its lease, or shut down before the attempt ended."""

    RETRY = "retry"  # run it again (the default: tasks should be idempotent)
    FAIL = "fail"  # fail the job permanently, kept for inspection: for work that must never
    # run twice (charging a card) and cannot tell from outside whether the attempt got through


class PermanentJobError(Exception):
    """Raise from a task when retrying cannot help; the job fails at once, kept inspectable."""


@dataclass
class Task:
    name: str
    fn: TaskFn
    payload_model: type[pydantic.BaseModel] | None = None
    is_async: bool = False
    wants_context: bool = False
    on_orphan: OnOrphan = OnOrphan.RETRY

    def prepare(self, payload: Any) -> Any:
        """Validate the payload. A malformed payload is a permanent failure: no retry."""
        if self.payload_model is None:
            return payload
        try:
            return self.payload_model.model_validate(payload)
        except pydantic.ValidationError as exc:
            raise PermanentJobError(f"malformed payload for task {self.name!r}: {exc}") from exc


@dataclass
class App:
    name: str
    version: str = "0.0.0"
    migrations: Path | None = None
    tasks: dict[str, Task] = field(default_factory=dict)
    crontab: list[CronEntry] = field(default_factory=list)

    def task(
        self,
        name: str | None = None,
        *,
        payload: type[pydantic.BaseModel] | None = None,
        on_orphan: OnOrphan | str = OnOrphan.RETRY,
    ) -> Callable[[TaskFn], TaskFn]:
        """Register `fn(payload)` or `fn(payload, ctx: JobContext)` under `name`.
        `on_orphan` says what happens to an attempt whose worker went away mid-run."""
        try:
            policy = OnOrphan(on_orphan)
        except ValueError:
            choices = ", ".join(repr(p.value) for p in OnOrphan)
            raise AppDefinitionError(
                f"on_orphan must be one of {choices}, not {on_orphan!r}"
            ) from None

        def register(fn: TaskFn) -> TaskFn:
            task_name = name or fn.__name__
            if task_name in self.tasks:
                raise AppDefinitionError(f"task {task_name!r} registered twice")
            params = len(inspect.signature(fn).parameters)
            if params not in (1, 2):
                raise AppDefinitionError(
                    f"task {task_name!r} must take (payload) or (payload, ctx)"
                )
            self.tasks[task_name] = Task(
                name=task_name,
                fn=fn,
                payload_model=payload,
                is_async=inspect.iscoroutinefunction(fn),
                wants_context=params == 2,
                on_orphan=policy,
            )
            return fn

        return register

    def cron(
        self,
        schedule: str,
        task: str,
        *,
        timezone: str,
        name: str | None = None,
        payload: object = None,
        backfill: str | float = 0,
        queue: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
    ) -> CronEntry:
        """Enqueue `task` at every tick of `schedule` (`"*/15 * * * *"`, `"@daily"`) read on
        the wall clock of `timezone` (required: an IANA name such as "UTC"). Exactly one job
        per tick, whichever and however many workers run; `backfill` ("0s" up to "168h", e.g.
        "1h") enqueues the ticks missed while no worker ran, that far back."""
        try:
            backfill_s = parse_duration(backfill)
        except ValueError as exc:
            raise CronError(f"cron entry {name or task!r}: backfill: {exc}") from None
        entry = CronEntry.build(
            schedule, task, name=name, timezone=timezone, backfill_s=backfill_s,
            payload=payload, queue=queue, priority=priority, max_attempts=max_attempts,
        )  # fmt: skip
        if any(e.name == entry.name for e in self.crontab):
            raise CronError(f"cron entry {entry.name!r} defined twice; give one a name=")
        self.crontab.append(entry)
        return entry

    def check(self) -> None:
        """What can only be checked once the module is loaded: the crontab's tasks exist."""
        for entry in self.crontab:
            if entry.task not in self.tasks:
                known = ", ".join(sorted(self.tasks)) or "none"
                raise AppLoadError(
                    f"cron entry {entry.name!r} enqueues task {entry.task!r}, which the app "
                    f"does not define (tasks: {known})"
                )

    def catalog(self) -> Catalog:
        return Catalog.load(self.migrations)

    def orphan_fail_tasks(self) -> list[str]:
        """The tasks whose orphaned attempts fail rather than retry, as the pool records them."""
        return sorted(t.name for t in self.tasks.values() if t.on_orphan is OnOrphan.FAIL)


def task_args(task: Task, payload: Any, ctx: JobContext) -> tuple[Any, ...]:
    return (payload, ctx) if task.wants_context else (payload,)


def load_app(spec: str) -> App:
    """`pkg.module` (its `app` attribute) or `pkg.module:attribute`."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AppLoadError(f"cannot import app module {module_name!r}: {exc}") from exc
    except AppDefinitionError as exc:  # a task or crontab line the module defines wrongly
        raise AppLoadError(f"app module {module_name!r}: {exc}") from exc
    candidate = getattr(module, attr or "app", None)
    if not isinstance(candidate, App):
        raise AppLoadError(
            f"{spec!r} has no fleet_worker.App named {attr or 'app'!r}; "
            "define `app = App(name=..., version=...)` in the module"
        )
    candidate.check()
    return candidate
