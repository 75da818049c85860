//! The provisioning tables: every SQL statement of the crate, behind typed
//! functions, one file per table group, as the key catalog and the CA keep
//! theirs:
//!
//! - `batches`: `prov_batches`, and the import's reserve / complete / undo
//!   (a batch and its devices in one transaction), each conditional on the
//!   import attempt that holds the batch's lease;
//! - `devices`: `prov_devices`, the registry and its state changes;
//! - `checks`: `prov_challenges`, challenges by id for every purpose;
//! - `keys`: `prov_device_keys` (a public key belongs to one device, ever)
//!   and `prov_recertifications`;
//! - `inits`: `prov_inits`, original-key records per (device, issuer);
//! - `customers`: `prov_applications`, applications and customers;
//! - `bindings`: `prov_bindings`.
//!
//! This file holds the migrations.
//!
//! Every write is one unit of work (kms `Database::write`): `BEGIN IMMEDIATE`
//! on SQLite (writers queue on the write lock instead of failing on a lock
//! upgrade), `SERIALIZABLE` on PostgreSQL, retried whole on serialization
//! failures and deadlocks. The device state changes are also offered over a
//! caller's transaction (`…_in`). No
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
mod keys;

use keyward_kms::db::{Database, EmbeddedMigrations};
use sqlx::AnyPool;

use crate::error::{ProvisioningError, Result};

pub(crate) use batches::{Lease, NewDevice};
pub(crate) use checks::StoredChallenge;
pub(crate) use devices::UniqueColumn;
pub(crate) use keys::PendingRecertification;

const MIGRATIONS: EmbeddedMigrations = EmbeddedMigrations {
    sqlite: &[
        (
            3001,
            "provisioning",
            include_str!("../../migrations/sqlite/3001_provisioning.sql"),
        ),
        (
            3002,
            "device identity",
            include_str!("../../migrations/sqlite/3002_device_identity.sql"),
        ),
        (
            3003,
            "import lease",
            include_str!("../../migrations/sqlite/3003_import_lease.sql"),
        ),
        (
            3004,
            "challenge scope",
            include_str!("../../migrations/sqlite/3004_challenge_scope.sql"),
        ),
        (
            3005,
            "national id canonical",
            include_str!("../../migrations/sqlite/3005_national_id_canonical.sql"),
        ),
    ],
    postgres: &[
        (
            3001,
            "provisioning",
            include_str!("../../migrations/postgres/3001_provisioning.sql"),
        ),
        (
            3002,
            "device identity",
            include_str!("../../migrations/postgres/3002_device_identity.sql"),
        ),
        (
            3003,
            "import lease",
            include_str!("../../migrations/postgres/3003_import_lease.sql"),
        ),
        (
            3004,
            "challenge scope",
            include_str!("../../migrations/postgres/3004_challenge_scope.sql"),
        ),
        (
            3005,
            "national id canonical",
            include_str!("../../migrations/postgres/3005_national_id_canonical.sql"),
        ),
    ],
};

/// The provisioning tables in the catalog's database.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    pool: AnyPool,
    db: Database,
}

impl Store {
    pub(crate) fn new(db: &Database) -> Self {
        Self {
            pool: db.pool().clone(),
            db: db.clone(),
        }
    }

    /// Applies what is missing, then the backfills in Rust; a second run
    /// changes nothing.
    pub(crate) async fn migrate(&self) -> Result<()> {
        self.db.migrate(&MIGRATIONS).await?;
        self.canonicalise_national_ids().await
    }
}

/// Whether an error is a unique-constraint violation (a lost race on insert).
pub(crate) fn is_unique_violation(e: &ProvisioningError) -> bool {
    matches!(e, ProvisioningError::Database(sqlx::Error::Database(db)) if db.is_unique_violation())
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
