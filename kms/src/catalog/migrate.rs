//! The schema migrations, embedded at compile time so a deployed binary never
//! depends on files next to it.
//!
//! `sqlx::migrate!` would need sqlx's `macros` feature, which the workspace
//! leaves off; this builds the same [`Migrator`] (same versions, descriptions
//! and checksums, so `sqlx-cli` agrees with it) from `include_str!`. Adding a
//! migration means adding a file to BOTH directories and a line to BOTH lists
//! below; the unit test fails if a file is not listed.

use std::borrow::Cow;

use keyward_config::DatabaseKind;
use sqlx::AnyPool;
use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use crate::error::Result;

/// `(version, description, sql)`, as `sqlx` reads `<version>_<description>.sql`.
type Embedded = (i64, &'static str, &'static str);

const SQLITE: &[Embedded] = &[(
    1,
    "catalog",
    include_str!("../../migrations/sqlite/0001_catalog.sql"),
)];

const POSTGRES: &[Embedded] = &[(
    1,
    "catalog",
    include_str!("../../migrations/postgres/0001_catalog.sql"),
)];

fn embedded(kind: DatabaseKind) -> &'static [Embedded] {
    match kind {
        DatabaseKind::Sqlite => SQLITE,
        DatabaseKind::Postgres => POSTGRES,
    }
}

/// The migrator for one backend. Other crates (the CA) keep their own
/// migrations, in their own version range, in the same `_sqlx_migrations`
/// table; `ignore_missing` lets this migrator pass over their rows.
pub(super) fn migrator(kind: DatabaseKind) -> Migrator {
    let mut migrator = Migrator::with_migrations(
        embedded(kind)
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    );
    migrator.set_ignore_missing(true);
    migrator
}

/// Applies what is missing; a second run changes nothing. Concurrent starts
/// are serialised by sqlx's migration lock (an advisory lock on PostgreSQL).
pub(super) async fn run(pool: &AnyPool, kind: DatabaseKind) -> Result<()> {
    migrator(kind).run(pool).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(dir: &str) -> Vec<String> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        let mut names: Vec<String> = std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        names.sort();
        names
    }

    fn listed(list: &[Embedded]) -> Vec<String> {
        list.iter()
            .map(|(v, d, _)| format!("{v:04}_{}.sql", d.replace(' ', "_")))
            .collect()
    }

    #[test]
    fn every_migration_file_is_embedded() {
        assert_eq!(files("migrations/sqlite"), listed(SQLITE));
        assert_eq!(files("migrations/postgres"), listed(POSTGRES));
    }

    #[test]
    fn both_backends_have_the_same_versions() {
        let versions = |l: &[Embedded]| l.iter().map(|(v, d, _)| (*v, *d)).collect::<Vec<_>>();
        assert_eq!(versions(SQLITE), versions(POSTGRES));
    }
}
