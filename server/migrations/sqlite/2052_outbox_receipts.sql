-- The gateway's delivery receipts already received, by their webhook-id
-- (server/src/outbox/receipts.rs, docs/protocol.md §12.4): a replay is
-- refused. Rows older than twice the timestamp window are deleted, since
-- the window refuses such a replay anyway. Keep in step with
-- ../postgres/2052_outbox_receipts.sql.
CREATE TABLE outbox_receipts (
    webhook_id     TEXT    NOT NULL PRIMARY KEY,
    message_id     TEXT    NOT NULL,
    status         TEXT    NOT NULL CHECK (status IN ('delivered', 'failed')),
    received_at_ms INTEGER NOT NULL
) STRICT;

CREATE INDEX outbox_receipts_age ON outbox_receipts (received_at_ms);
