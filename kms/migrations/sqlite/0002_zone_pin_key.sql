-- An issuer's zone PIN key (ZPK): the key a PIN block is translated to, inside
-- the HSM, for the issuer's own systems (docs/protocol.md §8.1). It is an
-- issuer token key like the master derivation keys, recorded here with its
-- KCV. SQLite cannot change a CHECK constraint in place: the table is
-- rebuilt with the same rows. Keep in step with ../postgres/0002_zone_pin_key.sql.
CREATE TABLE master_keys_new (
    issuer_id  TEXT NOT NULL REFERENCES issuers (id) ON DELETE CASCADE,
    role       TEXT NOT NULL CHECK (role IN ('IMK-TMK', 'IMK-AUTH', 'ZPK')),
    label      TEXT NOT NULL CHECK (length(label) > 0),
    kcv_method TEXT NOT NULL,
    kcv        TEXT NOT NULL CHECK (length(kcv) = 6 AND kcv NOT GLOB '*[^0-9A-F]*'),
    PRIMARY KEY (issuer_id, role)
) STRICT, WITHOUT ROWID;

INSERT INTO master_keys_new (issuer_id, role, label, kcv_method, kcv)
    SELECT issuer_id, role, label, kcv_method, kcv FROM master_keys;
DROP TABLE master_keys;
ALTER TABLE master_keys_new RENAME TO master_keys;
CREATE UNIQUE INDEX master_keys_label ON master_keys (label);
