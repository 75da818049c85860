-- Leases of the background jobs that run once across replicas
-- (server/src/jobs): whoever holds the unexpired lease runs the job. One
-- table for every job; it replaces online_jobs, which held the online
-- maintenance job's lease only (that lease is simply taken again).
CREATE TABLE jobs (
    name           TEXT    NOT NULL PRIMARY KEY,
    holder         TEXT    NOT NULL,
    lease_until_ms INTEGER NOT NULL,
    last_run_at_ms INTEGER
) STRICT, WITHOUT ROWID;

DROP TABLE online_jobs;
