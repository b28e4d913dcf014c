"""One reconcile of one fleet: observe, plan, act, write status. A plain function, so the
Kopf handlers stay thin and tests can drive it against a real API server."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, assert_never

import pydantic
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from workerfleet_operator import builders
from workerfleet_operator.act import Fleet, RefusedError, act, post_event, write_status
from workerfleet_operator.cache import ChildCache, SecretCache, api_lister
from workerfleet_operator.dbwatch import DatabaseWatch
from workerfleet_operator.events import EventRecorder, EventSender, EventSink
from workerfleet_operator.kstatus import with_kstatus
from workerfleet_operator.metrics import METRICS
from workerfleet_operator.models import (
    Condition,
    EventReason,
    FleetPhase,
    Reason,
    WorkerFleetSpec,
    WorkerFleetStatus,
)
from workerfleet_operator.observe import Databases, observe
from workerfleet_operator.planner import (
    Action,
    CreatePod,
    DeleteJob,
    DeletePod,
    Event,
    EvictOutdated,
    NoAction,
    Plan,
    ReleasePools,
    RunMigration,
    action_label,
    action_refused,
    iso,
    plan,
)

log = logging.getLogger("workerfleet_operator")


@dataclass
class Clients:
    core: client.CoreV1Api
    batch: client.BatchV1Api
    custom: client.CustomObjectsApi
    dbs: Databases
    events: EventSink
    children: ChildCache
    secrets: SecretCache
    # Whether this replica may act now (leader election); observing is always allowed.
    is_leader: Callable[[], bool] = lambda: True
    # Wakes fleets at rest when their database changes (the operator sets it).
    watch: DatabaseWatch | None = None

    @classmethod
    def from_default_config(
        cls,
        is_leader: Callable[[], bool] | None = None,
        *,
        prime_every_s: float = 0.0,
        secret_ttl_s: float = 0.0,
    ) -> Clients:
        """Clients on the default configuration. With the defaults every read goes to the
        API server (a one-shot reader); the operator passes its cache settings, and feeds
        `children` from its watches."""
        api = client.ApiClient()
        core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
        events = EventSender(EventRecorder(core))  # reconciles do not wait for Events
        return cls(
            core, batch, client.CustomObjectsApi(api), Databases(), events,
            ChildCache(api_lister(core, batch), prime_every_s=prime_every_s),
            SecretCache(core, secret_ttl_s), is_leader or (lambda: True),
        )  # fmt: skip


@dataclass(frozen=True)
class Step:
    """What one reconcile did: its plan, and whether carrying it out failed ("error")."""

    plan: Plan
    outcome: str


def previous_status(raw: dict[str, Any] | None) -> WorkerFleetStatus:
    """The status we wrote last time; anything unreadable starts afresh rather than failing."""
    known = set(WorkerFleetStatus.model_fields) | {
        f.alias for f in WorkerFleetStatus.model_fields.values() if f.alias
    }
    data = {k: v for k, v in (raw or {}).items() if k in known}
    try:
        return WorkerFleetStatus.model_validate(data)
    except pydantic.ValidationError:
        return WorkerFleetStatus()


def invalid_spec_status(generation: int, error: pydantic.ValidationError) -> WorkerFleetStatus:
    problems = "; ".join(
        f"spec.{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in error.errors()
    )
    message = f"invalid spec: {problems}"
    now = iso(datetime.now(UTC))
    status = WorkerFleetStatus(
        observed_generation=generation,
        phase=FleetPhase.FAILED,
        message=message,
        conditions=[
            Condition(
                type=t,
                status="False",
                reason=Reason.INVALID_SPEC,
                message=message,
                observed_generation=generation,
                last_transition_time=now,
            )
            for t in ("Ready", "Progressing")
        ],
    )
    return with_kstatus(status, WorkerFleetStatus(), generation=generation, now=now)


def api_message(exc: ApiException) -> str:
    """The API server's own sentence, not the client's dump of headers and body."""
    try:
        message = json.loads(exc.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or exc.reason or exc)


def _without_nulls(value: Any) -> Any:
    """Status as stored: a merge patch deletes the keys it sets to null."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def describe_action(action: Action) -> str:
    match action:
        case CreatePod():
            return "create a worker pod"
        case DeletePod(name=pod):
            return f"delete pod {pod}"
        case RunMigration(to=to):
            return f"create the migration Job up to {to}"
        case DeleteJob(name=job):
            return f"delete Job {job}"
        case NoAction() | ReleasePools() | EvictOutdated():
            return action_label(action)
        case _:
            assert_never(action)


def reconcile(
    clients: Clients,
    *,
    name: str,
    namespace: str,
    uid: str,
    generation: int,
    spec_data: dict[str, Any],
    annotations: dict[str, str],
    status_data: dict[str, Any] | None,
    now: datetime | None = None,
) -> Step | None:
    """One step. Returns the plan it carried out and how that went (None when the spec
    itself is invalid or this replica is not the leader)."""
    started = time.perf_counter()
    try:
        spec = WorkerFleetSpec.model_validate(spec_data)
    except pydantic.ValidationError as exc:
        _report_invalid_spec(clients, name, namespace, generation, exc, started)
        return None
    revision = builders.revision(name, spec, namespace)
    laps = Laps()
    obs, url = observe(
        core=clients.core, children=clients.children, secrets=clients.secrets, dbs=clients.dbs,
        name=name, namespace=namespace, spec=spec, annotations=annotations,
    )  # fmt: skip
    if url is not None and clients.watch is not None:
        clients.watch.register(
            (namespace, name), url, spec.schema_name, spec.seconds("sweep_threshold")
        )
    previous = previous_status(status_data)
    laps.lap("observe")
    result = plan(
        name=name, spec=spec, generation=generation, revision=revision, obs=obs,
        now=now or datetime.now(UTC), previous=previous, namespace=namespace,
    )  # fmt: skip
    laps.lap("plan")
    action_name = action_label(result.action)
    if not clients.is_leader():
        # Lost the lease while observing: the new leader acts; writing this plan's status
        # or acting on it now could undo or double what the leader does.
        METRICS.observe_reconcile(time.perf_counter() - started, "not-leader", action_name)
        return None
    fleet = Fleet(
        name=name, namespace=namespace, uid=uid, spec=spec, revision=revision,
        core=clients.core, batch=clients.batch, custom=clients.custom, dbs=clients.dbs,
        events=clients.events, children=clients.children, url=url,
    )  # fmt: skip
    outcome, why = _carry_out(fleet, result.action, clients)
    status = result.status
    if why is not None:
        status = action_refused(
            status, previous, generation=generation, now=now or datetime.now(UTC),
            what=describe_action(result.action), why=why,
        )  # fmt: skip
    laps.lap("act")
    _publish(fleet, clients, result.events, status, status_data, laps)
    METRICS.observe_reconcile(time.perf_counter() - started, outcome, action_name, laps.phases)
    return Step(result, outcome)


def _report_invalid_spec(
    clients: Clients, name: str, namespace: str, generation: int,
    exc: pydantic.ValidationError, started: float,
) -> None:  # fmt: skip
    # The CRD schema rejects almost everything; this catches what it cannot express.
    status = invalid_spec_status(generation, exc)
    clients.custom.patch_namespaced_custom_object_status(
        "workerfleet.dev", "v1alpha1", namespace, "workerfleets", name,
        {"status": status.model_dump(by_alias=True, mode="json")},
    )  # fmt: skip
    METRICS.observe_reconcile(time.perf_counter() - started, "invalid", EventReason.NO_ACTION)
    METRICS.observe_fleet(namespace, name, status)


def _publish(
    fleet: Fleet, clients: Clients, events: list[Event], status: WorkerFleetStatus,
    status_data: dict[str, Any] | None, laps: Laps,
) -> None:  # fmt: skip
    """The plan's Events, then the status, if it changed and this replica still leads."""
    for type_, reason, message in events:
        post_event(fleet, type_, reason, message)
    laps.lap("events")
    # Unchanged status is not written again: at rest a fleet costs the API server nothing.
    unchanged = _without_nulls(status.model_dump(by_alias=True, mode="json")) == _without_nulls(
        status_data or {}
    )
    if clients.is_leader() and not unchanged:  # the lease may have been lost while acting
        write_status(fleet, status)
    METRICS.observe_fleet(fleet.namespace, fleet.name, status)
    laps.lap("status")


class Laps:
    """Seconds spent in each phase of one reconcile (metrics.PHASES), lap by lap."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self._mark = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.phases[phase] = now - self._mark
        self._mark = now


def _carry_out(fleet: Fleet, action: Action, clients: Clients) -> tuple[str, str | None]:
    """Act and post the action's Event. Returns the outcome and, when the API server or the
    client refused the request itself (retrying the same will not help), why."""
    name, namespace, action_name = fleet.name, fleet.namespace, action_label(action)
    try:
        done = act(fleet, action)
        if action_name != EventReason.NO_ACTION:
            log.info("%s/%s: %s", namespace, name, done)
            post_event(fleet, "Normal", action_name, done)
        return "ok", None
    except ApiException as exc:
        clients.children.invalidate(namespace, name)  # the server saw it otherwise: list again
        why = api_message(exc)
        log.warning("%s/%s: %s refused: %s", namespace, name, action_name, why)
        post_event(fleet, "Warning", EventReason.ACTION_FAILED, f"{action_name}: {why}")
        # 4xx but conflict and throttling: the request itself is wrong (the template, a
        # quota, a policy), so the status says what the API server said.
        wrong = exc.status is not None and 400 <= exc.status < 500 and exc.status not in (409, 429)
        return "error", why if wrong else None
    except (pydantic.ValidationError, RefusedError) as exc:
        # The Kubernetes client validates a body before sending it: refused all the same.
        why = (
            str(exc)
            if isinstance(exc, RefusedError)
            else "; ".join(
                f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()[:3]
            )
        )
        log.warning("%s/%s: %s refused by the client: %s", namespace, name, action_name, why)
        post_event(fleet, "Warning", EventReason.ACTION_FAILED, f"{action_name}: {why}")
        return "error", why
    except Exception as exc:
        log.exception("%s/%s: %s failed", namespace, name, action_name)
        post_event(fleet, "Warning", EventReason.ACTION_FAILED, f"{action_name}: {exc}")
        return "error", None
