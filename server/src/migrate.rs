//! The server's own schema (the audit trail), embedded at compile time like
//! `kms/src/catalog/migrate.rs` does it (same versions, descriptions and
//! checksums as `sqlx-cli` would compute).
//!
//! The server shares sqlx's `_sqlx_migrations` table with the key catalog
//! (versions 1..) and the CA (1001..); its versions start at 2001 and its
//! migrator ignores applied versions it does not know, so the three migrate
//! the same database independently.
//!
//! Adding a migration means adding a file to BOTH directories and a line to
//! BOTH lists below; the unit test fails if a file is not listed.

use std::borrow::Cow;

use keyward_config::DatabaseKind;
use sqlx::AnyPool;
use sqlx::SqlSafeStr;
use sqlx::migrate::{MigrateError, Migration, MigrationType, Migrator};

/// `(version, description, sql)`, as `sqlx` reads `<version>_<description>.sql`.
type Embedded = (i64, &'static str, &'static str);

const SQLITE: &[Embedded] = &[(
    2001,
    "audit",
    include_str!("../migrations/sqlite/2001_audit.sql"),
)];

const POSTGRES: &[Embedded] = &[(
    2001,
    "audit",
    include_str!("../migrations/postgres/2001_audit.sql"),
)];

fn embedded(kind: DatabaseKind) -> &'static [Embedded] {
    match kind {
        DatabaseKind::Sqlite => SQLITE,
        DatabaseKind::Postgres => POSTGRES,
    }
}

fn migrator(kind: DatabaseKind) -> Migrator {
    let mut m = Migrator::with_migrations(
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
    // The catalog's and the CA's versions live in the same table.
    m.set_ignore_missing(true);
    m
}

/// Versions this binary would apply, for reports.
pub fn versions() -> Vec<i64> {
    SQLITE.iter().map(|(v, _, _)| *v).collect()
}

/// Applies what is missing; a second run changes nothing. Returns the
/// versions that were applied now.
pub async fn run(pool: &AnyPool, kind: DatabaseKind) -> Result<Vec<i64>, MigrateError> {
    let before = applied(pool).await.unwrap_or_default();
    migrator(kind).run(pool).await?;
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
    fn versions_are_the_servers_range_and_match() {
        let v = |l: &[Embedded]| l.iter().map(|(v, d, _)| (*v, *d)).collect::<Vec<_>>();
        assert_eq!(v(SQLITE), v(POSTGRES));
        assert!(SQLITE.iter().all(|(v, _, _)| *v >= 2001));
    }
}
