-- The `channel` certificate profile: the HSM RSA key cards encrypt the
-- secure channel's pre-master to (keyEncipherment only, no extended key
-- usage). Keep in step with ../sqlite/0104_channel_profile.sql.

ALTER TABLE certificates DROP CONSTRAINT certificates_profile_check;
ALTER TABLE certificates ADD CONSTRAINT certificates_profile_check
    CHECK (profile IN ('device', 'server-tls', 'operator', 'load-permit', 'service', 'evidence',
                       'channel'));
ALTER TABLE certificates ADD CONSTRAINT certificates_channel_check
    CHECK (profile <> 'channel' OR (device_id IS NULL AND operator_role IS NULL));
