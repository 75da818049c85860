-- Failed verifications of the audit trail, kept outside the hash chain
-- (server/src/audit/): a record chained onto a broken trail would move its
-- head and, once past the HSM checkpoint, the checkpoint, and so hide the
-- break. Each row says what the verification found; an operator's audited
-- repair (`keyward audit repair`) names the record that settled it. Keep in
-- step with ../postgres/2003_audit_incidents.sql.
CREATE TABLE audit_incidents (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms          INTEGER NOT NULL,
    actor          TEXT    NOT NULL,
    request_id     TEXT    NOT NULL,
    records        INTEGER NOT NULL,
    first_bad      INTEGER NOT NULL,
    problem        TEXT    NOT NULL,
    head_seq       INTEGER NOT NULL,
    checkpoint_seq INTEGER,
    repaired_by    INTEGER
) STRICT;
