--! breaking
-- Contract: v1 and v2 insert into `name`, which no longer exists afterwards.
alter table :FLEET_SCHEMA.widgets rename column name to title;
