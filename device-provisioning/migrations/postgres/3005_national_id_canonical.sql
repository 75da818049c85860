-- National ids are stored and compared in a canonical form (digits of any
-- script as ASCII, separators removed, Latin letters upper case: the
-- `NationalId` type). The rules are Unicode's, so the rows stored before are
-- rewritten by the service in Rust, once, in one transaction that also
-- records it here (`Store::canonicalise_national_ids`).
CREATE TABLE prov_backfills (
    name        TEXT   NOT NULL PRIMARY KEY,
    done_at_ms  BIGINT NOT NULL
);
