"""Argo CD's health check for WorkerFleet (deploy/argocd/health.lua) in real Lua 5.1, on
statuses the planner writes; the e2e suite runs it on live fleets too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.helpers import ARGOCD_HEALTH, argocd_health
from tests.unit.test_planner import NEW, V1, V2, old_fleet, pod, pool, run, spec
from workerfleet_operator.models import WorkerFleetStatus
from workerfleet_operator.observation import JobInfo, Observation

CM = Path(__file__).resolve().parents[2] / "deploy" / "argocd" / "argocd-cm.yaml"


def fleet(status: WorkerFleetStatus, generation: int = 2, **spec_: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "shop", "generation": generation},
        "spec": {"version": "2", **spec_},
        "status": status.model_dump(by_alias=True, mode="json", exclude_none=True),
    }


def test_the_configmap_carries_the_script_verbatim() -> None:
    data = yaml.safe_load(CM.read_text())["data"]
    assert data["resource.customizations.health.workerfleet.dev_WorkerFleet"] == (
        ARGOCD_HEALTH.read_text()
    )


def test_health_follows_the_fleet_through_a_rollout_and_its_failures() -> None:
    pods, pools = old_fleet()
    at_rest = run(spec(replicas=0), Observation(pods=(), pools=(), applied=()))
    assert at_rest.status.phase == "Ready"
    assert argocd_health(fleet(at_rest.status))["status"] == "Healthy"
    # The operator has not seen the new generation yet.
    assert argocd_health(fleet(at_rest.status, generation=3))["status"] == "Progressing"
    new = pod("new-0", NEW, ready=False)
    waiting = pool("new-0", V2, state="waiting-for-schema", version="2")
    rolling = run(spec(), Observation(pods=(*pods, new), pools=(*pools, waiting), applied=V1))
    health = argocd_health(fleet(rolling.status))
    assert health["status"] == "Progressing" and rolling.status.phase in health["message"]
    job = JobInfo("shop-migrate", "app/0002", NEW, active=False, succeeded=False, failed=True,
                  message="BackoffLimitExceeded")  # fmt: skip
    failed = run(spec(), Observation(pods=(*pods, new), pools=(*pools, waiting), applied=V1,
                                     jobs=(job,)))  # fmt: skip
    health = argocd_health(fleet(failed.status))
    assert health["status"] == "Degraded" and health["message"].startswith("MigrationFailed")
    paused = run(spec(paused=True), Observation(pods=tuple(pods), pools=tuple(pools), applied=V1))
    assert argocd_health(fleet(paused.status, paused=True))["status"] == "Suspended"
    assert argocd_health({"metadata": {"generation": 1}, "spec": {}})["status"] == "Progressing"
