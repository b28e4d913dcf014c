"""Events on fleets, aggregated as Kubernetes' own event recorder does: the same event again
within the window bumps the count and the last timestamp of the one already posted, and a
reason that keeps coming with new messages is folded into one "similar events" Event. A
stuck fleet reconciled every 2 s therefore posts a handful of objects, not one per pass."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from workerfleet_operator.models import GROUP, KIND, VERSION

log = logging.getLogger("workerfleet_operator")
WINDOW_S = 600.0  # client-go's correlator uses 10 minutes too
MAX_DISTINCT = 5  # distinct messages of one reason per window before they are folded


@dataclass
class _Posted:
    name: str
    count: int
    last: float


MAX_QUEUED = 1000  # client-go's broadcaster queue; beyond it, events are dropped
MAX_MESSAGE_BYTES = 1024  # what the API server takes in an Event with eventTime set


def _fit(message: str) -> str:
    data = message.encode("utf-8")
    if len(data) <= MAX_MESSAGE_BYTES:
        return message
    return data[: MAX_MESSAGE_BYTES - 3].decode("utf-8", "ignore") + "..."


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class EventSink(Protocol):
    """Where the operator's Events go: posted at once (EventRecorder) or handed to a
    thread that posts them (EventSender)."""

    def post(
        self, *, namespace: str, name: str, uid: str, type_: str, reason: str, message: str
    ) -> None: ...


class EventRecorder:
    def __init__(self, core: client.CoreV1Api, clock: Any = time.monotonic) -> None:
        self._core = core
        self._clock = clock
        self._lock = threading.Lock()
        self._posted: dict[tuple[str, ...], _Posted] = {}
        self._distinct: dict[tuple[str, ...], list[float]] = {}

    def post(
        self, *, namespace: str, name: str, uid: str, type_: str, reason: str, message: str
    ) -> None:
        """Never raises: an event is not worth failing a reconcile."""
        message = _fit(message)
        now = self._clock()
        with self._lock:
            self._expire(now)
            key = (namespace, uid, type_, reason, message)
            if key not in self._posted:
                stamps = self._distinct.setdefault((namespace, uid, type_, reason), [])
                stamps.append(now)
                if len(stamps) > MAX_DISTINCT:
                    key = (namespace, uid, type_, reason, "(combined from similar events)")
                    message = _fit(f"(combined from similar events): {message}")
            posted = self._posted.get(key)
            if posted is not None:
                posted.count += 1
                posted.last = now
                patch: dict[str, Any] = {"count": posted.count, "lastTimestamp": _now()}
                if key[-1].startswith("(combined"):
                    patch["message"] = message
        try:
            if posted is not None:
                self._core.patch_namespaced_event(posted.name, namespace, patch)
                return
            body = self._body(namespace, name, uid, type_, reason, message)
            # Raw JSON back: the client's models are not needed for one name.
            response: Any = self._core.create_namespaced_event(
                namespace,
                body,  # type: ignore[arg-type]
                _preload_content=False,
            )
            created = str(json.loads(response.data)["metadata"]["name"])
            with self._lock:
                self._posted[key] = _Posted(created, 1, now)
        except ApiException as exc:
            if posted is not None and exc.status == 404:
                with self._lock:  # expired or deleted on the server: post afresh next time
                    self._posted.pop(key, None)
            log.warning("could not post event %s: %s", reason, exc.reason)
        except Exception as exc:  # the API server away, a client-side check: never fatal
            log.warning("could not post event %s: %s", reason, exc)

    def _expire(self, now: float) -> None:
        for key in [k for k, p in self._posted.items() if now - p.last > WINDOW_S]:
            del self._posted[key]
        for key, stamps in list(self._distinct.items()):
            stamps[:] = [t for t in stamps if now - t <= WINDOW_S]
            if not stamps:
                del self._distinct[key]

    @staticmethod
    def _body(
        namespace: str, name: str, uid: str, type_: str, reason: str, message: str
    ) -> dict[str, Any]:
        now = _now()
        return {
            "metadata": {"generateName": f"{name}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": name,
                "namespace": namespace,
                "uid": uid,
            },
            "type": type_,
            "reason": reason,
            "message": message,
            "source": {"component": "workerfleet-operator"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "eventTime": now,
            "action": reason,
            "reportingComponent": "workerfleet-operator",
            "reportingInstance": "workerfleet-operator",
            "count": 1,
        }


class EventSender:
    """Posts through a recorder on a thread of its own, in order, as client-go's recorder
    does: a reconcile hands its Events over and goes on, instead of waiting for one or two
    API round trips per Event (under load those were a fifth of a reconcile's p99). When
    MAX_QUEUED are waiting (the API server is away), new ones are dropped with a warning:
    Events are advice, the status is the record."""

    def __init__(self, recorder: EventRecorder, max_queued: int = MAX_QUEUED) -> None:
        self.recorder = recorder
        self.dropped = 0
        self._queue: queue.Queue[dict[str, str] | None] = queue.Queue(max_queued)
        self._thread = threading.Thread(target=self._run, daemon=True, name="events")
        self._thread.start()

    def post(
        self, *, namespace: str, name: str, uid: str, type_: str, reason: str, message: str
    ) -> None:
        """Never blocks and never raises."""
        event = {"namespace": namespace, "name": name, "uid": uid, "type_": type_,
                 "reason": reason, "message": message}  # fmt: skip
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.dropped += 1
            log.warning("event queue full, dropped %s on %s/%s", reason, namespace, name)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything handed over so far was posted (tests, shutdown)."""
        with self._queue.all_tasks_done:
            return self._queue.all_tasks_done.wait_for(
                lambda: self._queue.unfinished_tasks == 0, timeout
            )

    def close(self, timeout: float = 5.0) -> None:
        self.flush(timeout)
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            return
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            try:
                if event is None:
                    return
                self.recorder.post(**event)
            finally:
                self._queue.task_done()
