-- Resumption tickets of the card-to-server secure channel (server/src/
-- channel/resume.rs, docs/protocol.md §14.8). Keep in step with
-- ../postgres/2071_channel_tickets.sql.
--
-- A ticket: its handle (random, 32 hex digits), the card it is bound to
-- (device and the serial of the certificate that opened the channel), its
-- resumption secret wrapped under the HSM's state KEK (never in clear), a
-- lifetime of at most a day, and single use: `used_at_ms` is set once, by
-- a compare-and-set, whatever the outcome of the resumption.
CREATE TABLE channel_tickets (
    id             TEXT    NOT NULL PRIMARY KEY,
    device_id      TEXT    NOT NULL,
    cert_serial    TEXT    NOT NULL,
    secret         BLOB    NOT NULL,
    channel_id     TEXT    NOT NULL,
    created_at_ms  INTEGER NOT NULL,
    expires_at_ms  INTEGER NOT NULL,
    used_at_ms     INTEGER
) STRICT;

CREATE INDEX channel_tickets_expiry ON channel_tickets (expires_at_ms);
