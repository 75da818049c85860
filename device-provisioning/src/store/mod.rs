//! The provisioning tables: every SQL statement of the crate, behind typed
//! functions, one file per table group, as the key catalog and the CA keep
//! theirs:
//!
//! - `batches`: `prov_batches`, and the import's reserve / complete / undo
//!   (a batch and its devices in one transaction);
//! - `devices`: `prov_devices`, the registry and its state changes;
//! - `checks`: `prov_challenges`, the genuine-device challenges;
//! - `inits`: `prov_inits`, original-key records per (device, issuer);
//! - `customers`: `prov_applications`, applications and customers;
//! - `bindings`: `prov_bindings`.
//!
//! This file holds the migrations, the transaction rules the key catalog
//! uses (kms `catalog` module docs) and the column helpers.
//!
//! Every write is one transaction: `BEGIN IMMEDIATE` on SQLite (writers queue
//! on the write lock instead of failing on a lock upgrade), `SERIALIZABLE` on
//! PostgreSQL, retried on serialization failures and deadlocks. No
//! transaction is held open across an HSM or CA call: the CA writes to the
//! same database, and on SQLite that would wait on our own write lock.
//!
//! The migrations (`device-provisioning/migrations/{sqlite,postgres}`) use
//! versions 3001..=3999 of the shared `_sqlx_migrations` table; like the
//! catalog's and the CA's migrators, this one sets `ignore_missing` so the
//! other crates' rows do not trip it. Adding a migration means adding a file
//! to BOTH directories and a line to BOTH lists below.

mod batches;
mod bindings;
mod checks;
mod customers;
mod devices;
mod inits;

use std::future::Future;
use std::time::{SystemTime, UNIX_EPOCH};

use keyward_config::DatabaseKind;
use keyward_kms::catalog::{Catalog, EmbeddedMigrations, tx};
use sqlx::any::AnyRow;
use sqlx::{Any, AnyPool, Row, Transaction};

use crate::error::{ProvisioningError, Result};

pub(crate) use batches::NewDevice;
pub(crate) use checks::StoredChallenge;
pub(crate) use devices::UniqueColumn;

const MIGRATIONS: EmbeddedMigrations = EmbeddedMigrations {
    sqlite: &[(
        3001,
        "provisioning",
        include_str!("../../migrations/sqlite/3001_provisioning.sql"),
    )],
    postgres: &[(
        3001,
        "provisioning",
        include_str!("../../migrations/postgres/3001_provisioning.sql"),
    )],
};

/// The provisioning tables in the catalog's database.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    pool: AnyPool,
    kind: DatabaseKind,
}

impl Store {
    pub(crate) fn new(catalog: &Catalog) -> Self {
        Self {
            pool: catalog.pool().clone(),
            kind: catalog.kind(),
        }
    }

    /// Applies what is missing; a second run changes nothing.
    pub(crate) async fn migrate(&self) -> Result<()> {
        MIGRATIONS.run(&self.pool, self.kind).await?;
        Ok(())
    }

    /// A write transaction (see the module docs).
    async fn begin_write(&self) -> Result<Transaction<'static, Any>> {
        Ok(tx::begin_write(&self.pool, self.kind).await?)
    }

    /// Runs `op` (one whole transaction) again while PostgreSQL reports a
    /// serialization failure or deadlock.
    async fn retrying<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        tx::retrying("provisioning", |e| self.is_race(e), op).await
    }

    fn is_race(&self, e: &ProvisioningError) -> bool {
        matches!(e, ProvisioningError::Database(err) if tx::is_serialization_failure(self.kind, err))
    }
}

/// Whether an error is a unique-constraint violation (a lost race on insert).
pub(crate) fn is_unique_violation(e: &ProvisioningError) -> bool {
    matches!(e, ProvisioningError::Database(sqlx::Error::Database(db)) if db.is_unique_violation())
}

/// A text column parsed into a domain type; a bad value names its column.
fn parse_col<T: std::str::FromStr>(row: &AnyRow, col: &str, what: &'static str) -> Result<T> {
    let s: String = row.try_get(col)?;
    s.parse()
        .map_err(|_| ProvisioningError::CorruptRecord(what))
}

/// An optional text column parsed into a domain type.
fn parse_opt<T: std::str::FromStr>(
    row: &AnyRow,
    col: &str,
    what: &'static str,
) -> Result<Option<T>> {
    let s: Option<String> = row.try_get(col)?;
    s.map(|s| {
        s.parse()
            .map_err(|_| ProvisioningError::CorruptRecord(what))
    })
    .transpose()
}

/// A count column (never negative: the schema checks it) as a `u32`.
fn count_col(row: &AnyRow, col: &str, what: &'static str) -> Result<u32> {
    let n: i64 = row.try_get(col)?;
    u32::try_from(n).map_err(|_| ProvisioningError::CorruptRecord(what))
}

/// Wall-clock unix milliseconds, comparable across processes sharing the
/// database.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_file_is_embedded_in_range() {
        MIGRATIONS
            .check(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")),
                3001..=3999,
            )
            .unwrap();
    }
}
