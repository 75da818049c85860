-- The `channel` certificate profile: the HSM RSA key cards encrypt the
-- secure channel's pre-master to (keyEncipherment only, no extended key
-- usage). Keep in step with ../postgres/0104_channel_profile.sql.
--
-- SQLite cannot alter a CHECK constraint, so `certificates` is rebuilt as in
-- 0103 (no triggers, nothing references it; one transaction).

CREATE TABLE certificates_new (
    serial        TEXT    NOT NULL PRIMARY KEY
                  CHECK (length(serial) = 32 AND serial NOT GLOB '*[^0-9A-F]*'),
    profile       TEXT    NOT NULL
                  CHECK (profile IN ('device', 'server-tls', 'operator', 'load-permit', 'service',
                                     'evidence', 'channel')),
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
    CHECK (profile <> 'evidence' OR (device_id IS NULL AND operator_role IS NULL)),
    CHECK (profile <> 'channel' OR (device_id IS NULL AND operator_role IS NULL)),
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
