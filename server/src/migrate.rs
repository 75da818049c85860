//! The server's own schema (the audit trail), embedded at compile time like
//! the key catalog does it with `keyward_kms::db::EmbeddedMigrations` (same versions, descriptions and
//! checksums as `sqlx-cli` would compute).
//!
//! The server shares sqlx's `_sqlx_migrations` table with the key catalog
//! (versions 1..), the CA (101..) and provisioning (3001..); its versions start at 2001 and its
//! migrator ignores applied versions it does not know, so all of them migrate
//! the same database independently.
//!
//! Adding a migration means adding a file to BOTH directories and a line to
//! BOTH lists below; the unit test fails if a file is not listed.

use keyward_config::DatabaseKind;
use keyward_kms::db::EmbeddedMigrations;
use sqlx::AnyPool;
use sqlx::migrate::MigrateError;

const MIGRATIONS: EmbeddedMigrations = EmbeddedMigrations {
    sqlite: &[
        (
            2001,
            "audit",
            include_str!("../migrations/sqlite/2001_audit.sql"),
        ),
        (
            2002,
            "audit keyed",
            include_str!("../migrations/sqlite/2002_audit_keyed.sql"),
        ),
        (
            2003,
            "audit incidents",
            include_str!("../migrations/sqlite/2003_audit_incidents.sql"),
        ),
        (
            2010,
            "idempotency",
            include_str!("../migrations/sqlite/2010_idempotency.sql"),
        ),
        (
            2011,
            "idempotency lease",
            include_str!("../migrations/sqlite/2011_idempotency_lease.sql"),
        ),
        (
            2020,
            "login",
            include_str!("../migrations/sqlite/2020_login.sql"),
        ),
        (
            2021,
            "mac failures",
            include_str!("../migrations/sqlite/2021_mac_failures.sql"),
        ),
        (
            2022,
            "login sealed challenges",
            include_str!("../migrations/sqlite/2022_login_sealed_challenges.sql"),
        ),
        (
            2030,
            "jobs",
            include_str!("../migrations/sqlite/2030_jobs.sql"),
        ),
        (
            2040,
            "outbox",
            include_str!("../migrations/sqlite/2040_outbox.sql"),
        ),
        (
            2050,
            "confirmations",
            include_str!("../migrations/sqlite/2050_confirmations.sql"),
        ),
        (
            2051,
            "confirmation evidence",
            include_str!("../migrations/sqlite/2051_confirmation_evidence.sql"),
        ),
        (
            2052,
            "outbox receipts",
            include_str!("../migrations/sqlite/2052_outbox_receipts.sql"),
        ),
        (
            2053,
            "confirmation step_up",
            include_str!("../migrations/sqlite/2053_confirmation_step_up.sql"),
        ),
        (
            2060,
            "ledger loads",
            include_str!("../migrations/sqlite/2060_ledger_loads.sql"),
        ),
        (
            2070,
            "channels",
            include_str!("../migrations/sqlite/2070_channels.sql"),
        ),
        (
            2071,
            "channel tickets",
            include_str!("../migrations/sqlite/2071_channel_tickets.sql"),
        ),
        (
            2072,
            "channel keys",
            include_str!("../migrations/sqlite/2072_channel_keys.sql"),
        ),
        (
            2075,
            "channel card serial",
            include_str!("../migrations/sqlite/2075_channel_card_serial.sql"),
        ),
        (
            2078,
            "channels by terminal",
            include_str!("../migrations/sqlite/2078_channels_by_terminal.sql"),
        ),
        (
            2081,
            "channel handshake ephemeral",
            include_str!("../migrations/sqlite/2081_channel_handshake_ephemeral.sql"),
        ),
    ],
    postgres: &[
        (
            2001,
            "audit",
            include_str!("../migrations/postgres/2001_audit.sql"),
        ),
        (
            2002,
            "audit keyed",
            include_str!("../migrations/postgres/2002_audit_keyed.sql"),
        ),
        (
            2003,
            "audit incidents",
            include_str!("../migrations/postgres/2003_audit_incidents.sql"),
        ),
        (
            2010,
            "idempotency",
            include_str!("../migrations/postgres/2010_idempotency.sql"),
        ),
        (
            2011,
            "idempotency lease",
            include_str!("../migrations/postgres/2011_idempotency_lease.sql"),
        ),
        (
            2020,
            "login",
            include_str!("../migrations/postgres/2020_login.sql"),
        ),
        (
            2021,
            "mac failures",
            include_str!("../migrations/postgres/2021_mac_failures.sql"),
        ),
        (
            2022,
            "login sealed challenges",
            include_str!("../migrations/postgres/2022_login_sealed_challenges.sql"),
        ),
        (
            2030,
            "jobs",
            include_str!("../migrations/postgres/2030_jobs.sql"),
        ),
        (
            2040,
            "outbox",
            include_str!("../migrations/postgres/2040_outbox.sql"),
        ),
        (
            2050,
            "confirmations",
            include_str!("../migrations/postgres/2050_confirmations.sql"),
        ),
        (
            2051,
            "confirmation evidence",
            include_str!("../migrations/postgres/2051_confirmation_evidence.sql"),
        ),
        (
            2052,
            "outbox receipts",
            include_str!("../migrations/postgres/2052_outbox_receipts.sql"),
        ),
        (
            2053,
            "confirmation step_up",
            include_str!("../migrations/postgres/2053_confirmation_step_up.sql"),
        ),
        (
            2060,
            "ledger loads",
            include_str!("../migrations/postgres/2060_ledger_loads.sql"),
        ),
        (
            2070,
            "channels",
            include_str!("../migrations/postgres/2070_channels.sql"),
        ),
        (
            2071,
            "channel tickets",
            include_str!("../migrations/postgres/2071_channel_tickets.sql"),
        ),
        (
            2072,
            "channel keys",
            include_str!("../migrations/postgres/2072_channel_keys.sql"),
        ),
        (
            2075,
            "channel card serial",
            include_str!("../migrations/postgres/2075_channel_card_serial.sql"),
        ),
        (
            2078,
            "channels by terminal",
            include_str!("../migrations/postgres/2078_channels_by_terminal.sql"),
        ),
        (
            2081,
            "channel handshake ephemeral",
            include_str!("../migrations/postgres/2081_channel_handshake_ephemeral.sql"),
        ),
    ],
};

/// Versions this binary would apply, for reports.
pub fn versions() -> Vec<i64> {
    MIGRATIONS.sqlite.iter().map(|(v, _, _)| *v).collect()
}

/// Applies what is missing; a second run changes nothing. Returns the
/// versions that were applied now.
pub async fn run(pool: &AnyPool, kind: DatabaseKind) -> Result<Vec<i64>, MigrateError> {
    let before = applied(pool).await.unwrap_or_default();
    MIGRATIONS.run(pool, kind).await?;
    let after = applied(pool).await.unwrap_or_default();
    Ok(versions()
        .into_iter()
        .filter(|v| after.contains(v) && !before.contains(v))
        .collect())
}

async fn applied(pool: &AnyPool) -> Result<Vec<i64>, sqlx::Error> {
    use sqlx::Row;
    let rows = sqlx::query(
        "SELECT version FROM _sqlx_migrations WHERE success = TRUE AND version >= 2001",
    )
    .fetch_all(pool)
    .await?;
    rows.iter().map(|r| r.try_get::<i64, _>(0)).collect()
}

/// A fresh SQLite database in a temporary folder with every migration
/// applied (the catalog's and the server's), for unit tests of a store.
#[cfg(test)]
pub(crate) async fn test_database() -> (tempfile::TempDir, keyward_kms::db::Database) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let url = format!("sqlite://{}", dir.path().join("k.db").display());
    let db = keyward_kms::db::Database::connect(&keyward_config::DatabaseConfig {
        url,
        ..keyward_config::DatabaseConfig::default()
    })
    .await
    .expect("a SQLite database");
    keyward_kms::catalog::Catalog::open(db.clone())
        .await
        .expect("the catalog's migrations");
    run(db.pool(), db.kind())
        .await
        .expect("the server's migrations");
    (dir, db)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_file_is_embedded_in_range() {
        MIGRATIONS
            .check(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")),
                2001..=2999,
            )
            .unwrap();
    }
}
