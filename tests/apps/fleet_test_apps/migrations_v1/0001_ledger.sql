--! safe
-- Test apps record every execution here, so tests can count lost and duplicated work.
create table :FLEET_SCHEMA.ledger (
    id bigserial primary key,
    job_id bigint not null,
    pool_id uuid not null,
    version text not null,
    started_at timestamptz not null default clock_timestamp()
);
create table :FLEET_SCHEMA.widgets (id bigserial primary key, job_id bigint, name text not null);
