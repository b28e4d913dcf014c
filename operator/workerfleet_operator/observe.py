"""The imperative shell's eyes: read pods and Jobs (from the watch cache) and pools and
migrations (from PostgreSQL) into an Observation. Errors become fields the planner reports
as conditions, never exceptions that stop the loop."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import psycopg
from kubernetes import client

from fleet_worker.db import ReconnectingConnection, Schema
from fleet_worker.errors import DatabaseUnavailableError
from fleet_worker.migrate import applied_migrations
from fleet_worker.pools import pools_report
from fleet_worker.protocol import LEASES
from workerfleet_operator.builders import ANNOTATION_TARGET, CONTAINER, LABEL_REVISION
from workerfleet_operator.cache import ChildCache, SecretCache
from workerfleet_operator.models import GROUP, WorkerFleetSpec
from workerfleet_operator.observation import (
    JobInfo,
    MigrationInfo,
    Observation,
    PodInfo,
    PoolInfo,
    QueueInfo,
)
from workerfleet_operator.planner import APPROVAL_ANNOTATION, START_FAILURES, last_line


def _dt(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def pod_info(pod: dict[str, Any]) -> PodInfo:
    """From the pod as the API serves it (JSON)."""
    meta, status = pod["metadata"], pod.get("status") or {}
    conditions = status.get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    workers = [c for c in status.get("containerStatuses") or [] if c.get("name") == CONTAINER]
    exit_code = finished = waiting = ended_before = message = waiting_message = None
    restarts = 0
    running = False
    if workers:
        worker = workers[0]
        restarts = int(worker.get("restartCount") or 0)
        state, last = worker.get("state") or {}, worker.get("lastState") or {}
        terminated = state.get("terminated") or last.get("terminated")
        if terminated:
            exit_code, finished = terminated.get("exitCode"), _dt(terminated.get("finishedAt"))
            message = terminated.get("message") or None
        waiting = (state.get("waiting") or {}).get("reason")
        waiting_message = (state.get("waiting") or {}).get("message")
        running = "running" in state
        ended_before = container_ended_before(state, last)
    return PodInfo(
        name=meta["name"],
        revision=(meta.get("labels") or {}).get(LABEL_REVISION, ""),
        version=(meta.get("annotations") or {}).get(f"{GROUP}/version", ""),
        created_at=_dt(meta.get("creationTimestamp")) or datetime.now(UTC),
        phase=status.get("phase") or "Pending",
        ready=ready,
        terminating=meta.get("deletionTimestamp") is not None,
        restarts=restarts,
        last_exit_code=exit_code,
        last_finished_at=finished,
        waiting_reason=waiting,
        running=running,
        ended_before=ended_before,
        last_message=message,
        uid=meta.get("uid"),
        waiting_message=waiting_message,
    )


def container_ended_before(state: dict[str, Any], last: dict[str, Any]) -> datetime | None:
    """A time on the node's clock before which every process of this container has ended:
    the current container's start (all earlier ones ended first), else the end of the one
    that terminated. The kubelet truncates these to the second, which only moves them
    earlier: a process that started after them is never taken for ended."""
    if "running" in state:
        return _dt((state["running"] or {}).get("startedAt"))
    terminated = state.get("terminated") or last.get("terminated")
    if terminated:
        return _dt(terminated.get("finishedAt"))
    return None


def job_info(job: dict[str, Any]) -> JobInfo:
    meta, conditions = job["metadata"], (job.get("status") or {}).get("conditions") or []
    failed = next(
        (c for c in conditions if c.get("type") == "Failed" and c.get("status") == "True"), None
    )
    complete = any(c.get("type") == "Complete" and c.get("status") == "True" for c in conditions)
    return JobInfo(
        name=meta["name"],
        target=(meta.get("annotations") or {}).get(ANNOTATION_TARGET, ""),
        revision=(meta.get("labels") or {}).get(LABEL_REVISION, ""),
        active=not complete and failed is None,
        succeeded=complete,
        failed=failed is not None,
        message=f"{failed.get('reason')}: {failed.get('message')}" if failed else "",
    )


JOB_NAME_LABELS = ("batch.kubernetes.io/job-name", "job-name")


def pod_problem(pod: dict[str, Any]) -> str | None:
    """Why this pod cannot start, in the kubelet's or the scheduler's words, or None."""
    status = pod.get("status") or {}
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in START_FAILURES:
            return f"{waiting['reason']}: {waiting.get('message') or 'no message'}"
    for c in status.get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False":
            return f"{c.get('reason') or 'Unschedulable'}: {c.get('message') or 'no message'}"
    return None


def _termination_tail(pod: dict[str, Any]) -> str | None:
    """The last line of what the pod's container said when it ended (its termination
    message, or the log tail the kubelet put there)."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        tail = last_line(((cs.get("state") or {}).get("terminated") or {}).get("message"))
        if tail:
            return tail
    return None


def _job_pods_say(
    core: client.CoreV1Api, children: ChildCache, namespace: str, name: str, jobs: list[JobInfo]
) -> list[JobInfo]:
    """What the pods of active and failed Jobs tell: why an active Job's pod cannot start (a
    Job without any pod was refused at creation: its FailedCreate Event says why), and how
    a failed Job's pod ended. Looked at only while such a Job exists."""
    if not any(j.active or j.failed for j in jobs):
        return jobs
    pods = children.objects("pods", namespace, name, "migration")
    by_job: dict[str, list[dict[str, Any]]] = {}
    for pod in pods:
        labels = pod["metadata"].get("labels") or {}
        owner = next((labels[k] for k in JOB_NAME_LABELS if k in labels), None)
        if owner is not None:
            by_job.setdefault(owner, []).append(pod)
    return [_job_with_pods(core, namespace, job, by_job.get(job.name, [])) for job in jobs]


def _job_with_pods(
    core: client.CoreV1Api, namespace: str, job: JobInfo, job_pods: list[dict[str, Any]]
) -> JobInfo:
    job_pods = sorted(job_pods, key=lambda p: p["metadata"].get("creationTimestamp") or "")
    if job.failed:
        tails = [t for t in (_termination_tail(p) for p in job_pods) if t]
        return replace(job, message=f"{job.message}; its pod said: {tails[-1]}") if tails else job
    if not job.active:
        return job
    problems = [p for p in (pod_problem(pod) for pod in job_pods) if p]
    if job_pods:
        return replace(job, blocked=problems[-1]) if len(problems) == len(job_pods) else job
    events = items(
        core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={job.name},reason=FailedCreate",
            _preload_content=False,
        )
    )  # fmt: skip
    if not events:
        return job
    last = max(events, key=lambda e: e.get("lastTimestamp") or "")
    return replace(job, blocked=f"FailedCreate: {last.get('message') or 'no message'}")


def items(response: Any) -> list[dict[str, Any]]:
    """A list call made with `_preload_content=False`, as plain JSON objects: cheaper than
    the client's models and free of their Optional-everything types."""
    data: dict[str, Any] = json.loads(response.data)
    return list(data.get("items") or [])


def pool_info(row: dict[str, Any]) -> PoolInfo:
    return PoolInfo(
        pool_id=row["pool_id"],
        fleet=row["fleet"] or "",
        pod_name=row["pod_name"],
        version=row["version"],
        state=row["state"],
        live=bool(row["live"]),
        started_at=_dt(row["started_at"]) or datetime.now(UTC),
        catalog=tuple(MigrationInfo(str(m["id"]), bool(m["breaking"])) for m in row["catalog"]),
        running_jobs=int(row["running_jobs"] or 0),
        host_started_at=_dt(row["host_started_at"]),
        sweep_threshold_s=row["sweep_threshold_s"],
        pod_uid=row["pod_uid"],
    )


class Databases:
    """One connection per database URL, reused across reconciles, reopened after errors.
    URLs stay in memory only: never logged, never written to status."""

    def __init__(self) -> None:
        self._conns: dict[str, ReconnectingConnection] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._ok_since: dict[str, float] = {}
        self._lock = threading.Lock()

    def ok_for(self, url: str) -> float:
        """Seconds of error-free reads of this database, counted from the first success
        after the last error (or after this operator started)."""
        since = self._ok_since.get(url)
        return 0.0 if since is None else time.monotonic() - since

    def run(self, url: str, fn: Any) -> Any:
        # One lock per database: a connection is used by one reconcile at a time, and an
        # unreachable database stalls only the fleets that use it.
        with self._lock:
            lock = self._locks.setdefault(url, threading.Lock())
        with lock:
            conn = self._conns.setdefault(url, ReconnectingConnection(url, timeout=5))
            try:
                result = conn.run(fn)
            except DatabaseUnavailableError:
                self._ok_since.pop(url, None)
                raise
            self._ok_since.setdefault(url, time.monotonic())
            return result

    def close(self) -> None:
        with self._lock:
            for conn in self._conns.values():
                with contextlib.suppress(Exception):
                    conn.close()
            self._conns.clear()


QUEUE_COUNT_CAP = 10_000


def queue_info(conn: psycopg.Connection, schema: Schema) -> QueueInfo:
    """Runnable jobs, counted along the fetch index up to a cap (a count of millions every
    reconcile would cost more than the answer is worth), and the oldest run_at among them."""
    row = conn.execute(
        schema.q(
            """select count(*), extract(epoch from now() - min(run_at))::float8 from (
                   select run_at from {s}.jobs
                   where locked_by is null and attempts < max_attempts and run_at <= now()
                   order by priority, run_at, id limit %s) runnable"""
        ),
        [QUEUE_COUNT_CAP],
    ).fetchone()
    assert row is not None
    return QueueInfo(runnable=int(row[0]), oldest_age_s=row[1])


def observe(
    *,
    core: client.CoreV1Api,
    children: ChildCache,
    secrets: SecretCache,
    dbs: Databases,
    name: str,
    namespace: str,
    spec: WorkerFleetSpec,
    annotations: dict[str, str],
) -> tuple[Observation, str | None]:
    """The observation, and the database URL when it could be read."""
    pods = children.objects("pods", namespace, name, "worker")
    jobs = children.objects("jobs", namespace, name, "migration")
    base = Observation(
        pods=tuple(pod_info(p) for p in pods),
        pools=(),
        applied=(),
        jobs=tuple(_job_pods_say(core, children, namespace, name, [job_info(j) for j in jobs])),
        approved_migration=annotations.get(APPROVAL_ANNOTATION),
    )
    ref = spec.database.secret_ref
    try:
        url = secrets.url(namespace, ref.name, ref.key)
    except LookupError as exc:
        return replace(base, secret_error=str(exc)), None
    schema = Schema(spec.schema_name)
    threshold = spec.seconds("sweep_threshold")

    def read(conn: psycopg.Connection) -> tuple[list[Any], list[dict[str, Any]], QueueInfo | None]:
        applied = applied_migrations(conn, schema)
        leased = any(m.id == LEASES for m in applied)
        rows = (
            pools_report(conn, schema, threshold, recent_only=True, leased=leased)
            if applied
            else []
        )
        queue = queue_info(conn, schema) if applied and spec.replicas == 0 else None
        return applied, rows, queue

    try:
        applied, rows, queue = dbs.run(url, read)
    except (DatabaseUnavailableError, psycopg.Error) as exc:
        secrets.invalidate(namespace, ref.name, ref.key)  # perhaps rotated: read it again
        return replace(base, database_error=str(exc).splitlines()[0]), url
    return (
        replace(
            base,
            applied=tuple(MigrationInfo(m.id, m.breaking) for m in applied),
            pools=tuple(pool_info(r) for r in rows),
            database_ok_for_s=dbs.ok_for(url),
            queue=queue,
        ),
        url,
    )
