//! The CA's schema migrations, embedded at compile time (the workspace has no
//! sqlx `macros`, so no `migrate!`; this builds the same [`Migrator`] by hand,
//! as the key catalog does).
//!
//! They share sqlx's `_sqlx_migrations` table with the key catalog's, in their
//! own version range (101..=199; the catalog uses 1..=100). Both migrators set
//! `ignore_missing`, so neither trips over the other's rows. Adding a
//! migration means adding a file to BOTH directories and a line to BOTH lists.

use keyward_kms::db::{Database, EmbeddedMigrations};

use crate::error::Result;

const MIGRATIONS: EmbeddedMigrations = EmbeddedMigrations {
    sqlite: &[
        (101, "ca", include_str!("../migrations/sqlite/0101_ca.sql")),
        (
            102,
            "service profile",
            include_str!("../migrations/sqlite/0102_service_profile.sql"),
        ),
        (
            103,
            "evidence profile",
            include_str!("../migrations/sqlite/0103_evidence_profile.sql"),
        ),
        (
            104,
            "channel profile",
            include_str!("../migrations/sqlite/0104_channel_profile.sql"),
        ),
    ],
    postgres: &[
        (
            101,
            "ca",
            include_str!("../migrations/postgres/0101_ca.sql"),
        ),
        (
            102,
            "service profile",
            include_str!("../migrations/postgres/0102_service_profile.sql"),
        ),
        (
            103,
            "evidence profile",
            include_str!("../migrations/postgres/0103_evidence_profile.sql"),
        ),
        (
            104,
            "channel profile",
            include_str!("../migrations/postgres/0104_channel_profile.sql"),
        ),
    ],
};

/// Applies what is missing; a second run changes nothing.
pub(crate) async fn run(db: &Database) -> Result<()> {
    db.migrate(&MIGRATIONS).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 0102 rebuilds `certificates` on SQLite; the rows of a
    /// registry made under 0101 survive it, the indexes come back, and a
    /// `service` row is accepted afterwards (not before).
    #[tokio::test]
    async fn the_sqlite_rebuild_keeps_the_registry() {
        use sqlx::Row;
        let dir = tempfile::tempdir().unwrap();
        let cfg = keyward_config::DatabaseConfig {
            url: format!("sqlite://{}", dir.path().join("ca.db").display()),
            ..Default::default()
        };
        let db = Database::connect(&cfg).await.unwrap();
        let first = EmbeddedMigrations {
            sqlite: &MIGRATIONS.sqlite[..1],
            postgres: &MIGRATIONS.postgres[..1],
        };
        db.migrate(&first).await.unwrap();
        let insert = |serial: &'static str, profile: &'static str| {
            sqlx::query(
                "INSERT INTO certificates (serial, profile, subject, device_id, operator_role, \
                 not_before_ms, not_after_ms, issued_at_ms, status, pem) \
                 VALUES ($1, $2, 'x', $3, $4, 1, 2, 1, 'valid', 'pem')",
            )
            .bind(serial)
            .bind(profile)
            .bind((profile == "device").then_some("0011223344556677"))
            .bind((profile == "operator").then_some("admin"))
        };
        let pool = db.pool();
        insert("00000000000000000000000000000001", "device")
            .execute(pool)
            .await
            .unwrap();
        insert("00000000000000000000000000000002", "operator")
            .execute(pool)
            .await
            .unwrap();
        assert!(
            insert("00000000000000000000000000000003", "service")
                .execute(pool)
                .await
                .is_err()
        );
        run(&db).await.unwrap();
        let rows = sqlx::query("SELECT serial, profile FROM certificates ORDER BY serial")
            .fetch_all(pool)
            .await
            .unwrap();
        let got: Vec<(String, String)> = rows
            .iter()
            .map(|r| (r.get::<String, _>(0), r.get::<String, _>(1)))
            .collect();
        assert_eq!(
            got,
            [
                ("00000000000000000000000000000001".into(), "device".into()),
                ("00000000000000000000000000000002".into(), "operator".into()),
            ]
        );
        insert("00000000000000000000000000000003", "service")
            .execute(pool)
            .await
            .unwrap();
        let indexes = sqlx::query(
            "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND tbl_name = 'certificates' \
             AND name IN ('certificates_device', 'certificates_revoked')",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(indexes.get::<i64, _>(0), 2);
    }

    #[test]
    fn every_migration_file_is_embedded_in_range() {
        MIGRATIONS
            .check(std::path::Path::new(env!("CARGO_MANIFEST_DIR")), 101..=199)
            .unwrap();
    }
}
