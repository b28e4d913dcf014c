"""One source for the worker's defaults: WorkerSettings. The CLI takes them from it, the CRD's
defaults must equal them (a fleet without the field runs as a worker without the flag), and
docs/worker.md's flag table must say them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fleet_worker.cli import RUN_DURATIONS, build_parser
from fleet_worker.durations import parse_duration
from fleet_worker.settings import WorkerSettings
from workerfleet_operator.models import WorkerFleetSpec

ROOT = Path(__file__).resolve().parents[2]
# CRD field -> WorkerSettings field, for the settings a fleet passes to its workers.
CRD_TO_SETTINGS = {
    "heartbeat_interval": "heartbeat_interval",
    "sweep_interval": "sweep_interval",
    "sweep_threshold": "sweep_threshold",
    "max_migration_wait_time": "max_migration_wait",
    "graceful_shutdown_timeout": "graceful_shutdown_timeout",
    "concurrency": "concurrency",
    "local_queue_size": "local_queue_size",
    "health_port": "health_port",
}


def default(field: str) -> object:
    return WorkerSettings.model_fields[field].default


@pytest.mark.parametrize(("crd", "setting"), CRD_TO_SETTINGS.items())
def test_the_crd_defaults_are_the_workers(crd: str, setting: str) -> None:
    value = WorkerFleetSpec.model_fields[crd].default
    if isinstance(value, str):
        assert parse_duration(value) == default(setting), crd
    else:
        assert value == default(setting), crd


def test_the_cli_defaults_are_the_settings() -> None:
    args = build_parser().parse_args(["run", "--app", "m"])
    for flag, setting in RUN_DURATIONS.items():
        assert getattr(args, flag[2:].replace("-", "_")) == default(setting), flag
    assert args.concurrency == default("concurrency")


def documented_defaults() -> dict[str, str]:
    """docs/worker.md's flag table: flag -> default as written (a row may pair two flags,
    "`--a` / `--b` | x / y")."""
    out: dict[str, str] = {}
    text = (ROOT / "docs/worker.md").read_text()
    for flags, values in re.findall(r"^\| (`--[^|]+) \| ([^|]+?) \|", text, re.M):
        names = re.findall(r"`(--[a-z-]+)`", flags)
        parts = [v.strip() for v in values.split(" / ")] if len(names) > 1 else [values]
        out.update(zip(names, parts, strict=False))
    return out


def test_the_docs_flag_table_says_the_defaults() -> None:
    table = documented_defaults()
    for flag, setting in RUN_DURATIONS.items():
        documented = table[flag].split(" ")[0]  # "0s (off)" -> "0s"
        assert parse_duration(documented) == default(setting), flag
    assert table["--concurrency"] == str(default("concurrency"))
