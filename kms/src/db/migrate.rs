//! The schema migrations, embedded at compile time so a deployed binary never
//! depends on files next to it.
//!
//! `sqlx::migrate!` would need sqlx's `macros` feature, which the workspace
//! leaves off; this builds the same [`Migrator`] (same versions, descriptions
//! and checksums, so `sqlx-cli` agrees with it) from `include_str!`. Adding a
//! migration means adding a file to BOTH directories and a line to BOTH lists
//! of the crate's [`EmbeddedMigrations`]; its unit test fails if a file is not
//! listed. The other crates with tables use the same type.

use std::borrow::Cow;
use std::path::Path;

use keyward_config::DatabaseKind;
use sqlx::AnyPool;
use sqlx::SqlSafeStr;
use sqlx::migrate::{MigrateError, Migration, MigrationType, Migrator};

/// `(version, description, sql)`, as `sqlx` reads `<version>_<description>.sql`.
pub type Embedded = (i64, &'static str, &'static str);

/// One crate's migrations for both backends. Every crate that owns tables
/// (kms 1.., CA 101.., server 2001.., provisioning 3001..) declares one, in
/// its own version range; they share sqlx's `_sqlx_migrations` table and each
/// migrator ignores the versions it does not know.
#[derive(Debug, Clone, Copy)]
pub struct EmbeddedMigrations {
    pub sqlite: &'static [Embedded],
    pub postgres: &'static [Embedded],
}

impl EmbeddedMigrations {
    fn list(&self, kind: DatabaseKind) -> &'static [Embedded] {
        match kind {
            DatabaseKind::Sqlite => self.sqlite,
            DatabaseKind::Postgres => self.postgres,
        }
    }

    /// The migrator for one backend.
    pub fn migrator(&self, kind: DatabaseKind) -> Migrator {
        let mut migrator = Migrator::with_migrations(
            self.list(kind)
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

    /// Applies what is missing; a second run changes nothing. Concurrent
    /// starts are serialised by sqlx's migration lock (an advisory lock on
    /// PostgreSQL).
    pub async fn run(&self, pool: &AnyPool, kind: DatabaseKind) -> Result<(), MigrateError> {
        self.migrator(kind).run(pool).await
    }

    /// For each owner's unit test: every `.sql` file under
    /// `crate_dir/migrations/{sqlite,postgres}` is embedded, both backends have
    /// the same versions, and they stay within `versions`.
    pub fn check(
        &self,
        crate_dir: &Path,
        versions: std::ops::RangeInclusive<i64>,
    ) -> Result<(), String> {
        for (dir, list) in [("sqlite", self.sqlite), ("postgres", self.postgres)] {
            let path = crate_dir.join("migrations").join(dir);
            let mut files: Vec<String> = std::fs::read_dir(&path)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.ends_with(".sql"))
                .collect();
            files.sort();
            let listed: Vec<String> = list
                .iter()
                .map(|(v, d, _)| format!("{v:04}_{}.sql", d.replace(' ', "_")))
                .collect();
            if files != listed {
                return Err(format!("{dir}: files {files:?} but embedded {listed:?}"));
            }
            if let Some((v, _, _)) = list.iter().find(|(v, _, _)| !versions.contains(v)) {
                return Err(format!("{dir}: version {v} outside {versions:?}"));
            }
        }
        let key = |l: &[Embedded]| l.iter().map(|(v, d, _)| (*v, *d)).collect::<Vec<_>>();
        if key(self.sqlite) != key(self.postgres) {
            return Err("SQLite and PostgreSQL migrations differ in versions".into());
        }
        Ok(())
    }
}
