"""The `Reconciling` and `Stalled` conditions, in the meaning kstatus gives them
(sigs.k8s.io/cli-utils/pkg/kstatus), so Flux, Argo CD, `kubectl wait` and cli-utils'
status poller can tell when a fleet is done without knowing WorkerFleet:

- `Reconciling` True: the fleet is on its way to its spec (rolling out, migrating, waiting
  for a drain or an approval, recovering); kstatus reads it as InProgress.
- `Stalled` True: it will not get there without a human (kstatus: Failed), for one of the
  reasons in STALLED_BY; `Reconciling` is then False, because kstatus reads Reconciling
  first.
- Both False: at its spec (Ready) or paused (kstatus: Current).

Derived from the other conditions and the phase in one place, after the planner (and the
action-refused and invalid-spec paths) have set those, so they can never disagree.
"""

from __future__ import annotations

from workerfleet_operator.models import (
    Condition,
    FleetPhase,
    Reason,
    WorkerFleetStatus,
    condition_now,
)

# Progressing or Ready False for one of these: no reconcile can fix it; the spec, the
# Secret, the image or the database must change.
STALLED_BY = frozenset(
    {
        Reason.PROGRESS_DEADLINE_EXCEEDED,
        Reason.ROLLBACK_REFUSED,
        Reason.MIGRATION_FAILED,
        Reason.SECRET_ERROR,
        Reason.INVALID_SPEC,
        Reason.ACTION_REFUSED,
    }
)
AT_SPEC_PHASES = frozenset({FleetPhase.READY, FleetPhase.PAUSED})


def _condition(status: WorkerFleetStatus, type_: str) -> Condition | None:
    return next((c for c in status.conditions if c.type == type_), None)


def stalled_reason(status: WorkerFleetStatus) -> str | None:
    for type_ in ("Progressing", "Ready"):
        c = _condition(status, type_)
        if c is not None and c.status == "False" and c.reason in STALLED_BY:
            return c.reason
    return None


def with_kstatus(
    status: WorkerFleetStatus,
    previous: WorkerFleetStatus,
    *,
    generation: int,
    now: str,
) -> WorkerFleetStatus:
    """Sets Reconciling and Stalled on `status` (replacing any it had) and returns it; a
    condition keeps its lastTransitionTime while its status does not change. `now` as the
    API writes it. In place: every caller passes a status of its own making."""
    stalled = stalled_reason(status)
    ready = _condition(status, "Ready")
    at_spec = (ready is not None and ready.status == "True") or status.phase in AT_SPEC_PHASES
    message = status.message or ""
    if stalled is not None:
        reconciling = ("False", "Stalled", message)
        stall = ("True", stalled, message)
    elif at_spec:
        reconciling = ("False", status.phase or FleetPhase.READY, message)
        stall = ("False", status.phase or FleetPhase.READY, message)
    else:
        reconciling = ("True", status.phase or "Reconciling", message)
        stall = ("False", "Progressing", message)
    out = status
    out.conditions = [c for c in out.conditions if c.type not in ("Reconciling", "Stalled")]
    for type_, (value, reason, msg) in (("Reconciling", reconciling), ("Stalled", stall)):
        out.conditions.append(
            condition_now(
                type_, value, reason, msg, previous=previous.conditions,
                generation=generation, now=now,
            )
        )  # fmt: skip
    return out
