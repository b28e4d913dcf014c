--! safe
-- The queue and the pool protocol. :FLEET_SCHEMA is replaced by the validated, quoted schema name.

create table :FLEET_SCHEMA.pools (
    pool_id uuid primary key,
    fleet text not null default '',
    version text not null,
    image text,
    pod_name text,
    node_name text,
    hostname text,
    pid integer,
    mode text not null check (mode in ('self', 'external')),
    catalog jsonb not null,
    state text not null check (state in
        ('starting', 'waiting-for-schema', 'active', 'draining', 'stopped', 'dead', 'evicted')),
    concurrency integer not null check (concurrency > 0),
    running_jobs integer not null default 0,
    wants_migration text,
    wants_migration_since timestamptz,
    started_at timestamptz not null default now(),
    heartbeat_at timestamptz not null default now(),
    stopped_at timestamptz,
    reason text
);
create index pools_live_idx on :FLEET_SCHEMA.pools (heartbeat_at)
    where state in ('starting', 'waiting-for-schema', 'active', 'draining');

create table :FLEET_SCHEMA.job_queues (
    queue_name text primary key,
    locked_by uuid,
    locked_at timestamptz
);

create table :FLEET_SCHEMA.jobs (
    id bigserial primary key,
    queue_name text references :FLEET_SCHEMA.job_queues (queue_name),
    task_identifier text not null check (length(task_identifier) between 1 and 128),
    payload jsonb not null default '{}'::jsonb,
    priority integer not null default 0,
    run_at timestamptz not null default now(),
    attempts integer not null default 0,
    max_attempts integer not null default 25 check (max_attempts between 1 and 32767),
    last_error text,
    key text unique check (length(key) > 0),
    locked_by uuid,
    locked_at timestamptz,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);
-- The fetch path: unlocked, runnable, by priority then run_at.
create index jobs_fetch_idx on :FLEET_SCHEMA.jobs (priority, run_at, id)
    where locked_by is null and attempts < max_attempts;
create index jobs_locked_by_idx on :FLEET_SCHEMA.jobs (locked_by) where locked_by is not null;

-- Wake sleeping workers on any insert, however the job arrived (Python, SQL, COPY).
create function :FLEET_SCHEMA.tg_jobs_notify() returns trigger language plpgsql as $$
begin
    perform pg_notify(tg_table_schema || '.jobs', '');
    return null;
end;
$$;
create trigger jobs_notify after insert on :FLEET_SCHEMA.jobs
    for each statement execute function :FLEET_SCHEMA.tg_jobs_notify();

-- Enqueue from SQL. With a job_key, an existing job that is not running is replaced (its
-- attempts reset); a running one keeps running and loses the key to the new job.
create function :FLEET_SCHEMA.add_job(
    identifier text,
    payload jsonb default '{}'::jsonb,
    queue_name text default null,
    run_at timestamptz default null,
    max_attempts integer default null,
    job_key text default null,
    priority integer default null
) returns :FLEET_SCHEMA.jobs language plpgsql volatile as $$
#variable_conflict use_variable
declare
    v_job :FLEET_SCHEMA.jobs;
begin
    if queue_name is not null then
        insert into :FLEET_SCHEMA.job_queues (queue_name) values (add_job.queue_name)
            on conflict do nothing;
    end if;
    if job_key is not null then
        update :FLEET_SCHEMA.jobs j set key = null
            where j.key = add_job.job_key and j.locked_by is not null;
        insert into :FLEET_SCHEMA.jobs as j
            (task_identifier, payload, queue_name, run_at, max_attempts, key, priority)
        values (
            identifier, coalesce(payload, '{}'::jsonb), queue_name, coalesce(run_at, now()),
            coalesce(max_attempts, 25), job_key, coalesce(priority, 0))
        on conflict (key) do update set
            task_identifier = excluded.task_identifier,
            payload = excluded.payload,
            queue_name = excluded.queue_name,
            run_at = excluded.run_at,
            max_attempts = excluded.max_attempts,
            priority = excluded.priority,
            attempts = 0,
            last_error = null,
            updated_at = now()
        where j.locked_by is null
        returning * into v_job;
        if v_job.id is not null then
            return v_job;
        end if;
        -- The keyed job was locked between our two statements: it keeps running, keyless.
        update :FLEET_SCHEMA.jobs j set key = null where j.key = add_job.job_key;
    end if;
    insert into :FLEET_SCHEMA.jobs
        (task_identifier, payload, queue_name, run_at, max_attempts, key, priority)
    values (
        identifier, coalesce(payload, '{}'::jsonb), queue_name, coalesce(run_at, now()),
        coalesce(max_attempts, 25), job_key, coalesce(priority, 0))
    returning * into v_job;
    return v_job;
end;
$$;
