"""Specs a user might write, right and wrong, applied through the real API server with the
operator running: each is refused with a message that names the field, or accepted and
ends, within one progress deadline, Ready or in a condition that says why; the operator
keeps running, every fleet can be deleted, and no fleet floods its Events."""

from __future__ import annotations

import time
from typing import Any

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from localcluster.kube import ApiError
from tests.e2e.operator_env import FleetEnv, OperatorProcess, wait_until

DEADLINE_S = 10
# Both where a rollout stalls and where it ends well carry a sentence; these phases say the
# fleet has settled into a state whose cause the status names.
SETTLED_PHASES = {"Ready", "Failed", "CrashLoopBackOff", "Degraded"}

# A valid fleet, then up to two of the mistakes users make, some of which the CRD refuses
# and some of which only the running system can notice.
MISTAKES: dict[str, dict[str, Any]] = {
    "a crashing release": {"version": "crash"},
    "a module without an App": {"app": "fleet_test_apps.common"},
    "a module that does not exist": {"app": "no.such.module"},
    "a bad worker flag": {"args": ["--bogus"]},
    "an image that cannot be pulled": {"image": "registry.invalid/none"},
    "an env item without a name": {"template": {"env": [{"value": "nameless"}]}},
    "a label key the API refuses": {"template": {"labels": {"bad key!": "x"}}},
    "a zero heartbeat": {"heartbeatInterval": "0s"},
    "a threshold under two heartbeats": {"heartbeatInterval": "1s", "sweepThreshold": "1s"},
    "negative replicas": {"replicas": -1},
    "zero replicas": {"replicas": 0},
    "a malformed quantity": {"template": {"resources": {"limits": {"cpu": "lots"}}}},
    "a privileged container": {"template": {"containerSecurityContext": {"privileged": True}}},
    "a migration deadline too short": {"migrationJob": {"activeDeadlineSeconds": 10}},
    "a rollout that cannot move": {"rollout": {"maxSurge": 0, "maxUnavailable": 0}},
    "a version that is no tag": {"version": "not a version!"},
}
# What the status must say (any of these, in the message or a condition) when a mistake
# only the running system can notice is made.
CAUSES: dict[str, tuple[str, ...]] = {
    "a crashing release": ("this release is broken",),
    "a module without an App": ("has no fleet_worker.App",),
    "a module that does not exist": ("cannot import app module",),
    "a bad worker flag": ("--bogus",),
    "an image that cannot be pulled": ("ErrImagePull", "ImagePullBackOff"),
    "an env item without a name": ("env", "name"),
    "a label key the API refuses": ("bad key!",),
    "a malformed quantity": ("quantities must match",),
}
specs = st.lists(st.sampled_from(sorted(MISTAKES)), max_size=2, unique=True).map(
    lambda names: (names, _merge({"version": "1", "replicas": 1}, *(MISTAKES[n] for n in names)))
)


def _merge(*parts: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = {**out[key], **value}
            else:
                out[key] = value
    return out


def _names_a_field(body: str) -> bool:
    return "spec." in body or "metadata.name" in body or "spec:" in body


def _settled(fleet: FleetEnv) -> dict[str, Any] | None:
    status = fleet.get().get("status") or {}
    conditions = {c["type"]: c for c in status.get("conditions") or []}
    ready = conditions.get("Ready", {})
    progressing = conditions.get("Progressing", {})
    if ready.get("status") == "True":
        return status
    if progressing.get("status") == "False" and progressing.get("message"):
        return status
    if status.get("phase") in SETTLED_PHASES and status.get("message"):
        return status
    return None


@settings(
    max_examples=8,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI stays reproducible
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(example=specs)
# Every mistake only the running system can notice, at least once, whatever is drawn.
@example(example=(["a crashing release"], {"version": "crash", "replicas": 1}))
@example(
    example=(
        ["a module without an App"],
        {"version": "1", "replicas": 1, "app": "fleet_test_apps.common"},
    )
)
@example(
    example=(
        ["a module that does not exist"],
        {"version": "1", "replicas": 1, "app": "no.such.module"},
    )
)
@example(
    example=(
        ["an env item without a name"],
        {"version": "1", "replicas": 1, "template": {"env": [{"value": "x"}]}},
    )
)
@example(
    example=(
        ["a label key the API refuses"],
        {"version": "1", "replicas": 1, "template": {"labels": {"bad key!": "x"}}},
    )
)
def test_every_spec_is_refused_or_ends_in_a_clear_condition(
    fleet: FleetEnv, operator: OperatorProcess, example: tuple[list[str], dict[str, Any]]
) -> None:
    mistakes, spec = example
    rollout = {"progressDeadlineSeconds": DEADLINE_S, **spec.pop("rollout", {})}
    version = spec.pop("version")
    replicas = spec.pop("replicas")
    try:
        fleet.apply(version, replicas=replicas, rollout=rollout, **spec)
    except ApiError as exc:
        assert exc.status == 422, exc.body
        assert _names_a_field(exc.body), exc.body
        event(f"refused by the API server: {' + '.join(mistakes)}")
        return
    try:
        status = wait_until(lambda: _settled(fleet), DEADLINE_S + 45, "a settled status")
        assert status["message"], status
        said = " ".join(
            [status["message"], *(c.get("message", "") for c in status.get("conditions") or [])]
        )
        # At zero replicas nothing runs, so what only a running worker shows cannot show.
        causes = [CAUSES[m] for m in mistakes if m in CAUSES] if replicas > 0 else []
        if causes:
            assert any(any(c in said for c in cause) for cause in causes), (mistakes, said)
        event(f"{' + '.join(mistakes) or 'no mistake'}: accepted, {status.get('phase')}")
        assert operator.proc is not None and operator.proc.poll() is None, "operator died"
        # This fleet's own Events (earlier examples' fleets had the same name, other uids).
        uid = fleet.get()["metadata"]["uid"]
        mine = [e for e in fleet.events() if e["involvedObject"].get("uid") == uid]
        posted = sum(int(e.get("count") or 1) for e in mine)
        objects = len(mine)
        reasons = [e["reason"] for e in mine]
        assert objects <= 12, f"{objects} Event objects for one fleet: {reasons}"
        assert posted <= 200, posted
    finally:
        started = time.monotonic()
        assert fleet.delete(timeout=90), f"not deletable: {spec}"
        assert time.monotonic() - started < 90
