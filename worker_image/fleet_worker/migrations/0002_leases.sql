--! safe
-- Leases. Each pool records the heartbeat interval and threshold it runs with, so every
-- observer judges it by its own numbers; NULL (pools of releases before this migration)
-- means "judged by the observer's threshold", as before.
-- host_started_at is the pool's start on its own host's clock: a supervisor on that host
-- (the kubelet) compares it with container start and finish times on the same clock.
-- pod_uid tells apart two pods that had the same name one after the other.
alter table :FLEET_SCHEMA.pools
    add column heartbeat_interval_s float8 check (heartbeat_interval_s > 0),
    add column sweep_threshold_s float8 check (sweep_threshold_s > 0),
    add column host_started_at timestamptz,
    add column pod_uid text;

-- Attempt fencing: every fetch gives the job a new token; completion, failure and release
-- must present it, so a retried statement of an earlier attempt can never touch a later one.
create sequence :FLEET_SCHEMA.lock_tokens;
alter table :FLEET_SCHEMA.jobs add column lock_token bigint;
