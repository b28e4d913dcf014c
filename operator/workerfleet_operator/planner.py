"""The rollout engine's functional core: from (spec, observation, clock, previous status) to
the one next action and the full status. No I/O here; every decision is unit-tested.

The order of concerns, highest first:
  1. errors that stop everything (Secret, database, refused version, failed migration);
  2. fast recovery: pools whose container Kubernetes saw end are released at once;
  3. pause;
  4. the schema: learn the target catalog from a new pod's pool, run safe migrations first,
     breaking ones only once no live outdated pool remains (or after the wait, by eviction);
  5. pods: surge one new pod, replace old pods one at a time, scale.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import assert_never

from fleet_worker.protocol import CORE_PROTOCOL, PoolState
from workerfleet_operator.kstatus import with_kstatus
from workerfleet_operator.models import (
    Condition,
    EventReason,
    FleetPhase,
    Reason,
    SchemaStatus,
    WorkerFleetSpec,
    WorkerFleetStatus,
    condition_now,
)
from workerfleet_operator.observation import (
    EXIT_OUT_OF_DATE,
    LIVE_POOL_STATES,
    JobInfo,
    MigrationInfo,
    Observation,
    PodInfo,
    PoolInfo,
)

APPROVAL_ANNOTATION = "workerfleet.dev/approve-migration"
# The node's clock may step (an NTP correction) between a container's start and its pool's
# registration: a pool within this much of the container's start is not taken for older.
CLOCK_STEP_MARGIN = timedelta(seconds=2)


# Waiting reasons of a container that will not start by waiting a little longer.
START_FAILURES = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "ErrImageNeverPull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)

# -- actions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoAction:
    reason: str


@dataclass(frozen=True)
class CreatePod:
    reason: str
    # Deterministic (the fleet, the revision, the lowest free slot): two operators acting at
    # once on the same view create the same pod, and the API server refuses the second.
    name: str = ""


@dataclass(frozen=True)
class DeletePod:
    name: str
    reason: str


@dataclass(frozen=True)
class RunMigration:
    to: str  # the last migration id the Job applies
    breaking: bool
    reason: str


@dataclass(frozen=True)
class DeleteJob:
    """A migration Job of a revision that is no longer wanted (the spec moved on, e.g. a
    rollback): stopping it rolls its transaction back, so it cannot force a migration the
    current version does not want."""

    name: str
    reason: str


@dataclass(frozen=True)
class ReleasePools:
    """Mark pools dead and release their jobs: Kubernetes saw their process end."""

    pool_ids: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class EvictOutdated:
    """The migration wait expired: evict the live pools lacking `migration` and release
    their jobs, so the breaking migration can run next."""

    migration: str
    pool_ids: tuple[str, ...]
    reason: str


Action = NoAction | CreatePod | DeletePod | DeleteJob | RunMigration | ReleasePools | EvictOutdated


def action_label(action: Action) -> EventReason:
    """The action's name where users and dashboards see it: the Event reason, the
    `workerfleet_actions_total{action}` label, the kubectl plugin's `next_action`. Spelled
    out, so renaming a class cannot silently rename them; mypy checks every action has one."""
    match action:
        case NoAction():
            return EventReason.NO_ACTION
        case CreatePod():
            return EventReason.CREATE_POD
        case DeletePod():
            return EventReason.DELETE_POD
        case DeleteJob():
            return EventReason.DELETE_JOB
        case RunMigration():
            return EventReason.RUN_MIGRATION
        case ReleasePools():
            return EventReason.RELEASE_POOLS
        case EvictOutdated():
            return EventReason.EVICT_OUTDATED
        case _:
            assert_never(action)


Event = tuple[str, EventReason, str]  # (type: Normal or Warning, reason, message)


@dataclass
class Plan:
    action: Action
    status: WorkerFleetStatus
    events: list[Event] = field(default_factory=list)


# -- pure helpers -------------------------------------------------------------------------


def migration_job_name(fleet: str, revision: str, target: str) -> str:
    """Deterministic, so a restarted operator finds the Job it already created; readable
    when it fits in 63 characters, else shortened with a hash so names never collide."""
    safe_target = target.replace("/", "-").replace("_", "-").lower()
    name = f"{fleet}-migrate-{revision[:8]}-{safe_target}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(f"{fleet}/{target}".encode()).hexdigest()[:10]
    return f"{fleet[:34].rstrip('-')}-migrate-{revision[:8]}-{digest}"


def iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(t: str | None) -> datetime | None:
    if not t:
        return None
    return datetime.strptime(t, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def catalog_of(
    obs: Observation, version: str, new_pods: list[PodInfo]
) -> tuple[MigrationInfo, ...] | None:
    """The migrations `version` knows: from a pool of a new pod, else from any pool that
    version ever registered (the history answers a rollback without starting a pod)."""
    for pod in new_pods:
        pool = obs.pool_of(pod)
        if pool is not None:
            return pool.catalog
    known = [p for p in obs.pools if p.version == version]
    if known:
        return max(known, key=lambda p: p.started_at).catalog
    return None


def ended_pools(obs: Observation, fleet: str) -> list[PoolInfo]:
    """Live-state pools of this fleet whose process provably ended, released at once rather
    than after their lease. Proofs, and only these: the pool started (on its host's clock)
    before a time by which the kubelet says every process of its container had ended (the
    current container's start, or the last one's finish; same node, same clock); or its pod
    restarted and a newer pool of the pod exists (one process per container at a time).
    Not proofs: a container not reported running (the kubelet reports a new one late), a
    pod that is gone (force-deleted pods vanish while their process may still run), and a
    new pod that took the name of one that is gone (told apart by the pod uid). Those pools
    are left to the sweep, which waits for their own lease."""
    pods = {p.name: p for p in obs.pods}
    by_pod: dict[str, list[PoolInfo]] = {}
    for pool in obs.pools:
        if pool.state in LIVE_POOL_STATES and pool.pod_name is not None and pool.fleet == fleet:
            by_pod.setdefault(pool.pod_name, []).append(pool)
    ended: list[PoolInfo] = []
    for pod_name, candidates in by_pod.items():
        pod = pods.get(pod_name)
        # A pool of an earlier pod of the same name (slots reuse names) is another process,
        # which this pod's container times say nothing about.
        # Without a recorded uid (a worker image older than core/0002's pod_uid) a pool
        # cannot be tied to this pod rather than an earlier one of the same name: no proof.
        pools = [
            p for p in candidates if pod is not None and p.pod_uid is not None and p.ran_in(pod)
        ]
        if pod is None or not pools:
            continue
        newest = max(pools, key=lambda p: p.started_at)
        for pool in pools:
            before = pod.ended_before
            if pool.host_started_at is not None and before is not None:
                if pool.host_started_at < before - CLOCK_STEP_MARGIN:
                    ended.append(pool)
            elif pod.restarts > 0 and pool is not newest:
                ended.append(pool)
    return ended


def last_line(text: str | None, limit: int = 300) -> str | None:
    """The last non-empty line of a termination message or log tail: where a traceback or
    the worker's own `fleet-worker: ...` line says what went wrong."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1][:limit] if lines else None


def schema_version(applied: tuple[MigrationInfo, ...], pending: list[MigrationInfo]) -> str | None:
    """One readable string for the `kubectl get` Schema column: the latest applied migration,
    with the target while migrations are pending."""
    if not applied:
        return f"-> {pending[-1].id}" if pending else None
    if pending:
        return f"{applied[-1].id} -> {pending[-1].id}"
    return applied[-1].id


def blocking_migrations(
    catalog: tuple[MigrationInfo, ...] | None, applied: tuple[MigrationInfo, ...]
) -> list[str]:
    """Applied breaking migrations a version with `catalog` does not know: why it cannot run
    (the worker's compatibility rule, seen from outside). Unknown catalog: nothing known."""
    if catalog is None:
        return []
    known = {m.id for m in catalog}
    return [m.id for m in applied if m.breaking and m.id not in known]


def delete_order(pod: PodInfo) -> tuple[bool, float]:
    """Unready first (deleting them costs no capacity), then the newest."""
    return (pod.ready, -pod.created_at.timestamp())


def _reason(status: WorkerFleetStatus, type_: str) -> str | None:
    return next((c.reason for c in status.conditions if c.type == type_), None)


def current_version(pods: list[PodInfo], previous: str | None) -> str | None:
    versions = [p.version for p in pods if p.ready]
    return Counter(versions).most_common(1)[0][0] if versions else previous


# -- the planner --------------------------------------------------------------------------


def plan(
    *,
    name: str,
    spec: WorkerFleetSpec,
    generation: int,
    revision: str,
    obs: Observation,
    now: datetime,
    previous: WorkerFleetStatus,
    namespace: str | None = None,
) -> Plan:
    """`namespace`: pools record their fleet as `namespace/name` (see builders); without it
    the bare name is matched (unit tests)."""
    fleet_id = f"{namespace}/{name}" if namespace else name
    result = _Planner(name, spec, generation, revision, obs, now, previous, fleet_id).run()
    if isinstance(result.action, CreatePod):
        result.action = replace(result.action, name=pod_slot_name(name, revision, obs.pods))
    return result


def pod_slot_name(fleet: str, revision: str, pods: tuple[PodInfo, ...]) -> str:
    """`<fleet>-<revision[:6]>-<n>` with the lowest n no pod (terminating ones included)
    has: the same on every replica that sees the same pods."""
    taken = {p.name for p in pods}
    return next(
        name for n in itertools.count() if (name := f"{fleet}-{revision[:6]}-{n}") not in taken
    )


class _Planner:
    def __init__(
        self,
        name: str,
        spec: WorkerFleetSpec,
        generation: int,
        revision: str,
        obs: Observation,
        now: datetime,
        previous: WorkerFleetStatus,
        fleet_id: str,
    ) -> None:
        self.name, self.spec, self.generation, self.revision = name, spec, generation, revision
        self.fleet_id = fleet_id
        self.obs, self.now, self.previous = obs, now, previous
        self.pods = [p for p in obs.pods if not p.terminating]
        self.terminating = [p for p in obs.pods if p.terminating]
        self.new = [p for p in self.pods if p.revision == revision]
        self.old = [p for p in self.pods if p.revision != revision]
        self.ready = [p for p in self.pods if p.ready]
        self.fleet_pools = [p for p in obs.pools if p.live and p.fleet == fleet_id]
        applied = {m.id for m in obs.applied}
        self.target = catalog_of(obs, spec.version, self.new)
        self.pending = [m for m in self.target or () if m.id not in applied]
        self.events: list[Event] = []
        self.status = self._base_status()
        self.done = self._rollout_done()
        if self.done:
            self.status.rollout_started_at = None
        elif previous.rollout_started_at is None or previous.observed_generation != generation:
            self.status.rollout_started_at = iso(now)

    def _base_status(self) -> WorkerFleetStatus:
        target, pending = self.target, self.pending
        outdated = 0
        if target is not None:
            outdated = sum(
                1 for p in self.obs.pools if p.live and any(not p.knows(m.id) for m in target)
            )
        return WorkerFleetStatus(
            observed_generation=self.generation,
            target_version=self.spec.version,
            current_version=current_version(self.pods, self.previous.current_version),
            replicas=len(self.pods),
            updated_replicas=len(self.new),
            ready_replicas=len(self.ready),
            active_pools=sum(1 for p in self.fleet_pools if p.state == PoolState.ACTIVE),
            outdated_pools=outdated,
            schema_=SchemaStatus(
                applied=[m.id for m in self.obs.applied],
                target=[m.id for m in target] if target is not None else [],
                pending=[m.id for m in pending],
                pending_breaking=[m.id for m in pending if m.breaking],
            ),
            schema_version=schema_version(self.obs.applied, pending),
            queue_runnable=self.obs.queue.runnable if self.obs.queue else None,
            queue_oldest_age_seconds=self.obs.queue.oldest_age_s if self.obs.queue else None,
            rollout_started_at=self.previous.rollout_started_at,
            migration_wait_started_at=self.previous.migration_wait_started_at,
            migration_wait_for=self.previous.migration_wait_for,
        )

    def _rollout_done(self) -> bool:
        if self.spec.replicas == 0:
            return not self.pods and not self.terminating
        return (
            self.target is not None
            and not self.pending
            and not self.old
            and not self.terminating
            and len(self.new) == self.spec.replicas
            and all(p.ready for p in self.new)
        )

    # -- status --------------------------------------------------------------------------

    def finish(
        self,
        action: Action,
        phase: FleetPhase,
        message: str,
        *,
        progressing: tuple[str, Reason] | None = None,
        schema: tuple[str, Reason, str] | None = None,
    ) -> Plan:
        self.status.phase, self.status.message = phase, message
        conditions: list[Condition] = []

        def put(type_: str, status: str, reason: Reason | FleetPhase, msg: str) -> None:
            conditions.append(
                condition_now(
                    type_, status, reason, msg, previous=self.previous.conditions,
                    generation=self.generation, now=iso(self.now),
                )
            )  # fmt: skip

        spec = self.spec
        if self.done:
            put(
                "Ready",
                "True",
                Reason.ROLLOUT_COMPLETE,
                f"{spec.replicas} pod(s) of version {spec.version} ready; schema up to date",
            )
        else:
            put("Ready", "False", phase, message)
        needed = max(spec.replicas - spec.rollout.max_unavailable, 1 if spec.replicas else 0)
        have = len(self.ready)
        put(
            "Available",
            "True" if have >= needed else "False",
            Reason.MINIMUM_REPLICAS_AVAILABLE
            if have >= needed
            else Reason.MINIMUM_REPLICAS_UNAVAILABLE,
            f"{have} ready pod(s), {needed} needed",
        )
        if progressing is None:
            progressing = self._progressing()
        put(
            "Progressing",
            progressing[0],
            progressing[1],
            f"version {spec.version} rolled out" if self.done else message,
        )
        put("MigrationsApplied", *(schema or self._schema_condition()))
        self.status.conditions = conditions
        self.status = with_kstatus(
            self.status, self.previous, generation=self.generation, now=iso(self.now)
        )
        return Plan(action, self.status, self.events)

    def _progressing(self) -> tuple[str, Reason]:
        if self.done:
            return ("True", Reason.NEW_REVISION_AVAILABLE)
        started = parse_iso(self.status.rollout_started_at)
        deadline = timedelta(seconds=self.spec.rollout.progress_deadline_seconds)
        if started is not None and self.now - started > deadline:
            return ("False", Reason.PROGRESS_DEADLINE_EXCEEDED)
        return ("True", Reason.ROLLOUT_IN_PROGRESS)

    def _schema_condition(self) -> tuple[str, Reason, str]:
        if self.target is None:
            return (
                "Unknown",
                Reason.CATALOG_UNKNOWN,
                "no pool of the target version registered yet",
            )
        if self.pending:
            kinds = ", ".join(
                f"{m.id} ({'breaking' if m.breaking else 'safe'})" for m in self.pending
            )
            return ("False", Reason.PENDING, f"pending: {kinds}")
        return ("True", Reason.UP_TO_DATE, f"{len(self.target)} migration(s) applied")

    def event(self, type_: str, reason: EventReason, message: str) -> None:
        self.events.append((type_, reason, message))

    # -- decisions -----------------------------------------------------------------------

    def run(self) -> Plan:
        return (
            self._errors()
            or self._recovery()
            or self._superseded_job()
            or self._refused_version()
            or self._failed_migration()
            or self._crash_looping()
            or self._paused()
            or self._schema()
            or self._pods()
        )

    def _errors(self) -> Plan | None:
        if self.obs.secret_error:
            msg = self.obs.secret_error
            return self._blind(msg, FleetPhase.FAILED, ("False", Reason.SECRET_ERROR))
        if self.obs.database_error:
            msg = f"cannot read pools from the database: {self.obs.database_error}"
            return self._blind(msg, FleetPhase.DEGRADED, ("False", Reason.DATABASE_UNAVAILABLE))
        return None

    def _blind(self, msg: str, phase: FleetPhase, progressing: tuple[str, Reason]) -> Plan:
        """The database cannot be read: what it last said still holds as far as anyone
        knows (pools do not vanish because the operator lost its Secret), so keep it, and
        say it is the last known state rather than report zero pools and an unknown schema."""
        last = self.previous
        self.status.active_pools = last.active_pools
        self.status.outdated_pools = last.outdated_pools
        self.status.schema_ = last.schema_.model_copy(deep=True)
        self.status.schema_version = last.schema_version
        self.status.queue_runnable = last.queue_runnable
        self.status.queue_oldest_age_seconds = last.queue_oldest_age_seconds
        known = next((c for c in last.conditions if c.type == "MigrationsApplied"), None)
        schema: tuple[str, Reason, str] | None = None
        # A reason this release does not write (an older operator's) is not carried over.
        if known is not None and known.reason in set(Reason):
            note = known.message.removesuffix(" (last known)")
            schema = (known.status, Reason(known.reason), f"{note} (last known)")
        return self.finish(NoAction(msg), phase, msg, progressing=progressing, schema=schema)

    def _recovery(self) -> Plan | None:
        ended = ended_pools(self.obs, self.fleet_id)
        if not ended:
            return None
        ids = tuple(p.pool_id for p in ended)
        msg = f"releasing the jobs of {len(ids)} pool(s) whose container ended"
        self.event("Warning", EventReason.POOLS_RELEASED, f"{msg}: {', '.join(ids)}")
        return self.finish(
            ReleasePools(ids, "its container terminated"), FleetPhase.RECOVERING, msg
        )

    def _superseded_job(self) -> Plan | None:
        stale = [j for j in self.obs.jobs if j.active and j.revision != self.revision]
        if not stale:
            return None
        job = stale[0]
        msg = f"stopping migration Job {job.name}: the fleet's spec has changed since"
        self.event("Normal", EventReason.MIGRATION_SUPERSEDED, msg)
        return self.finish(DeleteJob(job.name, "superseded"), FleetPhase.ROLLING_OUT, msg)

    def _refused_version(self) -> Plan | None:
        """A version the database has moved past (its pods would exit 57): refuse it."""
        unknown_breaking = blocking_migrations(self.target, self.obs.applied)
        exited = [p for p in self.new if p.last_exit_code == EXIT_OUT_OF_DATE]
        if not unknown_breaking and not exited:
            return None
        which = ", ".join(unknown_breaking) or "a breaking migration"
        msg = (
            f"version {self.spec.version} cannot run: the database already holds {which}, "
            "which it does not know; set a newer version"
        )
        if _reason(self.previous, "Progressing") != Reason.ROLLBACK_REFUSED:
            self.event("Warning", EventReason.ROLLBACK_REFUSED, msg)
        refused = ("False", Reason.ROLLBACK_REFUSED)
        if self.new:
            victim = sorted(self.new, key=delete_order)[0]
            action: Action = DeletePod(victim.name, "its version is out of date")
            return self.finish(action, FleetPhase.FAILED, msg, progressing=refused)
        return self.finish(NoAction(msg), FleetPhase.FAILED, msg, progressing=refused)

    def _failed_migration(self) -> Plan | None:
        """A failed Job of this revision whose target is not applied, whatever the phase
        (also the protocol install, before any catalog is known): never re-created."""
        applied = {m.id for m in self.obs.applied}
        job = next(
            (
                j
                for j in self.obs.jobs
                if j.revision == self.revision and j.failed and j.target not in applied
            ),
            None,
        )
        if job is None:
            return None
        msg = f"migration Job {job.name} failed: {job.message or 'see its pod logs'}"
        if self.previous.phase != FleetPhase.FAILED:
            self.event("Warning", EventReason.MIGRATION_FAILED, msg)
        return self.finish(
            NoAction(msg),
            FleetPhase.FAILED,
            msg,
            progressing=("False", Reason.MIGRATION_FAILED),
            schema=("False", Reason.MIGRATION_FAILED, msg),
        )

    def _crash_looping(self) -> Plan | None:
        """New pods that keep exiting say why (their termination message, or the log tail),
        in the status and in one Event, instead of "waiting for a pod to register"."""
        if self.spec.replicas == 0:
            return None  # being scaled away: their failures no longer matter
        crashing = [
            p
            for p in self.new
            if not p.running
            and p.restarts > 0
            and p.last_exit_code not in (None, 0)
            and p.waiting_reason in (None, "CrashLoopBackOff")
        ]
        if not crashing:
            return None
        pod = crashing[0]
        why = last_line(pod.last_message) or "no termination message; see its log"
        msg = (
            f"pod {pod.name} of version {self.spec.version} is crash-looping "
            f"({pod.waiting_reason or 'restarting'}, exit code {pod.last_exit_code}, "
            f"{pod.restarts} restarts): {why}"
        )
        return self._new_pods_failing(
            msg, FleetPhase.CRASH_LOOP_BACK_OFF, EventReason.PODS_CRASH_LOOPING
        )

    def _cannot_start(self) -> Plan | None:
        """New pods whose container cannot even start (the image cannot be pulled, a Secret
        or ConfigMap it needs is missing) say so, in the kubelet's words."""
        stuck = [p for p in self.new if p.waiting_reason in START_FAILURES]
        if not stuck or self.spec.replicas == 0:
            return None
        pod = stuck[0]
        msg = (
            f"pod {pod.name} of version {self.spec.version} cannot start: "
            f"{pod.waiting_reason}: {(pod.waiting_message or 'no message')[:300]}"
        )
        return self._new_pods_failing(msg, FleetPhase.DEGRADED, EventReason.PODS_CANNOT_START)

    def _new_pods_failing(self, msg: str, phase: FleetPhase, reason: EventReason) -> Plan:
        """Wait, saying why in the status; the Warning Event only when the phase begins."""
        if self.previous.phase != phase:
            self.event("Warning", reason, msg)
        return self.finish(NoAction(msg), phase, msg)

    def _paused(self) -> Plan | None:
        if not self.spec.paused:
            return None
        return self.finish(
            NoAction("paused"),
            FleetPhase.PAUSED,
            "spec.paused is true: nothing changes",
            progressing=("Unknown", Reason.PAUSED),
        )

    def _job(
        self, *, target: str | None = None, active: bool = False, succeeded: bool = False
    ) -> JobInfo | None:
        for j in self.obs.jobs:
            if j.revision != self.revision or (target is not None and j.target != target):
                continue
            if (active and not j.active) or (succeeded and not j.succeeded):
                continue
            return j
        return None

    def _schema(self) -> Plan | None:
        spec = self.spec
        if self.target is None and spec.replicas == 0:
            # Scaled to zero: nothing to learn a catalog from or to migrate for; scaling down
            # (also out of a broken rollout) is all there is to do.
            return None
        if self.target is None:
            if not self.new and spec.replicas > 0:
                msg = f"starting a pod of version {spec.version} to learn its migrations"
                step = self._make_room(CreatePod("learn the new version's migrations"), msg)
                if step is not None:
                    return step
            if self.new and CORE_PROTOCOL not in {m.id for m in self.obs.applied}:
                # A fresh database has no pools table for the new pod to register in: install
                # the core protocol (always safe) from the target image first.
                installing = self._job(active=True)
                if installing is not None:
                    return self._blocked_job(installing) or self.finish(
                        NoAction("installing"),
                        FleetPhase.MIGRATING,
                        f"installing the {CORE_PROTOCOL} protocol schema",
                    )
                return self._migrate(CORE_PROTOCOL, breaking=False)
            return self._cannot_start() or self.finish(
                NoAction("waiting for a new pod to register"),
                FleetPhase.ROLLING_OUT,
                f"waiting for a pod of version {spec.version} to register",
            )
        if not self.pending:
            self.status.migration_wait_started_at = None
            self.status.migration_wait_for = None
            return None
        running = self._job(active=True)
        if running is not None:
            blocked = self._blocked_job(running)
            if blocked is not None:
                return blocked
            msg = f"migration Job {running.name} is applying up to {running.target}"
            return self.finish(
                NoAction("migration running"), FleetPhase.MIGRATING, msg,
                schema=("False", Reason.MIGRATION_RUNNING, msg),
            )  # fmt: skip
        safe_prefix: list[MigrationInfo] = []
        for m in self.pending:
            if m.breaking:
                break
            safe_prefix.append(m)
        if safe_prefix:
            return self._migrate(safe_prefix[-1].id, breaking=False)
        return self._breaking(self.pending[0])

    def _blocked_job(self, job: JobInfo) -> Plan | None:
        """A Job whose pod cannot start says why; it is left in place (it starts once the
        image or the quota is there), and the progress deadline still applies."""
        if not job.blocked:
            return None
        msg = f"migration Job {job.name} cannot start: {job.blocked}"
        if _reason(self.previous, "MigrationsApplied") != Reason.MIGRATION_JOB_BLOCKED:
            self.event("Warning", EventReason.MIGRATION_JOB_BLOCKED, msg)
        return self.finish(
            NoAction(msg), FleetPhase.MIGRATING, msg,
            progressing=("False", Reason.MIGRATION_JOB_BLOCKED),
            schema=("False", Reason.MIGRATION_JOB_BLOCKED, msg),
        )  # fmt: skip

    def _migrate(self, to: str, *, breaking: bool) -> Plan:
        if self._job(target=to, succeeded=True) is not None:
            # The Job finished but the database view predates it: look again, never rerun.
            return self.finish(
                NoAction("refreshing"),
                FleetPhase.MIGRATING,
                f"migrations up to {to} applied; refreshing",
            )
        kind = "including breaking" if breaking else "safe"
        msg = f"applying {kind} migration(s) up to {to}"
        self.event("Normal", EventReason.MIGRATION_STARTED, msg)
        return self.finish(RunMigration(to, breaking, msg), FleetPhase.MIGRATING, msg)

    def _breaking(self, breaking: MigrationInfo) -> Plan:
        """New pods wait for the schema; old pods go one at a time; the migration runs when
        no live pool lacking it remains, or after maxMigrationWaitTime by eviction."""
        spec, name = self.spec, self.name
        waiting = ("False", Reason.WAITING_FOR_DRAIN, f"{breaking.id} waits for old pods to drain")
        manual = spec.rollout.breaking_migration_approval == "Manual"
        if manual and self.obs.approved_migration != breaking.id:
            msg = (
                f"breaking migration {breaking.id} awaits approval: kubectl annotate wf "
                f"{name} {APPROVAL_ANNOTATION}={breaking.id}"
            )
            return self.finish(
                NoAction("awaiting approval"), FleetPhase.AWAITING_APPROVAL, msg,
                schema=("False", Reason.AWAITING_APPROVAL, msg),
            )  # fmt: skip
        if self.terminating:
            msg = f"waiting for pod {self.terminating[0].name} to drain"
            return self.finish(
                NoAction("one old pod at a time"), FleetPhase.WAITING_FOR_DRAIN, msg, schema=waiting
            )
        if self._has_room and len(self.new) < spec.replicas:
            msg = f"starting pods of version {spec.version}; they wait for {breaking.id}"
            return self.finish(
                CreatePod("new pods wait for the breaking migration"),
                FleetPhase.WAITING_FOR_DRAIN, msg, schema=waiting,
            )  # fmt: skip
        if self.old:
            victim = sorted(self.old, key=delete_order)[0]
            msg = f"draining pod {victim.name} before {breaking.id}"
            return self.finish(
                DeletePod(victim.name, f"drain before {breaking.id}"),
                FleetPhase.WAITING_FOR_DRAIN, msg, schema=waiting,
            )  # fmt: skip
        # Pools in a live state that lack the migration: either live (a wait, then maybe an
        # eviction) or silent (taken for ended). Both judgements need a trustworthy view;
        # pools that recorded their own stop do not, so they never wait on probation.
        outdated = [
            p for p in self.obs.pools if p.state in LIVE_POOL_STATES and not p.knows(breaking.id)
        ]
        left = self._probation_left()
        if left > 0 and outdated:
            msg = (
                f"{breaking.id} waits {left:.0f}s more: {len(outdated)} outdated pool(s) "
                "are judged by their heartbeats only after one sweep threshold of "
                f"error-free reads, and the operator has read the database without error "
                f"for {self.obs.database_ok_for_s:.0f}s (since it started or last failed)"
            )
            return self.finish(
                NoAction("on probation after a database outage"), FleetPhase.WAITING_FOR_DRAIN, msg,
                schema=("False", Reason.WAITING_FOR_DRAIN, msg),
            )  # fmt: skip
        blockers = [p for p in outdated if p.live]
        if not blockers:
            return self._migrate(self.pending[-1].id, breaking=True)
        return self._wait_or_evict(breaking, blockers)

    def _probation_left(self) -> float:
        """Seconds until the operator may take pools' silence for their end: one threshold
        (the longest any live-state pool registered, at least the fleet's) of error-free
        reads, since during an outage every pool looks silent."""
        thresholds = [
            p.sweep_threshold_s
            for p in self.obs.pools
            if p.state in LIVE_POOL_STATES and p.sweep_threshold_s is not None
        ]
        threshold = max([self.spec.seconds("sweep_threshold"), *thresholds])
        return max(0.0, threshold - self.obs.database_ok_for_s)

    def _wait_or_evict(self, breaking: MigrationInfo, blockers: list[PoolInfo]) -> Plan:
        status, spec = self.status, self.spec
        if status.migration_wait_for != breaking.id or status.migration_wait_started_at is None:
            status.migration_wait_for = breaking.id
            status.migration_wait_started_at = iso(self.now)
        started = parse_iso(status.migration_wait_started_at) or self.now
        waited = (self.now - started).total_seconds()
        limit = spec.seconds("max_migration_wait_time")
        names = ", ".join(f"{p.pool_id[:8]} (version {p.version})" for p in blockers)
        if waited >= limit:
            msg = (
                f"maxMigrationWaitTime {spec.max_migration_wait_time} passed: evicting "
                f"pool(s) {names} and releasing their jobs before {breaking.id}"
            )
            self.event("Warning", EventReason.POOLS_EVICTED, msg)
            action = EvictOutdated(breaking.id, tuple(p.pool_id for p in blockers), msg)
            return self.finish(
                action,
                FleetPhase.WAITING_FOR_DRAIN,
                msg,
                schema=("False", Reason.FORCING_MIGRATION, msg),
            )
        msg = (
            f"{breaking.id} waits for {len(blockers)} live outdated pool(s): {names}; "
            f"forced in {max(0.0, limit - waited):.0f}s"
        )
        return self.finish(
            NoAction("waiting for outdated pools"), FleetPhase.WAITING_FOR_DRAIN, msg,
            schema=("False", Reason.WAITING_FOR_DRAIN, msg),
        )  # fmt: skip

    @property
    def _has_room(self) -> bool:
        """Never more pods than replicas + maxSurge, counting those still terminating (their
        processes run until they have drained)."""
        cap = self.spec.replicas + self.spec.rollout.max_surge
        return len(self.pods) + len(self.terminating) < cap

    def _make_room(self, create: CreatePod, message: str) -> Plan | None:
        """Create a pod within maxSurge or, with no surge left, remove one old pod first when
        maxUnavailable allows; None when neither is possible now."""
        if self._has_room:
            return self.finish(create, FleetPhase.ROLLING_OUT, message)
        return self._delete_old()

    def _delete_old(self) -> Plan | None:
        """Remove one old pod (unready first) if that keeps maxUnavailable."""
        if self.terminating or not self.old:
            return None
        victim = sorted(self.old, key=delete_order)[0]
        ready_after = len(self.ready) - (1 if victim.ready else 0)
        if victim.ready and ready_after < self.spec.replicas - self.spec.rollout.max_unavailable:
            return None
        return self.finish(
            DeletePod(victim.name, "replaced by the new version"),
            FleetPhase.ROLLING_OUT,
            f"replacing pod {victim.name}",
        )

    def _pods(self) -> Plan:
        """The pods toward the spec: replace old ones one server at a time, then scale."""
        if self.old:
            return self._replace_old()
        return self._scale() or self._settled()

    def _replace_old(self) -> Plan:
        replicas, new = self.spec.replicas, self.new
        draining = [p for p in self.fleet_pools if p.state == PoolState.DRAINING]
        if self.terminating or draining:
            who = self.terminating[0].name if self.terminating else draining[0].pool_id
            return self.finish(
                NoAction("one server at a time"),
                FleetPhase.ROLLING_OUT,
                f"waiting for {who} to stop",
            )
        if len(new) < replicas:
            msg = f"{len(new)}/{replicas} pods at version {self.spec.version}"
            step = self._make_room(CreatePod("surge"), msg)
        else:
            step = self._delete_old()
        if step is not None:
            return step
        ready_new = sum(1 for p in new if p.ready)
        return self._cannot_start() or self.finish(
            NoAction("waiting for new pods to be ready"),
            FleetPhase.ROLLING_OUT,
            f"{ready_new}/{replicas} new pods ready",
        )

    def _scale(self) -> Plan | None:
        """One pod more or fewer, when the count is not the spec's."""
        pods, replicas = self.pods, self.spec.replicas
        if len(pods) < replicas:
            if not self._has_room:
                return self.finish(
                    NoAction("a pod is stopping"), FleetPhase.SCALING, "waiting for a pod to stop"
                )
            return self.finish(
                CreatePod("scale up"), FleetPhase.SCALING, f"{len(pods)}/{replicas} pods"
            )
        if len(pods) > replicas:
            if self.terminating:
                return self.finish(
                    NoAction("one at a time"), FleetPhase.SCALING, "waiting for a pod to stop"
                )
            victim = sorted(pods, key=delete_order)[0]
            return self.finish(
                DeletePod(victim.name, "scale down"),
                FleetPhase.SCALING,
                f"{len(pods)}/{replicas} pods: removing {victim.name}",
            )
        return None

    def _settled(self) -> Plan:
        """The right pods: Ready once they all are (or scaled to zero, saying what waits)."""
        replicas = self.spec.replicas
        if self.terminating or not all(p.ready for p in self.pods):
            return self._cannot_start() or self.finish(
                NoAction("waiting for readiness"),
                FleetPhase.ROLLING_OUT,
                f"{len(self.ready)}/{replicas} pods ready",
            )
        if replicas == 0:
            queue = self.obs.queue
            backlog = (
                f": {queue.runnable} runnable job(s) waiting, the oldest for "
                f"{queue.oldest_age_s or 0:.0f}s"
                if queue is not None and queue.runnable
                else ""
            )
            return self.finish(
                NoAction("scaled to zero"), FleetPhase.READY, f"scaled to zero{backlog}"
            )
        return self.finish(
            NoAction("up to date"),
            FleetPhase.READY,
            f"{replicas} pod(s) of version {self.spec.version} ready",
        )


def action_refused(
    status: WorkerFleetStatus,
    previous: WorkerFleetStatus,
    *,
    generation: int,
    now: datetime,
    what: str,
    why: str,
) -> WorkerFleetStatus:
    """The status after the API server refused the planned action (an invalid pod from the
    template, a quota, an admission policy): it says so in the API's own words, Ready and
    Progressing False with reason ActionRefused, until a reconcile's action succeeds."""
    message = f"the API server refused to {what}: {why}"
    out = status.model_copy(deep=True)
    out.phase, out.message = FleetPhase.FAILED, message

    def refused(c: Condition) -> Condition:
        if c.type not in ("Ready", "Progressing"):
            return c
        return condition_now(
            c.type, "False", Reason.ACTION_REFUSED, message, previous=previous.conditions,
            generation=generation, now=iso(now),
        )  # fmt: skip

    out.conditions = [refused(c) for c in out.conditions]
    return with_kstatus(out, previous, generation=generation, now=iso(now))
