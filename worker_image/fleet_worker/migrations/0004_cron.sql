--! safe
-- Periodic jobs. One row per crontab entry name: the database time up to which its ticks
-- have been handled (enqueued, or skipped as too old to backfill). Every worker that knows
-- the entry checks it; the row lock and this time make each tick enqueue exactly once.
create table :FLEET_SCHEMA.cron_entries (
    name text primary key check (length(name) between 1 and 100),
    checked_until timestamptz not null,
    updated_at timestamptz not null default now()
);
