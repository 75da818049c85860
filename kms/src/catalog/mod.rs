//! The key catalog: issuers, their master-key labels and KCVs, and every
//! working-key version of every (issuer, device) with its `R`s, KCVs and state.
//! It never holds key bytes: the HSM re-derives any key from what is here
//! (docs/protocol.md §3.3).
//!
//! # Layout
//! - [`Catalog`]: the store, on SQLite (embedded default) or PostgreSQL,
//!   through sqlx's Any driver with plain runtime SQL that both accept.
//! - `model`: the records and states it speaks in ([`IssuerRecord`],
//!   [`WorkingKeyRecord`], [`KeyState`], …), re-exported here.
//! - its migrations: the two schema directories
//!   (`kms/migrations/{sqlite,postgres}`), embedded in the binary through
//!   [`crate::db::EmbeddedMigrations`].
//!
//! The connection, transaction and column plumbing it shares with the other
//! crates' stores is in [`crate::db`].
//!
//! # Consistency
//! Every write is one unit of work ([`Database::write`]): `BEGIN IMMEDIATE`
//! on SQLite (the write lock is taken up front, so writers queue on
//! `busy_timeout` instead of failing), `SERIALIZABLE` on PostgreSQL, retried
//! whole on serialization failures and deadlocks. The steps another crate
//! commits with its own rows are also offered over the caller's transaction
//! (`…_in`). The schema backs the rules the code keeps: at most one active
//! version per (issuer, device), states and hex fields checked, and a master-key
//! label recorded once.
//!
//! Must not: store or log key bytes; leave a version half-written.

mod model;

use std::collections::BTreeMap;
use std::time::Duration;

use keyward_config::{DatabaseConfig, DatabaseKind};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::db::{self, Database, EmbeddedMigrations, Retry, Tx, now_ms, parse_col};
use crate::error::{KmsError, Result};
use crate::types::{DeviceId, IssuerId, Kcv, KeyFamily, KeyVersion, WorkingKeyRole};

#[doc(inline)]
pub use model::{
    IssuerRecord, KeyState, MasterKeyRecord, MasterKeyRole, NewWorkingKey, VersionRecord,
    WorkingKeyRecord,
};

/// The key catalog's own tables (versions 1..=100 of the shared table).
const MIGRATIONS: EmbeddedMigrations = EmbeddedMigrations {
    sqlite: &[
        (
            1,
            "catalog",
            include_str!("../../migrations/sqlite/0001_catalog.sql"),
        ),
        (
            2,
            "zone pin key",
            include_str!("../../migrations/sqlite/0002_zone_pin_key.sql"),
        ),
        (
            3,
            "working key changes",
            include_str!("../../migrations/sqlite/0003_working_key_changes.sql"),
        ),
        (
            4,
            "one pending offer",
            include_str!("../../migrations/sqlite/0004_one_pending_offer.sql"),
        ),
    ],
    postgres: &[
        (
            1,
            "catalog",
            include_str!("../../migrations/postgres/0001_catalog.sql"),
        ),
        (
            2,
            "zone pin key",
            include_str!("../../migrations/postgres/0002_zone_pin_key.sql"),
        ),
        (
            3,
            "working key changes",
            include_str!("../../migrations/postgres/0003_working_key_changes.sql"),
        ),
        (
            4,
            "one pending offer",
            include_str!("../../migrations/postgres/0004_one_pending_offer.sql"),
        ),
    ],
};

/// The key catalog. Cheap to clone: clones share one connection pool.
#[derive(Debug, Clone)]
pub struct Catalog {
    db: Database,
}

impl Catalog {
    /// Connects and brings the schema up to date, so a process never runs
    /// against a catalog older than its code (see [`Database::connect`] for
    /// what happens to a SQLite file).
    pub async fn connect(cfg: &DatabaseConfig) -> Result<Catalog> {
        Self::open(Database::connect(cfg).await?).await
    }

    /// The catalog on an already connected database, migrated.
    pub async fn open(db: Database) -> Result<Catalog> {
        db.migrate(&MIGRATIONS).await?;
        Ok(Catalog { db })
    }

    /// Readiness: the database answers a query.
    pub async fn ping(&self) -> Result<()> {
        Ok(self.db.ping().await?)
    }

    /// The database the catalog lives in, shared with the crates that keep
    /// their own tables there (CA, provisioning, audit); they follow the
    /// transaction rules above.
    pub fn db(&self) -> &Database {
        &self.db
    }

    // ---- issuers -----------------------------------------------------------

    /// Records an issuer with its master keys in one transaction, so an issuer
    /// never exists without its keys. [`KmsError::IssuerExists`] if the id is
    /// taken; [`KmsError::Invalid`] (`label`) if a label is already recorded
    /// for another key, since two records would then name one HSM object.
    pub async fn create_issuer(&self, issuer: &IssuerRecord) -> Result<()> {
        let created = self
            .db
            .write("create_issuer", |mut tx| async move {
                Self::create_issuer_in(&mut tx, issuer)
                    .await
                    .map(|v| (tx, v))
            })
            .await;
        match created {
            Err(e) => Err(self.creation_refused(&issuer.id, e).await),
            ok => ok,
        }
    }

    /// [`Catalog::create_issuer`] in the caller's transaction; a unique
    /// violation is named by [`Catalog::creation_refused`] after the
    /// rollback.
    pub async fn create_issuer_in(tx: &mut Tx, issuer: &IssuerRecord) -> Result<()> {
        validate_master_keys(&issuer.master_keys)?;
        Self::insert_issuer(tx, issuer).await
    }

    /// Why creating issuer `id` failed with `e`: a unique violation was a
    /// lost race or a label clash, which a read after the rollback tells.
    pub async fn creation_refused(&self, id: &IssuerId, e: KmsError) -> KmsError {
        match e {
            KmsError::Database(sqlx::Error::Database(ref db)) if db.is_unique_violation() => {
                match self.issuer(id).await {
                    Ok(Some(_)) => KmsError::IssuerExists(id.clone()),
                    Ok(None) => {
                        KmsError::invalid("label", "already recorded for another master key")
                    }
                    Err(read) => read,
                }
            }
            other => other,
        }
    }

    async fn insert_issuer(tx: &mut Tx, issuer: &IssuerRecord) -> Result<()> {
        let exists = sqlx::query("SELECT 1 FROM issuers WHERE id = $1")
            .bind(issuer.id.as_str())
            .fetch_optional(&mut **tx)
            .await?
            .is_some();
        if exists {
            return Err(KmsError::IssuerExists(issuer.id.clone()));
        }
        sqlx::query("INSERT INTO issuers (id, family, created_at_ms) VALUES ($1, $2, $3)")
            .bind(issuer.id.as_str())
            .bind(issuer.family.as_str())
            .bind(issuer.created_at_ms)
            .execute(&mut **tx)
            .await?;
        for key in &issuer.master_keys {
            sqlx::query(
                "INSERT INTO master_keys (issuer_id, role, label, kcv_method, kcv) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(issuer.id.as_str())
            .bind(key.role.as_str())
            .bind(key.label.as_str())
            .bind(key.kcv.method.as_str())
            .bind(key.kcv.hex())
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    /// Records one more token key of an existing issuer (the zone PIN key of
    /// an issuer made before it existed) in the caller's transaction.
    /// `Ok(false)` if the issuer already has a key of that role.
    pub async fn add_master_key_in(
        tx: &mut Tx,
        issuer: &IssuerId,
        key: &MasterKeyRecord,
    ) -> Result<bool> {
        let done = sqlx::query(
            "INSERT INTO master_keys (issuer_id, role, label, kcv_method, kcv) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (issuer_id, role) DO NOTHING",
        )
        .bind(issuer.as_str())
        .bind(key.role.as_str())
        .bind(key.label.as_str())
        .bind(key.kcv.method.as_str())
        .bind(key.kcv.hex())
        .execute(&mut **tx)
        .await?
        .rows_affected();
        Ok(done == 1)
    }

    /// One issuer with its master keys; `None` lets the caller choose the error.
    pub async fn issuer(&self, id: &IssuerId) -> Result<Option<IssuerRecord>> {
        let rows = sqlx::query(
            "SELECT i.id, i.family, i.created_at_ms, m.role, m.label, m.kcv_method, m.kcv \
             FROM issuers i LEFT JOIN master_keys m ON m.issuer_id = i.id \
             WHERE i.id = $1",
        )
        .bind(id.as_str())
        .fetch_all(self.db.pool())
        .await?;
        Ok(issuers_from_rows(&rows)?.pop())
    }

    /// All issuers, ordered by id, for startup checks and the admin listing.
    pub async fn issuers(&self) -> Result<Vec<IssuerRecord>> {
        let rows = sqlx::query(
            "SELECT i.id, i.family, i.created_at_ms, m.role, m.label, m.kcv_method, m.kcv \
             FROM issuers i LEFT JOIN master_keys m ON m.issuer_id = i.id",
        )
        .fetch_all(self.db.pool())
        .await?;
        issuers_from_rows(&rows)
    }

    // ---- working keys --------------------------------------------------------

    /// Records the keys offered to a device as the next version (the highest so
    /// far plus one, 1 for a new device), `pending` until the device confirms
    /// their KCVs. All keys or none are written. [`KmsError::UnknownIssuer`] if
    /// the issuer is not recorded; [`KmsError::Invalid`] for an empty list, a
    /// repeated role, or a KCV method that is not the issuer family's.
    pub async fn add_pending_version(
        &self,
        issuer: &IssuerId,
        device: DeviceId,
        keys: &[NewWorkingKey],
    ) -> Result<KeyVersion> {
        validate_working_keys(keys)?;
        self.db
            .write_with(
                "add_pending_version",
                Retry::LostRacesAndUniqueViolations,
                |mut tx| async move {
                    Self::add_pending_version_in(&mut tx, issuer, device, keys)
                        .await
                        .map(|v| (tx, v))
                },
            )
            .await
    }

    /// [`Catalog::add_pending_version`] in the caller's transaction. The unit
    /// must retry on [`Retry::LostRacesAndUniqueViolations`]: on PostgreSQL two
    /// offers to one device can both read the same highest version, and the
    /// loser hits the primary key or the one-pending index. A device with a
    /// pending offer already gets [`KmsError::OfferPending`]: one offer at a
    /// time per (issuer, device), which the database enforces too.
    pub async fn add_pending_version_in(
        tx: &mut Tx,
        issuer: &IssuerId,
        device: DeviceId,
        keys: &[NewWorkingKey],
    ) -> Result<KeyVersion> {
        validate_working_keys(keys)?;
        let device_hex = device.to_string();
        let family: KeyFamily = match sqlx::query("SELECT family FROM issuers WHERE id = $1")
            .bind(issuer.as_str())
            .fetch_optional(&mut **tx)
            .await?
        {
            Some(row) => parse_col(&row, "family", "issuers.family")?,
            None => return Err(KmsError::UnknownIssuer(issuer.clone())),
        };
        if keys.iter().any(|k| k.kcv.method != family.kcv_method()) {
            return Err(KmsError::invalid(
                "kcv_method",
                format!(
                    "working keys of a {family} issuer carry {}",
                    family.kcv_method().as_str()
                ),
            ));
        }
        let pending = sqlx::query(
            "SELECT version FROM working_key_versions \
             WHERE issuer_id = $1 AND device_id = $2 AND state = 'pending'",
        )
        .bind(issuer.as_str())
        .bind(device_hex.as_str())
        .fetch_optional(&mut **tx)
        .await?;
        if let Some(row) = pending {
            return Err(KmsError::OfferPending(version_col(&row)?));
        }
        let highest: i64 = sqlx::query(
            "SELECT COALESCE(MAX(version), 0) AS highest FROM working_key_versions \
             WHERE issuer_id = $1 AND device_id = $2",
        )
        .bind(issuer.as_str())
        .bind(device_hex.as_str())
        .fetch_one(&mut **tx)
        .await?
        .try_get("highest")?;
        let version = highest
            .checked_add(1)
            .and_then(|v| u32::try_from(v).ok())
            .map(KeyVersion)
            .ok_or_else(|| KmsError::invalid("version", "version numbers exhausted"))?;
        sqlx::query(
            "INSERT INTO working_key_versions \
             (issuer_id, device_id, version, state, created_at_ms) \
             VALUES ($1, $2, $3, 'pending', $4)",
        )
        .bind(issuer.as_str())
        .bind(device_hex.as_str())
        .bind(i64::from(version.0))
        .bind(now_ms())
        .execute(&mut **tx)
        .await?;
        for k in keys {
            sqlx::query(
                "INSERT INTO working_keys \
                 (issuer_id, device_id, version, role, r, kcv_method, kcv) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(issuer.as_str())
            .bind(device_hex.as_str())
            .bind(i64::from(version.0))
            .bind(k.role.as_str())
            .bind(hex::encode_upper(k.r))
            .bind(k.kcv.method.as_str())
            .bind(k.kcv.hex())
            .execute(&mut **tx)
            .await?;
        }
        Ok(version)
    }

    /// One working key with its version's state, whatever that state is: the
    /// caller decides (a MAC check wants [`WorkingKeyRecord::usable_at`], a
    /// confirmation wants [`KeyState::Pending`]).
    pub async fn working_key(
        &self,
        issuer: &IssuerId,
        device: DeviceId,
        version: KeyVersion,
        role: WorkingKeyRole,
    ) -> Result<Option<WorkingKeyRecord>> {
        let row = sqlx::query(
            "SELECT k.device_id, k.version, k.r, k.kcv_method, k.kcv, v.state, \
                    v.created_at_ms, v.retire_at_ms \
             FROM working_keys k JOIN working_key_versions v \
               ON v.issuer_id = k.issuer_id AND v.device_id = k.device_id \
              AND v.version = k.version \
             WHERE k.issuer_id = $1 AND k.device_id = $2 AND k.version = $3 AND k.role = $4",
        )
        .bind(issuer.as_str())
        .bind(device.to_string())
        .bind(i64::from(version.0))
        .bind(role.as_str())
        .fetch_optional(self.db.pool())
        .await?;
        row.map(|row| working_key_from(&row, issuer, role))
            .transpose()
    }

    /// The `role` keys of many (device, version) pairs of one issuer, in as
    /// few statements as the backends' parameter limits allow (the bulk MAC
    /// path reads thousands at once). Pairs without a record are left out;
    /// the order of the answer is not the order of `pairs`.
    pub async fn working_keys(
        &self,
        issuer: &IssuerId,
        role: WorkingKeyRole,
        pairs: &[(DeviceId, KeyVersion)],
    ) -> Result<Vec<WorkingKeyRecord>> {
        let mut out = Vec::with_capacity(pairs.len());
        for part in pairs.chunks(PAIRS_PER_STATEMENT) {
            let mut sql = String::with_capacity(300 + part.len() * 16);
            sql.push_str(
                "SELECT k.device_id, k.version, k.r, k.kcv_method, k.kcv, v.state, \
                        v.created_at_ms, v.retire_at_ms \
                 FROM working_keys k JOIN working_key_versions v \
                   ON v.issuer_id = k.issuer_id AND v.device_id = k.device_id \
                  AND v.version = k.version \
                 WHERE k.issuer_id = $1 AND k.role = $2 AND (k.device_id, k.version) IN (VALUES ",
            );
            for i in 0..part.len() {
                use std::fmt::Write as _;
                let sep = if i == 0 { "" } else { ", " };
                let _ = write!(sql, "{sep}(${}, CAST(${} AS BIGINT))", 3 + 2 * i, 4 + 2 * i);
            }
            sql.push(')');
            // The text is built from placeholders only; every value is bound.
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(issuer.as_str())
                .bind(role.as_str());
            for (device, version) in part {
                q = q.bind(device.to_string()).bind(i64::from(version.0));
            }
            for row in q.fetch_all(self.db.pool()).await? {
                out.push(working_key_from(&row, issuer, role)?);
            }
        }
        Ok(out)
    }

    // ---- change log ----------------------------------------------------------

    /// The (issuer, device) pairs whose working keys lost usability after
    /// change `after`, and the newest change's number (`after` when none):
    /// what a process holding working-key records in memory must forget.
    pub async fn key_changes_since(&self, after: i64) -> Result<(Vec<(IssuerId, DeviceId)>, i64)> {
        let rows = sqlx::query(
            "SELECT seq, issuer_id, device_id FROM working_key_changes \
             WHERE seq > $1 ORDER BY seq",
        )
        .bind(after)
        .fetch_all(self.db.pool())
        .await?;
        let mut newest = after;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            newest = newest.max(row.try_get::<i64, _>("seq")?);
            out.push((
                parse_col(row, "issuer_id", "working_key_changes.issuer_id")?,
                parse_col(row, "device_id", "working_key_changes.device_id")?,
            ));
        }
        Ok((out, newest))
    }

    /// The newest change's number (0 on an empty log): where a process that
    /// holds nothing yet starts reading.
    pub async fn newest_key_change(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS newest FROM working_key_changes")
            .fetch_one(self.db.pool())
            .await?;
        Ok(row.try_get::<i64, _>("newest")?)
    }

    /// Deletes changes recorded before `before_ms`; returns how many.
    pub async fn prune_key_changes(&self, before_ms: i64) -> Result<u64> {
        self.db
            .write("prune_key_changes", |mut tx| async move {
                let n = sqlx::query("DELETE FROM working_key_changes WHERE at_ms < $1")
                    .bind(before_ms)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                Ok((tx, n))
            })
            .await
    }

    /// Records, inside the caller's transaction, that the working keys of
    /// `device` at `issuer` (at every issuer where it holds a usable version
    /// when `None`) are about to lose usability. On PostgreSQL the table is
    /// locked first so change numbers are handed out in commit order (see
    /// the migration).
    async fn log_key_change_in(
        tx: &mut Tx,
        issuer: Option<&IssuerId>,
        device: DeviceId,
        now: i64,
    ) -> Result<()> {
        if db::kind_of(tx) == DatabaseKind::Postgres {
            sqlx::query("LOCK TABLE working_key_changes IN EXCLUSIVE MODE")
                .execute(&mut **tx)
                .await?;
        }
        let q = match issuer {
            Some(issuer) => sqlx::query(
                "INSERT INTO working_key_changes (issuer_id, device_id, at_ms) \
                 VALUES ($2, $1, $3)",
            )
            .bind(device.to_string())
            .bind(issuer.as_str())
            .bind(now),
            None => sqlx::query(
                "INSERT INTO working_key_changes (issuer_id, device_id, at_ms) \
                 SELECT DISTINCT issuer_id, device_id, $2 FROM working_key_versions \
                 WHERE device_id = $1 AND state IN ('active', 'retiring')",
            )
            .bind(device.to_string())
            .bind(now),
        };
        q.execute(&mut **tx).await?;
        Ok(())
    }

    /// Every version of a device's working keys, newest first: the history an
    /// operator reads, and where login finds the active version.
    pub async fn versions(
        &self,
        issuer: &IssuerId,
        device: DeviceId,
    ) -> Result<Vec<VersionRecord>> {
        let rows = sqlx::query(
            "SELECT version, state, created_at_ms, activated_at_ms, retire_at_ms \
             FROM working_key_versions WHERE issuer_id = $1 AND device_id = $2 \
             ORDER BY version DESC",
        )
        .bind(issuer.as_str())
        .bind(device.to_string())
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(VersionRecord {
                    version: version_col(row)?,
                    state: parse_col(row, "state", "working_key_versions.state")?,
                    created_at_ms: row.try_get("created_at_ms")?,
                    activated_at_ms: row.try_get("activated_at_ms")?,
                    retire_at_ms: row.try_get("retire_at_ms")?,
                })
            })
            .collect()
    }

    /// The device confirmed the KCVs of a pending version: it becomes active,
    /// and the version it replaces stays accepted for `grace` (`retiring`) for
    /// transactions made before the switch. Both changes commit together.
    /// [`KmsError::UnknownKeyVersion`] if absent; [`KmsError::KeyVersionNotPending`]
    /// if it is not pending; [`KmsError::KeyVersionSuperseded`] if a newer
    /// version is already active (activating it would roll the device back).
    pub async fn activate_version(
        &self,
        issuer: &IssuerId,
        device: DeviceId,
        version: KeyVersion,
        grace: Duration,
    ) -> Result<()> {
        self.db
            .write("activate_version", |mut tx| async move {
                Self::activate_version_in(&mut tx, issuer, device, version, grace)
                    .await
                    .map(|v| (tx, v))
            })
            .await
    }

    /// [`Catalog::activate_version`] in the caller's transaction, so a
    /// confirmation commits with the caller's own rows.
    pub async fn activate_version_in(
        tx: &mut Tx,
        issuer: &IssuerId,
        device: DeviceId,
        version: KeyVersion,
        grace: Duration,
    ) -> Result<()> {
        let grace_ms = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
        let device_hex = device.to_string();
        expect_pending(tx, issuer, device, version).await?;
        let active = sqlx::query(
            "SELECT version FROM working_key_versions \
             WHERE issuer_id = $1 AND device_id = $2 AND state = 'active'",
        )
        .bind(issuer.as_str())
        .bind(device_hex.as_str())
        .fetch_optional(&mut **tx)
        .await?;
        let now = now_ms();
        if let Some(row) = active {
            let active = version_col(&row)?;
            if active > version {
                return Err(KmsError::KeyVersionSuperseded { version, active });
            }
            Self::log_key_change_in(tx, Some(issuer), device, now).await?;
        }
        // Retire first: the schema allows one active version per device
        // at every statement, not only at commit.
        sqlx::query(
            "UPDATE working_key_versions SET state = 'retiring', retire_at_ms = $3 \
             WHERE issuer_id = $1 AND device_id = $2 AND state = 'active'",
        )
        .bind(issuer.as_str())
        .bind(device_hex.as_str())
        .bind(now.saturating_add(grace_ms))
        .execute(&mut **tx)
        .await?;
        set_state_from_pending(
            tx,
            issuer,
            &device_hex,
            version,
            KeyState::Active,
            Some(now),
        )
        .await
    }

    /// The device reported a KCV mismatch for a pending version (an intrusion
    /// signal, docs/protocol.md §3.3): the version is closed for good so it can never be
    /// activated. Same errors as [`Catalog::activate_version`] for a version
    /// that is absent or not pending.
    pub async fn reject_version(
        &self,
        issuer: &IssuerId,
        device: DeviceId,
        version: KeyVersion,
    ) -> Result<()> {
        self.db
            .write("reject_version", |mut tx| async move {
                Self::reject_version_in(&mut tx, issuer, device, version)
                    .await
                    .map(|v| (tx, v))
            })
            .await
    }

    /// [`Catalog::reject_version`] in the caller's transaction.
    pub async fn reject_version_in(
        tx: &mut Tx,
        issuer: &IssuerId,
        device: DeviceId,
        version: KeyVersion,
    ) -> Result<()> {
        expect_pending(tx, issuer, device, version).await?;
        set_state_from_pending(
            tx,
            issuer,
            &device.to_string(),
            version,
            KeyState::Rejected,
            None,
        )
        .await
    }

    /// Ends the grace period of every `retiring` version whose time is up
    /// (`retire_at_ms <= now_ms`), so their keys stop being accepted; returns
    /// how many. Run periodically; works in batches so a fleet-wide rotation
    /// never holds the write lock for one huge statement.
    pub async fn retire_due(&self, now_ms: i64) -> Result<u64> {
        let mut total = 0u64;
        loop {
            let n = self
                .db
                .write("retire_due", |mut tx| async move {
                    let done = sqlx::query(
                        "UPDATE working_key_versions SET state = 'retired' \
                         WHERE state = 'retiring' AND retire_at_ms <= $1 \
                           AND (issuer_id, device_id, version) IN ( \
                             SELECT issuer_id, device_id, version FROM working_key_versions \
                             WHERE state = 'retiring' AND retire_at_ms <= $1 LIMIT 1000)",
                    )
                    .bind(now_ms)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    Ok::<_, KmsError>((tx, done))
                })
                .await?;
            total += n;
            if n < RETIRE_BATCH {
                return Ok(total);
            }
        }
    }

    /// A retired device keeps no usable key: its pending versions become
    /// `rejected` and its active and retiring ones `retired` at `now_ms`, at
    /// every issuer, in one transaction. Returns how many versions changed.
    pub async fn retire_device(&self, device: DeviceId, now_ms: i64) -> Result<u64> {
        self.db
            .write("retire_device", |mut tx| async move {
                Self::retire_device_in(&mut tx, device, now_ms)
                    .await
                    .map(|v| (tx, v))
            })
            .await
    }

    /// [`Catalog::retire_device`] with its change-log row, in the caller's
    /// transaction: a device's retirement elsewhere commits with its keys'.
    pub async fn retire_device_in(tx: &mut Tx, device: DeviceId, now_ms: i64) -> Result<u64> {
        Self::log_key_change_in(tx, None, device, now_ms).await?;
        let rejected = sqlx::query(
            "UPDATE working_key_versions SET state = 'rejected' \
             WHERE device_id = $1 AND state = 'pending'",
        )
        .bind(device.to_string())
        .execute(&mut **tx)
        .await?
        .rows_affected();
        let retired = sqlx::query(
            "UPDATE working_key_versions SET state = 'retired', \
             retire_at_ms = CASE WHEN state = 'retiring' AND retire_at_ms < $2 \
                            THEN retire_at_ms ELSE $2 END \
             WHERE device_id = $1 AND state IN ('active', 'retiring')",
        )
        .bind(device.to_string())
        .bind(now_ms)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        Ok(rejected + retired)
    }
}

/// Errors unless `version` exists and is pending.
async fn expect_pending(
    tx: &mut Tx,
    issuer: &IssuerId,
    device: DeviceId,
    version: KeyVersion,
) -> Result<()> {
    let row = sqlx::query(
        "SELECT state FROM working_key_versions \
         WHERE issuer_id = $1 AND device_id = $2 AND version = $3",
    )
    .bind(issuer.as_str())
    .bind(device.to_string())
    .bind(i64::from(version.0))
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else {
        return Err(KmsError::UnknownKeyVersion {
            issuer: issuer.clone(),
            device,
            version,
        });
    };
    let state: KeyState = parse_col(&row, "state", "working_key_versions.state")?;
    if state != KeyState::Pending {
        return Err(KmsError::KeyVersionNotPending {
            version,
            state: state.as_str().to_owned(),
        });
    }
    Ok(())
}

/// (device, version) pairs per statement of [`Catalog::working_keys`]: two
/// parameters each, far below SQLite's 32 766 and PostgreSQL's 65 535.
const PAIRS_PER_STATEMENT: usize = 500;

/// A `working_keys` row joined with its version, as [`Catalog::working_key`]
/// and [`Catalog::working_keys`] select it.
fn working_key_from(
    row: &AnyRow,
    issuer: &IssuerId,
    role: WorkingKeyRole,
) -> Result<WorkingKeyRecord> {
    let r_hex: String = row.try_get("r")?;
    let mut r = [0u8; 16];
    hex::decode_to_slice(&r_hex, &mut r).map_err(|_| KmsError::CorruptRecord("working_keys.r"))?;
    Ok(WorkingKeyRecord {
        issuer: issuer.clone(),
        device: parse_col(row, "device_id", "working_keys.device_id")?,
        version: version_col(row)?,
        role,
        r,
        kcv: kcv_from(row, "working_keys.kcv")?,
        state: parse_col(row, "state", "working_key_versions.state")?,
        created_at_ms: row.try_get("created_at_ms")?,
        retire_at_ms: row.try_get("retire_at_ms")?,
    })
}

/// Rows per retirement batch; also the `LIMIT` in [`Catalog::retire_due`].
const RETIRE_BATCH: u64 = 1000;

/// Moves a version the caller has just seen pending to `state`.
async fn set_state_from_pending(
    tx: &mut Tx,
    issuer: &IssuerId,
    device_hex: &str,
    version: KeyVersion,
    state: KeyState,
    activated_at_ms: Option<i64>,
) -> Result<()> {
    let done = sqlx::query(
        "UPDATE working_key_versions SET state = $4, activated_at_ms = $5 \
         WHERE issuer_id = $1 AND device_id = $2 AND version = $3 AND state = 'pending'",
    )
    .bind(issuer.as_str())
    .bind(device_hex)
    .bind(i64::from(version.0))
    .bind(state.as_str())
    .bind(activated_at_ms)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if done == 1 {
        Ok(())
    } else {
        // Read as pending in this very transaction: only a broken isolation
        // level gets here.
        Err(KmsError::CorruptRecord("working_key_versions.state"))
    }
}

/// Folds issuer rows joined with their master keys into records, sorted by id
/// (bytewise, the same on both backends whatever the collation).
fn issuers_from_rows(rows: &[AnyRow]) -> Result<Vec<IssuerRecord>> {
    let mut out: BTreeMap<String, IssuerRecord> = BTreeMap::new();
    for row in rows {
        let id: String = row.try_get("id")?;
        let rec = match out.entry(id) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let rec = IssuerRecord {
                    id: e
                        .key()
                        .parse()
                        .map_err(|_| KmsError::CorruptRecord("issuers.id"))?,
                    family: parse_col(row, "family", "issuers.family")?,
                    master_keys: Vec::new(),
                    created_at_ms: row.try_get("created_at_ms")?,
                };
                e.insert(rec)
            }
        };
        let role: Option<String> = row.try_get("role")?;
        if let Some(role) = role {
            rec.master_keys.push(MasterKeyRecord {
                role: role
                    .parse()
                    .map_err(|_| KmsError::CorruptRecord("master_keys.role"))?,
                label: row.try_get("label")?,
                kcv: kcv_from(row, "master_keys.kcv")?,
            });
        }
    }
    Ok(out
        .into_values()
        .map(|mut rec| {
            rec.master_keys.sort_by_key(|k| k.role);
            rec
        })
        .collect())
}

fn kcv_from(row: &AnyRow, what: &'static str) -> Result<Kcv> {
    let method: String = row.try_get("kcv_method")?;
    let value: String = row.try_get("kcv")?;
    Kcv::parse(&method, &value).map_err(|_| KmsError::CorruptRecord(what))
}

fn version_col(row: &AnyRow) -> Result<KeyVersion> {
    const WHAT: &str = "working_key_versions.version";
    KeyVersion::from_stored(row.try_get("version")?).ok_or(KmsError::CorruptRecord(WHAT))
}

/// Refuses an offer of no keys or of one role twice.
fn validate_working_keys(keys: &[NewWorkingKey]) -> Result<()> {
    if keys.is_empty() {
        return Err(KmsError::invalid("keys", "at least one working key"));
    }
    for (i, k) in keys.iter().enumerate() {
        if keys[..i].iter().any(|o| o.role == k.role) {
            return Err(KmsError::invalid(
                "role",
                "each working-key role at most once",
            ));
        }
    }
    Ok(())
}

/// Refuses master keys that would make an ambiguous issuer record.
fn validate_master_keys(keys: &[MasterKeyRecord]) -> Result<()> {
    for (i, k) in keys.iter().enumerate() {
        if k.label.is_empty() {
            return Err(KmsError::invalid("label", "must not be empty"));
        }
        if keys[..i].iter().any(|o| o.role == k.role) {
            return Err(KmsError::invalid(
                "role",
                "each master-key role at most once",
            ));
        }
        if keys[..i].iter().any(|o| o.label == k.label) {
            return Err(KmsError::invalid(
                "label",
                "each master key needs its own label",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_file_is_embedded() {
        MIGRATIONS
            .check(std::path::Path::new(env!("CARGO_MANIFEST_DIR")), 1..=100)
            .unwrap();
    }
}
