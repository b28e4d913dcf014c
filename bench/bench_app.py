"""The benchmark's app: a no-op async task (measures the runtime, not the work) and a task
that sleeps (holds a job while the benchmark kills its worker)."""

from __future__ import annotations

import asyncio
from typing import Any

from fleet_worker import App

app = App(name="bench", version="1.0.0")


@app.task("noop")
async def noop(payload: Any) -> None:
    return None


@app.task("hold")
async def hold(payload: Any) -> None:
    await asyncio.sleep(float(payload.get("seconds", 3600)))
