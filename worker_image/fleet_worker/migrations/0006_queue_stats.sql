--! safe
-- Queue statistics for metrics. One pool per interval counts the jobs by task, queue and
-- state (fleet_worker/queue_stats.py); every pool exports the same rows, so the database
-- pays for one count per interval, not one per pod.
create table :FLEET_SCHEMA.queue_stats (
    task_identifier text not null,
    queue_name text not null,  -- '' for jobs in no named queue; '(other)' folds the rest
    state text not null,
    jobs bigint not null,
    oldest_run_at timestamptz,  -- of the waiting jobs: how long the oldest has been due
    primary key (task_identifier, queue_name, state)
);

-- When each periodic maintenance task last ran, whoever ran it.
create table :FLEET_SCHEMA.maintenance_runs (
    name text primary key,
    ran_at timestamptz not null
);
