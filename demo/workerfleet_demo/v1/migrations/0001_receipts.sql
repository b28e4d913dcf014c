--! safe
-- Receipts the shop sends, and a ledger of every job execution so the demo can prove that
-- no job was lost and none ran twice.
create table :FLEET_SCHEMA.receipts (
    id bigserial primary key,
    order_id bigint not null,
    body text not null,
    sent_at timestamptz not null default clock_timestamp()
);
create table :FLEET_SCHEMA.demo_ledger (
    id bigserial primary key,
    job_id bigint not null,
    version text not null,
    pool_id uuid not null,
    finished_at timestamptz not null default clock_timestamp()
);
