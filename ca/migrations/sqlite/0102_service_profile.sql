-- Issue 11 §3: the `service` certificate profile (a back-end system such as
-- the bank's transaction switch, CN = name, OU = service). Keep in step with
-- ../postgres/0102_service_profile.sql.
--
-- SQLite cannot alter a CHECK constraint, so `certificates` is rebuilt: new
-- table, copy, drop, rename, then its indexes again (it has no triggers and
-- no table references it). The migration runs in one transaction.

CREATE TABLE certificates_new (
    serial        TEXT    NOT NULL PRIMARY KEY
                  CHECK (length(serial) = 32 AND serial NOT GLOB '*[^0-9A-F]*'),
    profile       TEXT    NOT NULL
                  CHECK (profile IN ('device', 'server-tls', 'operator', 'load-permit', 'service')),
    subject       TEXT    NOT NULL,
    device_id     TEXT    CHECK (device_id IS NULL OR
                                 (length(device_id) = 16 AND device_id NOT GLOB '*[^0-9A-F]*')),
    operator_role TEXT    CHECK (operator_role IS NULL OR
                                 operator_role IN ('admin', 'operator', 'auditor')),
    not_before_ms INTEGER NOT NULL,
    not_after_ms  INTEGER NOT NULL,
    issued_at_ms  INTEGER NOT NULL,
    status        TEXT    NOT NULL CHECK (status IN ('valid', 'revoked')),
    revoked_at_ms INTEGER,
    reason        TEXT,
    pem           TEXT    NOT NULL,
    CHECK (profile <> 'device' OR device_id IS NOT NULL),
    CHECK (profile <> 'operator' OR operator_role IS NOT NULL),
    CHECK (profile <> 'service' OR (device_id IS NULL AND operator_role IS NULL)),
    CHECK ((status = 'valid') = (revoked_at_ms IS NULL AND reason IS NULL))
) STRICT, WITHOUT ROWID;

INSERT INTO certificates_new
    (serial, profile, subject, device_id, operator_role, not_before_ms, not_after_ms,
     issued_at_ms, status, revoked_at_ms, reason, pem)
SELECT serial, profile, subject, device_id, operator_role, not_before_ms, not_after_ms,
       issued_at_ms, status, revoked_at_ms, reason, pem
FROM certificates;

DROP TABLE certificates;
ALTER TABLE certificates_new RENAME TO certificates;

CREATE INDEX certificates_device ON certificates (device_id, status, not_after_ms)
    WHERE device_id IS NOT NULL;
CREATE INDEX certificates_revoked ON certificates (status, not_after_ms)
    WHERE status = 'revoked';
