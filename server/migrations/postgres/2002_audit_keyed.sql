-- Audit trail keyed in the HSM (PostgreSQL). Each record appended from now on
-- carries `mac` = HMAC-SHA256 under the HSM key keyward/audit/mac of its hash
-- (see server/src/audit.rs); older records keep their plain SHA-256 chain and
-- are anchored by the first keyed record. The head records `keyed_from` (the
-- first seq with a MAC) and its own MAC over (seq, hash, keyed_from).
-- Keep in step with ../sqlite/2002_audit_keyed.sql. Never edit 2001.
--
-- The triggers below stop an application bug or a careless writer; a writer
-- with DDL rights can drop or disable them. What really protects the trail
-- is the MAC (a forged record cannot carry one) and the HSM checkpoint (a
-- truncated tail shows), both checked by `keyward audit verify` and at
-- start-up.

ALTER TABLE audit_log ADD COLUMN mac TEXT CHECK (mac IS NULL OR length(mac) = 64);
ALTER TABLE audit_head ADD COLUMN keyed_from BIGINT CHECK (keyed_from IS NULL OR keyed_from > 0);
ALTER TABLE audit_head ADD COLUMN mac TEXT CHECK (mac IS NULL OR length(mac) = 64);

-- A record is appended only at the head, linked to it, and with a MAC once
-- the trail is keyed.
CREATE FUNCTION audit_log_append_at_head() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    h audit_head%ROWTYPE;
BEGIN
    SELECT * INTO h FROM audit_head WHERE id = 1;
    IF NEW.seq IS DISTINCT FROM h.seq + 1
       OR NEW.prev_hash IS DISTINCT FROM h.hash
       OR (NEW.mac IS NULL AND h.keyed_from IS NOT NULL) THEN
        RAISE EXCEPTION 'audit_log: a record must extend the head';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER audit_log_append_at_head BEFORE INSERT ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_at_head();

-- The head only moves forward, one appended record at a time, onto that
-- record; keyed_from is set once and never changes.
CREATE FUNCTION audit_head_advance_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'UPDATE' THEN
        RAISE EXCEPTION 'audit_head has exactly one row and cannot be deleted';
    END IF;
    IF NEW.id IS DISTINCT FROM OLD.id
       OR NEW.seq IS DISTINCT FROM OLD.seq + 1
       OR NOT EXISTS (SELECT 1 FROM audit_log WHERE seq = NEW.seq AND hash = NEW.hash)
       OR (OLD.keyed_from IS NOT NULL AND NEW.keyed_from IS DISTINCT FROM OLD.keyed_from)
       OR (NEW.keyed_from IS NOT NULL AND NEW.mac IS NULL) THEN
        RAISE EXCEPTION 'audit_head advances only by the records appended';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER audit_head_advance_only BEFORE INSERT OR UPDATE OR DELETE ON audit_head
    FOR EACH ROW EXECUTE FUNCTION audit_head_advance_only();

CREATE TRIGGER audit_head_no_truncate BEFORE TRUNCATE ON audit_head
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
