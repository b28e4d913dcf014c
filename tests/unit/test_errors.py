"""One exception tree (fleet_worker/errors.py): each error the CLI can meet ends in the exit
code it always had, and keeps its built-in base for callers that catch those."""

from __future__ import annotations

import pytest

from fleet_worker import errors
from fleet_worker.exit_codes import ExitCode

EXPECTED = {
    errors.UsageError: ExitCode.USAGE,
    errors.InvalidIdentifierError: ExitCode.USAGE,
    errors.InvalidJobError: ExitCode.USAGE,
    errors.AppLoadError: ExitCode.USAGE,
    errors.CronError: ExitCode.USAGE,
    errors.AppDefinitionError: ExitCode.USAGE,
    errors.AdminError: ExitCode.USAGE,
    errors.CatalogError: ExitCode.SCHEMA_ERROR,
    errors.MigrationError: ExitCode.SCHEMA_ERROR,
    errors.DatabaseUnavailableError: ExitCode.ERROR,
}
BUILTIN = {
    errors.InvalidIdentifierError: ValueError,  # pydantic turns it into a validation error
    errors.InvalidJobError: ValueError,
    errors.AppLoadError: ImportError,
    errors.CronError: ValueError,
    errors.AppDefinitionError: ValueError,
    errors.AdminError: ValueError,
    errors.CatalogError: ValueError,
    errors.MigrationError: RuntimeError,
    errors.DatabaseUnavailableError: RuntimeError,
}


@pytest.mark.parametrize("error", list(EXPECTED), ids=lambda e: e.__name__)
def test_each_error_carries_its_exit_code_and_its_builtin_base(
    error: type[errors.FleetWorkerError],
) -> None:
    assert issubclass(error, errors.FleetWorkerError)
    assert error.exit_code == EXPECTED[error]
    if error in BUILTIN:
        assert issubclass(error, BUILTIN[error])


def test_every_error_of_the_tree_is_pinned() -> None:
    def tree(cls: type) -> set[type]:
        subclasses: list[type] = cls.__subclasses__()
        return {cls} | {d for c in subclasses for d in tree(c)}

    leaves = tree(errors.FleetWorkerError) - {errors.FleetWorkerError, errors.SchemaError}
    assert leaves == set(EXPECTED)
