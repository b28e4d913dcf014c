--! safe
-- Expand: where the receipt went. Release 1 does not know the column and keeps working.
alter table :FLEET_SCHEMA.receipts add column channel text;
