"""Reading pods and Jobs as the API serves them (JSON) into the planner's data."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from workerfleet_operator.builders import LABEL_REVISION
from workerfleet_operator.observe import job_info, pod_info, pod_problem


def test_pod_with_a_restarted_worker_container() -> None:
    pod = {
        "metadata": {
            "name": "shop-abc",
            "labels": {LABEL_REVISION: "r1"},
            "annotations": {"workerfleet.dev/version": "2"},
            "creationTimestamp": "2026-11-29T10:00:00Z",
        },
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [
                {
                    "name": "worker",
                    "restartCount": 2,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {
                        "terminated": {"exitCode": 57, "finishedAt": "2026-11-29T10:01:00Z"}
                    },
                }
            ],
        },
    }
    info = pod_info(pod)
    assert (info.name, info.revision, info.version, info.ready) == ("shop-abc", "r1", "2", False)
    assert info.restarts == 2 and info.last_exit_code == 57
    assert info.last_finished_at == datetime(2026, 11, 29, 10, 1, tzinfo=UTC)
    assert info.waiting_reason == "CrashLoopBackOff" and not info.terminating
    # Every process of it ended by the last finish (node clock).
    assert info.ended_before == datetime(2026, 11, 29, 10, 1, tzinfo=UTC)


def test_the_running_container_bounds_which_processes_ended() -> None:
    running = {"running": {"startedAt": "2026-11-29T10:02:00Z"}}
    last = {"terminated": {"exitCode": 137, "finishedAt": "2026-11-29T10:01:59Z"}}
    pod = {
        "metadata": {"name": "p", "creationTimestamp": "2026-11-29T10:00:00Z"},
        "status": {
            "containerStatuses": [
                {"name": "worker", "restartCount": 1, "state": running, "lastState": last}
            ]
        },
    }
    info = pod_info(pod)
    assert info.running and info.ended_before == datetime(2026, 11, 29, 10, 2, tzinfo=UTC)
    # Never started (no state yet): nothing is known to have ended.
    pod["status"] = {"containerStatuses": [{"name": "worker", "state": {"waiting": {}}}]}
    assert pod_info(pod).ended_before is None


def test_pending_pod_without_status() -> None:
    info = pod_info({"metadata": {"name": "p", "deletionTimestamp": "2026-11-29T10:00:00Z"}})
    assert info.phase == "Pending" and info.terminating and info.last_exit_code is None


def test_jobs_running_done_failed() -> None:
    meta = {
        "name": "j",
        "labels": {LABEL_REVISION: "r"},
        "annotations": {"workerfleet.dev/migration-target": "app/0002"},
    }
    running = job_info({"metadata": meta, "status": {"active": 1}})
    assert running.active and not running.succeeded and running.target == "app/0002"
    done = job_info(
        {"metadata": meta, "status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    )
    assert done.succeeded and not done.active
    failed = job_info(
        {
            "metadata": meta,
            "status": {
                "conditions": [
                    {
                        "type": "Failed",
                        "status": "True",
                        "reason": "BackoffLimitExceeded",
                        "message": "Job has reached the specified backoff limit",
                    }
                ]
            },
        }
    )
    assert failed.failed and "BackoffLimitExceeded" in failed.message


def test_why_a_migration_pod_cannot_start() -> None:
    def job_pod(status: dict[str, Any]) -> dict[str, Any]:
        return {"metadata": {"name": "m", "labels": {"job-name": "shop-migrate"}}, "status": status}

    pulling = {"containerStatuses": [{"name": "migrate", "state": {"waiting": {
        "reason": "ImagePullBackOff", "message": "Back-off pulling image"}}}]}  # fmt: skip
    assert pod_problem(job_pod(pulling)) == "ImagePullBackOff: Back-off pulling image"
    unschedulable = {"conditions": [{"type": "PodScheduled", "status": "False",
                     "reason": "Unschedulable", "message": "0/3 nodes: taint"}]}  # fmt: skip
    assert pod_problem(job_pod(unschedulable)) == "Unschedulable: 0/3 nodes: taint"
    starting = {"containerStatuses": [{"name": "migrate", "state": {"waiting": {
        "reason": "ContainerCreating"}}}]}  # fmt: skip
    assert pod_problem(job_pod(starting)) is None
