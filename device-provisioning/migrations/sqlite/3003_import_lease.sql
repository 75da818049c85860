-- Import leases (SQLite). Keep in step with ../postgres/3003_import_lease.sql.

-- An `importing` batch is owned by one import attempt (`importer`, a random
-- id) for as long as it keeps renewing `lease_until_ms`. A batch whose lease
-- has run out (its process was killed, or lost the database) is claimed by
-- recovery: the certificates issued for its devices are revoked and the
-- reservation removed, so the same file can be imported again. Batches left
-- `importing` before this migration have no lease and are recovered at once.
ALTER TABLE prov_batches ADD COLUMN importer TEXT
    CHECK (importer IS NULL OR length(importer) BETWEEN 1 AND 64);
ALTER TABLE prov_batches ADD COLUMN lease_until_ms INTEGER;

CREATE INDEX prov_batches_importing ON prov_batches (state, lease_until_ms);
