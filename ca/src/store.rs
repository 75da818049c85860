//! The CA's tables, in the key catalog's database through the same sqlx Any
//! pool, with the catalog's transaction rules: every write is one unit of
//! work ([`Database::write`]: `BEGIN IMMEDIATE` on SQLite, `SERIALIZABLE` on
//! PostgreSQL, retried whole on a lost race).

use keyward_kms::db::{self, Database, Tx};
use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};

use crate::error::{CaError, Result};
use crate::profile::{Profile, Role};
use crate::registry::{CertFilter, CertRecord, CertStatus, RevocationReason, Serial};

const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

/// A CA certificate as stored.
#[derive(Debug, Clone)]
pub(crate) struct AuthorityRow {
    pub serial: String,
    pub pem: String,
}

/// A certificate to register.
#[derive(Debug, Clone)]
pub(crate) struct NewCert<'a> {
    pub serial: &'a Serial,
    pub profile: Profile,
    pub subject: &'a str,
    pub device_id: Option<String>,
    pub role: Option<Role>,
    pub not_before_ms: i64,
    pub not_after_ms: i64,
    pub pem: &'a str,
}

/// A revoked certificate as a CRL lists it.
#[derive(Debug, Clone)]
pub(crate) struct RevokedEntry {
    pub serial: Serial,
    pub revoked_at_ms: i64,
    pub reason: RevocationReason,
}

/// What one CRL is built from: its number and a consistent snapshot.
#[derive(Debug, Clone)]
pub(crate) struct CrlSnapshot {
    pub number: i64,
    pub revision: i64,
    pub revoked: Vec<RevokedEntry>,
}

/// The CRL state row.
#[derive(Debug, Clone)]
pub(crate) struct CrlState {
    pub revision: i64,
    pub latest: Option<StoredCrl>,
}

#[derive(Debug, Clone)]
pub(crate) struct StoredCrl {
    pub number: i64,
    pub covers_revision: i64,
    pub this_update_ms: i64,
    pub next_update_ms: i64,
    pub der: Vec<u8>,
}

#[derive(Debug, Clone)]
pub(crate) struct Store {
    pool: AnyPool,
    db: Database,
}

impl Store {
    pub fn new(db: &Database) -> Self {
        Self {
            pool: db.pool().clone(),
            db: db.clone(),
        }
    }

    pub async fn migrate(&self) -> Result<()> {
        crate::migrate::run(&self.db).await
    }

    // ---- CA certificates -----------------------------------------------------

    pub async fn authority(&self, name: &'static str) -> Result<Option<AuthorityRow>> {
        let row = sqlx::query("SELECT serial, pem FROM ca_authorities WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(AuthorityRow {
                serial: r.try_get("serial")?,
                pem: r.try_get("pem")?,
            })
        })
        .transpose()
    }

    /// Records a CA certificate unless one is already recorded under `name`
    /// (another replica won the race); returns whether this one was written.
    pub async fn insert_authority(
        &self,
        name: &'static str,
        serial: &Serial,
        pem: &str,
        not_before_ms: i64,
        not_after_ms: i64,
    ) -> Result<bool> {
        self.db
            .write("insert_authority", |mut tx| async move {
                let done = sqlx::query(
                    "INSERT INTO ca_authorities \
                     (name, serial, pem, not_before_ms, not_after_ms, created_at_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING",
                )
                .bind(name)
                .bind(serial.as_str())
                .bind(pem)
                .bind(not_before_ms)
                .bind(not_after_ms)
                .bind(db::now_ms())
                .execute(&mut *tx)
                .await?
                .rows_affected();
                Ok((tx, done == 1))
            })
            .await
    }

    // ---- registry --------------------------------------------------------------

    pub async fn serial_taken(&self, serial: &Serial) -> Result<bool> {
        Ok(sqlx::query("SELECT 1 FROM certificates WHERE serial = $1")
            .bind(serial.as_str())
            .fetch_optional(&self.pool)
            .await?
            .is_some())
    }

    /// Registers a certificate; `Ok(false)` if its serial is already taken
    /// (the caller signs again with a new serial).
    pub async fn insert_certificate(&self, c: &NewCert<'_>) -> Result<bool> {
        let res = self
            .db
            .write("insert_certificate", |mut tx| async move {
                Self::insert_certificate_in(&mut tx, c).await?;
                Ok((tx, ()))
            })
            .await;
        match res {
            Ok(()) => Ok(true),
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// [`Store::insert_certificate`] in the caller's transaction; a taken
    /// serial is the database's unique violation.
    pub async fn insert_certificate_in(tx: &mut Tx, c: &NewCert<'_>) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO certificates \
             (serial, profile, subject, device_id, operator_role, not_before_ms, \
              not_after_ms, issued_at_ms, status, pem) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'valid', $9)",
        )
        .bind(c.serial.as_str())
        .bind(c.profile.as_str())
        .bind(c.subject)
        .bind(c.device_id.clone())
        .bind(c.role.map(|r| r.as_str()))
        .bind(c.not_before_ms)
        .bind(c.not_after_ms)
        .bind(db::now_ms())
        .bind(c.pem)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    pub async fn certificate(&self, serial: &Serial) -> Result<Option<CertRecord>> {
        let row = sqlx::query(
            "SELECT serial, profile, subject, device_id, operator_role, not_before_ms, \
             not_after_ms, issued_at_ms, status, revoked_at_ms, reason, pem \
             FROM certificates WHERE serial = $1",
        )
        .bind(serial.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(cert_from_row).transpose()
    }

    pub async fn list(&self, f: &CertFilter) -> Result<Vec<CertRecord>> {
        let limit = f.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
        let rows = sqlx::query(
            "SELECT serial, profile, subject, device_id, operator_role, not_before_ms, \
             not_after_ms, issued_at_ms, status, revoked_at_ms, reason, pem \
             FROM certificates \
             WHERE ($1 IS NULL OR profile = $1) AND ($2 IS NULL OR status = $2) \
               AND ($3 IS NULL OR device_id = $3) \
             ORDER BY issued_at_ms DESC, serial LIMIT $4 OFFSET $5",
        )
        .bind(f.profile.map(|p| p.as_str()))
        .bind(f.status.map(|s| s.as_str()))
        .bind(f.device_id.map(|d| d.to_string()))
        .bind(i64::from(limit))
        .bind(i64::from(f.offset.unwrap_or(0)))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(cert_from_row).collect()
    }

    /// The newest valid, unexpired certificate of a device.
    pub async fn device_certificate(
        &self,
        device_hex: &str,
        now_ms: i64,
    ) -> Result<Option<CertRecord>> {
        let row = sqlx::query(
            "SELECT serial, profile, subject, device_id, operator_role, not_before_ms, \
             not_after_ms, issued_at_ms, status, revoked_at_ms, reason, pem \
             FROM certificates \
             WHERE device_id = $1 AND status = 'valid' AND profile = 'device' \
               AND not_after_ms > $2 \
             ORDER BY not_before_ms DESC, issued_at_ms DESC, serial LIMIT 1",
        )
        .bind(device_hex)
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(cert_from_row).transpose()
    }

    /// Marks a certificate revoked and bumps the CRL revision, in one
    /// transaction.
    pub async fn revoke(
        &self,
        serial: &Serial,
        reason: RevocationReason,
        at_ms: i64,
    ) -> Result<()> {
        self.db
            .write("revoke", |mut tx| async move {
                Self::revoke_in(&mut tx, serial, reason, at_ms)
                    .await
                    .map(|v| (tx, v))
            })
            .await
    }

    /// [`Store::revoke`] in the caller's transaction.
    pub async fn revoke_in(
        tx: &mut Tx,
        serial: &Serial,
        reason: RevocationReason,
        at_ms: i64,
    ) -> Result<()> {
        let row = sqlx::query("SELECT status FROM certificates WHERE serial = $1")
            .bind(serial.as_str())
            .fetch_optional(&mut **tx)
            .await?;
        let Some(row) = row else {
            return Err(CaError::UnknownSerial(serial.clone()));
        };
        match db::parse_col::<CertStatus>(&row, "status", "certificates.status")? {
            CertStatus::Revoked => return Err(CaError::AlreadyRevoked(serial.clone())),
            CertStatus::Valid => {}
        }
        sqlx::query(
            "UPDATE certificates SET status = 'revoked', revoked_at_ms = $2, reason = $3 \
             WHERE serial = $1 AND status = 'valid'",
        )
        .bind(serial.as_str())
        .bind(at_ms)
        .bind(reason.as_str())
        .execute(&mut **tx)
        .await?;
        sqlx::query("UPDATE ca_crl SET revision = revision + 1 WHERE id = 1")
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    // ---- CRL -------------------------------------------------------------------

    /// Takes the next CRL number and, in the same transaction, the revocation
    /// list it will carry (certificates still unexpired at `now_ms`), so a
    /// higher number never lists less than a lower one.
    pub async fn allocate_crl(&self, now_ms: i64) -> Result<CrlSnapshot> {
        let (number, revision, rows) = self
            .db
            .write("allocate_crl", |mut tx| async move {
                sqlx::query("UPDATE ca_crl SET last_number = last_number + 1 WHERE id = 1")
                    .execute(&mut *tx)
                    .await?;
                let row = sqlx::query("SELECT last_number, revision FROM ca_crl WHERE id = 1")
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or(CaError::CorruptRecord("ca_crl"))?;
                let number: i64 = row.try_get("last_number")?;
                let revision: i64 = row.try_get("revision")?;
                let rows = sqlx::query(
                    "SELECT serial, revoked_at_ms, reason FROM certificates \
                     WHERE status = 'revoked' AND not_after_ms > $1 ORDER BY serial",
                )
                .bind(now_ms)
                .fetch_all(&mut *tx)
                .await?;
                Ok::<_, CaError>((tx, (number, revision, rows)))
            })
            .await?;
        let revoked = rows
            .iter()
            .map(|r| {
                let at: Option<i64> = r.try_get("revoked_at_ms")?;
                let reason: Option<String> = r.try_get("reason")?;
                Ok(RevokedEntry {
                    serial: db::parse_col(r, "serial", "certificates.serial")?,
                    revoked_at_ms: at
                        .ok_or(CaError::CorruptRecord("certificates.revoked_at_ms"))?,
                    reason: reason
                        .as_deref()
                        .unwrap_or("unspecified")
                        .parse()
                        .map_err(|_| CaError::CorruptRecord("certificates.reason"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(CrlSnapshot {
            number,
            revision,
            revoked,
        })
    }

    /// Stores a signed CRL as the latest unless a higher-numbered one is
    /// already stored; returns whether it was.
    pub async fn publish_crl(&self, crl: &StoredCrl) -> Result<bool> {
        self.db
            .write("publish_crl", |mut tx| async move {
                let done = sqlx::query(
                    "UPDATE ca_crl SET number = $1, covers_revision = $2, this_update_ms = $3, \
                     next_update_ms = $4, der = $5 \
                     WHERE id = 1 AND (number IS NULL OR number < $1)",
                )
                .bind(crl.number)
                .bind(crl.covers_revision)
                .bind(crl.this_update_ms)
                .bind(crl.next_update_ms)
                .bind(crl.der.clone())
                .execute(&mut *tx)
                .await?
                .rows_affected();
                Ok((tx, done == 1))
            })
            .await
    }

    /// `(revision, latest CRL number)`: changes with every revocation and
    /// every CRL, without reading the CRL itself (OCSP asks on each request).
    pub async fn crl_generation(&self) -> Result<(i64, Option<i64>)> {
        let row = sqlx::query("SELECT revision, number FROM ca_crl WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?
            .ok_or(CaError::CorruptRecord("ca_crl"))?;
        Ok((row.try_get("revision")?, row.try_get("number")?))
    }

    pub async fn crl_state(&self) -> Result<CrlState> {
        let row = sqlx::query(
            "SELECT revision, number, covers_revision, this_update_ms, next_update_ms, der \
             FROM ca_crl WHERE id = 1",
        )
        .fetch_optional(&self.pool)
        .await?
        .ok_or(CaError::CorruptRecord("ca_crl"))?;
        let revision: i64 = row.try_get("revision")?;
        let number: Option<i64> = row.try_get("number")?;
        let latest = match number {
            None => None,
            Some(number) => {
                let get = |col: &'static str| -> Result<i64> {
                    let v: Option<i64> = row.try_get(col)?;
                    v.ok_or(CaError::CorruptRecord("ca_crl"))
                };
                let der: Option<Vec<u8>> = row.try_get("der")?;
                Some(StoredCrl {
                    number,
                    covers_revision: get("covers_revision")?,
                    this_update_ms: get("this_update_ms")?,
                    next_update_ms: get("next_update_ms")?,
                    der: der.ok_or(CaError::CorruptRecord("ca_crl.der"))?,
                })
            }
        };
        Ok(CrlState { revision, latest })
    }
}

fn cert_from_row(row: &AnyRow) -> Result<CertRecord> {
    use db::{parse_col, parse_opt};
    Ok(CertRecord {
        serial: parse_col(row, "serial", "certificates.serial")?,
        profile: parse_col(row, "profile", "certificates.profile")?,
        subject: row.try_get("subject")?,
        device_id: parse_opt(row, "device_id", "certificates.device_id")?,
        operator_role: parse_opt(row, "operator_role", "certificates.operator_role")?,
        not_before_ms: row.try_get("not_before_ms")?,
        not_after_ms: row.try_get("not_after_ms")?,
        issued_at_ms: row.try_get("issued_at_ms")?,
        status: parse_col(row, "status", "certificates.status")?,
        revoked_at_ms: row.try_get("revoked_at_ms")?,
        reason: parse_opt(row, "reason", "certificates.reason")?,
        pem: row.try_get("pem")?,
    })
}
