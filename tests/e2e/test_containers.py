"""What a container on a real node asks of the product, checked on every backend: the
process agent runs containers as plain processes and hides these, the real node does not.

- A process that is PID 1 of its container and installs no SIGTERM handler ignores SIGTERM
  (the kernel drops signals PID 1 has not asked for), so deleting its pod waits out the
  whole grace period and then SIGKILLs it mid-transaction.
- Worker pods locked down as the restricted Pod Security Standard and a read-only root
  filesystem allow must still run and roll out.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from localcluster.kube import ApiError
from tests.e2e.operator_env import IMAGE, FleetEnv, OperatorProcess, wait_until

pytestmark = pytest.mark.e2e

GRACE_S = 30


def _migrate_pod(fleet: FleetEnv, release: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "migrate-by-hand"},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": GRACE_S,
            "securityContext": {"runAsNonRoot": True},
            "containers": [
                {
                    "name": "migrate",
                    "image": f"{IMAGE}:{release}",
                    "command": ["fleet-worker"],
                    "args": ["migrate", "--app", "fleet_e2e_app", "--sweep-threshold", "5s"],
                    "env": [
                        {"name": "DATABASE_URL",
                         "valueFrom": {"secretKeyRef": {"name": "db", "key": "url"}}},
                        {"name": "FLEET_SCHEMA", "value": fleet.schema},
                    ],
                }
            ],
        },
    }  # fmt: skip


def test_a_waiting_migrate_stops_at_sigterm_not_at_the_end_of_its_grace_period(
    fleet: FleetEnv, operator: OperatorProcess
) -> None:
    """`fleet-worker migrate` waiting for a live outdated pool (release 1 runs, release 3
    brings a breaking migration) is deleted: it must stop within seconds, apply nothing,
    and say why it stopped."""
    fleet.apply("1", replicas=1)
    fleet.wait_ready("1")
    pods = f"/api/v1/namespaces/{fleet.ns}/pods"
    fleet.client.create(pods, _migrate_pod(fleet, "3"))

    def running() -> bool:
        status = fleet.client.get(f"{pods}/migrate-by-hand").get("status") or {}
        return status.get("phase") == "Running"

    wait_until(running, 90, "the migrate pod running")
    # It applied the safe app/0002 and now waits on app/0003 for the live release-1 pool.
    wait_until(
        lambda: fleet.q("select 1 from {s}.migrations where id = 'app/0002'"),
        60,
        "app/0002 applied by the migrate pod",
    )
    started = time.monotonic()
    fleet.client.delete(f"{pods}/migrate-by-hand")

    def gone() -> bool:
        try:
            fleet.client.get(f"{pods}/migrate-by-hand")
        except ApiError as exc:
            return exc.status == 404
        return False

    wait_until(gone, GRACE_S + 30, "the migrate pod gone")
    took = time.monotonic() - started
    print(f"\nmigrate pod deleted in {took:.1f}s (grace period {GRACE_S}s)")
    assert took < GRACE_S / 2, f"SIGTERM was ignored: the pod took {took:.1f}s to stop"
    assert not fleet.q("select 1 from {s}.migrations where id = 'app/0003'")


def test_a_fleet_with_a_read_only_root_and_no_privileges_rolls_out(
    fleet: FleetEnv, operator: OperatorProcess
) -> None:
    locked = {
        "template": {
            "securityContext": {"runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001},
            "containerSecurityContext": {"readOnlyRootFilesystem": True},
        }
    }
    fleet.apply("1", replicas=2, **locked)
    fleet.wait_ready("1", timeout=120)
    fleet.patch_spec(version="3")
    fleet.wait_ready("3", timeout=150)
    for pod in fleet.pods():
        container = pod["spec"]["containers"][0]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
    applied = {r[0] for r in fleet.q("select id from {s}.migrations")}
    assert {"app/0002", "app/0003"} <= applied
