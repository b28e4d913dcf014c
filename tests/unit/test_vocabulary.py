"""The operator's words for a fleet's phase are one enum (models.FleetPhase), which the
planner's type forces every status through; the docs list exactly its members."""

from __future__ import annotations

import re
from pathlib import Path

from workerfleet_operator.handlers import AT_REST
from workerfleet_operator.kstatus import AT_SPEC_PHASES
from workerfleet_operator.models import FleetPhase

ROOT = Path(__file__).resolve().parents[2]


def test_the_docs_list_exactly_the_phases() -> None:
    text = (ROOT / "docs/operator.md").read_text()
    [listing] = re.findall(r"^Phases: (.+?)\.\n\n", text, re.M | re.S)
    # Only the backticked words directly in the list (its parenthesis explains one of them).
    listed = set(re.findall(r"`([A-Z][A-Za-z]+)`", re.sub(r"\([^)]*\)", "", listing)))
    assert listed == {p.value for p in FleetPhase}


def test_the_phases_at_rest_are_phases() -> None:
    assert AT_SPEC_PHASES <= AT_REST <= set(FleetPhase)
