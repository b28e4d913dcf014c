"""The worker's own bookkeeping of running jobs, driven on an event loop without a database:
whatever way a job's task ends, the job leaves `running` and, if the lease cancelled it, is
queued to be given back."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from fleet_worker.app import App
from fleet_worker.queue import Job
from fleet_worker.runtime import Worker
from fleet_worker.settings import WorkerSettings


def worker() -> Worker:
    app = App("t")

    @app.task("nap")
    async def nap(payload: Any) -> None:
        await asyncio.sleep(60)

    settings = WorkerSettings.model_validate({"database_url": "postgresql://x/y", "app": "m"})
    w = Worker(settings, app)
    w.pool_id = "00000000-0000-0000-0000-000000000001"
    return w


def job(job_id: int) -> Job:
    return Job(job_id, "nap", {}, None, 0, datetime.now(UTC), 1, 25, None, 100 + job_id)


def test_a_job_cancelled_before_its_task_ran_is_given_back() -> None:
    """Fenced in the same loop turn as the fetch: the task is cancelled before its first
    step, so none of its own try/finally runs."""

    async def go() -> Worker:
        w = worker()
        w._start(job(1))
        w._cancel_running("lease")
        for _ in range(3):
            await asyncio.sleep(0)
        return w

    w = asyncio.run(go())
    assert w.running == {}
    assert [j.id for j in w._abandoned] == [1]


def test_a_job_cancelled_while_it_runs_is_given_back_once() -> None:
    async def go() -> Worker:
        w = worker()
        w._start(job(2))
        await asyncio.sleep(0.01)  # the task is inside asyncio.sleep now
        w._cancel_running("lease")
        w._cancel_running("lease")  # every watchdog tick asks again: idempotent
        await asyncio.sleep(0.01)
        return w

    w = asyncio.run(go())
    assert w.running == {}
    assert [j.id for j in w._abandoned] == [2]
