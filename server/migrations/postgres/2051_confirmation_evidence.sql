-- Evidence receipts of executed confirmations (docs/protocol.md §11.6): the
-- canonical receipt bytes, the evidence key's DER signature over them and
-- the rendered message the customer read (its code was used up by the
-- execution that wrote this row), committed in the transaction that marks
-- the confirmation executed. The gateway's delivery receipt id on outbox
-- messages, which a receipt names. Keep in step with
-- ../sqlite/2051_confirmation_evidence.sql.
CREATE TABLE confirmation_evidence (
    confirmation_id TEXT    NOT NULL PRIMARY KEY REFERENCES confirmations (id),
    receipt         BYTEA    NOT NULL,
    signature       BYTEA    NOT NULL,
    message         BYTEA    NOT NULL,
    signer_serial   TEXT    NOT NULL,
    created_at_ms   BIGINT NOT NULL
);

ALTER TABLE outbox ADD COLUMN receipt_id TEXT;
