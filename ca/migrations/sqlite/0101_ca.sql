-- The Keyward CA (SQLite): its own certificates, the registry of every
-- certificate it issued, and CRL numbering. Certificates and CRLs are public
-- data; no private key is ever stored (the CA keys live in the HSM). Times are
-- unix milliseconds. Keep in step with ../postgres/0101_ca.sql.
--
-- Version range: the CA's migrations are numbered from 101 so they share
-- `_sqlx_migrations` with the key catalog's (1..=100) without clashing.

-- The root and issuing CA certificates, written once by bootstrap and reused
-- by every later start and every replica.
CREATE TABLE ca_authorities (
    name          TEXT    NOT NULL PRIMARY KEY CHECK (name IN ('root', 'issuing')),
    serial        TEXT    NOT NULL
                  CHECK (length(serial) BETWEEN 2 AND 40 AND serial NOT GLOB '*[^0-9A-F]*'),
    pem           TEXT    NOT NULL,
    not_before_ms INTEGER NOT NULL,
    not_after_ms  INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

-- Every certificate the issuing CA signed. The serial (upper-case hex of a
-- positive 16-byte integer) is the key: a serial is never issued twice.
CREATE TABLE certificates (
    serial        TEXT    NOT NULL PRIMARY KEY
                  CHECK (length(serial) = 32 AND serial NOT GLOB '*[^0-9A-F]*'),
    profile       TEXT    NOT NULL
                  CHECK (profile IN ('device', 'server-tls', 'operator', 'load-permit')),
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
    CHECK ((status = 'valid') = (revoked_at_ms IS NULL AND reason IS NULL))
) STRICT, WITHOUT ROWID;

-- A device's current certificate; the revoked list for a CRL.
CREATE INDEX certificates_device ON certificates (device_id, status, not_after_ms)
    WHERE device_id IS NOT NULL;
CREATE INDEX certificates_revoked ON certificates (status, not_after_ms)
    WHERE status = 'revoked';

-- CRL state, one row. `last_number` is the highest CRL number handed out
-- (never goes back, across restarts and replicas); `revision` counts
-- revocations, so a CRL that covers an older revision is known to be stale.
-- The latest signed CRL is kept so every replica serves the same one.
CREATE TABLE ca_crl (
    id                INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    last_number       INTEGER NOT NULL CHECK (last_number >= 0),
    revision          INTEGER NOT NULL CHECK (revision >= 0),
    number            INTEGER,
    covers_revision   INTEGER,
    this_update_ms    INTEGER,
    next_update_ms    INTEGER,
    der               BLOB,
    CHECK (number IS NULL OR number <= last_number),
    CHECK ((number IS NULL) = (der IS NULL))
) STRICT;

INSERT INTO ca_crl (id, last_number, revision) VALUES (1, 0, 0);
