"""Worker settings: CLI flags and environment, validated once, with documented defaults."""

from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, Field, SecretStr, model_validator

from fleet_worker.durations import parse_duration
from fleet_worker.identifiers import DEFAULT_SCHEMA, validate_schema_name

Seconds = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]


class WorkerSettings(BaseModel):
    model_config = {"frozen": True}

    database_url: SecretStr
    schema_name: Annotated[str, BeforeValidator(validate_schema_name)] = DEFAULT_SCHEMA
    app: str
    mode: Literal["self", "external"] = "self"
    fleet: str = ""
    version: str | None = None  # overrides the App's version (the operator passes spec.version)
    concurrency: int = Field(10, ge=1, le=1000)
    batch_size: int | None = Field(None, ge=1, le=1000)  # jobs per fetch; default: free slots
    # Jobs fetched ahead and held beyond the running ones, so a slot that frees starts the
    # next job without a round trip (0: off). See docs/worker.md#local-queue.
    local_queue_size: int = Field(0, ge=0, le=10_000)
    heartbeat_interval: Seconds = 10.0
    sweep_interval: Seconds = 30.0
    sweep_threshold: Seconds = 60.0
    max_migration_wait: Seconds = 600.0
    graceful_shutdown_timeout: Seconds = 30.0
    poll_interval: Seconds = 2.0  # fallback when no NOTIFY arrives
    retry_delay: Seconds = 2.0  # back-off base: retry_delay * 2^(attempt-1)
    retry_max_delay: Seconds = 3600.0
    # Completed jobs are recorded in job_history and kept this long (0: not recorded). See
    # docs/worker.md#job-history.
    keep_history: Seconds = 0.0
    # How often /metrics' queue counts are read, and recounted by one pool of the fleet
    # (0: off). See fleet_worker/queue_stats.py.
    queue_stats_interval: Seconds = 15.0
    health_host: str = Field(default_factory=lambda: os.environ.get("POD_IP") or "127.0.0.1")
    health_port: int = Field(8080, ge=0, le=65535)  # 0: pick a free port; -1 not allowed

    @model_validator(mode="after")
    def _check_timing(self) -> WorkerSettings:
        if self.heartbeat_interval <= 0:
            raise ValueError("heartbeat interval must be positive")
        if self.sweep_threshold < 2 * self.heartbeat_interval:
            raise ValueError(
                f"sweep threshold ({self.sweep_threshold}s) must be at least twice the "
                f"heartbeat interval ({self.heartbeat_interval}s), or live pools would be "
                "declared dead between two heartbeats"
            )
        if self.sweep_interval <= 0:
            raise ValueError("sweep interval must be positive")
        return self
