--! safe
-- The per-task orphan policy. A pool lists, when it turns active, the tasks it runs whose
-- interrupted attempts must never run again (`on_orphan="fail"`, for work such as charging
-- a card). Whoever releases the pool's jobs later (the sweep, the operator after a pod
-- ended, an eviction, the pool itself at shutdown) fails those attempts permanently instead
-- of retrying them. Empty (pools of releases before this migration): every task retries.
alter table :FLEET_SCHEMA.pools
    add column orphan_fail_tasks text[] not null default '{}';
