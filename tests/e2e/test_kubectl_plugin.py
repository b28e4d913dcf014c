"""`kubectl workerfleet` against the local cluster, the operator and a real database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.operator_env import (
    FleetEnv,
    wait_until,
)

pytestmark = pytest.mark.e2e
PLUGIN = str(Path(sys.executable).parent / "kubectl-workerfleet")


def plugin(fleet: FleetEnv, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PLUGIN, "-n", fleet.ns, *args], capture_output=True, text=True,
                          env={**os.environ}, timeout=60, check=False)  # fmt: skip


def test_status_plan_pause_resume_and_a_safe_rollback(fleet: FleetEnv) -> None:
    fleet.apply("1", replicas=2)
    fleet.wait_ready("1")
    r = plugin(fleet, "status", "shop")
    assert r.returncode == 0, r.stderr
    assert "Ready" in r.stdout and "RolloutComplete" in r.stdout
    assert r.stdout.count(" v1 ") >= 2 and "active" in r.stdout  # pods and pools
    r = plugin(fleet, "plan", "shop", "--version", "2")
    assert r.returncode == 0 and "version not seen yet" in r.stdout

    fleet.patch_spec(version="2")
    fleet.wait_ready("2")
    r = plugin(fleet, "plan", "shop", "--json")
    report = json.loads(r.stdout)
    assert report["pending"] == [] and report["refused"] == [] and report["catalog_known"]

    r = plugin(fleet, "pause", "shop")
    assert r.returncode == 0 and fleet.get()["spec"]["paused"] is True
    wait_until(
        lambda: (fleet.condition("Progressing") or {}).get("reason") == "Paused",
        30,
        "paused condition",
    )
    assert plugin(fleet, "resume", "shop").returncode == 0
    assert fleet.get()["spec"]["paused"] is False

    r = plugin(fleet, "rollback", "shop")
    assert r.returncode == 0, r.stderr
    assert "version 2 -> 1" in r.stdout
    fleet.wait_ready("1")


def test_approve_a_breaking_migration_then_rollback_is_refused(fleet: FleetEnv) -> None:
    fleet.apply("2", replicas=2, rollout={"breakingMigrationApproval": "Manual"})
    fleet.wait_ready("2")
    fleet.patch_spec(version="3")
    wait_until(
        lambda: fleet.get().get("status", {}).get("phase") == "AwaitingApproval",
        60,
        "awaiting approval",
    )
    r = plugin(fleet, "status", "shop")
    assert r.returncode == 3 and "app/0003" in r.stdout  # not ready yet
    r = plugin(fleet, "plan", "shop", "--json")
    report = json.loads(r.stdout)
    [step] = report["pending"]
    assert step["migration"] == "app/0003" and step["breaking"]
    assert len(step["must_drain"]) == 2  # the two version-2 pods' pools
    assert plugin(fleet, "approve", "shop", "app/0002").returncode == 4  # not pending
    r = plugin(fleet, "approve", "shop")
    assert r.returncode == 0 and "app/0003" in r.stdout
    fleet.wait_ready("3", timeout=120)

    r = plugin(fleet, "rollback", "shop")
    assert r.returncode == 4
    assert "refusing to roll back to 2" in r.stderr and "app/0003" in r.stderr
    assert fleet.get()["spec"]["version"] == "3"
    r = plugin(fleet, "status", "nope")
    assert r.returncode == 1 and "not found" in r.stderr


def test_jobs_shows_what_ran_on_which_pod_and_retries_a_failed_job(fleet: FleetEnv) -> None:
    fleet.apply("1", replicas=1, keepHistory="1h")
    fleet.wait_ready("1")
    done = [fleet.q("select (j).id from (select {s}.add_job('work') as j) x")[0][0] for _ in "ab"]
    [(failing,)] = fleet.q(
        "select (j).id from (select {s}.add_job('fail_after', '{{\"s\": 0}}'::jsonb, "
        "max_attempts => 1) as j) x"
    )
    wait_until(lambda: fleet.q("select count(*) from {s}.job_list where state = 'failed'")
               == [(1,)] and fleet.q("select count(*) from {s}.jobs") == [(1,)],
               60, "two jobs done, one failed")  # fmt: skip
    r = plugin(fleet, "jobs", "shop", "history", "--json")
    assert r.returncode == 0, r.stderr
    history = json.loads(r.stdout)
    [pod] = [p["metadata"]["name"] for p in fleet.pods()]
    assert sorted(h["id"] for h in history) == sorted(done) and {
        h["pod_name"] for h in history
    } == {pod}
    r = plugin(fleet, "jobs", "shop", "list", "--state", "failed")
    assert (
        r.returncode == 0
        and f"{failing:>8}  failed" in r.stdout
        and "failed on purpose" in r.stdout
    )
    r = plugin(fleet, "jobs", "shop", "retry", str(failing))
    assert r.returncode == 0 and f"retried 1 job(s): {failing}" in r.stdout
    # It ran again and failed again (its one attempt back, used).
    again = "select attempts, state from {s}.job_list where id = %s"
    wait_until(lambda: fleet.q(again, [failing]) == [(1, "failed")], 60, "the retry ran")
    r = plugin(fleet, "jobs", "shop", "show", "424242")
    assert r.returncode == 2 and "no job 424242" in r.stderr
