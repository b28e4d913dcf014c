--! safe
-- Job admin and history.
--
-- `job_list`: the jobs with their state, one word (fleet_worker.protocol.JobState):
--   running    locked by a pool
--   failed     no attempts left (permanently failed; kept for inspection)
--   retrying   an attempt failed; waits out its back-off
--   scheduled  not yet due (run_at in the future), never attempted
--   waiting    due, waiting for a free worker
create view :FLEET_SCHEMA.job_list as
select j.id, j.task_identifier, j.queue_name, j.payload, j.priority, j.run_at, j.attempts,
       j.max_attempts, j.last_error, j.key, j.locked_by, j.locked_at, j.created_at,
       j.updated_at,
       case when j.locked_by is not null then 'running'
            when j.attempts >= j.max_attempts then 'failed'
            when j.run_at > now() and j.attempts > 0 then 'retrying'
            when j.run_at > now() then 'scheduled'
            else 'waiting' end as state
from :FLEET_SCHEMA.jobs j;

-- The admin functions act only on jobs no pool holds: a running attempt cannot be stopped
-- from the database, and changing its row under it would be undone or lost when it ends.
-- Each returns the ids it changed; the caller reports the others as skipped.

-- Run now, with every attempt back (a permanently failed job included).
create function :FLEET_SCHEMA.retry_jobs(job_ids bigint[]) returns setof bigint
language sql volatile as $$
    update :FLEET_SCHEMA.jobs set run_at = now(), attempts = 0, updated_at = now()
    where id = any(job_ids) and locked_by is null
    returning id;
$$;

-- Move to another time; optionally another priority or attempt budget.
create function :FLEET_SCHEMA.reschedule_jobs(
    job_ids bigint[],
    run_at timestamptz,
    priority integer default null,
    max_attempts integer default null
) returns setof bigint
language sql volatile as $$
    update :FLEET_SCHEMA.jobs j set run_at = reschedule_jobs.run_at,
        priority = coalesce(reschedule_jobs.priority, j.priority),
        max_attempts = coalesce(reschedule_jobs.max_attempts, j.max_attempts),
        updated_at = now()
    where j.id = any(job_ids) and j.locked_by is null
    returning j.id;
$$;

-- Delete jobs that have not run to the end: a job that is not wanted any more.
create function :FLEET_SCHEMA.cancel_jobs(job_ids bigint[]) returns setof bigint
language sql volatile as $$
    delete from :FLEET_SCHEMA.jobs where id = any(job_ids) and locked_by is null
    returning id;
$$;

-- Fail permanently, with a reason; kept for inspection like any failed job.
create function :FLEET_SCHEMA.fail_jobs(job_ids bigint[], reason text) returns setof bigint
language sql volatile as $$
    update :FLEET_SCHEMA.jobs set attempts = max_attempts, last_error = reason,
        updated_at = now()
    where id = any(job_ids) and locked_by is null
    returning id;
$$;

-- Completed jobs, recorded only by pools run with a history window (`--keep-history`),
-- pruned past it by whichever pool leads the sweep. Where a job ran: the pool (join
-- `pools` for its pod, node and version).
create table :FLEET_SCHEMA.job_history (
    id bigint primary key,
    task_identifier text not null,
    queue_name text,
    payload jsonb not null,
    priority integer not null,
    attempts integer not null,
    key text,
    pool_id uuid not null,
    created_at timestamptz not null,
    completed_at timestamptz not null default now()
);
create index job_history_completed_idx on :FLEET_SCHEMA.job_history (completed_at);
