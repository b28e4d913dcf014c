--! breaking
-- Contract: `body` becomes `message`. Release 1 and 2 write `body`, which is gone afterwards.
alter table :FLEET_SCHEMA.receipts rename column body to message;
