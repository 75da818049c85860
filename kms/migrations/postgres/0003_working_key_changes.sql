-- Working-key changes that take usability away from a version some process
-- may hold in memory (docs/protocol.md §3.3, "Record cache"): a version
-- replaced (active → retiring, with its end time) or a device retired. Every
-- replica reads the rows after the last one it saw before it trusts its
-- in-memory records. Writers take an EXCLUSIVE lock on the table before
-- inserting, so sequence order is commit order and a reader that saw seq N
-- has seen every change below it. Keep in step with
-- ../sqlite/0003_working_key_changes.sql.
CREATE TABLE working_key_changes (
    seq       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    issuer_id TEXT   NOT NULL,
    device_id TEXT   NOT NULL CHECK (device_id ~ '^[0-9A-F]{16}$'),
    at_ms     BIGINT NOT NULL
);

CREATE INDEX working_key_changes_at ON working_key_changes (at_ms);
