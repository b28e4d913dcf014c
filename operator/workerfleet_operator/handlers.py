"""Kopf wiring, and nothing else: a daemon per fleet runs `reconcile` when the fleet, one of
its pods or Jobs changes, on a short interval while a rollout or migration is in progress,
and on a slow resync at rest; the pod and Job watches also feed the read cache
(workerfleet_operator.cache). Deletion drains the pods first.

    kopf run --standalone --all-namespaces -m workerfleet_operator.handlers
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import logging
import os
import random
import socket
import sys
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf
from kubernetes import client, config

from fleet_worker.durations import parse_duration
from workerfleet_operator.act import drain_fleet
from workerfleet_operator.builders import LABEL_FLEET
from workerfleet_operator.cache import PRIME_EVERY_S
from workerfleet_operator.dbwatch import DatabaseWatch
from workerfleet_operator.events import EventSender
from workerfleet_operator.leader import LeaderElector, LeaseSettings
from workerfleet_operator.metrics import METRICS
from workerfleet_operator.models import GROUP, PLURAL, VERSION, FleetPhase
from workerfleet_operator.planner import NoAction, Plan
from workerfleet_operator.ratelimit import BURST, RATE_PER_S, Backoff, TokenBucket
from workerfleet_operator.reconcile import Clients, reconcile

# While something is in progress (a rollout, a migration, a drain, pods not ready), time
# itself changes the plan (deadlines, heartbeats): look again this often.
INTERVAL_S = float(os.environ.get("WORKERFLEET_RECONCILE_INTERVAL", "2"))
# At rest only changes matter, and every change of the cluster arrives as an event; the
# resync is the backstop for what does not (a worker that hangs without exiting is seen by
# its heartbeat going stale), so it is also never longer than the fleet's sweep threshold.
RESYNC_S = float(os.environ.get("WORKERFLEET_RESYNC_INTERVAL", "30"))
# The database URL is read from its Secret again after this long, or at once after the
# database refused it.
SECRET_TTL_S = float(os.environ.get("WORKERFLEET_SECRET_TTL", "300"))
AT_REST = frozenset({FleetPhase.READY, FleetPhase.FAILED, FleetPhase.PAUSED})
# How long a deleted fleet waits for its pods to drain before its finalizer goes anyway.
DRAIN_LIMIT_S = float(os.environ.get("WORKERFLEET_DRAIN_LIMIT", "600"))
METRICS_PORT = int(os.environ.get("WORKERFLEET_METRICS_PORT", "9090"))
METRICS_HOST = os.environ.get("WORKERFLEET_METRICS_HOST", os.environ.get("POD_IP", "127.0.0.1"))

# Reconciles are short blocking calls (API and database clients); they run on a pool of our
# own, so one slow database never holds Kopf's executor and any number of fleets can wait.
_reconcilers = ThreadPoolExecutor(
    max_workers=int(os.environ.get("WORKERFLEET_RECONCILE_THREADS", "8")),
    thread_name_prefix="reconcile",
)
_triggers: dict[tuple[str, str], asyncio.Event] = {}
_bucket = TokenBucket(RATE_PER_S, BURST)
_backoff = Backoff()
# Per fleet: the generation and annotations last acted on, so status writes do not trigger.
_seen: dict[tuple[str, str], tuple[Any, ...]] = {}
_clients: Clients | None = None
_elector: LeaderElector | None = None


def lease_settings() -> LeaseSettings:
    """One Lease per installation: in the operator's namespace (POD_NAMESPACE, from the
    downward API), named after the operator; the identity is the pod's name."""
    return LeaseSettings(
        name=os.environ.get("WORKERFLEET_LEASE_NAME", "workerfleet-operator"),
        namespace=os.environ.get("WORKERFLEET_LEASE_NAMESPACE")
        or os.environ.get("POD_NAMESPACE")
        or "default",
        identity=os.environ.get("WORKERFLEET_LEADER_IDENTITY")
        or os.environ.get("POD_NAME")
        or f"{socket.gethostname()}-{os.getpid()}",
        lease_duration=float(os.environ.get("WORKERFLEET_LEASE_DURATION", "15")),
        renew_deadline=float(os.environ.get("WORKERFLEET_RENEW_DEADLINE", "10")),
        retry_period=float(os.environ.get("WORKERFLEET_RETRY_PERIOD", "2")),
    )


def confined_to_namespaces(argv: list[str]) -> bool:
    """`kopf run --namespace=...` rather than `--all-namespaces`/`-A`."""
    return not any(a in ("--all-namespaces", "-A") for a in argv) and any(
        a in ("--namespace", "-n") or a.startswith("--namespace=") for a in argv
    )


def _trigger(namespace: str, fleet: str) -> asyncio.Event:
    return _triggers.setdefault((namespace, fleet), asyncio.Event())


@kopf.on.startup()
def configure(
    settings: kopf.OperatorSettings, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any
) -> None:
    global _clients  # noqa: PLW0603 - one set of clients for the process
    # Kopf's own bookkeeping goes to annotations so status holds only what users read.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.posting.level = logging.WARNING
    # One line per handled pod event is noise at this rate; our own log says what we did.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if confined_to_namespaces(sys.argv):
        # Watching named namespaces, Kopf would still try to list all namespaces (9 tries,
        # about a minute, before it falls back to the names it was given), which the
        # namespaced RBAC rightly forbids. The names are exact: nothing to scan. (The CRD
        # must then be installed before the operator starts, as deploy/ does.)
        settings.scanning.disabled = True
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    global _elector  # noqa: PLW0603 - one elector for the process
    if os.environ.get("WORKERFLEET_LEADER_ELECTION", "true").lower() != "false":
        _elector = LeaderElector(client.CoordinationV1Api(), lease_settings())
        _elector.start()
        _clients = Clients.from_default_config(
            is_leader=_elector.is_leader, prime_every_s=PRIME_EVERY_S, secret_ttl_s=SECRET_TTL_S
        )
    else:
        _clients = Clients.from_default_config(
            prime_every_s=PRIME_EVERY_S, secret_ttl_s=SECRET_TTL_S
        )
    if METRICS_PORT:
        METRICS.serve(METRICS_HOST, METRICS_PORT)
        logger.info("metrics on %s:%d/metrics", METRICS_HOST, METRICS_PORT)


def _ensure_database_watch(clients: Clients, loop: asyncio.AbstractEventLoop) -> None:
    """One change detector per database for all fleets on it, polling every INTERVAL_S:
    a pool that registers, drains, stops or goes stale wakes its fleets at once. Started
    from the first daemon, on Kopf's loop, which the wakes must be handed to."""
    if clients.watch is not None:
        return

    def wake(key: tuple[str, str]) -> None:
        loop.call_soon_threadsafe(_trigger(*key).set)

    clients.watch = DatabaseWatch(clients.dbs, INTERVAL_S, wake)
    clients.watch.start()


@kopf.on.cleanup()
def cleanup(**_: Any) -> None:
    if _elector is not None:
        _elector.stop(release=True)
    if _clients is not None and _clients.watch is not None:
        _clients.watch.stop()
    _reconcilers.shutdown(wait=False, cancel_futures=True)
    if _clients is not None:
        _clients.dbs.close()
        if isinstance(_clients.events, EventSender):
            _clients.events.close()  # what the last reconciles handed over


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=10)
async def fleet_daemon(
    stopped: kopf.DaemonStopped,
    name: str,
    namespace: str | None,
    body: kopf.Body,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **_: Any,
) -> None:
    """Reconcile until the fleet is deleted: at once when it, one of its pods or Jobs
    changes, else after `next_wait`. `body` is kept current by Kopf. The daemon itself only
    waits, so thousands of fleets cost no threads."""
    assert namespace is not None  # WorkerFleet is namespaced
    trigger = _trigger(namespace, name)
    loop = asyncio.get_running_loop()
    if _clients is not None:
        _ensure_database_watch(_clients, loop)
    while not stopped:
        trigger.clear()
        wait = INTERVAL_S
        if _clients is not None and _clients.is_leader():
            step = functools.partial(
                reconcile,
                _clients,
                name=name,
                namespace=namespace,
                uid=str(body.metadata.uid),
                generation=int(body.metadata.get("generation") or 0),
                spec_data=dict(body.spec),
                annotations=dict(body.metadata.annotations),
                status_data=dict(body.status),
            )
            if _backoff.failing((namespace, name)):
                # A retry after a failure waits its turn in the operator-wide bucket, so many
                # fleets failing at once (the API server away) come back at a steady rate.
                # First attempts, changes and resyncs never wait here.
                delay = _bucket.reserve(loop.time())
                if delay > 0:
                    await asyncio.sleep(delay)
            failed = True
            try:
                done = await loop.run_in_executor(_reconcilers, step)
                wait = next_wait(done.plan if done else None, body.spec.get("sweepThreshold"))
                failed = done is not None and done.outcome == "error"
            except Exception:  # the loop must survive anything one reconcile meets
                logger.exception("reconcile failed")
            _backoff.record((namespace, name), failed=failed)
            wait = _backoff.wait((namespace, name), wait)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(trigger.wait(), wait)


def next_wait(done: Plan | None, sweep_threshold: str | None, jitter: float | None = None) -> float:
    """How long a fleet may wait for an event before it is looked at again. At rest the
    resync is shortened by up to 10 % at random (`jitter` in [0, 1)), never lengthened: fleets
    created together would otherwise resync together forever, a herd every 30 s."""
    busy = done is not None and (
        not isinstance(done.action, NoAction) or done.status.phase not in AT_REST
    )
    if busy:
        return INTERVAL_S
    try:
        threshold = parse_duration(sweep_threshold) if sweep_threshold else RESYNC_S
    except ValueError:
        threshold = RESYNC_S
    spread = random.random() if jitter is None else jitter  # noqa: S311 - spreading timers
    return max(INTERVAL_S, min(RESYNC_S, threshold) * (1 - 0.1 * spread))


@kopf.on.event(GROUP, VERSION, PLURAL)
async def fleet_changed(
    namespace: str | None, name: str, body: kopf.Body, event: Mapping[str, Any], **_: Any
) -> None:
    """A spec or annotation change (a version bump, an approval, a pause) is acted on at
    once; our own status writes are not changes to act on (no new generation)."""
    if namespace is None or event.get("type") == "DELETED":
        return
    seen = (body.metadata.get("generation"), tuple(sorted(body.metadata.annotations.items())))
    if _seen.get((namespace, name)) != seen:
        _seen[(namespace, name)] = seen
        _trigger(namespace, name).set()


@kopf.on.event("", "v1", "pods", labels={LABEL_FLEET: kopf.PRESENT})
@kopf.on.event("batch", "v1", "jobs", labels={LABEL_FLEET: kopf.PRESENT})
async def child_changed(
    namespace: str | None,
    labels: Mapping[str, str],
    event: Mapping[str, Any],
    resource: Any,
    **_: Any,
) -> None:
    if namespace is None:
        return
    if _clients is not None:
        kind = "pods" if resource.plural == "pods" else "jobs"
        _clients.children.apply_event(kind, event.get("type"), dict(event.get("object") or {}))
    _trigger(namespace, labels[LABEL_FLEET]).set()


@kopf.on.delete(GROUP, VERSION, PLURAL)
def drain_on_delete(
    name: str,
    namespace: str | None,
    runtime: datetime.timedelta,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **_: Any,
) -> None:
    """Hold the finalizer while the fleet's pods drain. Whatever fails, it lets go after
    DRAIN_LIMIT_S: a fleet must always be deletable (its pods are owned by it, so garbage
    collection removes what is left, gracefully)."""
    assert namespace is not None
    try:
        remaining = drain_fleet(client.CoreV1Api(), namespace, name)
    except Exception as exc:
        if runtime.total_seconds() < DRAIN_LIMIT_S:
            raise kopf.TemporaryError(f"cannot drain yet: {exc}", delay=5) from exc
        logger.error("giving up draining after %.0fs: %s", runtime.total_seconds(), exc)
        remaining = 0
    if remaining and runtime.total_seconds() < DRAIN_LIMIT_S:
        raise kopf.TemporaryError(f"draining {remaining} pod(s)", delay=2)
    if remaining:
        logger.warning("%d pod(s) still draining after %.0fs; releasing the fleet", remaining,
                       runtime.total_seconds())  # fmt: skip
    _triggers.pop((namespace, name), None)
    _seen.pop((namespace, name), None)
    _backoff.forget((namespace, name))
    METRICS.forget_fleet(namespace, name)
    if _clients is not None:
        _clients.children.forget(namespace, name)
        if _clients.watch is not None:
            _clients.watch.unregister((namespace, name))
