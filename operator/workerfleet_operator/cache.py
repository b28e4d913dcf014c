"""What the operator reads of the cluster, served from memory: the pods and Jobs of each
fleet, kept current by the watch Kopf already holds on them, and the database URL of each
Secret, re-read on a slow clock. An idle installation then costs the API server nothing
per reconcile (docs/operator.md, "What a reconcile reads").

Why this stays safe when the cache lags: every object the operator creates has a
deterministic name (slot-named pods, one Job name per migration target), so acting on a
view that misses a just-created pod ends in 409 AlreadyExists, not in a second pod; and
what the operator created or deleted itself is written into the cache at once. A fleet is
primed by one list per kind before its first reconcile, and re-primed now and then
(`PRIME_EVERY_S`) and after any action the API server refused, because a relisting watch
reports what exists, not what disappeared meanwhile.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from workerfleet_operator.builders import LABEL_COMPONENT, LABEL_FLEET

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, fleet)
KINDS = ("pods", "jobs")
# A relisting watch misses deletions; a fresh list per fleet this often bounds that.
PRIME_EVERY_S = 600.0


def _rv(obj: Obj) -> int:
    """resourceVersion as a number, to keep the newer of two copies. It is opaque by
    contract; every storage backend Kubernetes ships makes it an increasing integer, and
    anything else counts as newest (the watch is then trusted)."""
    try:
        return int(obj["metadata"].get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 1 << 62


def _keep_newer(objects: dict[str, Obj], obj: Obj) -> None:
    name = obj["metadata"]["name"]
    if name not in objects or _rv(obj) >= _rv(objects[name]):
        objects[name] = obj


@dataclass
class _Fleet:
    objects: dict[str, dict[str, Obj]] = field(default_factory=lambda: {k: {} for k in KINDS})
    primed_at: float | None = None


class ChildCache:
    """Pods and Jobs labelled `workerfleet.dev/fleet`, by fleet. Thread-safe: watch events
    arrive on Kopf's loop, reconciles read from worker threads."""

    def __init__(
        self,
        list_fn: Callable[[str, str, str], Obj],
        *,
        prime_every_s: float = PRIME_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`list_fn(kind, namespace, selector)` returns a list body (items and the list's
        resourceVersion). `prime_every_s=0` lists on every read: a one-shot reader (the
        kubectl plugin) with no watch behind it."""
        self._list = list_fn
        self._prime_every = prime_every_s
        self._clock = clock
        self._fleets: dict[Key, _Fleet] = {}
        self._lock = threading.Lock()

    def _fleet(self, key: Key) -> _Fleet:
        return self._fleets.setdefault(key, _Fleet())

    def apply_event(self, kind: str, event_type: str | None, obj: Obj) -> Key | None:
        """A watch event (type None: Kopf's initial listing). Returns the fleet it is for."""
        meta = obj.get("metadata") or {}
        fleet = (meta.get("labels") or {}).get(LABEL_FLEET)
        namespace, name = meta.get("namespace"), meta.get("name")
        if not (fleet and namespace and name):
            return None
        key = (namespace, fleet)
        with self._lock:
            objects = self._fleet(key).objects[kind]
            if event_type == "DELETED":
                objects.pop(name, None)
            else:
                _keep_newer(objects, obj)
        return key

    def wrote(self, kind: str, namespace: str, fleet: str, obj: Obj) -> None:
        """An object this operator just created: visible to the next reconcile at once."""
        with self._lock:
            _keep_newer(self._fleet((namespace, fleet)).objects[kind], obj)

    def deleting(self, kind: str, namespace: str, fleet: str, name: str) -> None:
        """An object this operator just asked to delete: terminating until the watch says
        it is gone (a graceful pod deletion takes its grace period)."""
        with self._lock:
            obj = self._fleet((namespace, fleet)).objects[kind].get(name)
            if obj is not None and not obj["metadata"].get("deletionTimestamp"):
                meta = {**obj["metadata"], "deletionTimestamp": "1970-01-01T00:00:00Z"}
                self._fleets[(namespace, fleet)].objects[kind][name] = {**obj, "metadata": meta}

    def invalidate(self, namespace: str, fleet: str) -> None:
        """The API server disagreed with us: list again before the next decision."""
        with self._lock:
            if (entry := self._fleets.get((namespace, fleet))) is not None:
                entry.primed_at = None

    def forget(self, namespace: str, fleet: str) -> None:
        with self._lock:
            self._fleets.pop((namespace, fleet), None)

    def objects(self, kind: str, namespace: str, fleet: str, component: str) -> list[Obj]:
        key = (namespace, fleet)
        with self._lock:
            primed = self._fleet(key).primed_at
        if primed is None or self._clock() - primed >= self._prime_every:
            self._prime(key)
        with self._lock:
            found = list(self._fleets[key].objects[kind].values())
        return [
            o
            for o in found
            if (o["metadata"].get("labels") or {}).get(LABEL_COMPONENT) == component
        ]

    def _prime(self, key: Key) -> None:
        namespace, fleet = key
        started = self._clock()
        listed = {kind: self._list(kind, namespace, f"{LABEL_FLEET}={fleet}") for kind in KINDS}
        with self._lock:
            entry = self._fleet(key)
            for kind, body in listed.items():
                objs = list(body.get("items") or [])
                list_rv = _rv(body)
                names = {o["metadata"]["name"] for o in objs}
                current = entry.objects[kind]
                # Missing from the list and not written since the list was taken: gone.
                for name in [n for n in current if n not in names]:
                    if _rv(current[name]) <= list_rv:
                        del current[name]
                for obj in objs:
                    _keep_newer(current, obj)
            entry.primed_at = started


def api_lister(core: client.CoreV1Api, batch: client.BatchV1Api) -> Callable[[str, str, str], Obj]:
    def list_(kind: str, namespace: str, selector: str) -> Obj:
        call: Any = core.list_namespaced_pod if kind == "pods" else batch.list_namespaced_job
        body: Obj = json.loads(
            call(namespace, label_selector=selector, _preload_content=False).data
        )
        return body

    return list_


@dataclass
class _Url:
    url: str
    read_at: float


class SecretCache:
    """Database URLs by (namespace, Secret, key), read by name (RBAC: `get`, never list or
    watch: the operator never holds Secrets it does not use) and re-read after `ttl_s` or
    after the database refused the URL, so a rotated Secret is followed within minutes."""

    def __init__(
        self, core: client.CoreV1Api, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._core, self._ttl, self._clock = core, ttl_s, clock
        self._urls: dict[tuple[str, str, str], _Url] = {}
        self._lock = threading.Lock()

    def url(self, namespace: str, name: str, key: str) -> str:
        """The URL, or LookupError with a message naming the Secret and what is wrong."""
        k = (namespace, name, key)
        with self._lock:
            cached = self._urls.get(k)
        if cached is not None and self._clock() - cached.read_at < self._ttl:
            return cached.url
        url = read_database_url(self._core, namespace, name, key)
        with self._lock:
            self._urls[k] = _Url(url, self._clock())
        return url

    def invalidate(self, namespace: str, name: str, key: str) -> None:
        with self._lock:
            self._urls.pop((namespace, name, key), None)


def read_database_url(core: client.CoreV1Api, namespace: str, name: str, key: str) -> str:
    try:
        secret = core.read_namespaced_secret(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            raise LookupError(
                f"Secret {namespace}/{name} (spec.database.secretRef) not found"
            ) from exc
        raise LookupError(f"cannot read Secret {namespace}/{name}: {exc.reason}") from exc
    data = secret.data or {}
    if key not in data:
        raise LookupError(
            f"Secret {namespace}/{name} has no key {key!r} (spec.database.secretRef.key)"
        )
    return base64.b64decode(data[key]).decode()
