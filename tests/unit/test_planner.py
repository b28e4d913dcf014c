"""The planner: scenarios of a rollout step by step, and invariants over random situations."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, get_args

import pydantic
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet_worker.protocol import CORE_PROTOCOL
from workerfleet_operator.models import WorkerFleetSpec, WorkerFleetStatus
from workerfleet_operator.observation import (
    JobInfo,
    MigrationInfo,
    Observation,
    PodInfo,
    PoolInfo,
    QueueInfo,
)
from workerfleet_operator.planner import (
    Action,
    CreatePod,
    DeleteJob,
    DeletePod,
    EvictOutdated,
    NoAction,
    Plan,
    ReleasePools,
    RunMigration,
    action_label,
    action_refused,
    migration_job_name,
    plan,
)
from workerfleet_operator.reconcile import invalid_spec_status

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
OLD, NEW = "rev-old", "rev-new"
CORE = MigrationInfo(CORE_PROTOCOL, False)  # the core migrations a pool needs to register
SAFE = MigrationInfo("app/0002", False)
BREAKING = MigrationInfo("app/0003", True)
V1 = (CORE,)
V2 = (CORE, SAFE)
V3 = (CORE, SAFE, BREAKING)


def spec(**overrides: Any) -> WorkerFleetSpec:
    data: dict[str, Any] = {
        "version": "2",
        "image": "shop",
        "replicas": 3,
        "database": {"secretRef": {"name": "db"}},
        "app": "shop.tasks",
        "maxMigrationWaitTime": "10m",
    }
    rollout = overrides.pop("rollout", {})
    data.update(overrides)
    data["rollout"] = rollout
    return WorkerFleetSpec.model_validate(data)


def pod(
    name: str,
    rev: str,
    *,
    ready: bool = True,
    version: str | None = None,
    age_s: int = 100,
    **kw: Any,
) -> PodInfo:
    return PodInfo(
        name=name, revision=rev, version=version or ("2" if rev == NEW else "1"),
        created_at=NOW - timedelta(seconds=age_s), phase="Running", ready=ready,
        terminating=kw.pop("terminating", False), uid=kw.pop("uid", f"uid-{name}"), **kw,
    )  # fmt: skip


def pool(
    pod_name: str | None,
    catalog: tuple[MigrationInfo, ...],
    *,
    state: str = "active",
    live: bool = True,
    version: str = "1",
    fleet: str = "shop",
    started_s: int = 90,
) -> PoolInfo:
    return PoolInfo(
        pool_id=f"pool-{pod_name or 'ext'}-{version}", fleet=fleet, pod_name=pod_name,
        version=version, state=state, live=live, started_at=NOW - timedelta(seconds=started_s),
        catalog=catalog, pod_uid=f"uid-{pod_name}" if pod_name else None,
    )  # fmt: skip


def run(
    s: WorkerFleetSpec,
    obs: Observation,
    *,
    previous: WorkerFleetStatus | None = None,
    now: datetime = NOW,
    generation: int = 2,
) -> Plan:
    return plan(
        name="shop",
        spec=s,
        generation=generation,
        revision=NEW,
        obs=obs,
        now=now,
        previous=previous or WorkerFleetStatus(),
    )


def old_fleet(
    n: int = 3, catalog: tuple[MigrationInfo, ...] = V1
) -> tuple[list[PodInfo], list[PoolInfo]]:
    pods = [pod(f"old-{i}", OLD, age_s=1000 + i) for i in range(n)]
    return pods, [pool(p.name, catalog) for p in pods]


def cond(p: Plan, type_: str) -> tuple[str, str]:
    c = next(c for c in p.status.conditions if c.type == type_)
    return c.status, c.reason


# -- scenarios ----------------------------------------------------------------------------


def test_a_new_fleet_starts_one_pod_to_learn_its_migrations_then_scales() -> None:
    s = spec(version="1")
    first = run(s, Observation(pods=(), pools=(), applied=()))
    assert isinstance(first.action, CreatePod)
    assert cond(first, "MigrationsApplied") == ("Unknown", "CatalogUnknown")
    p0 = pod("p0", NEW, ready=False, version="1")
    install = run(s, Observation(pods=(p0,), pools=(), applied=()))
    assert isinstance(install.action, RunMigration) and install.action.to == CORE_PROTOCOL
    waiting = run(s, Observation(pods=(p0,), pools=(), applied=(CORE,)))
    assert isinstance(waiting.action, NoAction)
    registered = Observation(
        pods=(p0,), pools=(pool("p0", V2, state="waiting-for-schema", version="1"),),
        applied=(CORE,),
    )  # fmt: skip
    migrate = run(s, registered)
    assert isinstance(migrate.action, RunMigration) and migrate.action.to == "app/0002"
    after = Observation(
        pods=(replace(p0, ready=True),), pools=(pool("p0", V2, version="1"),), applied=V2
    )
    assert isinstance(run(s, after).action, CreatePod)


def test_safe_bump_migrates_before_any_old_pod_goes() -> None:
    pods, pools = old_fleet()
    s = spec()
    surge = run(s, Observation(pods=tuple(pods), pools=tuple(pools), applied=V1))
    assert isinstance(surge.action, CreatePod)
    new = pod("new-0", NEW, ready=False, age_s=5)
    new_pool = pool("new-0", V2, state="waiting-for-schema", version="2", started_s=4)
    obs = Observation(pods=(*pods, new), pools=(*pools, new_pool), applied=V1)
    step = run(s, obs)
    assert isinstance(step.action, RunMigration) and step.action.to == "app/0002"
    assert not step.action.breaking
    assert step.events[0][:2] == ("Normal", "MigrationStarted")
    job = JobInfo("shop-migrate", "app/0002", NEW, active=True, succeeded=False, failed=False)
    assert isinstance(run(s, replace(obs, jobs=(job,))).action, NoAction)
    # Migrated; the new pod turns ready, then old pods go one at a time.
    migrated = replace(
        obs,
        applied=V2,
        pods=(*pods, replace(new, ready=True)),
        pools=(*pools, replace(new_pool, state="active")),
    )
    step = run(s, migrated)
    assert isinstance(step.action, DeletePod) and step.action.name.startswith("old-")
    one_going = replace(
        migrated, pods=(replace(pods[0], terminating=True), *pods[1:], replace(new, ready=True))
    )
    assert isinstance(run(s, one_going).action, NoAction)


def test_a_crash_looping_new_version_never_touches_old_pods() -> None:
    pods, pools = old_fleet()
    broken = pod("new-0", NEW, ready=False, restarts=6, waiting_reason="CrashLoopBackOff")
    obs = Observation(pods=(*pods, broken), pools=tuple(pools), applied=V1)
    s = spec(rollout={"progressDeadlineSeconds": 60})
    started = WorkerFleetStatus(observed_generation=2, rollout_started_at="2026-11-29T11:58:00Z")
    p = run(s, obs, previous=started)
    assert isinstance(p.action, NoAction)
    assert cond(p, "Progressing") == ("False", "ProgressDeadlineExceeded")
    assert cond(p, "Available") == ("True", "MinimumReplicasAvailable")
    # kstatus: Failed, not InProgress (Reconciling is read first, so it must be False).
    assert cond(p, "Stalled") == ("True", "ProgressDeadlineExceeded")
    assert cond(p, "Reconciling") == ("False", "Stalled")
    before_deadline = run(s, obs)
    assert cond(before_deadline, "Reconciling") == ("True", before_deadline.status.phase)
    assert cond(before_deadline, "Stalled")[0] == "False"


def test_breaking_bump_drains_old_pods_before_migrating() -> None:
    pods, pools = old_fleet(catalog=V2)
    new = [pod(f"new-{i}", NEW, ready=False, age_s=10 - i) for i in range(1)]
    new_pools = [pool(p.name, V3, state="waiting-for-schema", version="2") for p in new]
    obs = Observation(pods=(*pods, *new), pools=(*pools, *new_pools), applied=V2)
    step = run(spec(), obs)
    assert isinstance(step.action, DeletePod) and step.action.name.startswith("old-")
    assert cond(step, "MigrationsApplied") == ("False", "WaitingForDrain")
    # Last old pod gone but its pool still live (draining): no migration yet.
    last = Observation(
        pods=tuple(new), pools=(pool("old-0", V2, state="draining"), *new_pools), applied=V2
    )
    assert not isinstance(run(spec(), last).action, RunMigration)
    # All old pools stopped: the breaking migration runs.
    clear = replace(
        last,
        pools=(pool("old-0", V2, state="stopped", live=False), *new_pools),
        pods=tuple(new) + tuple(pod(f"new-x{i}", NEW, ready=False) for i in range(2)),
    )
    step = run(spec(), clear)
    assert isinstance(step.action, RunMigration) and step.action.breaking
    assert step.action.to == "app/0003"


def test_an_outside_pool_blocks_then_is_evicted_after_the_wait() -> None:
    new = [pod(f"new-{i}", NEW, ready=False) for i in range(3)]
    new_pools = [pool(p.name, V3, state="waiting-for-schema", version="2") for p in new]
    laptop = pool(None, V2, version="1", fleet="")
    obs = Observation(pods=tuple(new), pools=(*new_pools, laptop), applied=V2)
    waiting = run(spec(), obs)
    assert isinstance(waiting.action, NoAction)
    assert waiting.status.migration_wait_for == "app/0003"
    assert waiting.status.migration_wait_started_at == "2026-11-29T12:00:00Z"
    later = run(spec(), obs, previous=waiting.status, now=NOW + timedelta(minutes=5))
    assert isinstance(later.action, NoAction) and "forced in 300s" in later.status.message
    expired = run(spec(), obs, previous=waiting.status, now=NOW + timedelta(minutes=10))
    assert isinstance(expired.action, EvictOutdated)
    assert expired.action.pool_ids == (laptop.pool_id,)
    assert expired.events and expired.events[0][1] == "PoolsEvicted"


def test_manual_approval_holds_the_breaking_migration() -> None:
    new = [pod(f"new-{i}", NEW, ready=False) for i in range(3)]
    new_pools = [pool(p.name, V3, state="waiting-for-schema", version="2") for p in new]
    obs = Observation(pods=tuple(new), pools=tuple(new_pools), applied=V2)
    s = spec(rollout={"breakingMigrationApproval": "Manual"})
    held = run(s, obs)
    assert isinstance(held.action, NoAction) and held.status.phase == "AwaitingApproval"
    assert "workerfleet.dev/approve-migration=app/0003" in held.status.message
    assert isinstance(run(s, replace(obs, approved_migration="app/0002")).action, NoAction)
    assert isinstance(run(s, replace(obs, approved_migration="app/0003")).action, RunMigration)


def test_rollback_across_a_breaking_migration_is_refused() -> None:
    current = [pod(f"v2-{i}", OLD, version="2") for i in range(3)]
    pools = [pool(p.name, V3, version="2") for p in current]
    history = pool("gone", V2, state="stopped", live=False, version="1", started_s=5000)
    obs = Observation(pods=tuple(current), pools=(*pools, history), applied=V3)
    p = run(spec(version="1"), obs)
    assert isinstance(p.action, NoAction)
    assert cond(p, "Progressing") == ("False", "RollbackRefused")
    assert "app/0003" in p.status.message and p.events[0][1] == "RollbackRefused"


def test_rollback_without_a_breaking_migration_proceeds() -> None:
    broken = [pod("v2-0", OLD, version="2", ready=False)]
    current = [pod(f"v1-{i}", NEW, version="1") for i in range(3)]
    pools = [pool(p.name, V1, version="1") for p in current]
    obs = Observation(pods=(*current, *broken), pools=tuple(pools), applied=V2)
    p = run(spec(version="1"), obs)
    assert p.action == DeletePod("v2-0", "replaced by the new version")


def test_a_new_pod_exiting_57_fails_the_rollout() -> None:
    pods, pools = old_fleet(catalog=V3)
    stale = pod(
        "new-0", NEW, ready=False, last_exit_code=57, last_finished_at=NOW - timedelta(seconds=1)
    )
    p = run(spec(version="0"), Observation(pods=(*pods, stale), pools=tuple(pools), applied=V3))
    assert p.action == DeletePod("new-0", "its version is out of date")
    assert p.status.phase == "Failed"


def test_a_failed_migration_job_stops_the_rollout() -> None:
    pods, pools = old_fleet()
    new = pod("new-0", NEW, ready=False)
    job = JobInfo(
        "shop-migrate",
        "app/0002",
        NEW,
        active=False,
        succeeded=False,
        failed=True,
        message="BackoffLimitExceeded",
    )
    obs = Observation(
        pods=(*pods, new),
        jobs=(job,),
        applied=V1,
        pools=(*pools, pool("new-0", V2, state="waiting-for-schema", version="2")),
    )
    p = run(spec(), obs)
    assert isinstance(p.action, NoAction) and p.status.phase == "Failed"
    assert cond(p, "MigrationsApplied") == ("False", "MigrationFailed")
    assert "BackoffLimitExceeded" in p.status.message
    assert cond(p, "Stalled") == ("True", "MigrationFailed")
    assert cond(p, "Reconciling")[0] == "False"


def test_a_terminated_container_releases_its_pool_at_once() -> None:
    pods, pools = old_fleet()
    on_host = [replace(p, host_started_at=NOW - timedelta(seconds=90)) for p in pools]
    # The container ended after the pool started (same node clock): no process is left.
    crashed = replace(pods[0], running=False, restarts=1, last_exit_code=137,
                      ended_before=NOW - timedelta(seconds=5))  # fmt: skip
    obs = Observation(pods=(crashed, *pods[1:]), pools=tuple(on_host), applied=V1)
    p = run(spec(version="1"), obs)
    assert p.action == ReleasePools((pools[0].pool_id,), "its container terminated")
    # Restarted and running again since after the pool started: that pool's process ended,
    # the pool the new container registered (started later) is the live one.
    restarted = replace(pods[0], restarts=1, ended_before=NOW - timedelta(seconds=3))
    newer = replace(on_host[0], pool_id="pool-new", started_at=NOW - timedelta(seconds=1),
                    host_started_at=NOW - timedelta(seconds=2))  # fmt: skip
    obs = Observation(pods=(restarted, *pods[1:]), pools=(*on_host, newer), applied=V1)
    assert run(spec(version="1"), obs).action == ReleasePools(
        (pools[0].pool_id,), "its container terminated"
    )
    # Pools that registered no host start: the restart count still proves that every pool
    # but the newest of a restarted pod ended.
    legacy_newer = replace(pools[0], pool_id="pool-new", started_at=NOW - timedelta(seconds=1))
    obs = Observation(pods=(replace(pods[0], restarts=1), *pods[1:]),
                      pools=(*pools, legacy_newer), applied=V1)  # fmt: skip
    assert run(spec(version="1"), obs).action == ReleasePools(
        (pools[0].pool_id,), "its container terminated"
    )
    # Without a pod uid a pool cannot be told from one of an earlier pod of the same name.
    no_uid = [replace(p, pod_uid=None) for p in (*pools, legacy_newer)]
    obs = Observation(pods=(replace(pods[0], restarts=1), *pods[1:]), pools=tuple(no_uid),
                      applied=V1)  # fmt: skip
    assert not isinstance(run(spec(version="1"), obs).action, ReleasePools)
    # Pools of another fleet sharing the schema are never touched.
    foreign = replace(on_host[0], fleet="elsewhere/shop")
    obs = Observation(pods=(crashed, *pods[1:]), pools=(foreign, *on_host[1:]), applied=V1)
    assert not isinstance(run(spec(version="1"), obs).action, ReleasePools)


def test_a_pool_younger_than_its_container_end_is_not_released() -> None:
    """Status lags: the kubelet still shows the last container terminated while the next
    one already started and registered; that pool started after the finish, so it lives."""
    pods, pools = old_fleet()
    lagging = replace(pods[0], running=False, restarts=2, ended_before=NOW - timedelta(seconds=4))
    fresh = replace(pools[0], host_started_at=NOW - timedelta(seconds=2))
    obs = Observation(pods=(lagging, *pods[1:]), pools=(fresh, *pools[1:]), applied=V1)
    assert not isinstance(run(spec(version="1"), obs).action, ReleasePools)


def test_namespaced_fleet_ids_keep_fleets_apart() -> None:
    pods, pools = old_fleet()
    mine = [replace(p, fleet="prod/shop") for p in pools]
    theirs = replace(mine[0], fleet="staging/shop", pool_id="theirs", pod_name="gone")
    obs = Observation(pods=tuple(pods), pools=(*mine, theirs), applied=V1)
    p = plan(name="shop", namespace="prod", spec=spec(version="1"), generation=2,
             revision=OLD, obs=obs, now=NOW, previous=WorkerFleetStatus())  # fmt: skip
    assert not isinstance(p.action, ReleasePools)
    assert p.status.active_pools == 3


def test_a_migration_job_of_an_older_spec_is_stopped() -> None:
    pods, pools = old_fleet()
    stale = JobInfo("shop-migrate-x", "app/0003", "rev-other", active=True, succeeded=False,
                    failed=False)  # fmt: skip
    obs = Observation(pods=tuple(pods), pools=tuple(pools), applied=V1, jobs=(stale,))
    p = run(spec(version="1"), obs)
    assert p.action == DeleteJob("shop-migrate-x", "superseded")


def test_migration_job_names_are_unique_and_valid() -> None:
    long_fleet = "a-very-long-fleet-name-that-goes-on-and-on-x"
    a = migration_job_name(long_fleet, "0123456789abcdef", "app/0003")
    b = migration_job_name(long_fleet, "0123456789abcdef", "app/0004")
    assert a != b and len(a) <= 63 and len(b) <= 63
    assert (
        migration_job_name("shop", "0123456789", "core/0001") == "shop-migrate-01234567-core-0001"
    )


def test_paused_and_missing_secret() -> None:
    pods, pools = old_fleet()
    obs = Observation(pods=tuple(pods), pools=tuple(pools), applied=V1)
    paused = run(spec(paused=True), obs)
    assert isinstance(paused.action, NoAction) and paused.status.phase == "Paused"
    missing = run(spec(), replace(obs, secret_error="Secret default/db not found"))
    assert isinstance(missing.action, NoAction)
    assert "Secret default/db not found" in missing.status.message


def test_ready_fleet_and_transition_times_are_kept() -> None:
    pods = [pod(f"p{i}", NEW) for i in range(3)]
    pools = [pool(p.name, V2, version="2") for p in pods]
    obs = Observation(pods=tuple(pods), pools=tuple(pools), applied=V2)
    first = run(spec(), obs)
    assert isinstance(first.action, NoAction) and first.status.phase == "Ready"
    assert cond(first, "Ready") == ("True", "RolloutComplete")
    assert all(c.observed_generation == 2 for c in first.status.conditions)
    again = run(spec(), obs, previous=first.status, now=NOW + timedelta(minutes=1))
    assert [c.last_transition_time for c in again.status.conditions] == [
        c.last_transition_time for c in first.status.conditions
    ]
    bumped = run(spec(), obs, previous=first.status, generation=3)
    assert all(c.observed_generation == 3 for c in bumped.status.conditions)


def test_scale_down_removes_unready_then_newest() -> None:
    pods = [
        pod("a", NEW, age_s=300),
        pod("b", NEW, age_s=10),
        pod("c", NEW, ready=False, age_s=500),
    ]
    pools = [pool(p.name, V2, version="2") for p in pods]
    obs = Observation(pods=tuple(pods), pools=tuple(pools), applied=V2)
    assert run(spec(replicas=2), obs).action == DeletePod("c", "scale down")
    obs = replace(obs, pods=tuple(replace(p, ready=True) for p in pods))
    assert run(spec(replicas=2), obs).action == DeletePod("b", "scale down")


# -- invariants ---------------------------------------------------------------------------

catalogs = st.sampled_from([V1, V2, V3])


@st.composite
def situations(draw: st.DrawFn) -> tuple[WorkerFleetSpec, Observation, WorkerFleetStatus, datetime]:
    replicas = draw(st.integers(0, 5))
    surge = draw(st.integers(0, 2))
    unavailable = draw(st.integers(0 if surge else 1, 2))
    s = spec(
        replicas=replicas,
        rollout={
            "maxSurge": surge,
            "maxUnavailable": unavailable,
            "breakingMigrationApproval": draw(st.sampled_from(["Automatic", "Manual"])),
        },
    )
    applied = draw(st.sampled_from([V1, V2, V3]))
    pods, pools = [], []
    for i in range(draw(st.integers(0, replicas + surge))):
        rev = draw(st.sampled_from([OLD, NEW]))
        p = pod(
            f"p{i}",
            rev,
            ready=draw(st.booleans()),
            terminating=draw(st.booleans()),
            age_s=draw(st.integers(1, 1000)),
        )
        pods.append(p)
        if draw(st.booleans()):
            known = draw(catalogs) if rev == OLD else V3
            if (
                rev == OLD
                and len(known) < len(applied)
                and any(m.breaking for m in applied[len(known) :])
            ):
                known = applied  # an old pool still live cannot lack an applied breaking one
            pools.append(
                pool(
                    p.name,
                    known,
                    version=p.version,
                    state=draw(
                        st.sampled_from(["active", "waiting-for-schema", "draining", "stopped"])
                    ),
                    live=draw(st.booleans()),
                    started_s=10_000,
                )
            )
    if draw(st.booleans()):
        pools.append(pool(None, draw(catalogs), version="0", fleet=""))
    obs = Observation(
        pods=tuple(pods),
        pools=tuple(pools),
        applied=applied,
        approved_migration=draw(st.sampled_from([None, "app/0003"])),
    )
    prev = WorkerFleetStatus(
        migration_wait_for=draw(st.sampled_from([None, "app/0003"])),
        migration_wait_started_at=draw(st.sampled_from([None, "2026-11-29T11:00:00Z"])),
    )
    return s, obs, prev, NOW


@settings(max_examples=400, deadline=None)
@given(situations())
def test_invariants(case: tuple[WorkerFleetSpec, Observation, WorkerFleetStatus, datetime]) -> None:
    s, obs, prev, now = case
    p = run(s, obs, previous=prev, now=now)
    live_pods = [x for x in obs.pods if not x.terminating]
    # Never more pods than replicas + maxSurge.
    if isinstance(p.action, CreatePod):
        assert len(obs.pods) + 1 <= s.replicas + s.rollout.max_surge  # terminating count too
    # Never a breaking migration while a live pool lacks it (eviction comes first).
    if isinstance(p.action, RunMigration) and p.action.breaking:
        pending_breaking = [m for m in V3 if m.breaking and m not in obs.applied]
        for m in pending_breaking:
            assert not [x for x in obs.pools if x.live and not x.knows(m.id)]
        if s.rollout.breaking_migration_approval == "Manual":
            assert obs.approved_migration == "app/0003"
    # Eviction only after the wait.
    if isinstance(p.action, EvictOutdated):
        assert prev.migration_wait_started_at is not None
    # Deleting a ready pod in a safe plan keeps maxUnavailable.
    if isinstance(p.action, DeletePod) and not p.status.schema_.pending_breaking:
        victim = next(x for x in obs.pods if x.name == p.action.name)
        ready = sum(1 for x in live_pods if x.ready)
        if victim.ready and p.status.phase in ("RollingOut",):
            assert ready - 1 >= s.replicas - s.rollout.max_unavailable
    # Status is always complete and current.
    types = [c.type for c in p.status.conditions]
    assert sorted(types) == [
        "Available", "MigrationsApplied", "Progressing", "Ready", "Reconciling", "Stalled"
    ]  # fmt: skip
    # kstatus: never both in progress and stalled; Ready is neither.
    by_type = {c.type: c.status for c in p.status.conditions}
    assert not (by_type["Reconciling"] == "True" and by_type["Stalled"] == "True")
    if by_type["Ready"] == "True":
        assert by_type["Reconciling"] == by_type["Stalled"] == "False"
    elif p.status.phase != "Paused":
        assert "True" in (by_type["Reconciling"], by_type["Stalled"]), p.status
    assert all(c.observed_generation == 2 for c in p.status.conditions)
    assert p.status.observed_generation == 2


def test_a_fresh_database_gets_the_core_protocol_from_the_target_image() -> None:
    p0 = pod("p0", NEW, ready=False, version="1")
    step = run(spec(version="1"), Observation(pods=(p0,), pools=(), applied=()))
    assert isinstance(step.action, RunMigration) and step.action.to == CORE_PROTOCOL
    job = JobInfo("j", CORE_PROTOCOL, NEW, active=True, succeeded=False, failed=False)
    held = run(spec(version="1"), Observation(pods=(p0,), pools=(), applied=(), jobs=(job,)))
    assert isinstance(held.action, NoAction)


def test_a_container_not_yet_reported_running_keeps_its_pool() -> None:
    """A real kubelet reports a new or restarted container up to a second after its process
    started and registered: 'not running' is no proof that the process ended."""
    pods, pools = old_fleet()
    just_started = replace(pods[0], running=False, restarts=1)
    obs = Observation(pods=(just_started, *pods[1:]), pools=tuple(pools), applied=V1)
    assert not isinstance(run(spec(version="1"), obs).action, ReleasePools)


def test_a_pod_that_is_gone_is_left_to_the_sweep() -> None:
    """A force-deleted pod (grace period 0) vanishes from the API while its process may still
    run on the node: only the pool's own lease can tell."""
    pods, pools = old_fleet()
    obs = Observation(pods=tuple(pods[1:]), pools=tuple(pools), applied=V1)
    assert not isinstance(run(spec(version="1"), obs).action, ReleasePools)


def test_after_a_database_outage_silence_is_not_taken_for_a_drain() -> None:
    """Right after the operator could read the database again, the outdated pools look
    silent because the database was away, not because they stopped: no breaking migration
    and no eviction until the reads have succeeded for one sweep threshold."""
    new = [pod(f"new-{i}", NEW, ready=False) for i in range(3)]
    new_pools = [pool(p.name, V3, state="waiting-for-schema", version="2") for p in new]
    silent_old = pool(None, V2, version="1", fleet="", live=False)  # stale heartbeat
    obs = Observation(
        pods=tuple(new), pools=(*new_pools, silent_old), applied=V2, database_ok_for_s=5
    )
    held = run(spec(), obs)
    assert not isinstance(held.action, RunMigration | EvictOutdated)
    assert "sweep threshold" in held.status.message
    # Once the reads have held for a threshold (60 s), silence is real.
    later = run(spec(), replace(obs, database_ok_for_s=61))
    assert isinstance(later.action, RunMigration) and later.action.breaking
    # The wait's eviction is held back the same way.
    laptop = pool(None, V2, version="1", fleet="")
    obs = replace(obs, pools=(*new_pools, laptop), database_ok_for_s=61)
    waiting = run(spec(), obs)
    expired = replace(obs, database_ok_for_s=5)
    late = run(spec(), expired, previous=waiting.status, now=NOW + timedelta(minutes=11))
    assert not isinstance(late.action, EvictOutdated)


def test_pools_that_stopped_themselves_need_no_probation() -> None:
    """Right after the operator starts (or reads again), an outdated pool that recorded its
    own stop is a fact, not silence: the breaking migration runs at once. bench-rollout
    found every breaking rollout waiting a full sweep threshold after an operator start."""
    new = [pod(f"new-{i}", NEW, ready=False) for i in range(3)]
    new_pools = [pool(p.name, V3, state="waiting-for-schema", version="2") for p in new]
    stopped = [pool(f"old-{i}", V2, state="stopped", live=False) for i in range(3)]
    obs = Observation(
        pods=tuple(new), pools=(*new_pools, *stopped), applied=V2, database_ok_for_s=5
    )
    step = run(spec(), obs)
    assert isinstance(step.action, RunMigration) and step.action.breaking, step.status.message


def test_a_migration_job_that_cannot_start_is_a_condition_not_a_wait() -> None:
    pods, pools = old_fleet()
    new = pod("new-0", NEW, ready=False)
    job = JobInfo("shop-migrate", "app/0002", NEW, active=True, succeeded=False, failed=False,
                  blocked="ImagePullBackOff: Back-off pulling image shop:2")  # fmt: skip
    obs = Observation(
        pods=(*pods, new), jobs=(job,), applied=V1,
        pools=(*pools, pool("new-0", V2, state="waiting-for-schema", version="2")),
    )  # fmt: skip
    p = run(spec(), obs)
    assert isinstance(p.action, NoAction)
    assert cond(p, "MigrationsApplied") == ("False", "MigrationJobBlocked")
    assert cond(p, "Progressing") == ("False", "MigrationJobBlocked")
    assert "ImagePullBackOff" in p.status.message and "shop-migrate" in p.status.message
    # The protocol install on a fresh database reports the same way.
    install = replace(job, target=CORE_PROTOCOL)
    fresh = Observation(pods=(new,), pools=(), applied=(), jobs=(install,))
    p = run(spec(), fresh)
    assert cond(p, "MigrationsApplied") == ("False", "MigrationJobBlocked")


def test_a_failed_protocol_install_is_reported_before_any_catalog_is_known() -> None:
    """An `app` that is not a fleet_worker App fails the core install Job: that must be
    MigrationFailed with the Job's reason, not a wait for a pod to register."""
    new = pod("new-0", NEW, ready=False)
    job = JobInfo("shop-migrate", CORE_PROTOCOL, NEW, active=False, succeeded=False,
                  failed=True, message="BackoffLimitExceeded: Job has reached the specified "
                  "backoff limit")  # fmt: skip
    p = run(spec(), Observation(pods=(new,), pools=(), applied=(), jobs=(job,)))
    assert isinstance(p.action, NoAction) and p.status.phase == "Failed"
    assert cond(p, "MigrationsApplied") == ("False", "MigrationFailed")
    assert "BackoffLimitExceeded" in p.status.message


def test_crash_looping_new_pods_say_why() -> None:
    pods, pools = old_fleet()
    crashing = pod("new-0", NEW, ready=False, running=False, restarts=3, last_exit_code=2,
                   waiting_reason="CrashLoopBackOff",
                   last_message="Traceback...\nfleet-worker: 'shop.tasks' has no "
                   "fleet_worker.App named 'app'")  # fmt: skip
    obs = Observation(pods=(*pods, crashing), pools=tuple(pools), applied=V1)
    p = run(spec(), obs)
    assert isinstance(p.action, NoAction)
    assert "CrashLoopBackOff" in p.status.message and "has no fleet_worker.App" in p.status.message
    assert "Traceback" not in p.status.message  # the last line says it
    assert [e[1] for e in p.events] == ["PodsCrashLooping"]
    # Said once, not on every reconcile.
    again = run(spec(), obs, previous=p.status)
    assert again.events == []


def test_a_refused_action_is_said_in_the_api_servers_words() -> None:
    pods, pools = old_fleet()
    planned = run(spec(), Observation(pods=tuple(pods), pools=tuple(pools), applied=V1))
    why = 'Pod "shop-x" is invalid: spec.containers[0].resources.limits[cpu]: Invalid value'
    first = action_refused(planned.status, planned.status, generation=2, now=NOW,
                           what="create a worker pod", why=why)  # fmt: skip
    assert first.phase == "Failed" and why in first.message
    assert cond_of(first, "Progressing") == ("False", "ActionRefused")
    assert cond_of(first, "Ready") == ("False", "ActionRefused")
    # Refused again later: the transition time stays that of the first refusal.
    later = action_refused(planned.status, first, generation=2, now=NOW + timedelta(minutes=1),
                           what="create a worker pod", why=why)  # fmt: skip
    times = {c.type: c.last_transition_time for c in first.conditions}
    assert all(c.last_transition_time == times[c.type] for c in later.conditions
               if c.type in ("Ready", "Progressing"))  # fmt: skip


def test_stalled_says_which_mistake_and_keeps_its_transition_time() -> None:
    """Each mistake a human must fix is Stalled with its own reason: the Secret, a version
    the database moved past, the API server refusing the template, an invalid spec."""
    pods, pools = old_fleet()
    secret = Observation(pods=tuple(pods), pools=(), applied=(), secret_error="Secret db gone")
    p = run(spec(version="1"), secret)
    assert cond(p, "Stalled") == ("True", "SecretError")
    later = run(spec(version="1"), secret, previous=p.status, now=NOW + timedelta(minutes=5))
    first = {c.type: c.last_transition_time for c in p.status.conditions}
    assert all(c.last_transition_time == first[c.type] for c in later.status.conditions)
    refused = action_refused(
        run(spec(), Observation(pods=tuple(pods), pools=tuple(pools), applied=V1)).status,
        WorkerFleetStatus(), generation=2, now=NOW, what="create a worker pod", why="bad env",
    )  # fmt: skip
    assert cond_of(refused, "Stalled") == ("True", "ActionRefused")
    assert cond_of(refused, "Reconciling") == ("False", "Stalled")
    try:
        WorkerFleetSpec.model_validate({"version": "2"})
    except pydantic.ValidationError as exc:
        invalid = invalid_spec_status(3, exc)
    assert cond_of(invalid, "Stalled") == ("True", "InvalidSpec")
    # A database outage is not a mistake: it heals by itself, so it is still in progress.
    outage = Observation(pods=tuple(pods), pools=(), applied=(), database_error="timeout")
    assert cond(run(spec(version="1"), outage), "Reconciling")[0] == "True"


def cond_of(status: WorkerFleetStatus, type_: str) -> tuple[str, str]:
    c = next(c for c in status.conditions if c.type == type_)
    return c.status, c.reason


def test_schema_version_names_the_applied_schema_and_the_target() -> None:
    pods, pools = old_fleet(catalog=V2)
    steady = run(spec(version="1"), Observation(pods=tuple(pods), pools=tuple(pools), applied=V2))
    assert steady.status.schema_version == "app/0002"
    new = pod("new-0", NEW, ready=False)
    waiting = pool("new-0", V3, state="waiting-for-schema", version="2")
    obs = Observation(pods=(*pods, new), applied=V2, pools=(*pools, waiting))
    assert run(spec(), obs).status.schema_version == "app/0002 -> app/0003"


def test_a_fleet_at_zero_replicas_is_ready_and_says_so() -> None:
    p = run(spec(replicas=0), Observation(pods=(), pools=(), applied=()))
    assert p.status.phase == "Ready" and cond(p, "Ready") == ("True", "RolloutComplete")
    assert isinstance(p.action, NoAction)
    # With a backlog, scaling to zero is visible.
    backlog = QueueInfo(runnable=1234, oldest_age_s=95.0)
    p = run(spec(replicas=0), Observation(pods=(), pools=(), applied=V1, queue=backlog))
    assert p.status.queue_runnable == 1234 and p.status.queue_oldest_age_seconds == 95
    assert "1234 runnable job(s)" in p.status.message


def test_an_unreadable_database_keeps_the_last_known_counts() -> None:
    pods, pools = old_fleet()
    seen = run(spec(version="1"), Observation(pods=tuple(pods), pools=tuple(pools), applied=V1))
    assert seen.status.active_pools == 3
    for broken in (
        Observation(pods=tuple(pods), pools=(), applied=(), secret_error="Secret x not found"),
        Observation(pods=tuple(pods), pools=(), applied=(), database_error="timeout"),
    ):
        p = run(spec(version="1"), broken, previous=seen.status)
        assert p.status.active_pools == 3 and p.status.schema_.applied == ["core/0002"]
        assert p.status.schema_version == seen.status.schema_version
        status, reason = cond(p, "MigrationsApplied")
        assert (status, reason) == ("True", "UpToDate")
        applied = next(c for c in p.status.conditions if c.type == "MigrationsApplied")
        assert "last known" in applied.message


def test_a_pool_of_an_earlier_pod_with_the_same_name_is_left_to_its_lease() -> None:
    """Slot names are reused: a force-deleted pod's process may still run while a new pod of
    the same name starts; the new container's times prove nothing about the old process."""
    pods, pools = old_fleet()
    successor = replace(pods[0], uid="uid-new", ended_before=NOW - timedelta(seconds=2))
    earlier = replace(pools[0], pod_uid="uid-old", host_started_at=NOW - timedelta(seconds=90))
    obs = Observation(pods=(successor, *pods[1:]), pools=(earlier, *pools[1:]), applied=V1)
    assert not isinstance(run(spec(version="1"), obs).action, ReleasePools)
    # The same pod (same uid) that restarted: that proof holds.
    same = replace(earlier, pod_uid="uid-new")
    obs = Observation(pods=(successor, *pods[1:]), pools=(same, *pools[1:]), applied=V1)
    assert isinstance(run(spec(version="1"), obs).action, ReleasePools)


def test_pods_are_named_by_slot_so_two_operators_create_the_same_one() -> None:
    pods, pools = old_fleet()
    first = run(spec(), Observation(pods=tuple(pods), pools=tuple(pools), applied=V1))
    assert isinstance(first.action, CreatePod) and first.action.name == f"shop-{NEW[:6]}-0"
    taken = (*pods, pod(f"shop-{NEW[:6]}-0", NEW, ready=False, terminating=True))
    again = plan(name="shop", spec=spec(replicas=4, rollout={"maxSurge": 2}), generation=2,
                 revision=NEW, obs=Observation(pods=taken, pools=tuple(pools), applied=V1),
                 now=NOW, previous=WorkerFleetStatus())  # fmt: skip
    assert isinstance(again.action, CreatePod) and again.action.name == f"shop-{NEW[:6]}-1"


def test_a_new_pod_that_cannot_start_says_why() -> None:
    pods, pools = old_fleet()
    pulling = pod("new-0", NEW, ready=False, running=False, waiting_reason="ImagePullBackOff",
                  waiting_message='Back-off pulling image "shop:2"')  # fmt: skip
    obs = Observation(pods=(*pods, pulling), pools=tuple(pools), applied=V1)
    p = run(spec(), obs)
    assert p.status.phase == "Degraded" and "ImagePullBackOff" in p.status.message
    assert 'pulling image "shop:2"' in p.status.message
    assert [e[1] for e in p.events] == ["PodsCannotStart"]
    assert run(spec(), obs, previous=p.status).events == []


def test_scaling_to_zero_stops_a_broken_rollout() -> None:
    """Scaled to zero because the new release crash-loops or cannot be pulled: the pods go,
    whatever their state, and no catalog needs learning first."""
    for broken in (
        pod("new-0", NEW, ready=False, running=False, restarts=3, last_exit_code=1,
            waiting_reason="CrashLoopBackOff", last_message="boom"),
        pod("new-0", NEW, ready=False, running=False, waiting_reason="ErrImagePull"),
    ):  # fmt: skip
        p = run(spec(replicas=0), Observation(pods=(broken,), pools=(), applied=V1))
        assert p.action == DeletePod("new-0", "scale down"), p.action


def test_every_action_has_an_explicit_label_and_the_names_users_see_are_kept() -> None:
    """Event reasons, the actions metric and the plugin's next_action come from
    action_label, not from class names; these are the names dashboards already use."""
    samples: list[Action] = [
        NoAction("x"), CreatePod("x"), DeletePod("p", "x"), DeleteJob("j", "x"),
        RunMigration("app/0002", False, "x"), ReleasePools(("a",), "x"),
        EvictOutdated("app/0003", ("a",), "x"),
    ]  # fmt: skip
    assert {type(a) for a in samples} == set(get_args(Action))
    assert [action_label(a) for a in samples] == [
        "NoAction", "CreatePod", "DeletePod", "DeleteJob", "RunMigration", "ReleasePools",
        "EvictOutdated",
    ]  # fmt: skip
