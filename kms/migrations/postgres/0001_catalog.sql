-- Key catalog (PostgreSQL). Holds labels, key check values, the public
-- derivation inputs R, versions and states: never key bytes (PROTOCOL.md,
-- "Working-key delivery"). Times are unix milliseconds (BIGINT: the Any driver
-- has no timestamp type). Keep in step with ../sqlite/0001_catalog.sql.

CREATE TABLE issuers (
    id            TEXT   NOT NULL PRIMARY KEY CHECK (id ~ '^[a-z0-9-]{1,32}$'),
    family        TEXT   NOT NULL CHECK (family IN ('tdes', 'aes')),
    created_at_ms BIGINT NOT NULL
);

-- Issuer master keys live on the HSM token; this records their labels and KCVs.
CREATE TABLE master_keys (
    issuer_id  TEXT NOT NULL REFERENCES issuers (id) ON DELETE CASCADE,
    role       TEXT NOT NULL CHECK (role IN ('IMK-TMK', 'IMK-AUTH')),
    label      TEXT NOT NULL CHECK (length(label) > 0),
    kcv_method TEXT NOT NULL,
    kcv        TEXT NOT NULL CHECK (kcv ~ '^[0-9A-F]{6}$'),
    PRIMARY KEY (issuer_id, role)
);

-- One HSM object per label: two catalog rows naming it would share a key.
CREATE UNIQUE INDEX master_keys_label ON master_keys (label);

-- One row per working-key generation of an (issuer, device); the state applies
-- to all its keys (TPK, TAK, TDK), which the device confirms together.
CREATE TABLE working_key_versions (
    issuer_id       TEXT   NOT NULL REFERENCES issuers (id),
    device_id       TEXT   NOT NULL CHECK (device_id ~ '^[0-9A-F]{16}$'),
    version         BIGINT NOT NULL CHECK (version BETWEEN 1 AND 4294967295),
    state           TEXT   NOT NULL
                    CHECK (state IN ('pending', 'active', 'retiring', 'rejected', 'retired')),
    created_at_ms   BIGINT NOT NULL,
    activated_at_ms BIGINT,
    retire_at_ms    BIGINT,
    CHECK (state NOT IN ('active', 'retiring', 'retired') OR activated_at_ms IS NOT NULL),
    CHECK (state NOT IN ('retiring', 'retired') OR retire_at_ms IS NOT NULL),
    PRIMARY KEY (issuer_id, device_id, version)
);

-- At most one active version per (issuer, device), whatever the code above does.
CREATE UNIQUE INDEX working_key_versions_one_active
    ON working_key_versions (issuer_id, device_id) WHERE state = 'active';

-- The retirement sweep reads only versions in their grace period.
CREATE INDEX working_key_versions_retire_due
    ON working_key_versions (retire_at_ms) WHERE state = 'retiring';

CREATE TABLE working_keys (
    issuer_id  TEXT   NOT NULL,
    device_id  TEXT   NOT NULL,
    version    BIGINT NOT NULL,
    role       TEXT   NOT NULL CHECK (role IN ('TPK', 'TAK', 'TDK')),
    -- R: 16 random bytes, not secret; the key is DIV'(TMK_d, R), derived in the HSM.
    r          TEXT   NOT NULL CHECK (r ~ '^[0-9A-F]{32}$'),
    kcv_method TEXT   NOT NULL,
    kcv        TEXT   NOT NULL CHECK (kcv ~ '^[0-9A-F]{6}$'),
    PRIMARY KEY (issuer_id, device_id, version, role),
    FOREIGN KEY (issuer_id, device_id, version)
        REFERENCES working_key_versions (issuer_id, device_id, version) ON DELETE CASCADE
);
