-- Device identity and challenges by id (PostgreSQL). Keep in step with
-- ../sqlite/3002_device_identity.sql.

-- Every public key a device certificate was issued for, by the SHA-256 of its
-- SubjectPublicKeyInfo DER (upper-case hex): a key belongs to at most one
-- device, ever. Rows outlive retirement and re-certification; only an import
-- that did not complete removes its own rows with its reservation. Devices
-- registered before this migration have no row (their keys are not known
-- here without the certificates).
CREATE TABLE prov_device_keys (
    spki_sha256      TEXT    NOT NULL PRIMARY KEY CHECK (spki_sha256 ~ '^[0-9A-F]{64}$'),
    device_id        TEXT    NOT NULL REFERENCES prov_devices (device_id),
    registered_at_ms BIGINT  NOT NULL
);

CREATE INDEX prov_device_keys_device ON prov_device_keys (device_id);

-- Challenges by id: several outstanding per (device, purpose), each single
-- use (deleted when answered, right or wrong), with an expiry. One table for
-- every purpose (the genuine-device check, later login's random-auth).
-- Outstanding challenges of the one-per-device table are dropped: they were
-- valid for two minutes.
DROP TABLE prov_challenges;

CREATE TABLE prov_challenges (
    id            TEXT    NOT NULL PRIMARY KEY CHECK (id ~ '^[0-9A-F]{32}$'),
    device_id     TEXT    NOT NULL REFERENCES prov_devices (device_id),
    purpose       TEXT    NOT NULL CHECK (length(purpose) BETWEEN 1 AND 32),
    challenge     TEXT    NOT NULL CHECK (challenge ~ '^([0-9A-F]{2}){1,64}$'),
    created_at_ms BIGINT  NOT NULL,
    expires_at_ms BIGINT  NOT NULL
);

CREATE INDEX prov_challenges_device ON prov_challenges (device_id, purpose, created_at_ms);

-- A re-certification asked for by one operator, waiting for a second one:
-- at most one per device. `csr` is base64 of the request's DER.
CREATE TABLE prov_recertifications (
    device_id       TEXT    NOT NULL PRIMARY KEY REFERENCES prov_devices (device_id),
    csr             TEXT    NOT NULL CHECK (length(csr) BETWEEN 1 AND 32768),
    spki_sha256     TEXT    NOT NULL CHECK (spki_sha256 ~ '^[0-9A-F]{64}$'),
    reason          TEXT    NOT NULL,
    requested_by    TEXT    NOT NULL,
    requested_at_ms BIGINT  NOT NULL
);
