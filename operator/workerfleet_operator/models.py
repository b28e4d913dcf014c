"""The WorkerFleet resource: pydantic models that are the single source of truth for the CRD
schema (`make crds` generates `crds/` from them) and for what the operator reads."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fleet_worker.durations import parse_duration

GROUP = "workerfleet.dev"
VERSION = "v1alpha1"
KIND = "WorkerFleet"
PLURAL = "workerfleets"
SHORT_NAMES = ["wf"]

# Go-style durations as the worker CLI accepts them; CEL's duration() reads the same form.
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
# A container image tag / version label: what users bump.
VERSION_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"
SCHEMA_PATTERN = r"^[a-z_][a-z0-9_]{0,62}$"
APP_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.]*(:[A-Za-z_][A-Za-z0-9_]*)?$"

Duration = Annotated[str, Field(pattern=DURATION_PATTERN, max_length=32)]


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


class Model(BaseModel):
    model_config = ConfigDict(alias_generator=_camel, populate_by_name=True, extra="forbid")


class SecretKeyRef(Model):
    name: str = Field(min_length=1, max_length=253, description="Secret in the fleet's namespace")
    key: str = Field("url", min_length=1, max_length=253, description="key holding the URL")


class DatabaseSpec(Model):
    secret_ref: SecretKeyRef = Field(description="Secret key holding the PostgreSQL URL")


class RolloutSpec(Model):
    max_surge: int = Field(1, ge=0, le=100, description="extra pods during a rollout")
    max_unavailable: int = Field(0, ge=0, le=100, description="ready pods that may be missing")
    progress_deadline_seconds: int = Field(
        600, ge=10, le=86400, description="Progressing=False after this long without finishing"
    )
    breaking_migration_approval: Literal["Automatic", "Manual"] = Field(
        "Automatic",
        description="Manual: breaking migrations wait for the annotation "
        "workerfleet.dev/approve-migration=<migration id>",
    )


class ContainerSecurityContext(Model):
    """A core/v1 SecurityContext, kept as written; typed only where the CRD checks it."""

    model_config = ConfigDict(alias_generator=_camel, populate_by_name=True, extra="allow")

    privileged: bool | None = None


class PodTemplate(Model):
    """What users may set on worker pods; the operator owns the rest."""

    model_config = ConfigDict(alias_generator=_camel, populate_by_name=True, extra="forbid")

    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    # Kept as written: quantities may be numbers or strings (`cpu: 1`, `memory: 64Mi`), and
    # a malformed one is reported in the API server's words when the pod is refused.
    resources: dict[str, Any] | None = Field(None, json_schema_extra={"preserve": True})
    env: list[dict[str, Any]] = Field(default_factory=list, json_schema_extra={"preserve": True})
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list, json_schema_extra={"preserve": True}
    )
    affinity: dict[str, Any] | None = Field(None, json_schema_extra={"preserve": True})
    security_context: dict[str, Any] | None = Field(None, json_schema_extra={"preserve": True})
    container_security_context: ContainerSecurityContext | None = Field(
        None, json_schema_extra={"preserve": True}
    )
    service_account_name: str | None = Field(None, max_length=253)
    automount_service_account_token: bool = Field(
        False,
        description="mount the service account's API token into worker and migration pods; "
        "off by default: workers need no Kubernetes API",
    )
    image_pull_secrets: list[dict[str, str]] = Field(default_factory=list)
    priority_class_name: str | None = None


class MigrationJobSpec(Model):
    active_deadline_seconds: int = Field(
        1800,
        ge=60,
        le=604800,
        description="the migration Job fails after this long (it includes any wait of a "
        "breaking migration, so it must exceed maxMigrationWaitTime)",
    )
    backoff_limit: int = Field(1, ge=0, le=10, description="retries of a failed migration pod")


class WorkerFleetSpec(Model):
    version: str = Field(pattern=VERSION_PATTERN, description="the release to run; bump it")
    image: str = Field(
        min_length=1,
        max_length=512,
        description="image repository (pods run image:version) or a full reference with "
        "a tag or digest",
    )
    replicas: int = Field(2, ge=0, le=1000, description="worker pods (one pool each)")
    database: DatabaseSpec = Field(description="where the queue lives")
    schema_name: str = Field(
        "fleet_worker", alias="schema", pattern=SCHEMA_PATTERN, description="queue schema"
    )
    app: str = Field(pattern=APP_PATTERN, max_length=256, description="module[:attr] of the App")
    args: list[str] = Field(default_factory=list, description="extra `fleet-worker run` args")
    concurrency: int = Field(10, ge=1, le=1000, description="jobs at once per pod")
    local_queue_size: int = Field(
        0,
        ge=0,
        le=10_000,
        description="jobs each pod fetches ahead and holds beyond the running ones, so a "
        "freed slot starts the next job without a round trip (0: off; docs/worker.md, "
        "Local queue)",
    )
    heartbeat_interval: Duration = Field("10s", description="how often each pool heartbeats")
    sweep_interval: Duration = Field("30s", description="how often workers sweep dead pools")
    sweep_threshold: Duration = Field(
        "60s", description="a pool silent this long is dead and its jobs are released"
    )
    max_migration_wait_time: Duration = Field(
        "10m",
        description="how long a breaking migration waits for outdated pools before "
        "evicting them and releasing their jobs",
    )
    graceful_shutdown_timeout: Duration = Field(
        "30s", description="time running jobs get after SIGTERM before they are released"
    )
    health_port: int = Field(
        8080, ge=1, le=65535, description="/healthz, /readyz and /metrics of each worker"
    )
    keep_history: Duration | None = Field(
        None,
        description="record completed jobs (what ran, when, on which pod) and keep them this "
        "long, e.g. 168h; unset: not recorded (docs/worker.md, Job history)",
    )
    # A default for the whole block in the CRD (crdgen writes the nested defaults into it)
    # makes the API server fill in and CEL-check the rollout settings when users omit it,
    # so `kubectl get -o yaml` shows the effective values.
    rollout: RolloutSpec = Field(
        default_factory=RolloutSpec,
        json_schema_extra={"default": {}},
    )
    migration_job: MigrationJobSpec = Field(
        default_factory=MigrationJobSpec, json_schema_extra={"default": {}}
    )
    paused: bool = Field(False, description="stop all rollout actions")
    template: PodTemplate = Field(
        default_factory=PodTemplate,
        description="labels, annotations, resources, env, scheduling and security of pods",
    )

    @property
    def image_ref(self) -> str:
        """The pod image: a reference with a tag or digest is used as written."""
        last = self.image.rsplit("/", 1)[-1]
        if "@" in self.image or ":" in last:
            return self.image
        return f"{self.image}:{self.version}"

    def seconds(self, field: str) -> float:
        return parse_duration(str(getattr(self, field)))


# Rules that span fields, enforced by the API server (CEL).
ROOT_VALIDATIONS = [
    {
        "rule": "size(self.metadata.name) <= 63",
        "message": "metadata.name must be at most 63 characters: the fleet's name labels its "
        "pods and Jobs, and label values are limited to 63",
    },
]
SPEC_VALIDATIONS = [
    {
        "rule": "duration(self.sweepThreshold) >= duration(self.heartbeatInterval) + "
        "duration(self.heartbeatInterval)",
        "message": "sweepThreshold must be at least twice heartbeatInterval, or live pools "
        "would be declared dead between heartbeats",
        "fieldPath": ".sweepThreshold",
    },
    {
        "rule": "duration(self.heartbeatInterval) > duration('0s') && "
        "duration(self.sweepInterval) > duration('0s')",
        "message": "heartbeatInterval and sweepInterval must be positive",
        "fieldPath": ".heartbeatInterval",
    },
    {
        "rule": "self.migrationJob.activeDeadlineSeconds > "
        "duration(self.maxMigrationWaitTime).getSeconds()",
        "message": "migrationJob.activeDeadlineSeconds must exceed maxMigrationWaitTime, or "
        "the Job would be stopped while a breaking migration still waits",
        "fieldPath": ".migrationJob.activeDeadlineSeconds",
    },
]
# What a WorkerFleet may not ask of its pods, whoever may create one (see docs/security.md).
TEMPLATE_VALIDATIONS = [
    {
        "rule": "!has(self.containerSecurityContext) || self.containerSecurityContext == null || "
        "!has(self.containerSecurityContext.privileged) || "
        "self.containerSecurityContext.privileged != true",
        "message": "privileged worker containers are refused",
        "fieldPath": ".containerSecurityContext.privileged",
    },
]
ROLLOUT_VALIDATIONS = [
    {
        "rule": "self.maxSurge > 0 || self.maxUnavailable > 0",
        "message": "maxSurge and maxUnavailable cannot both be 0: the rollout could not move",
    },
]


class FleetPhase(StrEnum):
    """A fleet's `status.phase`, one word for where its rollout is (docs/operator.md lists
    them with their meaning; a unit test keeps the two equal)."""

    PENDING = "Pending"  # not reconciled yet
    SCALING = "Scaling"  # the replica count changes, the version does not
    ROLLING_OUT = "RollingOut"  # pods of the new version replace the old, one at a time
    MIGRATING = "Migrating"  # a migration Job applies the schema
    WAITING_FOR_DRAIN = "WaitingForDrain"  # a breaking migration waits for old pools
    AWAITING_APPROVAL = "AwaitingApproval"  # a breaking migration waits for the annotation
    RECOVERING = "Recovering"  # the jobs of a pod that ended are being released
    CRASH_LOOP_BACK_OFF = "CrashLoopBackOff"  # new pods keep exiting
    PAUSED = "Paused"  # spec.paused: nothing changes
    DEGRADED = "Degraded"  # new pods cannot start (image, config)
    FAILED = "Failed"  # stalled: it will not get there without a human
    READY = "Ready"  # every replica runs the target, the schema is up to date


class Reason(StrEnum):
    """The reasons on the operator's conditions (docs/operator.md, Conditions). A condition
    away from its goal because of where the rollout is carries the FleetPhase instead."""

    ROLLOUT_COMPLETE = "RolloutComplete"  # Ready
    MINIMUM_REPLICAS_AVAILABLE = "MinimumReplicasAvailable"  # Available
    MINIMUM_REPLICAS_UNAVAILABLE = "MinimumReplicasUnavailable"
    NEW_REVISION_AVAILABLE = "NewRevisionAvailable"  # Progressing
    ROLLOUT_IN_PROGRESS = "RolloutInProgress"
    PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
    PAUSED = "Paused"
    UP_TO_DATE = "UpToDate"  # MigrationsApplied
    PENDING = "Pending"
    CATALOG_UNKNOWN = "CatalogUnknown"
    MIGRATION_RUNNING = "MigrationRunning"
    MIGRATION_JOB_BLOCKED = "MigrationJobBlocked"
    MIGRATION_FAILED = "MigrationFailed"
    FORCING_MIGRATION = "ForcingMigration"
    WAITING_FOR_DRAIN = "WaitingForDrain"
    AWAITING_APPROVAL = "AwaitingApproval"
    ROLLBACK_REFUSED = "RollbackRefused"  # what stalls a fleet, or hides its state
    SECRET_ERROR = "SecretError"  # noqa: S105 - a condition reason, not a secret
    DATABASE_UNAVAILABLE = "DatabaseUnavailable"
    INVALID_SPEC = "InvalidSpec"
    ACTION_REFUSED = "ActionRefused"


class EventReason(StrEnum):
    """The reasons of the Events the operator posts on a fleet (docs/operator.md, Events).
    An action's Event carries the action's label (planner.action_label), which is also the
    `workerfleet_actions_total{action}` label and the plugin's `next_action`: one word for
    the same thing wherever a user or a dashboard meets it."""

    NO_ACTION = "NoAction"  # a label only: a reconcile that did nothing posts no Event
    CREATE_POD = "CreatePod"
    DELETE_POD = "DeletePod"
    DELETE_JOB = "DeleteJob"
    RUN_MIGRATION = "RunMigration"
    RELEASE_POOLS = "ReleasePools"
    EVICT_OUTDATED = "EvictOutdated"
    MIGRATION_STARTED = "MigrationStarted"  # what the planner saw, beside its action
    MIGRATION_SUPERSEDED = "MigrationSuperseded"
    MIGRATION_FAILED = "MigrationFailed"
    MIGRATION_JOB_BLOCKED = "MigrationJobBlocked"
    ROLLBACK_REFUSED = "RollbackRefused"
    POOLS_EVICTED = "PoolsEvicted"
    POOLS_RELEASED = "PoolsReleased"
    PODS_CRASH_LOOPING = "PodsCrashLooping"
    PODS_CANNOT_START = "PodsCannotStart"
    ACTION_FAILED = "ActionFailed"  # the API server or the client refused an action


class Condition(Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str
    observed_generation: int
    last_transition_time: str


def condition_now(
    type_: str,
    status: str,
    reason: str,
    message: str,
    *,
    previous: list[Condition],
    generation: int,
    now: str,
) -> Condition:
    """A condition as written now: it keeps the previous lastTransitionTime while its status
    stays the same (the Kubernetes convention), else the transition is `now`."""
    before = next((c for c in previous if c.type == type_), None)
    kept = before is not None and before.status == status
    return Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        observed_generation=generation,
        last_transition_time=before.last_transition_time if kept and before else now,
    )


class SchemaStatus(Model):
    applied: list[str] = Field(default_factory=list)
    target: list[str] = Field(default_factory=list)
    pending: list[str] = Field(default_factory=list)
    pending_breaking: list[str] = Field(default_factory=list)


class WorkerFleetStatus(Model):
    observed_generation: int = 0
    phase: str = FleetPhase.PENDING
    message: str = ""
    current_version: str | None = None
    target_version: str | None = None
    replicas: int = 0
    updated_replicas: int = 0
    ready_replicas: int = 0
    active_pools: int = 0
    outdated_pools: int = 0
    schema_: SchemaStatus = Field(default_factory=SchemaStatus, alias="schema")
    # One readable string for the `kubectl get` Schema column (printer columns cannot format
    # the lists in `schema`): e.g. "0004", or "0004->0006" while migrations are pending.
    schema_version: str | None = Field(
        None, description="latest applied migration, with the target while one is pending"
    )
    conditions: list[Condition] = Field(default_factory=list)
    queue_runnable: int | None = Field(
        None, description="at replicas 0: runnable jobs waiting (counted up to 10000)"
    )
    queue_oldest_age_seconds: float | None = Field(
        None, description="at replicas 0: how long the oldest runnable job has waited"
    )
    rollout_started_at: str | None = None
    migration_wait_started_at: str | None = None
    migration_wait_for: str | None = None
