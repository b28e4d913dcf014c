"""The errors fleet_worker raises on purpose, in one tree. Each carries the exit code
`fleet-worker` ends with when it reaches the top, so the CLI maps them in one place; the
built-in bases stay (a ValueError is still a ValueError to pydantic and to callers).

    FleetWorkerError
    ├── UsageError               exit 2: bad arguments or settings; a restart will not help
    │   ├── InvalidIdentifierError   a schema or other SQL identifier refused
    │   ├── InvalidJobError          a job spec refused before it reached the database
    │   ├── AppLoadError             the app module cannot be imported or is not an App
    │   ├── AppDefinitionError       the App defines something wrong (a task twice, ...)
    │   │   └── CronError                a crontab entry that cannot be parsed
    │   └── AdminError               a job admin request that cannot be carried out as asked
    ├── SchemaError              exit 65: migration files and the database disagree
    │   ├── CatalogError             a migration file is malformed or missing
    │   └── MigrationError           a migration failed or cannot be applied
    └── DatabaseUnavailableError exit 1: the database cannot be reached (a restart may help)

Not here: JobCancelled and PermanentJobError (fleet_worker.app), which task code raises and
the worker handles per job, and Terminated (the CLI's SIGTERM), a BaseException on purpose.
"""

from __future__ import annotations

from typing import ClassVar

from fleet_worker.exit_codes import ExitCode


class FleetWorkerError(Exception):
    exit_code: ClassVar[ExitCode] = ExitCode.ERROR


class UsageError(FleetWorkerError):
    exit_code = ExitCode.USAGE


class InvalidIdentifierError(UsageError, ValueError):
    pass


class InvalidJobError(UsageError, ValueError):
    pass


class AppLoadError(UsageError, ImportError):
    pass


class AppDefinitionError(UsageError, ValueError):
    """The App's own definition is wrong; raised while its module is imported."""


class CronError(AppDefinitionError):
    """A schedule that cannot be parsed; the message says which field and why."""


class AdminError(UsageError, ValueError):
    """A request that cannot be carried out as asked; the message says what to do instead."""


class SchemaError(FleetWorkerError):
    exit_code = ExitCode.SCHEMA_ERROR


class CatalogError(SchemaError, ValueError):
    pass


class MigrationError(SchemaError, RuntimeError):
    pass


class DatabaseUnavailableError(FleetWorkerError, RuntimeError):
    exit_code = ExitCode.ERROR
