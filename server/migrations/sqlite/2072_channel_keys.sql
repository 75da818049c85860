-- Channel key rotation (server/src/channel/rotate.rs, docs/protocol.md
-- §14.9). Keep in step with ../postgres/2072_channel_keys.sql.
--
-- The channel keys `kwctl channel rotate-key` made, by HSM label: the
-- newest is the one new handshakes use; with none, `keyward init`'s key
-- (`keyward/channel/rsa`). Every replica reads the current key at each
-- ServerHello, so a rotation takes effect everywhere at once.
CREATE TABLE channel_keys (
    label          TEXT    NOT NULL PRIMARY KEY,
    cert_serial    TEXT    NOT NULL,
    created_at_ms  INTEGER NOT NULL
) STRICT;

CREATE INDEX channel_keys_newest ON channel_keys (created_at_ms);

-- The key a handshake's ServerHello named (NULL: init's key), so a
-- handshake begun before a rotation finishes under the key it began with.
ALTER TABLE channel_handshakes ADD COLUMN key_label TEXT;

-- The sweep of expired handshakes, channels and tickets.
CREATE INDEX channel_handshakes_expiry ON channel_handshakes (expires_at_ms);
CREATE INDEX channels_expiry ON channels (expires_at_ms);
