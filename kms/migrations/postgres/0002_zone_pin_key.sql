-- An issuer's zone PIN key (ZPK): the key a PIN block is translated to, inside
-- the HSM, for the issuer's own systems (docs/protocol.md §8.1), recorded with
-- its KCV like the master derivation keys. Keep in step with
-- ../sqlite/0002_zone_pin_key.sql.
ALTER TABLE master_keys DROP CONSTRAINT master_keys_role_check;
ALTER TABLE master_keys ADD CONSTRAINT master_keys_role_check
    CHECK (role IN ('IMK-TMK', 'IMK-AUTH', 'ZPK'));
