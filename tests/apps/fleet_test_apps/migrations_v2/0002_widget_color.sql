--! safe
-- Expand: a nullable column old code ignores.
alter table :FLEET_SCHEMA.widgets add column color text;
