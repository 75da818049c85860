-- Login's random-auth challenges share prov_challenges with the genuine-device
-- check (one mechanism: ids, a few outstanding, single use). A login
-- challenge is for one issuer: `scope` holds the issuer id ('' for purposes
-- that have no scope), and the outstanding limit counts per (device,
-- purpose, scope).
ALTER TABLE prov_challenges ADD COLUMN scope TEXT NOT NULL DEFAULT '' CHECK (length(scope) <= 32);

DROP INDEX prov_challenges_device;
CREATE INDEX prov_challenges_device ON prov_challenges (device_id, purpose, scope, created_at_ms);

-- The sweep of expired challenges across every device.
CREATE INDEX prov_challenges_expiry ON prov_challenges (expires_at_ms);
