"""What the operator sees, as plain frozen data: pods from the API, pools and schema from
PostgreSQL, the migration Job. The planner is a pure function of this."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from fleet_worker.exit_codes import ExitCode
from fleet_worker.protocol import LIVE_STATES

LIVE_POOL_STATES = frozenset(LIVE_STATES)
EXIT_OUT_OF_DATE = int(ExitCode.OUT_OF_DATE)


@dataclass(frozen=True)
class PodInfo:
    name: str
    revision: str
    version: str
    created_at: datetime
    phase: str  # Pending, Running, Succeeded, Failed
    ready: bool
    terminating: bool
    restarts: int = 0
    # The last time a worker container ended and how (from containerStatuses).
    last_exit_code: int | None = None
    last_finished_at: datetime | None = None
    waiting_reason: str | None = None
    running: bool = True  # the worker container is running now
    # On the node's clock: every worker process of this pod that started before this time
    # has ended (the current container's startedAt, or the finishedAt of the last one).
    ended_before: datetime | None = None
    last_message: str | None = None  # the last termination message (or log tail)
    uid: str | None = None
    waiting_message: str | None = None


@dataclass(frozen=True)
class MigrationInfo:
    id: str
    breaking: bool


@dataclass(frozen=True)
class PoolInfo:
    pool_id: str
    fleet: str
    pod_name: str | None
    version: str
    state: str
    live: bool  # live state and a fresh heartbeat
    started_at: datetime
    catalog: tuple[MigrationInfo, ...]
    running_jobs: int = 0
    # The pool's start on its own host's clock (None: a release before core/0002).
    host_started_at: datetime | None = None
    sweep_threshold_s: float | None = None  # its own lease (None: judged by the fleet's)
    pod_uid: str | None = None  # the pod it ran in (pod names are reused by slot)

    def ran_in(self, pod: PodInfo) -> bool:
        """Registered by this very pod: same name and, where recorded, the same uid."""
        return self.pod_name == pod.name and self.pod_uid in (None, pod.uid)

    def knows(self, migration_id: str) -> bool:
        return any(m.id == migration_id for m in self.catalog)


@dataclass(frozen=True)
class JobInfo:
    name: str
    target: str  # the migration id it migrates to
    revision: str
    active: bool
    succeeded: bool
    failed: bool
    message: str = ""
    blocked: str = ""  # why its pod cannot start (image pull, config, scheduling, admission)


@dataclass(frozen=True)
class QueueInfo:
    """Runnable jobs waiting (counted up to a cap) and the oldest one's age: read only at
    replicas 0, where a backlog would otherwise go unseen."""

    runnable: int
    oldest_age_s: float | None


@dataclass(frozen=True)
class Observation:
    pods: tuple[PodInfo, ...]
    pools: tuple[PoolInfo, ...]  # every pool of this schema, in and outside Kubernetes
    applied: tuple[MigrationInfo, ...]
    jobs: tuple[JobInfo, ...] = ()
    approved_migration: str | None = None  # from the approval annotation
    database_error: str | None = None
    secret_error: str | None = None
    # How long the operator has read this database without an error (since its own start
    # at most). Until that covers a sweep threshold, a pool's silence may be the outage's.
    database_ok_for_s: float = float("inf")
    queue: QueueInfo | None = None

    def pool_of(self, pod: PodInfo) -> PoolInfo | None:
        """The newest pool registered by this pod (a restarted container registers anew)."""
        mine = [p for p in self.pools if p.ran_in(pod)]
        return max(mine, key=lambda p: p.started_at) if mine else None
