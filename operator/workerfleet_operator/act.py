"""The imperative shell's hands: carry out one planned action and write the status.
Every call here is idempotent or guarded, so an operator restarted at any point neither
repeats a migration nor skips a step."""

from __future__ import annotations

import logging
from typing import Any, assert_never

import psycopg
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from fleet_worker.db import Schema
from fleet_worker.migrate import evict_outdated_pools, lock_migrations
from fleet_worker.pools import declare_dead
from workerfleet_operator import builders
from workerfleet_operator.cache import ChildCache
from workerfleet_operator.events import EventSink
from workerfleet_operator.models import (
    GROUP,
    PLURAL,
    VERSION,
    EventReason,
    WorkerFleetSpec,
    WorkerFleetStatus,
)
from workerfleet_operator.observe import Databases
from workerfleet_operator.planner import (
    Action,
    CreatePod,
    DeleteJob,
    DeletePod,
    EvictOutdated,
    NoAction,
    ReleasePools,
    RunMigration,
)

log = logging.getLogger("workerfleet_operator")


class RefusedError(RuntimeError):
    """The action cannot succeed as planned, for a reason the status should state."""


class Fleet:
    """Who the actions are for: the fleet's identity and its clients."""

    def __init__(
        self,
        *,
        name: str,
        namespace: str,
        uid: str,
        spec: WorkerFleetSpec,
        revision: str,
        core: client.CoreV1Api,
        batch: client.BatchV1Api,
        custom: client.CustomObjectsApi,
        dbs: Databases,
        events: EventSink,
        children: ChildCache,
        url: str | None,
    ) -> None:
        self.name, self.namespace, self.uid = name, namespace, uid
        self.spec, self.revision = spec, revision
        self.core, self.batch, self.custom, self.dbs, self.url = core, batch, custom, dbs, url
        self.events, self.children = events, children

    def wrote(self, kind: str, obj: Any) -> None:
        """What the API server returned for an object we made: into the cache at once, so
        the next reconcile sees it before the watch event arrives."""
        data = self.core.api_client.sanitize_for_serialization(obj)
        self.children.wrote(kind, self.namespace, self.name, data)


def act(fleet: Fleet, action: Action) -> str:
    """Carry out `action`; returns a one-line description for events and logs. Every
    action has its case: a new one the planner can return fails mypy here (assert_never)."""
    match action:
        case NoAction():
            return action.reason
        case CreatePod():
            return _create_pod(fleet, action)
        case DeletePod() | DeleteJob():
            return _delete(fleet, action)
        case RunMigration():
            return _run_migration(fleet, action)
        case ReleasePools() | EvictOutdated():
            return _database_action(fleet, action)
        case _:
            assert_never(action)


def _create_pod(fleet: Fleet, action: CreatePod) -> str:
    body = builders.worker_pod(
        fleet.name, fleet.uid, fleet.spec, fleet.revision, fleet.namespace, action.name
    )
    try:
        # The client accepts plain manifests; its stubs only name its model classes.
        pod = fleet.core.create_namespaced_pod(fleet.namespace, body)  # type: ignore[arg-type]
    except ApiException as exc:
        if exc.status != 409 or not action.name:
            raise
        # Created already (by us before a restart, or by another replica on the same view):
        # the slot is taken, which is what this action wanted, if the pod is this fleet's.
        existing = fleet.core.read_namespaced_pod(action.name, fleet.namespace)
        owners = (existing.metadata.owner_references if existing.metadata else None) or []
        if not any(o.uid == fleet.uid for o in owners):
            raise RefusedError(
                f"a pod named {action.name} exists and does not belong to this fleet; "
                "delete or rename it"
            ) from exc
        fleet.wrote("pods", existing)
        return f"pod {action.name} exists already ({action.reason})"
    fleet.wrote("pods", pod)
    return f"created pod {pod.metadata.name if pod.metadata else '?'} ({action.reason})"


def _delete(fleet: Fleet, action: DeletePod | DeleteJob) -> str:
    """Deletions are idempotent: already gone is done."""
    try:
        if isinstance(action, DeletePod):
            fleet.core.delete_namespaced_pod(action.name, fleet.namespace)
        else:
            fleet.batch.delete_namespaced_job(
                action.name, fleet.namespace, propagation_policy="Background"
            )
    except ApiException as exc:
        if exc.status != 404:
            raise
    fleet.children.deleting(
        "pods" if isinstance(action, DeletePod) else "jobs", fleet.namespace, fleet.name,
        action.name,
    )  # fmt: skip
    kind = "pod" if isinstance(action, DeletePod) else "migration Job"
    return f"deleting {kind} {action.name} ({action.reason})"


def _run_migration(fleet: Fleet, action: RunMigration) -> str:
    job = builders.migration_job(fleet.name, fleet.uid, fleet.spec, fleet.revision, action.to)
    name = job["metadata"]["name"]
    try:
        created = fleet.batch.create_namespaced_job(fleet.namespace, job)  # type: ignore[arg-type]
    except ApiException as exc:
        if exc.status != 409:
            raise
        # Created before a restart: never a second Job; but it must be the same one.
        existing = fleet.batch.read_namespaced_job(name, fleet.namespace)
        annotations = (existing.metadata.annotations if existing.metadata else None) or {}
        if annotations.get(builders.ANNOTATION_TARGET) != action.to:
            raise RuntimeError(f"Job {name} exists for another migration target") from exc
        created = existing
    fleet.wrote("jobs", created)
    return f"migration Job {name} applies up to {action.to}"


def _database_action(fleet: Fleet, action: ReleasePools | EvictOutdated) -> str:
    if fleet.url is None:
        raise RuntimeError("no database URL")
    schema = Schema(fleet.spec.schema_name)
    threshold = fleet.spec.seconds("sweep_threshold")
    if isinstance(action, ReleasePools):
        done = fleet.dbs.run(
            fleet.url, lambda c: declare_dead(c, schema, list(action.pool_ids), action.reason)
        )
        return f"released the jobs of pool(s) {', '.join(done) or 'none'} ({action.reason})"

    def evict(conn: psycopg.Connection) -> list[str]:
        with conn.transaction():
            # The migration lock keeps this from interleaving with a running migration.
            lock_migrations(conn, schema)
            return evict_outdated_pools(conn, schema, action.migration, threshold, action.reason)

    evicted = fleet.dbs.run(fleet.url, evict)
    return f"evicted pool(s) {', '.join(evicted) or 'none'} before {action.migration}"


def write_status(fleet: Fleet, status: WorkerFleetStatus) -> None:
    body: dict[str, Any] = {"status": status.model_dump(by_alias=True, mode="json")}
    fleet.custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, fleet.namespace, PLURAL, fleet.name, body
    )


def post_event(fleet: Fleet, type_: str, reason: EventReason, message: str) -> None:
    """A core/v1 Event on the fleet, for `kubectl describe wf` and `kubectl get events`;
    repeats are aggregated (workerfleet_operator.events)."""
    fleet.events.post(
        namespace=fleet.namespace, name=fleet.name, uid=fleet.uid,
        type_=type_, reason=reason, message=message,
    )  # fmt: skip


MAX_LABEL_VALUE = 63


def drain_fleet(core: client.CoreV1Api, namespace: str, name: str) -> int:
    """Delete the fleet's worker pods gracefully (each releases its jobs); returns how many
    are still there. A name that cannot be a label value labels no pod: nothing to drain."""
    if len(name) > MAX_LABEL_VALUE:
        return 0
    selector = f"{builders.LABEL_FLEET}={name},{builders.LABEL_COMPONENT}=worker"
    pods = core.list_namespaced_pod(namespace, label_selector=selector).items
    for pod in pods:
        if pod.metadata and pod.metadata.name and not pod.metadata.deletion_timestamp:
            try:
                core.delete_namespaced_pod(pod.metadata.name, namespace)
            except ApiException as exc:
                if exc.status != 404:
                    raise
    return len(pods)
