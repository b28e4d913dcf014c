"""Kubernetes objects the operator creates: worker pods and migration Jobs. Pure: spec in,
manifest out; the revision hash is what makes a pod outdated."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from workerfleet_operator.models import GROUP, KIND, VERSION, WorkerFleetSpec
from workerfleet_operator.planner import migration_job_name

LABEL_FLEET = f"{GROUP}/fleet"
LABEL_REVISION = f"{GROUP}/revision"
LABEL_VERSION = f"{GROUP}/version"
LABEL_COMPONENT = "app.kubernetes.io/component"
ANNOTATION_TARGET = f"{GROUP}/migration-target"
CONTAINER = "worker"
# Pods get this long beyond the worker's own graceful timeout to release and exit.
GRACE_MARGIN_S = 15


def fleet_id(namespace: str, name: str) -> str:
    """What pools record as their fleet: namespaced, so same-named fleets in two namespaces
    sharing one schema never act on each other's pools."""
    return f"{namespace}/{name}"


def _label_value(text: str) -> str:
    value = re.sub(r"[^A-Za-z0-9_.-]", "-", text)[:63].strip("-_.")
    return value or "none"


# Defaults every worker and migration pod gets unless its template says otherwise (the
# restricted Pod Security Standard); the CRD refuses privileged containers outright.
POD_SECURITY = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def _database_env(spec: WorkerFleetSpec) -> list[dict[str, Any]]:
    ref = spec.database.secret_ref
    return [
        {"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}},
        {"name": "FLEET_SCHEMA", "value": spec.schema_name},
    ]


def _pod_env(name: str, spec: WorkerFleetSpec) -> list[dict[str, Any]]:
    return [
        *_database_env(spec),
        {"name": "WORKER_VERSION", "value": spec.version},
        {"name": "WORKER_IMAGE", "value": spec.image_ref},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        *spec.template.env,
    ]


def _container_extras(spec: WorkerFleetSpec) -> dict[str, Any]:
    """What the template sets on every container the operator runs: security (over the
    locked-down defaults) and resources."""
    t = spec.template
    security = dict(CONTAINER_SECURITY)
    if t.container_security_context is not None:
        security.update(t.container_security_context.model_dump(by_alias=True, exclude_none=True))
    extras: dict[str, Any] = {"securityContext": security}
    if t.resources is not None:
        extras["resources"] = _quantities_as_strings(t.resources)
    return extras


def _quantities_as_strings(resources: dict[str, Any]) -> dict[str, Any]:
    """`cpu: 1` is a quantity in YAML (int-or-string); the Kubernetes client takes strings."""
    out = dict(resources)
    for part in ("limits", "requests"):
        values = out.get(part)
        if isinstance(values, dict):
            out[part] = {
                k: str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v
                for k, v in values.items()
            }
    return out


def _pod_extras(spec: WorkerFleetSpec) -> dict[str, Any]:
    """What the template sets on every pod the operator runs, worker or migration Job: where
    it may be scheduled, as whom it runs, where its image comes from."""
    t = spec.template
    optional = {
        "nodeSelector": t.node_selector or None,
        "tolerations": t.tolerations or None,
        "affinity": t.affinity,
        "serviceAccountName": t.service_account_name,
        "imagePullSecrets": t.image_pull_secrets or None,
        "priorityClassName": t.priority_class_name,
    }
    return {
        "securityContext": {**POD_SECURITY, **(t.security_context or {})},
        "automountServiceAccountToken": t.automount_service_account_token,
        **{k: v for k, v in optional.items() if v is not None},
    }


def worker_args(name: str, spec: WorkerFleetSpec, namespace: str) -> list[str]:
    return [
        "run",
        "--app", spec.app,
        "--migrations", "external",
        "--fleet", fleet_id(namespace, name),
        "--worker-version", spec.version,
        "--concurrency", str(spec.concurrency),
        "--heartbeat-interval", spec.heartbeat_interval,
        "--sweep-interval", spec.sweep_interval,
        "--sweep-threshold", spec.sweep_threshold,
        "--max-migration-wait-time", spec.max_migration_wait_time,
        "--graceful-shutdown-timeout", spec.graceful_shutdown_timeout,
        "--health-port", str(spec.health_port),
        # Only when set: a new flag on every pod would change the revision of every fleet
        # and roll all their pods when the operator is upgraded.
        *(["--local-queue-size", str(spec.local_queue_size)] if spec.local_queue_size else []),
        *(["--keep-history", spec.keep_history] if spec.keep_history else []),
        *spec.args,
    ]  # fmt: skip


def _pod_spec(name: str, spec: WorkerFleetSpec, namespace: str) -> dict[str, Any]:
    port = spec.health_port
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": spec.image_ref,
        "command": ["fleet-worker"],
        "args": worker_args(name, spec, namespace),
        "env": _pod_env(name, spec),
        "ports": [{"name": "health", "containerPort": port}],
        # The worker writes why it exits to /dev/termination-log; if it could not (it died
        # before), the kubelet puts the tail of its log there.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": port},
            "periodSeconds": 2,
            "failureThreshold": 2,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": port},
            "periodSeconds": 10,
            "failureThreshold": 3,
            "initialDelaySeconds": 10,
        },
        **_container_extras(spec),
    }
    return {
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": int(spec.seconds("graceful_shutdown_timeout"))
        + GRACE_MARGIN_S,
        "containers": [container],
        **_pod_extras(spec),
    }


def revision(name: str, spec: WorkerFleetSpec, namespace: str) -> str:
    """Hash of everything that makes one worker pod differ from another; replicas, rollout
    settings and pause do not count."""
    material = {
        "pod": _pod_spec(name, spec, namespace),
        "labels": spec.template.labels,
        "annotations": spec.template.annotations,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


def _owner(name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def worker_pod(
    name: str, uid: str, spec: WorkerFleetSpec, rev: str, namespace: str, pod_name: str = ""
) -> dict[str, Any]:
    """The pod of one slot; `pod_name` (from the planner) makes it deterministic."""
    labels = {
        **spec.template.labels,
        "app.kubernetes.io/name": "workerfleet",
        LABEL_COMPONENT: "worker",
        LABEL_FLEET: name,
        LABEL_REVISION: rev,
        LABEL_VERSION: _label_value(spec.version),
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            **({"name": pod_name} if pod_name else {"generateName": f"{name}-{rev[:6]}-"}),
            "labels": labels,
            "annotations": {**spec.template.annotations, f"{GROUP}/version": spec.version},
            "ownerReferences": [_owner(name, uid)],
        },
        "spec": _pod_spec(name, spec, namespace),
    }


def migration_job(name: str, uid: str, spec: WorkerFleetSpec, rev: str, to: str) -> dict[str, Any]:
    """The Job that migrates to `to`, from the target image, scheduled and secured as the
    worker pods are (a Job the registry, the namespace's policy or the nodes refuse would
    leave the fleet migrating forever)."""
    container: dict[str, Any] = {
        "name": "migrate",
        "image": spec.image_ref,
        "command": ["fleet-worker"],
        "args": [
            "migrate",
            "--app", spec.app,
            "--to", to,
            "--sweep-threshold", spec.sweep_threshold,
            "--force-after", spec.max_migration_wait_time,
        ],
        "env": [*_database_env(spec), *spec.template.env],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        **_container_extras(spec),
    }  # fmt: skip
    labels = {
        LABEL_FLEET: name,
        LABEL_REVISION: rev,
        LABEL_COMPONENT: "migration",
        LABEL_VERSION: _label_value(spec.version),
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": migration_job_name(name, rev, to),
            "labels": labels,
            "annotations": {ANNOTATION_TARGET: to},
            "ownerReferences": [_owner(name, uid)],
        },
        "spec": {
            "backoffLimit": spec.migration_job.backoff_limit,
            "activeDeadlineSeconds": spec.migration_job.active_deadline_seconds,
            "ttlSecondsAfterFinished": 3600,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [container],
                    **_pod_extras(spec),
                },
            },
        },
    }
