-- Transaction confirmations over a second channel (server/src/confirmation,
-- docs/protocol.md §11): the transaction exactly as received (`received`,
-- the bytes the device signs) beside its parsed copy, the code only as its
-- HMAC under an HSM key, and the state. Keep in step with
-- ../postgres/2050_confirmations.sql.
CREATE TABLE confirmations (
    id              TEXT    NOT NULL PRIMARY KEY,
    device_id       TEXT    NOT NULL,
    issuer_id       TEXT    NOT NULL,
    customer_id     TEXT    NOT NULL,
    received        BLOB    NOT NULL,
    payer_account   TEXT    NOT NULL,
    payee_account   TEXT    NOT NULL,
    payee_name      TEXT    NOT NULL,
    amount_minor    INTEGER NOT NULL CHECK (amount_minor > 0),
    currency        TEXT    NOT NULL CHECK (length(currency) = 3),
    reference       TEXT,
    payee_flagged   INTEGER NOT NULL CHECK (payee_flagged IN (0, 1)),
    rendered_sha256 TEXT    NOT NULL CHECK (length(rendered_sha256) = 64),
    code_mac        BLOB    NOT NULL CHECK (length(code_mac) = 32),
    attempts        INTEGER NOT NULL CHECK (attempts >= 0),
    max_attempts    INTEGER NOT NULL CHECK (max_attempts BETWEEN 1 AND 5),
    state           TEXT    NOT NULL
                    CHECK (state IN ('pending', 'executed', 'failed', 'tampered')),
    created_at_ms   INTEGER NOT NULL,
    expires_at_ms   INTEGER NOT NULL,
    decided_at_ms   INTEGER,
    signature       BLOB,
    delivery_id     TEXT    NOT NULL,
    execution_id    TEXT
) STRICT;

CREATE INDEX confirmations_device ON confirmations (device_id, created_at_ms);
CREATE INDEX confirmations_pending ON confirmations (expires_at_ms) WHERE state = 'pending';
