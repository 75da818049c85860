-- The serial of the card certificate the key exchange proved (upper-case
-- hex, as the CA stores it): a request carried in the channel runs as that
-- certificate, so a revocation or re-certification stops it like a direct
-- call. Channels opened before this column have '' and carry nothing.
-- Keep in step with ../sqlite/2075_channel_card_serial.sql.
ALTER TABLE channels ADD COLUMN card_serial TEXT NOT NULL DEFAULT '';
