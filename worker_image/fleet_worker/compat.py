"""The compatibility rule between one worker's catalog and the migrations applied in the
database. Pure: the runtime, `fleet-worker migrate` and the operator all decide with it.

- an applied migration the worker does not know, flagged breaking: the worker is out of date;
- an applied migration the worker does not know, all such safe: it runs (expand before contract);
- a known migration not yet applied: the worker has pending migrations and must wait or apply;
- a known migration applied with another checksum: an error, never a warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fleet_worker.catalog import Catalog, Migration


@dataclass(frozen=True)
class AppliedMigration:
    id: str
    name: str
    breaking: bool
    checksum: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AppliedMigration:
        return cls(
            id=str(data["id"]),
            name=str(data.get("name", "")),
            breaking=bool(data["breaking"]),
            checksum=str(data.get("checksum", "")),
        )


@dataclass(frozen=True)
class ChecksumMismatch:
    id: str
    expected: str
    applied: str


@dataclass(frozen=True)
class Assessment:
    pending: tuple[Migration, ...]
    unknown: tuple[AppliedMigration, ...]
    mismatched: tuple[ChecksumMismatch, ...]

    @property
    def unknown_breaking(self) -> tuple[AppliedMigration, ...]:
        return tuple(m for m in self.unknown if m.breaking)

    @property
    def out_of_date(self) -> bool:
        return bool(self.unknown_breaking)

    @property
    def compatible(self) -> bool:
        """May fetch and run jobs now."""
        return not self.pending and not self.out_of_date and not self.mismatched

    @property
    def safe_prefix(self) -> tuple[Migration, ...]:
        """Pending migrations that can be applied at once: those before the first breaking."""
        out = []
        for m in self.pending:
            if m.breaking:
                break
            out.append(m)
        return tuple(out)

    @property
    def first_breaking(self) -> Migration | None:
        return next((m for m in self.pending if m.breaking), None)

    def describe(self) -> str:
        if self.mismatched:
            items = ", ".join(
                f"{m.id} (file {m.expected[:12]}, database {m.applied[:12]})"
                for m in self.mismatched
            )
            return f"migration checksum mismatch: {items}; migration files must never change"
        if self.out_of_date:
            ids = ", ".join(m.id for m in self.unknown_breaking)
            return f"out of date: the database has breaking migration(s) {ids} this worker lacks"
        if self.pending:
            kinds = ", ".join(
                f"{m.id} ({'breaking' if m.breaking else 'safe'})" for m in self.pending
            )
            return f"pending migration(s): {kinds}"
        return "schema compatible"


def assess(catalog: Catalog, applied: list[AppliedMigration]) -> Assessment:
    applied_by_id = {m.id: m for m in applied}
    known = {m.id for m in catalog.migrations}
    mismatched = tuple(
        ChecksumMismatch(m.id, m.checksum, applied_by_id[m.id].checksum)
        for m in catalog.migrations
        if m.id in applied_by_id and applied_by_id[m.id].checksum != m.checksum
    )
    return Assessment(
        pending=tuple(m for m in catalog.migrations if m.id not in applied_by_id),
        unknown=tuple(m for m in applied if m.id not in known),
        mismatched=mismatched,
    )
