-- Device login (SQLite): the protocol state every replica shares
-- (server/src/online/). Login challenges themselves live in prov_challenges
-- (purpose 'login', scope = issuer). Times are unix milliseconds. Keep in
-- step with ../postgres/2020_login.sql.

-- One row per (issuer, device) credential that has logged in, failed, or
-- been asked to rotate. `failures` counts consecutive failed responses;
-- `locked_at_ms` is set when they reached the issuer's limit (only an
-- operator's unlock clears it); `revoked_serial` is the certificate the lock
-- revoked, if the policy did. `rotate_requested_at_ms`: an operator asked for
-- new working keys for this device; the next login offers them.
CREATE TABLE online_credentials (
    issuer_id              TEXT    NOT NULL,
    device_id              TEXT    NOT NULL
                           CHECK (length(device_id) = 16 AND device_id NOT GLOB '*[^0-9A-F]*'),
    failures               INTEGER NOT NULL DEFAULT 0 CHECK (failures >= 0),
    locked_at_ms           INTEGER,
    revoked_serial         TEXT,
    rotate_requested_at_ms INTEGER,
    last_login_at_ms       INTEGER,
    PRIMARY KEY (issuer_id, device_id)
) STRICT, WITHOUT ROWID;

CREATE INDEX online_credentials_device ON online_credentials (device_id);

-- Sessions, by the SHA-256 of their token (never the token), bound to the
-- device, the issuer and the TLS client certificate (its serial).
CREATE TABLE online_sessions (
    token_hash    TEXT    NOT NULL PRIMARY KEY
                  CHECK (length(token_hash) = 64 AND token_hash NOT GLOB '*[^0-9a-f]*'),
    device_id     TEXT    NOT NULL,
    issuer_id     TEXT    NOT NULL,
    cert_serial   TEXT    NOT NULL,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE INDEX online_sessions_device ON online_sessions (device_id, issuer_id);
CREATE INDEX online_sessions_expiry ON online_sessions (expires_at_ms);

-- A fleet-wide rotation: every device of the issuer whose active version was
-- activated before `requested_at_ms` gets new keys at its next login.
CREATE TABLE online_fleet_rotations (
    issuer_id       TEXT    NOT NULL PRIMARY KEY,
    requested_at_ms INTEGER NOT NULL,
    requested_by    TEXT    NOT NULL
) STRICT, WITHOUT ROWID;

-- Background jobs that must run on one replica at a time: whoever holds the
-- unexpired lease runs the job.
CREATE TABLE online_jobs (
    name           TEXT    NOT NULL PRIMARY KEY,
    holder         TEXT    NOT NULL,
    lease_until_ms INTEGER NOT NULL,
    last_run_at_ms INTEGER
) STRICT, WITHOUT ROWID;
