-- The ECDHE mode (server/src/channel, docs/protocol.md §14.1). Keep in step
-- with ../sqlite/2081_channel_handshake_ephemeral.sql.
--
-- The server's ephemeral P-256 private key of an ECDHE handshake, wrapped
-- under the channel state KEK (never in clear), from the ServerHello to the
-- key exchange on whichever replica takes it; it goes with the row when the
-- key exchange takes the handshake (or the sweep removes it). NULL in the
-- RSA-transport mode.
ALTER TABLE channel_handshakes ADD COLUMN server_ephemeral BYTEA;
