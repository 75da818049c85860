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

    #[test]
    fn every_migration_file_is_embedded_in_range() {
        MIGRATIONS
            .check(std::path::Path::new(env!("CARGO_MANIFEST_DIR")), 101..=199)
            .unwrap();
    }
}
