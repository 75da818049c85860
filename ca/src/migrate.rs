//! The CA's schema migrations, embedded at compile time (the workspace has no
//! sqlx `macros`, so no `migrate!`; this builds the same [`Migrator`] by hand,
//! as the key catalog does).
//!
//! They share sqlx's `_sqlx_migrations` table with the key catalog's, in their
//! own version range (101..=199; the catalog uses 1..=100). Both migrators set
//! `ignore_missing`, so neither trips over the other's rows. Adding a
//! migration means adding a file to BOTH directories and a line to BOTH lists.

use std::borrow::Cow;

use keyward_config::DatabaseKind;
use sqlx::AnyPool;
use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use crate::error::Result;

/// `(version, description, sql)`, as sqlx reads `<version>_<description>.sql`.
type Embedded = (i64, &'static str, &'static str);

/// First and last version the CA may use (checked by the unit test).
#[cfg(test)]
const VERSIONS: std::ops::RangeInclusive<i64> = 101..=199;

const SQLITE: &[Embedded] = &[(101, "ca", include_str!("../migrations/sqlite/0101_ca.sql"))];

const POSTGRES: &[Embedded] = &[(
    101,
    "ca",
    include_str!("../migrations/postgres/0101_ca.sql"),
)];

fn embedded(kind: DatabaseKind) -> &'static [Embedded] {
    match kind {
        DatabaseKind::Sqlite => SQLITE,
        DatabaseKind::Postgres => POSTGRES,
    }
}

fn migrator(kind: DatabaseKind) -> Migrator {
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
/// are serialised by sqlx's migration lock.
pub(crate) async fn run(pool: &AnyPool, kind: DatabaseKind) -> Result<()> {
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
    fn every_migration_file_is_embedded_in_range() {
        assert_eq!(files("migrations/sqlite"), listed(SQLITE));
        assert_eq!(files("migrations/postgres"), listed(POSTGRES));
        for (v, _, _) in SQLITE.iter().chain(POSTGRES) {
            assert!(VERSIONS.contains(v), "{v}");
        }
        let versions = |l: &[Embedded]| l.iter().map(|(v, d, _)| (*v, *d)).collect::<Vec<_>>();
        assert_eq!(versions(SQLITE), versions(POSTGRES));
    }
}
