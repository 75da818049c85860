-- Device provisioning (SQLite): manufacturing batches, the device registry
-- and its lifecycle, genuine-device challenges, original-key (init package)
-- records per issuer, customer applications and device bindings. No key
-- bytes: an init record keeps only the KCVs the package announced. Times are
-- unix milliseconds. Keep in step with ../postgres/3001_provisioning.sql.
--
-- Version range: provisioning migrations are numbered from 3001 so they share
-- `_sqlx_migrations` with the key catalog's (1..=100) and the CA's (101..)
-- without clashing. Tables are prefixed `prov_`.

-- One manufacturing intake file. `importing` while its certificates are being
-- issued; devices of a batch that is not `complete` cannot be checked.
CREATE TABLE prov_batches (
    id              TEXT    NOT NULL PRIMARY KEY
                    CHECK (length(id) BETWEEN 1 AND 64 AND id NOT GLOB '*[^A-Za-z0-9._-]*'),
    state           TEXT    NOT NULL CHECK (state IN ('importing', 'complete')),
    device_count    INTEGER NOT NULL CHECK (device_count >= 1),
    imported_by     TEXT    NOT NULL,
    imported_at_ms  INTEGER NOT NULL,
    completed_at_ms INTEGER,
    CHECK ((state = 'complete') = (completed_at_ms IS NOT NULL))
) STRICT, WITHOUT ROWID;

-- The device registry. `cert_serial` is NULL only while the batch imports.
CREATE TABLE prov_devices (
    device_id           TEXT    NOT NULL PRIMARY KEY
                        CHECK (length(device_id) = 16 AND device_id NOT GLOB '*[^0-9A-F]*'),
    batch_id            TEXT    NOT NULL REFERENCES prov_batches (id),
    psam_serial         TEXT    CHECK (psam_serial IS NULL OR length(psam_serial) BETWEEN 1 AND 32),
    esam_serial         TEXT    CHECK (esam_serial IS NULL OR length(esam_serial) BETWEEN 1 AND 32),
    model               TEXT    NOT NULL CHECK (length(model) BETWEEN 1 AND 64),
    firmware            TEXT    NOT NULL CHECK (length(firmware) BETWEEN 1 AND 64),
    key_kind            TEXT    NOT NULL CHECK (key_kind IN ('p256', 'rsa')),
    cert_serial         TEXT,
    state               TEXT    NOT NULL
                        CHECK (state IN ('manufactured', 'verified', 'initialised',
                                         'issued', 'suspended', 'retired')),
    check_failures      INTEGER NOT NULL DEFAULT 0 CHECK (check_failures >= 0),
    verified_at_ms      INTEGER,
    created_at_ms       INTEGER NOT NULL,
    state_changed_at_ms INTEGER NOT NULL,
    CHECK (psam_serial IS NOT NULL OR esam_serial IS NOT NULL),
    CHECK (state = 'manufactured' OR state = 'retired' OR verified_at_ms IS NOT NULL)
) STRICT, WITHOUT ROWID;

CREATE INDEX prov_devices_batch ON prov_devices (batch_id);
-- A secure element is one physical chip: its serial belongs to one device.
CREATE UNIQUE INDEX prov_devices_psam ON prov_devices (psam_serial) WHERE psam_serial IS NOT NULL;
CREATE UNIQUE INDEX prov_devices_esam ON prov_devices (esam_serial) WHERE esam_serial IS NOT NULL;

-- The outstanding genuine-device challenge of a device: at most one, single
-- use (deleted when answered, right or wrong), with an expiry.
CREATE TABLE prov_challenges (
    device_id     TEXT    NOT NULL PRIMARY KEY REFERENCES prov_devices (device_id),
    challenge     TEXT    NOT NULL
                  CHECK (length(challenge) = 64 AND challenge NOT GLOB '*[^0-9A-F]*'),
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

-- Original keys per (device, issuer): the KCVs of TMK_d and AUTH_d that the
-- last init package announced, and whether the device confirmed them.
-- `reinit_by` is set by an operator's reinit and consumed by the next package.
CREATE TABLE prov_inits (
    device_id       TEXT    NOT NULL REFERENCES prov_devices (device_id),
    issuer_id       TEXT    NOT NULL REFERENCES issuers (id),
    state           TEXT    NOT NULL CHECK (state IN ('pending', 'initialised', 'refused')),
    kcv_method      TEXT    NOT NULL,
    tmk_kcv         TEXT    NOT NULL CHECK (length(tmk_kcv) = 6 AND tmk_kcv NOT GLOB '*[^0-9A-F]*'),
    auth_kcv        TEXT    NOT NULL CHECK (length(auth_kcv) = 6 AND auth_kcv NOT GLOB '*[^0-9A-F]*'),
    packages        INTEGER NOT NULL CHECK (packages >= 1),
    packaged_at_ms  INTEGER NOT NULL,
    confirmed_at_ms INTEGER,
    reinit_by       TEXT,
    reinit_reason   TEXT,
    CHECK ((reinit_by IS NULL) = (reinit_reason IS NULL)),
    PRIMARY KEY (device_id, issuer_id)
) STRICT, WITHOUT ROWID;

-- Customer registration (maker-checker). An application allocates its
-- customer id up front; an `approved` application is the customer record.
-- `accounts` is a comma-separated list (accounts are alphanumeric).
-- `national_id` is stored as given and never logged.
CREATE TABLE prov_applications (
    id              TEXT    NOT NULL PRIMARY KEY,
    customer_id     TEXT    NOT NULL UNIQUE,
    state           TEXT    NOT NULL
                    CHECK (state IN ('submitted', 'approved', 'rejected', 'closed')),
    name            TEXT    NOT NULL CHECK (length(name) BETWEEN 1 AND 128),
    national_id     TEXT    NOT NULL CHECK (length(national_id) BETWEEN 1 AND 64),
    accounts        TEXT    NOT NULL CHECK (length(accounts) >= 1),
    contact_kind    TEXT    NOT NULL CHECK (contact_kind IN ('sms', 'email', 'im')),
    contact_address TEXT    NOT NULL CHECK (length(contact_address) BETWEEN 1 AND 254),
    revision        INTEGER NOT NULL CHECK (revision >= 1),
    submitted_by    TEXT    NOT NULL,
    submitted_at_ms INTEGER NOT NULL,
    decided_by      TEXT,
    decided_at_ms   INTEGER,
    decision_reason TEXT,
    CHECK (state = 'submitted' OR decided_by IS NOT NULL),
    CHECK (state <> 'approved' OR decided_by <> submitted_by)
) STRICT, WITHOUT ROWID;

-- One customer per national id.
CREATE UNIQUE INDEX prov_applications_one_customer
    ON prov_applications (national_id) WHERE state = 'approved';
CREATE INDEX prov_applications_state ON prov_applications (state, submitted_at_ms);

-- A device's PSAM and/or ESAM bound to a customer for one issuer. All
-- bindings of a device name the same customer.
CREATE TABLE prov_bindings (
    device_id      TEXT    NOT NULL REFERENCES prov_devices (device_id),
    issuer_id      TEXT    NOT NULL REFERENCES issuers (id),
    customer_id    TEXT    NOT NULL REFERENCES prov_applications (customer_id),
    secure_element TEXT    NOT NULL CHECK (secure_element IN ('psam', 'esam', 'both')),
    psam_serial    TEXT,
    esam_serial    TEXT,
    accounts       TEXT    NOT NULL CHECK (length(accounts) >= 1),
    bound_by       TEXT    NOT NULL,
    bound_at_ms    INTEGER NOT NULL,
    CHECK (secure_element = 'esam' OR psam_serial IS NOT NULL),
    CHECK (secure_element = 'psam' OR esam_serial IS NOT NULL),
    PRIMARY KEY (device_id, issuer_id)
) STRICT, WITHOUT ROWID;

CREATE INDEX prov_bindings_customer ON prov_bindings (customer_id);
