-- The outbox (server/src/outbox): a message a protocol step must send (a
-- confirmation code, an execution order) is written here in the same
-- transaction as the step's rows, and a job delivers it at least once, with
-- the same message_id on every attempt so the receiver acts once. recipient
-- and payload are personal data: never logged, never in the admin view.
-- last_error is a short stable code, never a secret. Keep in step with
-- ../sqlite/2040_outbox.sql.
CREATE TABLE outbox (
    message_id         TEXT    NOT NULL PRIMARY KEY CHECK (length(message_id) = 36),
    topic              TEXT    NOT NULL CHECK (length(topic) BETWEEN 1 AND 64),
    channel            TEXT    NOT NULL CHECK (channel IN ('file', 'webhook', 'smtp')),
    recipient          TEXT    NOT NULL CHECK (length(recipient) BETWEEN 1 AND 320),
    subject_id         TEXT    NOT NULL CHECK (length(subject_id) BETWEEN 1 AND 128),
    payload            BYTEA   NOT NULL,
    state              TEXT    NOT NULL
                       CHECK (state IN ('pending', 'sent', 'failed', 'gave_up')),
    attempts           BIGINT  NOT NULL DEFAULT 0,
    next_attempt_at_ms BIGINT  NOT NULL,
    lease_owner        TEXT,
    lease_until_ms     BIGINT,
    last_error         TEXT    CHECK (length(last_error) <= 64),
    created_at_ms      BIGINT  NOT NULL,
    sent_at_ms         BIGINT,
    receipt_status     TEXT    CHECK (receipt_status IN ('delivered', 'failed')),
    receipt_at_ms      BIGINT
);

-- The drain's claim: due messages still to send, oldest due first.
CREATE INDEX outbox_due ON outbox (next_attempt_at_ms)
    WHERE state IN ('pending', 'failed');
-- The admin view of one subject's messages.
CREATE INDEX outbox_subject ON outbox (subject_id, created_at_ms);
