-- At most one pending offer per (issuer, device), whatever the code above
-- does: concurrent login starts share one offer instead of each making a
-- version of its own. Older pending versions, and any pending version older
-- than the active one (which could only roll the device back), are closed
-- for good first.
UPDATE working_key_versions SET state = 'rejected'
WHERE state = 'pending' AND (
    version < (SELECT MAX(p.version) FROM working_key_versions p
               WHERE p.issuer_id = working_key_versions.issuer_id
                 AND p.device_id = working_key_versions.device_id
                 AND p.state = 'pending')
    OR version < (SELECT MAX(a.version) FROM working_key_versions a
                  WHERE a.issuer_id = working_key_versions.issuer_id
                    AND a.device_id = working_key_versions.device_id
                    AND a.state IN ('active', 'retiring', 'retired'))
);

CREATE UNIQUE INDEX working_key_versions_one_pending
    ON working_key_versions (issuer_id, device_id) WHERE state = 'pending';
