-- The card-to-server secure channel (server/src/channel, docs/protocol.md
-- §14). Keep in step with ../sqlite/2070_channels.sql.
--
-- A handshake between its ServerHello and the card's key exchange: the two
-- hellos as they travelled, so any replica takes the next step. Taken
-- (deleted) once, by the key exchange, whatever its outcome.
CREATE TABLE channel_handshakes (
    id             TEXT    NOT NULL PRIMARY KEY,
    terminal_id    TEXT    NOT NULL,
    client_hello   BYTEA    NOT NULL,
    server_hello   BYTEA    NOT NULL,
    created_at_ms  BIGINT NOT NULL,
    expires_at_ms  BIGINT NOT NULL
);

-- An open (or closed) channel: its traffic and exporter keys wrapped under
-- the HSM's state KEK (never in clear), the IVs (not secret), and per
-- direction the next sequence number and key generation. A record moves
-- the sequences with a compare-and-set on the one it opened.
CREATE TABLE channels (
    id             TEXT    NOT NULL PRIMARY KEY,
    device_id      TEXT    NOT NULL,
    terminal_id    TEXT    NOT NULL,
    state          TEXT    NOT NULL CHECK (state IN ('open', 'closed')),
    c2s_key        BYTEA    NOT NULL,
    s2c_key        BYTEA    NOT NULL,
    exporter_key   BYTEA    NOT NULL,
    iv_c2s         BYTEA    NOT NULL CHECK (octet_length(iv_c2s) = 12),
    iv_s2c         BYTEA    NOT NULL CHECK (octet_length(iv_s2c) = 12),
    c2s_sequence   BIGINT NOT NULL CHECK (c2s_sequence >= 0),
    s2c_sequence   BIGINT NOT NULL CHECK (s2c_sequence >= 0),
    c2s_generation BIGINT NOT NULL CHECK (c2s_generation >= 0),
    s2c_generation BIGINT NOT NULL CHECK (s2c_generation >= 0),
    created_at_ms  BIGINT NOT NULL,
    expires_at_ms  BIGINT NOT NULL,
    closed_at_ms   BIGINT
);
