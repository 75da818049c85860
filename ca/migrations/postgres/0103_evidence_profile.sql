-- The `evidence` certificate profile: the HSM key that signs confirmation
-- evidence receipts (digitalSignature and contentCommitment only). Keep in
-- step with ../sqlite/0103_evidence_profile.sql.

ALTER TABLE certificates DROP CONSTRAINT certificates_profile_check;
ALTER TABLE certificates ADD CONSTRAINT certificates_profile_check
    CHECK (profile IN ('device', 'server-tls', 'operator', 'load-permit', 'service', 'evidence'));
ALTER TABLE certificates ADD CONSTRAINT certificates_evidence_check
    CHECK (profile <> 'evidence' OR (device_id IS NULL AND operator_role IS NULL));
