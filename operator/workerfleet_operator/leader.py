"""Leader election on a coordination.k8s.io/v1 Lease, the way client-go's leaderelection
package does it, so that two operator replicas (scaled up, or overlapping in a rolling
update) never act at once.

- The holder renews the Lease every `retry_period`. It counts itself leader only until
  `renew_deadline` after the start of its last successful renewal, measured on its own
  monotonic clock.
- Another replica takes over once the Lease record has not changed for `lease_duration`,
  measured on *its* monotonic clock from when it first saw that record (never by comparing
  the holder's timestamps with its own clock, which may be skewed).
- `renew_deadline < lease_duration`: a holder that cannot renew stops acting at least
  `lease_duration - renew_deadline` (5 s by default) before anyone else may start. Updates
  carry the resourceVersion read, so two replicas racing for one Lease cannot both win.
- On a clean shutdown the holder gives the Lease up, so its successor starts at once.

The actions the operator takes are idempotent on their own too (deterministic pod and Job
names), so even a split brain (a paused leader that resumes) cannot exceed the pod limits.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger("workerfleet_operator")


@dataclass(frozen=True)
class LeaseSettings:
    name: str
    namespace: str
    identity: str
    lease_duration: float = 15.0  # client-go's defaults: 15 s, 10 s, 2 s
    renew_deadline: float = 10.0
    retry_period: float = 2.0


def _micro_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        api: client.CoordinationV1Api,
        settings: LeaseSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not settings.renew_deadline < settings.lease_duration:
            raise ValueError("renew_deadline must be shorter than lease_duration")
        self.api, self.settings, self._clock = api, settings, clock
        self._leading_until = 0.0
        self._seen: tuple[str, float] | None = None  # (resourceVersion, when first seen)
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one step or stop at a time
        self._thread: threading.Thread | None = None
        self.transitions = 0
        # Every API call returns well within the renew deadline, or the thread could hang
        # on a half-open connection and never lead again.
        self._timeout = max(1.0, settings.renew_deadline / 2)

    def is_leader(self) -> bool:
        return self._clock() < self._leading_until

    def step(self) -> None:
        """One attempt to acquire or renew; never raises (the API may be away)."""
        with self._lock:
            if not self._stop.is_set():
                self._step()

    def _step(self) -> None:
        s = self.settings
        started = self._clock()
        try:
            lease = self._read()
            if lease is None:
                self._create()
                self._won(started, acquired=True)
                return
            meta, spec = lease["metadata"], lease.get("spec") or {}
            version = str(meta.get("resourceVersion"))
            if self._seen is None or self._seen[0] != version:
                self._seen = (version, started)
            holder = spec.get("holderIdentity") or ""
            duration = float(spec.get("leaseDurationSeconds") or s.lease_duration)
            if holder and holder != s.identity and started - self._seen[1] < duration:
                self._leading_until = 0.0  # someone else holds a lease that is still fresh
                return
            acquired = holder != s.identity
            now = _micro_now()
            spec.update(
                {
                    "holderIdentity": s.identity,
                    "leaseDurationSeconds": int(s.lease_duration),
                    "renewTime": now,
                }
            )
            if acquired:
                spec["acquireTime"] = now
                spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
            lease["spec"] = spec
            # resourceVersion in the body: the API server refuses (409) a stale update.
            self.api.replace_namespaced_lease(
                s.name,
                s.namespace,
                lease,  # type: ignore[arg-type]
                _request_timeout=self._timeout,
            )
            self._won(started, acquired=acquired)
        except ApiException as exc:
            if exc.status != 409:
                log.warning("leader election: %s", exc.reason)
            self._lost()
        except Exception as exc:  # the API server away, a timeout: not leader this round
            log.warning("leader election: %s", exc)
            self._lost()

    def _read(self) -> dict[str, Any] | None:
        s = self.settings
        try:
            response: Any = self.api.read_namespaced_lease(
                s.name, s.namespace, _preload_content=False, _request_timeout=self._timeout
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        data: dict[str, Any] = json.loads(response.data)
        return data

    def _create(self) -> None:
        s = self.settings
        now = _micro_now()
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": s.name, "namespace": s.namespace},
            "spec": {
                "holderIdentity": s.identity,
                "leaseDurationSeconds": int(s.lease_duration),
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            },
        }
        self.api.create_namespaced_lease(
            s.namespace,
            body,  # type: ignore[arg-type]
            _request_timeout=self._timeout,
        )

    def _won(self, started: float, *, acquired: bool) -> None:
        was = self.is_leader()
        self._leading_until = started + self.settings.renew_deadline
        if acquired or not was:
            self.transitions += int(acquired)
            log.info("leader election: %s leads (Lease %s/%s)", self.settings.identity,
                     self.settings.namespace, self.settings.name)  # fmt: skip

    def _lost(self) -> None:
        if self._leading_until and self._clock() >= self._leading_until:
            log.warning("leader election: %s no longer leads", self.settings.identity)
            self._leading_until = 0.0

    def run(self) -> None:
        """Until `stop()`: renew while leading, try to acquire while not."""
        while not self._stop.is_set():
            self.step()
            self._stop.wait(self.settings.retry_period)

    def start(self) -> threading.Thread:
        self._thread = threading.Thread(target=self.run, name="leader-election", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, *, release: bool = True) -> None:
        """Stop renewing; give the Lease up if we hold it, so a successor starts at once.
        Under the step lock: a renewal in flight cannot make us leader again afterwards."""
        self._stop.set()
        with self._lock:
            leading = self.is_leader()
            self._leading_until = 0.0
            if release and leading:
                self._release()
        if self._thread is not None:
            self._thread.join(timeout=self._timeout)

    def _release(self) -> None:
        try:
            lease = self._read()
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != (
                self.settings.identity
            ):
                return
            lease["spec"]["holderIdentity"] = ""
            lease["spec"]["leaseDurationSeconds"] = 1
            s = self.settings
            self.api.replace_namespaced_lease(
                s.name,
                s.namespace,
                lease,  # type: ignore[arg-type]
                _request_timeout=self._timeout,
            )
            log.info("leader election: %s released the Lease", self.settings.identity)
        except Exception as exc:
            log.warning("leader election: could not release the Lease: %s", exc)
