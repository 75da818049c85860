-- Working-key changes that take usability away from a version some process
-- may hold in memory (docs/protocol.md §3.3, "Record cache"): a version
-- replaced (active → retiring, with its end time) or a device retired. Every
-- replica reads the rows after the last one it saw before it trusts its
-- in-memory records, so a change made on one replica holds on all of them
-- from their next request on. Times are unix milliseconds; rows older than
-- the retention are pruned by the maintenance job. Keep in step with
-- ../postgres/0003_working_key_changes.sql.
CREATE TABLE working_key_changes (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    issuer_id TEXT    NOT NULL,
    device_id TEXT    NOT NULL
              CHECK (length(device_id) = 16 AND device_id NOT GLOB '*[^0-9A-F]*'),
    at_ms     INTEGER NOT NULL
) STRICT;

CREATE INDEX working_key_changes_at ON working_key_changes (at_ms);
