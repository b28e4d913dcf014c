"""Process exit codes of `fleet-worker run`; the operator and node supervisors read these."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0  # graceful stop: all jobs finished or released
    ERROR = 1  # unexpected failure; a restart is reasonable
    USAGE = 2  # bad configuration or arguments; a restart will not help
    SCHEMA_ERROR = 65  # migration files and the database disagree (checksum, missing file)
    OUT_OF_DATE = 57  # the database holds a breaking migration this worker does not know:
    # do not restart this version (the convention of Graphile Worker's live migrations)
    FENCED = 58  # this pool was declared dead or evicted by others; a fresh start is fine
    TERMINATED = 143  # a command other than `run` stopped by SIGTERM (128 + 15, as shells do);
    # `run` drains instead and exits 0
