-- Idempotency keys get a lease (server/src/http/idempotency.rs): a `running`
-- key names the run that owns it and when its lease lapses. The owner renews
-- the lease while its request runs; a retry that finds it lapsed (the owner's
-- process died) takes the key over and runs the request. Rows from before
-- this migration have no lease: they count as lapsed a lease's length after
-- they were made. Keep in step with ../postgres/2011_idempotency_lease.sql.

ALTER TABLE http_idempotency ADD COLUMN owner TEXT;
ALTER TABLE http_idempotency ADD COLUMN lease_until_ms INTEGER;
