"""Migration files: discovery, the `--! safe` / `--! breaking` header, checksums.

A catalog is the ordered list of migrations one worker release knows: the built-in (`core`)
migrations shipped with fleet_worker, then the app's own. Ids are `<namespace>/<number>` so a
later core release can add migrations without renumbering an app's.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleet_worker.errors import CatalogError

CORE_DIR = Path(__file__).parent / "migrations"
SCHEMA_PLACEHOLDER = ":FLEET_SCHEMA"
_FILENAME = re.compile(r"^(\d{1,6})(?:[_-][A-Za-z0-9_-]+)?\.sql$")


@dataclass(frozen=True)
class Migration:
    id: str
    name: str
    breaking: bool
    checksum: str
    sql: str

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "breaking": self.breaking,
            "checksum": self.checksum,
        }


def parse_header(text: str, origin: str) -> bool:
    """Whether the migration is breaking. Every file must say so explicitly: a forgotten
    marker on a breaking change is exactly the accident this project exists to prevent."""
    flags: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("--!"):
            break
        flags.extend(stripped[3:].split())
    marks = [f for f in flags if f in ("safe", "breaking")]
    unknown = [f for f in flags if f not in ("safe", "breaking")]
    if unknown:
        raise CatalogError(f"{origin}: unknown header flag(s) {', '.join(unknown)}")
    if len(marks) != 1:
        raise CatalogError(
            f"{origin}: the first lines must contain exactly one of `--! safe` or "
            "`--! breaking` (breaking: old workers cannot run against the schema afterwards)"
        )
    return marks[0] == "breaking"


def checksum(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_directory(directory: Path, namespace: str) -> list[Migration]:
    if not directory.is_dir():
        raise CatalogError(f"migrations directory {directory} does not exist")
    found: dict[int, Path] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix != ".sql":
            continue
        match = _FILENAME.fullmatch(path.name)
        if not match:
            raise CatalogError(f"{path}: name migration files like 0001_add_column.sql")
        number = int(match.group(1))
        if number in found:
            raise CatalogError(f"{path}: number {number} is also used by {found[number].name}")
        found[number] = path
    numbers = sorted(found)
    if numbers != list(range(1, len(numbers) + 1)):
        raise CatalogError(
            f"{directory}: migration numbers must run 1, 2, 3... without gaps; found {numbers}"
        )
    migrations = []
    for number in numbers:
        path = found[number]
        raw = path.read_bytes()
        text = raw.decode("utf-8")
        migrations.append(
            Migration(
                id=f"{namespace}/{number:04d}",
                name=path.stem,
                breaking=parse_header(text, str(path)),
                checksum=checksum(raw),
                sql=text,
            )
        )
    return migrations


@dataclass(frozen=True)
class Catalog:
    migrations: tuple[Migration, ...]

    @classmethod
    def load(cls, app_migrations: Path | None = None) -> Catalog:
        migrations = load_directory(CORE_DIR, "core")
        if app_migrations is not None:
            migrations += load_directory(app_migrations, "app")
        return cls(tuple(migrations))

    @property
    def ids(self) -> list[str]:
        return [m.id for m in self.migrations]

    @property
    def last_id(self) -> str:
        return self.migrations[-1].id

    def get(self, migration_id: str) -> Migration:
        for m in self.migrations:
            if m.id == migration_id:
                return m
        raise CatalogError(f"unknown migration {migration_id!r}; known: {', '.join(self.ids)}")

    def to_json(self) -> list[dict[str, Any]]:
        return [m.summary() for m in self.migrations]
