"""The operator end to end: a real kube-apiserver and controller-manager, the node agent
running worker pods as `fleet-worker` processes, a real PostgreSQL, and the operator as a
`kopf run` process. Nothing is mocked."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from localcluster.kube import ApiError
from tests.e2e.kind_backend import ClusterLike
from tests.e2e.operator_env import (
    FleetEnv,
    OperatorProcess,
    register_operator_image,
    wait_until,
)
from tests.helpers import Tally, stream_jobs
from tests.integration.test_leases import make_spans
from workerfleet_dev.deploy import apply_deploy, operator_ready
from workerfleet_dev.gotools import HELM, ensure
from workerfleet_dev.harness import longest_gap_s
from workerfleet_operator.metrics import PHASES

pytestmark = pytest.mark.e2e


def ledger(env: FleetEnv) -> list[tuple[int, str, datetime]]:
    return [
        (int(r[0]), str(r[1]), r[2])
        for r in env.q("select job_id, version, started_at from {s}.ledger order by id")
    ]


def assert_exactly_once(env: FleetEnv, enqueued: list[int]) -> None:
    wait_until(lambda: env.q("select count(*) from {s}.jobs") == [(0,)], 60, "queue drained")
    tally = Tally.of(enqueued, (j for j, _, _ in ledger(env)))
    detail = env.q(
        "select l.job_id, l.version, l.pool_id::text, l.started_at, p.state, p.reason "
        "from {s}.ledger l join {s}.pools p using (pool_id) where l.job_id = any(%s) "
        "order by l.id",
        [list(tally.twice)],
    )
    assert tally.exactly_once, f"{tally.describe()}; the runs of those twice: {detail}"


def test_apply_brings_pods_ready_and_pools_active(fleet: FleetEnv) -> None:
    fleet.apply("1", replicas=2)
    fleet.wait_ready("1")
    status = fleet.get()["status"]
    assert status["readyReplicas"] == 2 and status["activePools"] == 2
    assert status["phase"] == "Ready"
    assert status["schema"]["pending"] == [] and "app/0001" in status["schema"]["applied"]
    pods = fleet.pods()
    assert len(pods) == 2
    pools = fleet.q("select pod_name, state, version from {s}.pools where state = 'active'")
    assert sorted(p[0] for p in pools) == sorted(p["metadata"]["name"] for p in pods)
    assert {p[2] for p in pools} == {"1"}


REPLICAS = 4


def bump_under_stream(fleet: FleetEnv, start: str, target: str) -> float:
    """Run `start`, bump to `target` under a steady job stream; every job must run exactly
    once. Returns the rollout's duration in seconds."""
    fleet.apply(start, replicas=REPLICAS)
    fleet.wait_ready(start)
    producer = stream_jobs(fleet.url, fleet.schema, every_s=0.02)
    try:
        wait_until(lambda: len(ledger(fleet)) > 20, 30, "jobs flowing")
        started = time.monotonic()
        fleet.patch_spec(version=target)
        fleet.wait_ready(target, timeout=120)
        rollout_s = time.monotonic() - started
        time.sleep(1)
    finally:
        enqueued = producer.stop()
    assert_exactly_once(fleet, enqueued)
    return rollout_s


def test_safe_bump_migrates_first_then_replaces_pods_one_at_a_time(
    fleet: FleetEnv, operator: OperatorProcess
) -> None:
    rollout_s = bump_under_stream(fleet, "1", "2")
    m = operator.metrics()
    count = m["workerfleet_reconcile_seconds_count"]
    assert count > 0 and m['workerfleet_actions_total{action="RunMigration"}'] >= 1
    mean = m["workerfleet_reconcile_seconds_sum"] / count
    fast = m['workerfleet_reconcile_seconds_bucket{le="0.1"}'] / count
    # Every reconcile that acted is split into its phases, which add up to no more than it.
    phases = {k: m[f'workerfleet_reconcile_phase_seconds_count{{phase="{k}"}}'] for k in PHASES}
    assert len(set(phases.values())) == 1 and 0 < phases["act"] <= count, phases
    spent = sum(m[f'workerfleet_reconcile_phase_seconds_sum{{phase="{k}"}}'] for k in PHASES)
    assert spent <= m["workerfleet_reconcile_seconds_sum"]
    print(f"\noperator reconcile latency: mean {mean * 1000:.0f} ms over {count:.0f} "
          f"reconciles, {fast:.0%} within 100 ms")  # fmt: skip
    [(migrated_at,)] = fleet.q("select applied_at from {s}.migrations where id = 'app/0002'")
    old = fleet.q(
        "select stopped_at from {s}.pools where version = '1' and state = 'stopped' "
        "order by stopped_at"
    )
    assert len(old) == REPLICAS, old
    assert all(s > migrated_at for (s,) in old), "migration before old pods go"
    # One server at a time: never more than replicas + maxSurge pools alive at once.
    spans = fleet.q("select started_at, coalesce(stopped_at, now()) from {s}.pools")
    for start, _ in spans:
        alive = sum(1 for a, b in spans if a <= start < b)
        assert alive <= REPLICAS + 1
    targets = [
        j["metadata"]["annotations"]["workerfleet.dev/migration-target"] for j in fleet.jobs()
    ]
    assert targets.count("app/0002") == 1, targets
    gap = longest_gap_s(t for _, _, t in ledger(fleet))
    print(f"\nsafe rollout of {REPLICAS} replicas: {rollout_s:.1f}s, longest gap {gap:.2f}s")
    assert gap < 5, "processing must not stop during a safe rollout"


def test_breaking_bump_migrates_only_after_the_last_old_pool_stopped(fleet: FleetEnv) -> None:
    rollout_s = bump_under_stream(fleet, "2", "3")
    [(migrated_at,)] = fleet.q("select applied_at from {s}.migrations where id = 'app/0003'")
    [(last_old_stop,)] = fleet.q("select max(stopped_at) from {s}.pools where version = '2'")
    assert last_old_stop < migrated_at
    # No job ran on a schema its worker does not know.
    assert all(t < migrated_at for _, v, t in ledger(fleet) if v == "2.0.0")
    assert all(t > migrated_at for _, v, t in ledger(fleet) if v == "3.0.0")
    reasons = [e["reason"] for e in fleet.events()]
    assert "MigrationStarted" in reasons
    print(
        f"\nbreaking rollout of {REPLICAS} replicas: {rollout_s:.1f}s, longest completion gap "
        f"{longest_gap_s(t for _, _, t in ledger(fleet)):.2f}s"
    )


def test_an_outside_pool_is_evicted_after_the_wait(fleet: FleetEnv, tmp_path: Path) -> None:
    from tests.helpers import WorkerProcess

    fleet.apply("2", replicas=1, maxMigrationWaitTime="4s")
    fleet.wait_ready("2")
    laptop = WorkerProcess(
        fleet.url,
        fleet.schema,
        "fleet_test_apps.v2",
        tmp_path,
        "--heartbeat-interval",
        "0.5s",
        "--sweep-threshold",
        "8s",  # a stall of this busy machine must not make it dead before it is evicted
        "--migrations",
        "external",
        "--graceful-shutdown-timeout",
        "60s",
    )
    try:
        wait_until(
            lambda: fleet.q("select 1 from {s}.pools where pod_name is null and state = 'active'"),
            30,
            "outside pool active",
        )
        held = int(fleet.q("select ({s}.add_job('work', '{{\"sleep\": 120}}')).id")[0][0])
        wait_until(
            lambda: fleet.q(
                "select 1 from {s}.jobs where id = %s and locked_by is not null", [held]
            ),
            30,
            "job held",
        )
        fleet.q("update {s}.jobs set payload = '{{}}' where id = %s returning 1", [held])
        fleet.patch_spec(version="3")
        fleet.wait_ready("3", timeout=120)
        assert laptop.wait(30) == 57  # evicted: out of date, do not restart
    finally:
        laptop.stop()
    [(state, reason)] = fleet.q("select state, reason from {s}.pools where pod_name is null")
    assert state == "evicted" and "maxMigrationWaitTime" in str(reason)
    assert "PoolsEvicted" in fleet.reasons_once_posted("PoolsEvicted")
    wait_until(lambda: fleet.q("select count(*) from {s}.jobs") == [(0,)], 30, "held job rerun")


def test_broken_version_hits_the_deadline_and_rollback_works(fleet: FleetEnv) -> None:
    fleet.apply("1", replicas=2, rollout={"progressDeadlineSeconds": 10})
    fleet.wait_ready("1")
    fleet.patch_spec(version="crash")

    def deadline_exceeded() -> bool:
        c = fleet.condition("Progressing")
        return bool(c and c["reason"] == "ProgressDeadlineExceeded")

    wait_until(deadline_exceeded, 60, "ProgressDeadlineExceeded")
    assert (
        len(
            [
                p
                for p in fleet.pods()
                if p["metadata"]["annotations"]["workerfleet.dev/version"] == "1"
            ]
        )
        == 2
    ), "old pods untouched"
    fleet.patch_spec(version="1")
    fleet.wait_ready("1")
    assert all(p["metadata"]["annotations"]["workerfleet.dev/version"] == "1" for p in fleet.pods())


def test_rollback_across_a_breaking_migration_is_refused(fleet: FleetEnv) -> None:
    fleet.apply("2", replicas=1)
    fleet.wait_ready("2")
    fleet.patch_spec(version="3")
    fleet.wait_ready("3")
    fleet.patch_spec(version="2")

    def refused() -> bool:
        c = fleet.condition("Progressing")
        return bool(c and c["reason"] == "RollbackRefused")

    wait_until(refused, 60, "RollbackRefused")
    assert "app/0003" in fleet.get()["status"]["message"]
    assert "RollbackRefused" in fleet.reasons_once_posted("RollbackRefused")
    assert all(
        p["metadata"]["annotations"]["workerfleet.dev/version"] == "3"
        for p in fleet.pods()
        if not p["metadata"].get("deletionTimestamp")
    )


def test_operator_killed_mid_rollout_completes_with_one_migration(
    fleet: FleetEnv, operator: OperatorProcess
) -> None:
    fleet.apply("1", replicas=3)
    fleet.wait_ready("1")
    fleet.patch_spec(version="3")
    wait_until(
        lambda: fleet.jobs() or fleet.q("select 1 from {s}.pools where version = '3'"),
        60,
        "rollout under way",
    )
    operator.stop(signal.SIGKILL)
    time.sleep(2)
    operator.start()
    fleet.wait_ready("3", timeout=150)
    applied = [r[0] for r in fleet.q("select id from {s}.migrations order by seq")]
    assert applied.count("app/0003") == 1 and applied.count("app/0002") == 1
    targets = sorted(
        j["metadata"]["annotations"]["workerfleet.dev/migration-target"] for j in fleet.jobs()
    )
    assert len(targets) == len(set(targets)), "a migration Job ran twice"


def test_invalid_specs_are_rejected_with_a_readable_message(fleet: FleetEnv) -> None:
    with pytest.raises(ApiError) as bad:
        fleet.apply("1", replicas=-1)
    assert bad.value.status == 422 and "spec.replicas" in bad.value.body
    with pytest.raises(ApiError) as bad:
        fleet.apply("1", heartbeatInterval="40s", sweepThreshold="1m")
    assert "sweepThreshold must be at least twice heartbeatInterval" in bad.value.body
    with pytest.raises(ApiError) as bad:
        fleet.apply("not a version!")
    assert "spec.version" in bad.value.body
    with pytest.raises(ApiError) as bad:
        fleet.apply("1", template={"containerSecurityContext": {"privileged": True}})
    assert "privileged worker containers are refused" in bad.value.body
    # Explicit nulls are as good as absent (the rule must not fail on them).
    fleet.apply("1", replicas=0, template={"containerSecurityContext": {"privileged": None}})
    fleet.delete(timeout=60)
    fleet.apply("1", replicas=0, template={"containerSecurityContext": None})
    fleet.delete(timeout=60)
    with pytest.raises(ApiError) as bad:
        fleet.apply("1", maxMigrationWaitTime="2h", migrationJob={"activeDeadlineSeconds": 600})
    assert "activeDeadlineSeconds must exceed maxMigrationWaitTime" in bad.value.body


def test_what_the_worker_would_refuse_the_api_server_refuses(fleet: FleetEnv) -> None:
    with pytest.raises(ApiError) as bad:
        fleet.apply("1", heartbeatInterval="0s", sweepThreshold="1m")
    assert "heartbeatInterval and sweepInterval must be positive" in bad.value.body
    # The fleet's name labels its pods: a name no label value can hold is refused up front
    # (accepted, it made every reconcile fail and the fleet undeletable).
    fleet.name = "x" * 64
    with pytest.raises(ApiError) as bad:
        fleet.apply("1")
    assert bad.value.status == 422
    assert "metadata.name must be at most 63 characters" in bad.value.body
    fleet.name = "y" * 63
    fleet.apply("1", replicas=1)
    fleet.wait_ready("1")
    assert fleet.delete(timeout=60), "a 63-character fleet must be deletable"


def test_a_pod_the_api_server_refuses_is_a_condition_in_its_words(fleet: FleetEnv) -> None:
    """What only the pod's own validation catches (the CRD keeps env items and resources as
    written) must end in a condition in the API server's words, without flooding Events."""
    fleet.apply("1", replicas=1, template={"env": [{"value": "no name"}]})

    def refused() -> dict[str, Any] | None:
        found = fleet.condition("Progressing")
        return found if found and found["reason"] == "ActionRefused" else None

    found = wait_until(refused, 60, "ActionRefused")
    assert "env" in found["message"] and "name" in found["message"], found
    assert fleet.condition("Ready")["reason"] == "ActionRefused"  # type: ignore[index]
    time.sleep(6)  # three more reconciles, each refused again
    posted = Counter(e["reason"] for e in fleet.events())
    assert posted["ActionFailed"] == 1, posted
    # A malformed quantity the same way, and numbers are quantities too.
    fleet.patch_spec(template={"env": [{"name": "GREETING", "value": "hi"}],
                               "resources": {"limits": {"cpu": "lots"}}})  # fmt: skip

    def quantity_refused() -> dict[str, Any] | None:
        found = refused()
        return found if found and "quantities must match" in found["message"] else None

    wait_until(quantity_refused, 60, "the malformed quantity refused")
    # Fixed, the fleet rolls out.
    fleet.patch_spec(template={"env": [{"name": "GREETING", "value": "hi"}],
                               "resources": {"limits": {"cpu": 1}}})  # fmt: skip
    fleet.wait_ready("1")


def test_scaled_to_zero_with_a_backlog_says_so(fleet: FleetEnv) -> None:
    fleet.apply("1", replicas=1)
    fleet.wait_ready("1")
    assert fleet.get()["status"]["schemaVersion"] == "app/0001"  # the kubectl get column
    fleet.patch_spec(replicas=0)
    wait_until(lambda: fleet.pods() == [], 60, "scaled to zero")
    for _ in range(5):
        fleet.q("select ({s}.add_job('work')).id")

    def backlog() -> dict[str, Any] | None:
        status = fleet.get().get("status") or {}
        return status if status.get("queueRunnable") == 5 else None

    status = wait_until(backlog, 30, "the backlog in the status")
    assert status["phase"] == "Ready" and "5 runnable job(s) waiting" in status["message"]
    assert status["queueOldestAgeSeconds"] >= 0
    assert fleet.condition("Ready")["status"] == "True"  # type: ignore[index]


def test_a_crash_looping_version_says_why(fleet: FleetEnv) -> None:
    fleet.apply("1", replicas=1)
    fleet.wait_ready("1")
    fleet.patch_spec(version="crash")

    def says_why() -> str | None:
        message = str((fleet.get().get("status") or {}).get("message", ""))
        return message if "crash-looping" in message else None

    message = wait_until(says_why, 60, "the crash loop in the status")
    assert "this release is broken" in message, message
    assert fleet.reasons_once_posted("PodsCrashLooping").count("PodsCrashLooping") == 1


def test_a_failed_protocol_install_is_reported_once(fleet: FleetEnv) -> None:
    """`app` names a module without an App: the core install Job fails. That is
    MigrationFailed with the Job's reason and what its pod said, and the Job is not
    re-created on every reconcile."""
    fleet.apply("1", replicas=1, app="fleet_test_apps.common")

    def failed() -> dict[str, Any] | None:
        found = fleet.condition("MigrationsApplied")
        return found if found and found["reason"] == "MigrationFailed" else None

    found = wait_until(failed, 90, "MigrationFailed")
    assert "has no fleet_worker.App" in found["message"], found["message"]
    time.sleep(5)  # reconciles every 2 s: a storm would show here
    events = fleet.events()
    posted = Counter(e["reason"] for e in events)
    counted: Counter[str] = Counter()
    for e in events:
        counted[e["reason"]] += int(e.get("count") or 1)
    # The Job was created once; the failure is one Event object (its count may grow).
    assert counted["RunMigration"] == 1 and counted["MigrationStarted"] == 1
    assert posted["MigrationFailed"] == 1


def test_a_migration_job_that_cannot_pull_its_image_is_a_condition(fleet: FleetEnv) -> None:
    """A fresh database gets the protocol from a Job of the target image: when that image
    cannot be pulled, the status says so, instead of waiting for the progress deadline."""
    fleet.apply("1", image="registry.invalid/no-such-image")

    def blocked() -> dict[str, Any] | None:
        found = fleet.condition("MigrationsApplied")
        return found if found and found["reason"] == "MigrationJobBlocked" else None

    found = wait_until(blocked, 60, "MigrationJobBlocked")
    assert "ErrImagePull" in found["message"]
    assert fleet.condition("Progressing")["reason"] == "MigrationJobBlocked"  # type: ignore[index]
    reasons = fleet.reasons_once_posted("MigrationJobBlocked")
    assert reasons.count("MigrationJobBlocked") == 1 and "ActionFailed" not in reasons


def test_a_missing_secret_is_a_condition_that_names_it(fleet: FleetEnv) -> None:
    fleet.apply("1", database={"secretRef": {"name": "nope"}})

    def named() -> bool:
        status = fleet.get().get("status") or {}
        return "Secret" in status.get("message", "") and "nope" in status.get("message", "")

    wait_until(named, 30, "condition naming the Secret")
    assert fleet.condition("Ready")["status"] == "False"  # type: ignore[index]
    assert fleet.pods() == []


def roll_out_under_the_operator_pod(fleet: FleetEnv) -> None:
    """Once the operator's pod is Ready: a fleet from nothing to 1, then to 2, with no action
    refused (its RBAC is enough)."""
    wait_until(lambda: operator_ready(fleet.client), 60, "operator pod ready")
    fleet.apply("1", replicas=2)
    fleet.wait_ready("1", timeout=120)
    fleet.patch_spec(version="2")
    fleet.wait_ready("2", timeout=120)
    assert "ActionFailed" not in [e["reason"] for e in fleet.events()]


def wait_operator_pod_gone(fleet: FleetEnv) -> None:
    wait_until(
        lambda: not fleet.client.get("/api/v1/namespaces/workerfleet-system/pods")["items"],
        60,
        "operator pod gone",
    )


@pytest.mark.parametrize("install", ["deploy", "deploy/namespaced"])
def test_the_operator_from_deploy_runs_under_its_service_account(
    fleet: FleetEnv, operator: OperatorProcess, local_cluster: ClusterLike, install: str
) -> None:
    """Deployed from deploy/ (namespace, ServiceAccount, least-privilege RBAC, Deployment),
    cluster-wide or confined to the fleet's namespace, the operator runs as a pod with its
    own token and completes a rollout: the RBAC is enough. The admin-run operator is
    stopped meanwhile so only the pod acts."""
    register_operator_image(local_cluster)
    operator.stop()
    deployment = "/apis/apps/v1/namespaces/workerfleet-system/deployments/workerfleet-operator"
    try:
        apply_deploy(fleet.client, install, watched=fleet.ns if "namespaced" in install else None)

        roll_out_under_the_operator_pod(fleet)
    finally:
        with contextlib.suppress(ApiError):
            fleet.client.delete(deployment)
        stopping = time.monotonic()
        wait_operator_pod_gone(fleet)
        stopped_s = time.monotonic() - stopping
        operator.start()
    print(f"\noperator pod stopped {stopped_s:.1f}s after its Deployment was deleted")
    # kopf is PID 1 in its container: it must act on SIGTERM, not wait for the SIGKILL at
    # the end of the 30 s grace period.
    assert stopped_s < 20


def test_the_operator_installed_by_the_helm_chart_rolls_out_a_fleet(
    fleet: FleetEnv, operator: OperatorProcess, local_cluster: ClusterLike
) -> None:
    """`helm install` of deploy/helm/workerfleet-operator (the real helm), confined to the
    fleet's namespace: the operator runs as a pod under the chart's RBAC and rolls a fleet
    from 1 to 2; `helm uninstall` removes it."""
    register_operator_image(local_cluster)
    operator.stop()
    helm = [str(ensure(HELM)), "--kubeconfig", str(local_cluster.kubeconfig),
            "--namespace", "workerfleet-system"]  # fmt: skip
    chart = str(Path(__file__).resolve().parents[2] / "deploy" / "helm" / "workerfleet-operator")
    try:
        # --take-ownership: the kustomize install of the tests above left its RBAC objects
        # in this cluster, as a user switching from `kubectl apply -k` to Helm would have.
        subprocess.run(
            [*helm, "install", "wfo", chart, "--create-namespace", "--take-ownership",
             "--set", "rbac.scope=namespaced", "--set", f"rbac.watchNamespaces={{{fleet.ns}}}"],
            check=True, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        roll_out_under_the_operator_pod(fleet)
    finally:
        subprocess.run([*helm, "uninstall", "wfo", "--wait", "--timeout", "60s"],
                       check=False, capture_output=True, timeout=120)  # fmt: skip
        wait_operator_pod_gone(fleet)
        operator.start()


def test_deleting_a_fleet_drains_its_pods_and_loses_nothing(fleet: FleetEnv) -> None:
    fleet.apply("1", replicas=2)
    fleet.wait_ready("1")
    ids = [
        int(fleet.q("select ({s}.add_job('work', '{{\"sleep\": 2}}')).id")[0][0]) for _ in range(4)
    ]
    wait_until(lambda: len(ledger(fleet)) == 4, 30, "jobs running")
    assert fleet.delete(timeout=60), "the fleet was not deleted"
    assert fleet.pods() == []
    # Every pool stopped gracefully: its jobs finished, none left locked, none run twice.
    pools = fleet.q("select state from {s}.pools where fleet = %s", [f"{fleet.ns}/shop"])
    states = {r[0] for r in pools}
    assert states == {"stopped"}, states
    assert fleet.q("select count(*) from {s}.jobs") == [(0,)]
    assert sorted(j for j, _, _ in ledger(fleet)) == sorted(ids)


def _kill_workers_of(schema: str) -> int:
    """SIGKILL the fleet's worker processes (on this machine: the kubelet's containers are
    its processes), as the OOM killer would."""
    killed = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes().split(b"\0")
            if b"run" in cmdline.split(b"\0") and f"FLEET_SCHEMA={schema}".encode() in environ:
                os.kill(int(proc.name), signal.SIGKILL)
                killed += 1
    return killed


def test_the_operator_releases_a_killed_pods_jobs_and_fails_its_charge(
    fleet: FleetEnv,
) -> None:
    """The sweep threshold is 10 minutes, so only the operator's release (the kubelet says the
    container ended) can free the jobs in time: the charge-like job fails for good, the other
    runs again, once."""
    fleet.apply("1", replicas=1, sweepThreshold="10m")
    fleet.wait_ready("1")
    with psycopg.connect(fleet.url, autocommit=True) as conn:
        make_spans(conn, fleet.schema)
    add = "select (j).id from (select {s}.add_job(%s, '{{\"s\": 300}}'::jsonb) as j) x"
    [(charge,)] = fleet.q(add, ["charge"])
    [(other,)] = fleet.q(add, ["span_cooperative"])
    wait_until(lambda: fleet.q("select count(*) from {s}.spans") == [(2,)], 60, "both started")
    fleet.q("update {s}.jobs set payload = '{{\"s\": 0}}' returning 1")
    assert _kill_workers_of(fleet.schema) >= 1
    wait_until(lambda: fleet.q("select count(*) from {s}.jobs") == [(1,)], 90, "the rerun done")
    [(attempts, max_attempts, error)] = fleet.q(
        "select attempts, max_attempts, last_error from {s}.jobs where id = %s", [charge]
    )
    assert attempts == max_attempts and "its container terminated" in str(error)
    assert 'on_orphan="fail"' in str(error)
    runs = [r[0] for r in fleet.q("select job_id from {s}.spans order by id")]
    assert sorted(runs) == sorted([charge, other, other])
