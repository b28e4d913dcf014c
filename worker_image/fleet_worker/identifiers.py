"""Validation of names that end up as SQL identifiers (the schema name)."""

from __future__ import annotations

import re

from psycopg import sql

from fleet_worker.errors import InvalidIdentifierError

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
DEFAULT_SCHEMA = "fleet_worker"


def validate_schema_name(name: str) -> str:
    """Accept only plain lower-case identifiers: they need no quoting, fit PostgreSQL's 63-byte
    limit, and cannot smuggle SQL into the migration text they are substituted into."""
    if not _IDENTIFIER.fullmatch(name) or name.startswith("pg_"):
        raise InvalidIdentifierError(
            f"invalid schema name {name!r}: use 1-63 characters of a-z, 0-9 and _, "
            "starting with a letter or _, and not starting with pg_"
        )
    return name


def schema_ident(name: str) -> sql.Identifier:
    return sql.Identifier(validate_schema_name(name))
