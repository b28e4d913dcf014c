"""What GitOps tools make of a live fleet, asked of the real tools: kstatus
(sigs.k8s.io/cli-utils, built from the Go module proxy: tools/kstatus_check) and Argo CD's
health check (deploy/argocd/health.lua in Lua 5.1). InProgress/Progressing while a rollout
runs, Current/Healthy after, Failed/Degraded on a fleet that is stuck."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.operator_env import FleetEnv, wait_until
from tests.helpers import argocd_health
from workerfleet_dev.gotools import KSTATUS_CHECK, ensure

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def kstatus_check() -> Path:
    return ensure(KSTATUS_CHECK)


def kstatus(binary: Path, obj: dict[str, Any]) -> dict[str, str]:
    out = subprocess.run(
        [str(binary)], input=json.dumps(obj), capture_output=True, text=True, check=True,
        timeout=30,
    )  # fmt: skip
    return dict(json.loads(out.stdout))


def follow(fleet: FleetEnv, binary: Path, version: str) -> list[tuple[str, str, bool]]:
    """(kstatus, Argo CD health, Ready at this version) for every object version seen
    until the fleet is Ready at `version`."""
    seen: list[tuple[str, str, bool]] = []
    last = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        obj = fleet.get()
        if obj["metadata"]["resourceVersion"] != last:
            last = obj["metadata"]["resourceVersion"]
            ready = fleet.ready(version)
            seen.append((kstatus(binary, obj)["status"], argocd_health(obj)["status"], ready))
            if ready:
                return seen
        time.sleep(0.2)
    raise AssertionError(f"not Ready at {version} in 120s; seen {seen}")


def test_a_rollout_is_in_progress_until_ready_then_current(
    fleet: FleetEnv, kstatus_check: Path
) -> None:
    fleet.apply("1", replicas=2)
    for version in ("1", "2"):
        if version == "2":
            fleet.patch_spec(version="2")
        seen = follow(fleet, kstatus_check, version)
        # Not done until Ready at the new version, and never taken for failed on the way.
        assert seen[0][:2] == ("InProgress", "Progressing"), seen
        assert seen[-1] == ("Current", "Healthy", True), seen
        assert all(k == "InProgress" and a == "Progressing" for k, a, _ in seen[:-1]), seen


def test_a_stuck_fleet_is_failed_and_says_why(fleet: FleetEnv, kstatus_check: Path) -> None:
    """An `app` that is no fleet_worker App fails the migration Job: Stalled, MigrationFailed."""
    fleet.apply("1", replicas=1, app="fleet_test_apps.common")

    def failed() -> tuple[dict[str, str], dict[str, str]] | None:
        obj = fleet.get()
        answer = kstatus(kstatus_check, obj)
        return (answer, argocd_health(obj)) if answer["status"] == "Failed" else None

    answer, health = wait_until(failed, 90, "kstatus Failed")
    assert "fleet_worker.App" in answer["message"], answer
    assert health["status"] == "Degraded" and health["message"].startswith("MigrationFailed")
