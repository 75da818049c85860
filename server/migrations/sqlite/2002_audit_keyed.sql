-- Audit trail keyed in the HSM (SQLite). Each record appended from now on
-- carries `mac` = HMAC-SHA256 under the HSM key keyward/audit/mac of its hash
-- (see server/src/audit.rs); older records keep their plain SHA-256 chain and
-- are anchored by the first keyed record. The head records `keyed_from` (the
-- first seq with a MAC) and its own MAC over (seq, hash, keyed_from).
-- Keep in step with ../postgres/2002_audit_keyed.sql. Never edit 2001.
--
-- The triggers below stop an application bug or a careless writer; a writer
-- with DDL rights can drop them. What really protects the trail is the MAC
-- (a forged record cannot carry one) and the HSM checkpoint (a truncated
-- tail shows), both checked by `keyward audit verify` and at start-up.

ALTER TABLE audit_log ADD COLUMN mac TEXT CHECK (mac IS NULL OR length(mac) = 64);
ALTER TABLE audit_head ADD COLUMN keyed_from INTEGER CHECK (keyed_from IS NULL OR keyed_from > 0);
ALTER TABLE audit_head ADD COLUMN mac TEXT CHECK (mac IS NULL OR length(mac) = 64);

-- A record is appended only at the head, linked to it, and with a MAC once
-- the trail is keyed.
CREATE TRIGGER audit_log_append_at_head BEFORE INSERT ON audit_log
WHEN NEW.seq IS NOT (SELECT seq + 1 FROM audit_head WHERE id = 1)
  OR NEW.prev_hash IS NOT (SELECT hash FROM audit_head WHERE id = 1)
  OR (NEW.mac IS NULL AND (SELECT keyed_from FROM audit_head WHERE id = 1) IS NOT NULL)
BEGIN
    SELECT RAISE(ABORT, 'audit_log: a record must extend the head');
END;

-- The head only moves forward, one appended record at a time, onto that
-- record; keyed_from is set once and never changes.
CREATE TRIGGER audit_head_advance_only BEFORE UPDATE ON audit_head
WHEN NEW.id IS NOT OLD.id
  OR NEW.seq IS NOT OLD.seq + 1
  OR NOT EXISTS (SELECT 1 FROM audit_log WHERE seq = NEW.seq AND hash = NEW.hash)
  OR (OLD.keyed_from IS NOT NULL AND NEW.keyed_from IS NOT OLD.keyed_from)
  OR (NEW.keyed_from IS NOT NULL AND NEW.mac IS NULL)
BEGIN
    SELECT RAISE(ABORT, 'audit_head advances only by the records appended');
END;

CREATE TRIGGER audit_head_no_delete BEFORE DELETE ON audit_head
BEGIN
    SELECT RAISE(ABORT, 'audit_head cannot be deleted');
END;

CREATE TRIGGER audit_head_no_insert BEFORE INSERT ON audit_head
BEGIN
    SELECT RAISE(ABORT, 'audit_head has exactly one row');
END;
