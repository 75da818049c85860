-- Login challenges are sealed, not stored (server/src/online/challenge.rs):
-- a finish inserts its challenge's seal here in the same transaction as its
-- effect, so each challenge is used once across replicas. Rows go once their
-- challenge expired (maintenance job). Keep in step with
-- ../postgres/2022_login_sealed_challenges.sql.
CREATE TABLE online_challenges_used (
    seal          TEXT    NOT NULL PRIMARY KEY
                  CHECK (length(seal) = 32 AND seal NOT GLOB '*[^0-9a-f]*'),
    expires_at_ms INTEGER NOT NULL
) STRICT, WITHOUT ROWID;

CREATE INDEX online_challenges_used_expiry ON online_challenges_used (expires_at_ms);

-- Audit records staged inside the transaction of the effect they record
-- (server/src/audit/): the record commits with its effect or not at all, and
-- the trail's writer chains and MACs it right after (at start-up too, for
-- one a crash left here). `id` keeps the staging order.
CREATE TABLE audit_staged (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    actor       TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    target      TEXT    NOT NULL,
    outcome     TEXT    NOT NULL,
    request_id  TEXT    NOT NULL,
    detail_json TEXT    NOT NULL
) STRICT;
