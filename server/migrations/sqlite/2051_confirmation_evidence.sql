-- Evidence receipts of executed confirmations (docs/protocol.md §11.6): the
-- canonical receipt bytes, the evidence key's DER signature over them and
-- the rendered message the customer read (its code was used up by the
-- execution that wrote this row), committed in the transaction that marks
-- the confirmation executed. The gateway's delivery receipt id on outbox
-- messages, which a receipt names. Keep in step with
-- ../postgres/2051_confirmation_evidence.sql.
CREATE TABLE confirmation_evidence (
    confirmation_id TEXT    NOT NULL PRIMARY KEY REFERENCES confirmations (id),
    receipt         BLOB    NOT NULL,
    signature       BLOB    NOT NULL,
    message         BLOB    NOT NULL,
    signer_serial   TEXT    NOT NULL,
    created_at_ms   INTEGER NOT NULL
) STRICT;

ALTER TABLE outbox ADD COLUMN receipt_id TEXT;
