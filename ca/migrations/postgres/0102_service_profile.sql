-- Issue 11 §3: the `service` certificate profile (a back-end system such as
-- the bank's transaction switch, CN = name, OU = service). Keep in step with
-- ../sqlite/0102_service_profile.sql (which has to rebuild the table).

ALTER TABLE certificates DROP CONSTRAINT certificates_profile_check;
ALTER TABLE certificates ADD CONSTRAINT certificates_profile_check
    CHECK (profile IN ('device', 'server-tls', 'operator', 'load-permit', 'service'));
ALTER TABLE certificates ADD CONSTRAINT certificates_service_check
    CHECK (profile <> 'service' OR (device_id IS NULL AND operator_role IS NULL));
