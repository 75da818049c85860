-- Audit trail (PostgreSQL). Append-only and hash-chained: each record's `hash`
-- is SHA-256(prev_hash || canonical record) (see server/src/audit.rs), so an
-- edited, removed or reordered record breaks the chain at that record.
-- `audit_head` holds the last seq and hash; writers take it with
-- SELECT ... FOR UPDATE, so appends are serialised.
-- Times are unix milliseconds. Keep in step with ../sqlite/2001_audit.sql.
-- Versions 2001+ belong to the server (kms uses 1.., the CA 1001..).

CREATE TABLE audit_log (
    seq         BIGINT NOT NULL PRIMARY KEY CHECK (seq > 0),
    at_ms       BIGINT NOT NULL,
    actor       TEXT   NOT NULL,
    action      TEXT   NOT NULL,
    target      TEXT   NOT NULL,
    outcome     TEXT   NOT NULL,
    request_id  TEXT   NOT NULL,
    detail_json TEXT   NOT NULL,
    prev_hash   TEXT   NOT NULL CHECK (length(prev_hash) = 64),
    hash        TEXT   NOT NULL CHECK (length(hash) = 64)
);

CREATE INDEX audit_log_at ON audit_log (at_ms);

CREATE TABLE audit_head (
    id   SMALLINT NOT NULL PRIMARY KEY CHECK (id = 1),
    seq  BIGINT   NOT NULL CHECK (seq >= 0),
    hash TEXT     NOT NULL CHECK (length(hash) = 64)
);

INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- The application never updates or deletes a record; neither may anyone else
-- without first dropping these triggers (which the hash chain then reveals).
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END
$$;

CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();

CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
