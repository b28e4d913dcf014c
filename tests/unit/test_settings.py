from __future__ import annotations

from typing import Any

import pydantic
import pytest

from fleet_worker.settings import WorkerSettings

BASE: dict[str, Any] = {"database_url": "postgresql://x", "app": "m"}


def test_defaults_match_the_documented_ones() -> None:
    s = WorkerSettings.model_validate(BASE)
    assert (s.heartbeat_interval, s.sweep_interval, s.sweep_threshold) == (10, 30, 60)
    assert (s.max_migration_wait, s.graceful_shutdown_timeout) == (600, 30)
    assert s.schema_name == "fleet_worker" and s.mode == "self"


def test_durations_parse_and_threshold_must_cover_two_heartbeats() -> None:
    s = WorkerSettings.model_validate({**BASE, "heartbeat_interval": "2s", "sweep_threshold": "1m"})
    assert s.sweep_threshold == 60
    with pytest.raises(pydantic.ValidationError, match="at least twice"):
        WorkerSettings.model_validate(
            {**BASE, "heartbeat_interval": "40s", "sweep_threshold": "1m"}
        )


def test_secret_url_is_not_in_the_repr() -> None:
    s = WorkerSettings.model_validate({**BASE, "database_url": "postgresql://u:hunter2@h/db"})
    assert "hunter2" not in repr(s)
