"""fleet_worker: a PostgreSQL job-queue worker runtime with pools, heartbeats and live
migrations. Users import `App` to define tasks and `add_job` to enqueue."""

from fleet_worker.app import App, JobCancelled, JobContext, OnOrphan, PermanentJobError
from fleet_worker.exit_codes import ExitCode
from fleet_worker.queue import JobSpec, add_job, add_jobs

__all__ = [
    "App",
    "ExitCode",
    "JobCancelled",
    "JobContext",
    "JobSpec",
    "OnOrphan",
    "PermanentJobError",
    "add_job",
    "add_jobs",
]
