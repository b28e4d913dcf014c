"""The operator's words for a fleet's phase, its conditions' reasons and its Events' reasons
are enums (models.FleetPhase, models.Reason, models.EventReason); the planner's types force
every status and Event through them, and docs/operator.md lists exactly their members."""

from __future__ import annotations

import re
from pathlib import Path

from workerfleet_operator.handlers import AT_REST
from workerfleet_operator.kstatus import AT_SPEC_PHASES
from workerfleet_operator.models import EventReason, FleetPhase, Reason

ROOT = Path(__file__).resolve().parents[2]


def test_the_docs_list_exactly_the_phases() -> None:
    text = (ROOT / "docs/operator.md").read_text()
    [listing] = re.findall(r"^Phases: (.+?)\.\n\n", text, re.M | re.S)
    # Only the backticked words directly in the list (its parenthesis explains one of them).
    listed = set(re.findall(r"`([A-Z][A-Za-z]+)`", re.sub(r"\([^)]*\)", "", listing)))
    assert listed == {p.value for p in FleetPhase}


def test_the_phases_at_rest_are_phases() -> None:
    assert AT_SPEC_PHASES <= AT_REST <= set(FleetPhase)


def test_the_conditions_table_names_exactly_the_reasons() -> None:
    text = (ROOT / "docs/operator.md").read_text()
    rows = re.findall(r"^\| `(Ready|Available|Progressing|MigrationsApplied|Reconciling|Stalled)`"
                      r" \|(.+)$", text, re.M)  # fmt: skip
    assert len(rows) == 6
    named = {w for _, row in rows for w in re.findall(r"`([A-Z][A-Za-z]+)`", row)}
    conditions = {t for t, _ in rows}
    assert {r.value for r in Reason} <= named
    assert named <= {r.value for r in Reason} | {p.value for p in FleetPhase} | conditions


def test_the_docs_list_exactly_the_event_reasons() -> None:
    text = (ROOT / "docs/operator.md").read_text()
    [listing] = re.findall(r"^Events: (.+?)\. They are aggregated", text, re.M | re.S)
    listed = set(re.findall(r"`([A-Z][A-Za-z]+)`", listing))
    # NoAction labels a reconcile that did nothing; no Event carries it.
    assert listed == {r.value for r in EventReason} - {EventReason.NO_ACTION}
