//! [`OnlineStore`]: the online protocols' tables in the catalog's database,
//! so that any replica can take any step of a protocol (migrations in
//! `server/migrations/`, 2020 for login):
//!
//! - `online_credentials`: per (issuer, device) failure counter, lock, and
//!   an operator's rotation request;
//! - `online_sessions`: sessions by the SHA-256 of their token;
//! - `online_fleet_rotations`: an issuer-wide rotation request;
//! - `online_jobs`: leases of the background jobs one replica runs at a time.
//!
//! Login challenges are not here: they live in provisioning's challenge
//! mechanism (purpose `login`, scoped to the issuer). Every write is one
//! transaction under the catalog's rules (`keyward_kms::db`).

use std::future::Future;

use keyward_kms::db::{self, Database};
use keyward_kms::types::{DeviceId, IssuerId};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use crate::online::OnlineError;

type Result<T> = std::result::Result<T, OnlineError>;

/// Handle on the online protocols' tables; cheap to clone.
#[derive(Debug, Clone)]
pub struct OnlineStore {
    db: Database,
}

/// A (device, issuer) credential's row; absent rows read as
/// [`Credential::default`] (never failed, not locked).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credential {
    pub failures: u32,
    pub locked_at_ms: Option<i64>,
    pub revoked_serial: Option<String>,
    pub rotate_requested_at_ms: Option<i64>,
    pub last_login_at_ms: Option<i64>,
}

/// A stored session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    pub device: DeviceId,
    pub issuer: IssuerId,
    pub cert_serial: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
}

/// What one more failure did: the new count, and whether this failure locked
/// the credential (only the one that crosses the limit does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub count: u32,
    pub newly_locked: bool,
}

/// A bound device that owes a key confirmation, as read for
/// `kwctl key pending`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRow {
    pub device: String,
    pub active_version: Option<u32>,
    pub active_since_ms: Option<i64>,
    pub has_pending: bool,
    pub rotate_requested_at_ms: Option<i64>,
}

impl OnlineStore {
    /// A store over the catalog's database.
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Any>> {
        Ok(self.db.begin_write().await?)
    }

    /// Runs `op` (one whole transaction) again on PostgreSQL serialization
    /// failures and deadlocks.
    async fn retrying<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        db::retrying(
            "online",
            |e| matches!(e, OnlineError::Database(err) if self.db.is_serialization_failure(err)),
            op,
        )
        .await
    }

    // ---- credentials -----------------------------------------------------

    pub async fn credential(&self, issuer: &IssuerId, device: DeviceId) -> Result<Credential> {
        let row = sqlx::query(
            "SELECT failures, locked_at_ms, revoked_serial, rotate_requested_at_ms, \
             last_login_at_ms FROM online_credentials WHERE issuer_id = $1 AND device_id = $2",
        )
        .bind(issuer.as_str())
        .bind(device.to_string())
        .fetch_optional(self.db.pool())
        .await?;
        row.as_ref()
            .map(credential_from_row)
            .transpose()
            .map(Option::unwrap_or_default)
    }

    /// Counts one failed response; locks the credential when the count
    /// reaches `limit`. One transaction, so two replicas counting at once
    /// both count and exactly one of them locks.
    pub async fn record_failure(
        &self,
        issuer: &IssuerId,
        device: DeviceId,
        limit: u32,
        now: i64,
    ) -> Result<Failure> {
        let device = device.to_string();
        self.retrying(|| async {
            let mut tx = self.begin_write().await?;
            let row = sqlx::query(
                "INSERT INTO online_credentials (issuer_id, device_id, failures) \
                 VALUES ($1, $2, 1) \
                 ON CONFLICT (issuer_id, device_id) \
                 DO UPDATE SET failures = online_credentials.failures + 1 \
                 RETURNING failures, locked_at_ms",
            )
            .bind(issuer.as_str())
            .bind(device.as_str())
            .fetch_one(&mut *tx)
            .await?;
            let count: i64 = row.try_get("failures")?;
            let locked: Option<i64> = row.try_get("locked_at_ms")?;
            let count = u32::try_from(count).unwrap_or(u32::MAX);
            let newly_locked = locked.is_none() && count >= limit;
            if newly_locked {
                sqlx::query(
                    "UPDATE online_credentials SET locked_at_ms = $3 \
                     WHERE issuer_id = $1 AND device_id = $2",
                )
                .bind(issuer.as_str())
                .bind(device.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM online_sessions WHERE issuer_id = $1 AND device_id = $2")
                    .bind(issuer.as_str())
                    .bind(device.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(Failure {
                count,
                newly_locked,
            })
        })
        .await
    }

    /// Notes which certificate a lockout revoked (so an unlock knows the
    /// device needs a new one).
    pub async fn set_revoked_serial(
        &self,
        issuer: &IssuerId,
        device: DeviceId,
        serial: &str,
    ) -> Result<()> {
        let device = device.to_string();
        self.retrying(|| async {
            let mut tx = self.begin_write().await?;
            sqlx::query(
                "UPDATE online_credentials SET revoked_serial = $3 \
                 WHERE issuer_id = $1 AND device_id = $2",
            )
            .bind(issuer.as_str())
            .bind(device.as_str())
            .bind(serial)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// A successful login: the failure count back to 0 and the session
    /// stored, in one transaction — unless the credential was locked
    /// meanwhile (another replica counted the tenth failure), in which case
    /// nothing is written and `Ok(false)` says so.
    pub async fn login_succeeded(
        &self,
        token_hash: &str,
        session: &StoredSession,
        cleared_rotation_before: Option<i64>,
    ) -> Result<bool> {
        let device = session.device.to_string();
        self.retrying(|| async {
            let mut tx = self.begin_write().await?;
            let done = sqlx::query(
                "INSERT INTO online_credentials (issuer_id, device_id, failures, last_login_at_ms) \
                 VALUES ($1, $2, 0, $3) \
                 ON CONFLICT (issuer_id, device_id) DO UPDATE \
                 SET failures = 0, last_login_at_ms = $3 \
                 WHERE online_credentials.locked_at_ms IS NULL",
            )
            .bind(session.issuer.as_str())
            .bind(device.as_str())
            .bind(session.created_at_ms)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if done == 0 {
                return Ok(false);
            }
            if let Some(at) = cleared_rotation_before {
                sqlx::query(
                    "UPDATE online_credentials SET rotate_requested_at_ms = NULL \
                     WHERE issuer_id = $1 AND device_id = $2 AND rotate_requested_at_ms <= $3",
                )
                .bind(session.issuer.as_str())
                .bind(device.as_str())
                .bind(at)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query(
                "INSERT INTO online_sessions \
                 (token_hash, device_id, issuer_id, cert_serial, created_at_ms, expires_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(token_hash)
            .bind(device.as_str())
            .bind(session.issuer.as_str())
            .bind(session.cert_serial.as_str())
            .bind(session.created_at_ms)
            .bind(session.expires_at_ms)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    /// An operator's unlock: count to 0, lock and revoked serial cleared.
    /// Returns the credential as it was, `None` if it was not locked.
    pub async fn unlock(&self, issuer: &IssuerId, device: DeviceId) -> Result<Option<Credential>> {
        let device = device.to_string();
        self.retrying(|| async {
            let mut tx = self.begin_write().await?;
            let row = sqlx::query(
                "SELECT failures, locked_at_ms, revoked_serial, rotate_requested_at_ms, \
                 last_login_at_ms FROM online_credentials WHERE issuer_id = $1 AND device_id = $2",
            )
            .bind(issuer.as_str())
            .bind(device.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            let before = row.as_ref().map(credential_from_row).transpose()?;
            let Some(before) = before.filter(|c| c.locked_at_ms.is_some()) else {
                return Ok(None);
            };
            sqlx::query(
                "UPDATE online_credentials SET failures = 0, locked_at_ms = NULL, \
                 revoked_serial = NULL WHERE issuer_id = $1 AND device_id = $2",
            )
            .bind(issuer.as_str())
            .bind(device.as_str())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Some(before))
        })
        .await
    }

    // ---- transaction MAC failures ------------------------------------------

    /// One more consecutive MAC failure of a credential; the new streak.
    pub async fn record_mac_failure(&self, issuer: &IssuerId, device: DeviceId) -> Result<u32> {
        let device = device.to_string();
        self.retrying(|| async {
            let mut tx = self.begin_write().await?;
            let row = sqlx::query(
                "INSERT INTO online_credentials (issuer_id, device_id, mac_failures) \
                 VALUES ($1, $2, 1) ON CONFLICT (issuer_id, device_id) \
                 DO UPDATE SET mac_failures = online_credentials.mac_failures + 1 \
                 RETURNING mac_failures",
            )
            .bind(issuer.as_str())
            .bind(device.as_str())
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            let n: i64 = row.try_get("mac_failures")?;
            Ok(u32::try_from(n).unwrap_or(u32::MAX))
        })
        .await
    }

    /// A valid MAC ends a failure streak. One statement that writes nothing
    /// when there is no streak (the common case).
    pub async fn clear_mac_failures(&self, issuer: &IssuerId, device: DeviceId) -> Result<()> {
        sqlx::query(
            "UPDATE online_credentials SET mac_failures = 0 \
             WHERE issuer_id = $1 AND device_id = $2 AND mac_failures > 0",
        )
        .bind(issuer.as_str())
        .bind(device.to_string())
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    // ---- sessions --------------------------------------------------------

    pub async fn session(&self, token_hash: &str) -> Result<Option<StoredSession>> {
        let row = sqlx::query(
            "SELECT device_id, issuer_id, cert_serial, created_at_ms, expires_at_ms \
             FROM online_sessions WHERE token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(self.db.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(StoredSession {
            device: db::parse_col(&row, "device_id", "online_sessions.device_id")?,
            issuer: db::parse_col(&row, "issuer_id", "online_sessions.issuer_id")?,
            cert_serial: row.try_get("cert_serial")?,
            created_at_ms: row.try_get("created_at_ms")?,
            expires_at_ms: row.try_get("expires_at_ms")?,
        }))
    }

    /// Ends one session (logout); whether it existed.
    pub async fn end_session(&self, token_hash: &str) -> Result<bool> {
        self.retrying(|| async {
            let mut tx = self.begin_write().await?;
            let n = sqlx::query("DELETE FROM online_sessions WHERE token_hash = $1")
                .bind(token_hash)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            Ok(n > 0)
        })
        .await
    }

    /// Deletes expired sessions; returns how many.
    pub async fn purge_sessions(&self, now: i64) -> Result<u64> {
        self.retrying(|| async {
            let mut tx = self.begin_write().await?;
            let n = sqlx::query("DELETE FROM online_sessions WHERE expires_at_ms <= $1")
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            Ok(n)
        })
        .await
    }

    /// Sessions not yet expired (the `keyward_sessions_active` gauge).
    pub async fn active_sessions(&self, now: i64) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM online_sessions WHERE expires_at_ms > $1")
            .bind(now)
            .fetch_one(self.db.pool())
            .await?;
        Ok(row.try_get("n")?)
    }

    // ---- rotation requests -----------------------------------------------

    /// An operator asked for new keys for one device at its next login.
    pub async fn request_rotation(
        &self,
        issuer: &IssuerId,
        device: DeviceId,
        now: i64,
    ) -> Result<()> {
        let device = device.to_string();
        self.retrying(|| async {
            let mut tx = self.begin_write().await?;
            sqlx::query(
                "INSERT INTO online_credentials (issuer_id, device_id, rotate_requested_at_ms) \
                 VALUES ($1, $2, $3) ON CONFLICT (issuer_id, device_id) \
                 DO UPDATE SET rotate_requested_at_ms = $3",
            )
            .bind(issuer.as_str())
            .bind(device.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// An operator asked for new keys for every device of the issuer: one
    /// row, read by each device's next login (no storm of HSM jobs).
    pub async fn request_fleet_rotation(
        &self,
        issuer: &IssuerId,
        now: i64,
        by: &str,
    ) -> Result<()> {
        self.retrying(|| async {
            let mut tx = self.begin_write().await?;
            sqlx::query(
                "INSERT INTO online_fleet_rotations (issuer_id, requested_at_ms, requested_by) \
                 VALUES ($1, $2, $3) ON CONFLICT (issuer_id) \
                 DO UPDATE SET requested_at_ms = $2, requested_by = $3",
            )
            .bind(issuer.as_str())
            .bind(now)
            .bind(by)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// When the issuer's latest fleet-wide rotation was asked for.
    pub async fn fleet_rotation(&self, issuer: &IssuerId) -> Result<Option<i64>> {
        let row =
            sqlx::query("SELECT requested_at_ms FROM online_fleet_rotations WHERE issuer_id = $1")
                .bind(issuer.as_str())
                .fetch_optional(self.db.pool())
                .await?;
        Ok(row.map(|r| r.try_get("requested_at_ms")).transpose()?)
    }

    /// Bound devices of `issuer` that owe a key confirmation: no active
    /// version, a pending one, an operator's request, or a fleet request
    /// newer than their active version. Reads the key catalog's and
    /// provisioning's tables (read only) beside ours.
    pub async fn pending_rotations(
        &self,
        issuer: &IssuerId,
        limit: u32,
    ) -> Result<Vec<PendingRow>> {
        let rows = sqlx::query(
            "SELECT b.device_id, a.version AS active_version, a.activated_at_ms, \
               c.rotate_requested_at_ms, \
               (SELECT COUNT(*) FROM working_key_versions p WHERE p.issuer_id = b.issuer_id \
                  AND p.device_id = b.device_id AND p.state = 'pending') AS pending \
             FROM prov_bindings b \
             LEFT JOIN working_key_versions a ON a.issuer_id = b.issuer_id \
               AND a.device_id = b.device_id AND a.state = 'active' \
             LEFT JOIN online_credentials c ON c.issuer_id = b.issuer_id \
               AND c.device_id = b.device_id \
             LEFT JOIN online_fleet_rotations f ON f.issuer_id = b.issuer_id \
             WHERE b.issuer_id = $1 AND (a.version IS NULL \
               OR c.rotate_requested_at_ms IS NOT NULL \
               OR (f.requested_at_ms IS NOT NULL AND a.activated_at_ms < f.requested_at_ms) \
               OR EXISTS (SELECT 1 FROM working_key_versions p WHERE p.issuer_id = b.issuer_id \
                  AND p.device_id = b.device_id AND p.state = 'pending')) \
             ORDER BY b.device_id LIMIT $2",
        )
        .bind(issuer.as_str())
        .bind(i64::from(limit))
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let version: Option<i64> = row.try_get("active_version")?;
                let pending: i64 = row.try_get("pending")?;
                Ok(PendingRow {
                    device: row.try_get("device_id")?,
                    active_version: version.and_then(|v| u32::try_from(v).ok()),
                    active_since_ms: row.try_get("activated_at_ms")?,
                    has_pending: pending > 0,
                    rotate_requested_at_ms: row.try_get("rotate_requested_at_ms")?,
                })
            })
            .collect()
    }
}

fn credential_from_row(row: &AnyRow) -> Result<Credential> {
    let failures: i64 = row.try_get("failures")?;
    Ok(Credential {
        failures: u32::try_from(failures).unwrap_or(u32::MAX),
        locked_at_ms: row.try_get("locked_at_ms")?,
        revoked_serial: row.try_get("revoked_serial")?,
        rotate_requested_at_ms: row.try_get("rotate_requested_at_ms")?,
        last_login_at_ms: row.try_get("last_login_at_ms")?,
    })
}
