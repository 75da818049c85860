//! [`OnlineStore`]: the online protocols' tables in the catalog's database,
//! so that any replica can take any step of a protocol (migrations in
//! `server/migrations/`, 2020 for login):
//!
//! - `online_credentials`: per (issuer, device) failure counter, lock, and
//!   an operator's rotation request;
//! - `online_sessions`: sessions by the SHA-256 of their token;
//! - `online_fleet_rotations`: an issuer-wide rotation request;
//! - `online_challenges_used`: the seals of login challenges already used
//!   (challenges themselves are sealed, not stored: `online::challenge`);
//! - `online_jobs`: leases of the background jobs one replica runs at a time.
//!
//! Writes a protocol step composes with others are `…_in(&mut tx, …)`
//! functions over the caller's unit of work ([`Database::write`]); the rest
//! are one unit of work each.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use keyward_kms::db::{self, Database, Tx};
use keyward_kms::types::{DeviceId, IssuerId, KeyVersion};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::online::OnlineError;

type Result<T> = std::result::Result<T, OnlineError>;

/// Handle on the online protocols' tables; cheap to clone.
#[derive(Debug, Clone)]
pub struct OnlineStore {
    db: Database,
    /// Finishes waiting for the group write that carries them.
    finishes: Arc<Group>,
}

/// Group commit of login finishes: concurrent finishes share one
/// transaction (one fsync), as the audit trail's appends do.
#[derive(Debug, Default)]
struct Group {
    waiting: Mutex<Vec<Waiting>>,
    next_ticket: std::sync::atomic::AtomicU64,
    writer: Arc<tokio::sync::Mutex<()>>,
}

/// Finishes written in one transaction at most.
const GROUP_MAX: usize = 256;

struct Waiting {
    ticket: u64,
    finish: Finish,
    reply: tokio::sync::oneshot::Sender<Result<Finished>>,
}

impl std::fmt::Debug for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Waiting")
    }
}

/// A steady-state login finish to write: its challenge's seal to use up and
/// the session to open.
#[derive(Debug, Clone)]
pub struct Finish {
    pub seal: String,
    pub seal_expires_at_ms: i64,
    pub token_hash: String,
    pub session: StoredSession,
    /// Live sessions the credential may hold; opening one more ends its
    /// oldest.
    pub max_sessions: u32,
}

/// What writing a [`Finish`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// The session is open; `active` is the device's active working-key
    /// version as the transaction saw it.
    Opened { active: Option<KeyVersion> },
    /// The challenge was used already: nothing written.
    ChallengeUsed,
    /// The credential was locked meanwhile: the challenge is used up, no
    /// session.
    Locked,
}

/// A working-key version number read from the catalog's table.
fn key_version(v: i64) -> Result<KeyVersion> {
    KeyVersion::from_stored(v)
        .ok_or_else(|| db::ColumnError::Corrupt("working_key_versions.version").into())
}

/// A credential's standing as a finish's transaction reads it.
#[derive(Debug, Clone, Copy, Default)]
struct Standing {
    /// `None`: no credential row yet (the device's first login).
    failures: Option<i64>,
    locked: bool,
    active: Option<KeyVersion>,
}

/// `rows` parenthesised rows of `width` placeholders, numbered from `$1`:
/// `($1, $2), ($3, $4)`. The group statements' text is built from these
/// placeholders only; every value is bound.
fn value_rows(rows: usize, width: usize) -> String {
    (0..rows)
        .map(|r| {
            let cols: Vec<String> = (1..=width).map(|c| format!("${}", r * width + c)).collect();
            format!("({})", cols.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `n` placeholders numbered from `$1`: `$1, $2, …`.
fn value_list(n: usize) -> String {
    value_list_from(1, n)
}

/// `n` placeholders numbered from `$first`.
fn value_list_from(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What opening a session in a finish's transaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// Opened; `active` is the device's active working-key version.
    Opened { active: Option<KeyVersion> },
    /// The credential is locked: nothing written.
    Locked,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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

/// What a login start reads of a bound (device, issuer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginContext {
    /// The binding's secure-element serials.
    pub psam_serial: Option<String>,
    pub esam_serial: Option<String>,
    pub credential: Credential,
    /// When the issuer's latest fleet-wide rotation was asked for.
    pub fleet_rotation_at_ms: Option<i64>,
    /// The device's active working-key version, and since when.
    pub active: Option<ActiveVersion>,
    /// Whether the version the device reported is one the catalog holds
    /// (`false` when it reported none).
    pub reported_known: bool,
}

/// A device's active working-key version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveVersion {
    pub version: KeyVersion,
    pub activated_at_ms: Option<i64>,
}

/// What the per-request device check reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStanding {
    pub state: keyward_device_provisioning::DeviceState,
    /// When the state last changed: sessions opened before it are over.
    pub state_changed_at_ms: i64,
    /// The registered certificate's serial, as the registry holds it.
    pub cert_serial: Option<String>,
    /// Whether the CA has that certificate revoked; `None` if the CA has no
    /// row under that exact serial (the caller asks the CA).
    pub revoked: Option<bool>,
}

/// A stored session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    pub device: DeviceId,
    pub issuer: IssuerId,
    pub cert_serial: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    /// Whether the credential is locked (as read; written sessions are not).
    pub locked: bool,
}

impl StoredSession {
    /// The (issuer, device) of the session's credential, as the tables
    /// spell them.
    fn credential_key(&self) -> (String, String) {
        (self.issuer.as_str().to_owned(), self.device.to_string())
    }
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
        Self {
            db,
            finishes: Arc::default(),
        }
    }

    /// Writes one login finish: its challenge used up and its session
    /// opened, in a transaction shared with every finish waiting at the same
    /// time (one commit, one fsync for all of them). The caller that finds
    /// the writer free writes the whole queue in a task of its own, so a
    /// caller that goes away never cuts a group short; each gets its own
    /// outcome, or the group's error.
    pub async fn finish_login(&self, finish: Finish) -> Result<Finished> {
        let (reply, mut answer) = tokio::sync::oneshot::channel();
        let ticket = self
            .finishes
            .next_ticket
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        lock(&self.finishes.waiting).push(Waiting {
            ticket,
            finish,
            reply,
        });
        loop {
            let writer = self.finishes.writer.clone().lock_owned().await;
            // A writer before us may have taken and written ours.
            if let Ok(result) = answer.try_recv() {
                return result;
            }
            let group: Vec<Waiting> = {
                let mut q = lock(&self.finishes.waiting);
                let n = q.len().min(GROUP_MAX);
                q.drain(..n).collect()
            };
            let ours = group.iter().any(|w| w.ticket == ticket);
            let db = self.db.clone();
            tokio::spawn(async move {
                let _writer = writer;
                let (finishes, replies): (Vec<Finish>, Vec<_>) =
                    group.into_iter().map(|w| (w.finish, w.reply)).unzip();
                let finishes = &finishes;
                let written = db
                    .write("login.finish", |mut tx| async move {
                        let out = Self::finish_group_in(&mut tx, finishes).await?;
                        Ok::<_, OnlineError>((tx, out))
                    })
                    .await;
                match written {
                    Ok(outcomes) => {
                        for (reply, o) in replies.into_iter().zip(outcomes) {
                            let _ = reply.send(Ok(o));
                        }
                    }
                    Err(e) => {
                        let (code, kind) = (e.code(), e.kind());
                        for reply in replies {
                            let _ = reply.send(Err(OnlineError::Group { code, kind }));
                        }
                    }
                }
            });
            if ours {
                return answer.await.unwrap_or(Err(OnlineError::Group {
                    code: "database_error",
                    kind: keyward_kms::ErrorKind::Internal,
                }));
            }
            // Ours was beyond this group: wait for the writer again.
        }
    }

    /// A group of [`Finish`]es in one transaction, in set statements: the
    /// seals used up, the credentials read, the sessions stored and each
    /// credential's oldest sessions beyond its limit ended, each one
    /// statement for the whole group (a failure count to reset costs one
    /// more). The outcomes are in the group's order.
    async fn finish_group_in(tx: &mut Tx, group: &[Finish]) -> Result<Vec<Finished>> {
        let fresh = Self::consume_challenges_in(tx, group).await?;
        // A seal twice in one group is used by its first finish only.
        let mut claimed = HashSet::new();
        let used: Vec<bool> = group
            .iter()
            .map(|f| fresh.contains(&f.seal) && claimed.insert(f.seal.as_str()))
            .collect();
        let claimants: Vec<&Finish> = group
            .iter()
            .zip(&used)
            .filter_map(|(f, used)| used.then_some(f))
            .collect();
        let standing = Self::standing_in(tx, &claimants).await?;
        let mut out = Vec::with_capacity(group.len());
        let mut opening = Vec::with_capacity(claimants.len());
        for (f, used) in group.iter().zip(used) {
            let s = standing.get(&f.session.credential_key());
            out.push(match s {
                _ if !used => Finished::ChallengeUsed,
                Some(s) if s.locked => Finished::Locked,
                s => {
                    if s.and_then(|s| s.failures) != Some(0) {
                        Self::reset_failures_in(tx, &f.session).await?;
                    }
                    opening.push(f);
                    Finished::Opened {
                        active: s.and_then(|s| s.active),
                    }
                }
            });
        }
        Self::store_sessions_in(tx, &opening).await?;
        Ok(out)
    }

    /// Uses login challenges up: their seals go into the used set until they
    /// expire, in one statement. Returns the seals that were not used yet
    /// (another finish, on any replica, may have got there first).
    async fn consume_challenges_in(tx: &mut Tx, group: &[Finish]) -> Result<HashSet<String>> {
        if group.is_empty() {
            return Ok(HashSet::new());
        }
        let sql = format!(
            "INSERT INTO online_challenges_used (seal, expires_at_ms) VALUES {} \
             ON CONFLICT (seal) DO NOTHING RETURNING seal",
            value_rows(group.len(), 2)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
        for f in group {
            q = q.bind(f.seal.as_str()).bind(f.seal_expires_at_ms);
        }
        let rows = q.fetch_all(&mut **tx).await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("seal").map_err(Into::into))
            .collect()
    }

    /// The credentials (failure count, lock) and active working-key
    /// versions of the finishes' devices, in two reads for all of them; the
    /// versions are the catalog's rows, read here so a login's answer costs
    /// no statement of its own.
    async fn standing_in(
        tx: &mut Tx,
        finishes: &[&Finish],
    ) -> Result<HashMap<(String, String), Standing>> {
        let mut out: HashMap<(String, String), Standing> = HashMap::new();
        if finishes.is_empty() {
            return Ok(out);
        }
        let devices: Vec<String> = finishes
            .iter()
            .map(|f| f.session.device.to_string())
            .collect();
        let list = value_list(devices.len());
        let sql = format!(
            "SELECT issuer_id, device_id, failures, locked_at_ms FROM online_credentials \
             WHERE device_id IN ({list})"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
        for d in &devices {
            q = q.bind(d.as_str());
        }
        for row in q.fetch_all(&mut **tx).await? {
            let key = (row.try_get("issuer_id")?, row.try_get("device_id")?);
            let s = out.entry(key).or_default();
            s.failures = Some(row.try_get("failures")?);
            s.locked = row.try_get::<Option<i64>, _>("locked_at_ms")?.is_some();
        }
        let sql = format!(
            "SELECT issuer_id, device_id, version FROM working_key_versions \
             WHERE state = 'active' AND device_id IN ({list})"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
        for d in &devices {
            q = q.bind(d.as_str());
        }
        for row in q.fetch_all(&mut **tx).await? {
            let key = (row.try_get("issuer_id")?, row.try_get("device_id")?);
            let version = key_version(row.try_get("version")?)?;
            let s = out.entry(key).or_default();
            s.active = s.active.max(Some(version));
        }
        Ok(out)
    }

    /// A successful login's failure count back to 0 (the credential's row
    /// made at its first login).
    async fn reset_failures_in(tx: &mut Tx, session: &StoredSession) -> Result<()> {
        sqlx::query(
            "INSERT INTO online_credentials \
             (issuer_id, device_id, failures, last_login_at_ms) VALUES ($1, $2, 0, $3) \
             ON CONFLICT (issuer_id, device_id) DO UPDATE \
             SET failures = 0, last_login_at_ms = $3",
        )
        .bind(session.issuer.as_str())
        .bind(session.device.to_string())
        .bind(session.created_at_ms)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Stores the sessions of `finishes` in one statement, then ends each
    /// credential's oldest sessions beyond its limit in another: logins in a
    /// loop cannot pile up sessions (each a bearer token for hours).
    async fn store_sessions_in(tx: &mut Tx, finishes: &[&Finish]) -> Result<()> {
        if finishes.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "INSERT INTO online_sessions \
             (token_hash, device_id, issuer_id, cert_serial, created_at_ms, expires_at_ms) \
             VALUES {}",
            value_rows(finishes.len(), 6)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
        for f in finishes {
            let s = &f.session;
            q = q
                .bind(f.token_hash.as_str())
                .bind(s.device.to_string())
                .bind(s.issuer.as_str())
                .bind(s.cert_serial.as_str())
                .bind(s.created_at_ms)
                .bind(s.expires_at_ms);
        }
        q.execute(&mut **tx).await?;
        // One limit for the group: the strictest asked for.
        let max = finishes
            .iter()
            .map(|f| f.max_sessions.max(1))
            .min()
            .unwrap_or(1);
        let sql = format!(
            "DELETE FROM online_sessions WHERE token_hash IN \
             (SELECT token_hash FROM \
               (SELECT token_hash, ROW_NUMBER() OVER (PARTITION BY device_id, issuer_id \
                  ORDER BY created_at_ms DESC, token_hash DESC) AS n \
                FROM online_sessions WHERE device_id IN ({})) AS ranked \
              WHERE n > $1)",
            value_list_from(2, finishes.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(i64::from(max));
        for f in finishes {
            q = q.bind(f.session.device.to_string());
        }
        q.execute(&mut **tx).await?;
        Ok(())
    }

    /// The database, for a step's unit of work.
    pub fn db(&self) -> &Database {
        &self.db
    }

    // ---- devices -----------------------------------------------------------

    /// A device's standing for the per-request check of the public listener:
    /// its state, its registered certificate's serial and that certificate's
    /// CA status (`None` when the join found no certificate row), in one read
    /// of the registry's and the CA's tables.
    pub async fn device_standing(&self, device: DeviceId) -> Result<Option<DeviceStanding>> {
        let row = sqlx::query(
            "SELECT d.state, d.state_changed_at_ms, d.cert_serial, c.status FROM prov_devices d \
             LEFT JOIN certificates c ON c.serial = d.cert_serial \
             WHERE d.device_id = $1",
        )
        .bind(device.to_string())
        .fetch_optional(self.db.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let status: Option<String> = row.try_get("status")?;
        Ok(Some(DeviceStanding {
            state: db::parse_col(&row, "state", "prov_devices.state")?,
            state_changed_at_ms: row.try_get("state_changed_at_ms")?,
            cert_serial: row.try_get("cert_serial")?,
            revoked: status.map(|s| s == "revoked"),
        }))
    }

    /// What a login start reads of a (device, issuer), in one read: the
    /// binding's secure-element serials, the credential, the issuer's fleet
    /// rotation, and of the catalog's working-key versions the active one
    /// and whether the device's `reported` version exists. `None` when the
    /// device is not bound for the issuer.
    pub async fn login_context(
        &self,
        issuer: &IssuerId,
        device: DeviceId,
        reported: Option<KeyVersion>,
    ) -> Result<Option<LoginContext>> {
        let row = sqlx::query(
            "SELECT b.psam_serial, b.esam_serial, c.failures, c.locked_at_ms, \
             c.revoked_serial, c.rotate_requested_at_ms, c.last_login_at_ms, \
             f.requested_at_ms AS fleet_requested_at_ms, \
             a.version AS active_version, a.activated_at_ms AS active_since, \
             (SELECT COUNT(*) FROM working_key_versions r \
              WHERE r.issuer_id = b.issuer_id AND r.device_id = b.device_id \
              AND r.version = $3) AS reported_known \
             FROM prov_bindings b \
             LEFT JOIN online_credentials c \
               ON c.issuer_id = b.issuer_id AND c.device_id = b.device_id \
             LEFT JOIN online_fleet_rotations f ON f.issuer_id = b.issuer_id \
             LEFT JOIN working_key_versions a \
               ON a.issuer_id = b.issuer_id AND a.device_id = b.device_id AND a.state = 'active' \
             WHERE b.device_id = $1 AND b.issuer_id = $2",
        )
        .bind(device.to_string())
        .bind(issuer.as_str())
        .bind(reported.map(|v| i64::from(v.0)))
        .fetch_optional(self.db.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let failures: Option<i64> = row.try_get("failures")?;
        let credential = match failures {
            None => Credential::default(),
            Some(_) => credential_from_row(&row)?,
        };
        let active = match row.try_get::<Option<i64>, _>("active_version")? {
            None => None,
            Some(v) => Some(ActiveVersion {
                version: key_version(v)?,
                activated_at_ms: row.try_get("active_since")?,
            }),
        };
        let known: i64 = row.try_get("reported_known")?;
        Ok(Some(LoginContext {
            psam_serial: row.try_get("psam_serial")?,
            esam_serial: row.try_get("esam_serial")?,
            credential,
            fleet_rotation_at_ms: row.try_get("fleet_requested_at_ms")?,
            active,
            reported_known: known > 0,
        }))
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

    /// Uses a login challenge up: its seal goes into the used set until it
    /// expires. `false` when it was used already (another finish, on any
    /// replica, got there first).
    pub async fn consume_challenge_in(tx: &mut Tx, seal: &str, expires_at_ms: i64) -> Result<bool> {
        let n = sqlx::query(
            "INSERT INTO online_challenges_used (seal, expires_at_ms) VALUES ($1, $2) \
             ON CONFLICT (seal) DO NOTHING",
        )
        .bind(seal)
        .bind(expires_at_ms)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Counts one failed response; locks the credential and ends its
    /// sessions when the count reaches `limit`. In the caller's transaction,
    /// so two replicas counting at once both count and exactly one locks,
    /// and the lockout's other effects commit with the lock. A credential
    /// locked already counts nothing (`None`).
    pub async fn count_failure_in(
        tx: &mut Tx,
        issuer: &IssuerId,
        device: DeviceId,
        limit: u32,
        now: i64,
    ) -> Result<Option<Failure>> {
        let device = device.to_string();
        let row = sqlx::query(
            "INSERT INTO online_credentials (issuer_id, device_id, failures) \
             VALUES ($1, $2, 1) \
             ON CONFLICT (issuer_id, device_id) \
             DO UPDATE SET failures = online_credentials.failures + 1 \
             WHERE online_credentials.locked_at_ms IS NULL \
             RETURNING failures",
        )
        .bind(issuer.as_str())
        .bind(device.as_str())
        .fetch_optional(&mut **tx)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let count: i64 = row.try_get("failures")?;
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        let newly_locked = count >= limit;
        if newly_locked {
            sqlx::query(
                "UPDATE online_credentials SET locked_at_ms = $3 \
                 WHERE issuer_id = $1 AND device_id = $2",
            )
            .bind(issuer.as_str())
            .bind(device.as_str())
            .bind(now)
            .execute(&mut **tx)
            .await?;
            sqlx::query("DELETE FROM online_sessions WHERE issuer_id = $1 AND device_id = $2")
                .bind(issuer.as_str())
                .bind(device.as_str())
                .execute(&mut **tx)
                .await?;
        }
        Ok(Some(Failure {
            count,
            newly_locked,
        }))
    }

    /// Notes which certificate a lockout revoked (so an unlock knows the
    /// device needs a new one), in the lockout's transaction.
    pub async fn set_revoked_serial_in(
        tx: &mut Tx,
        issuer: &IssuerId,
        device: DeviceId,
        serial: &str,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE online_credentials SET revoked_serial = $3 \
             WHERE issuer_id = $1 AND device_id = $2",
        )
        .bind(issuer.as_str())
        .bind(device.to_string())
        .bind(serial)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// A successful login: the failure count back to 0 and the session
    /// stored — unless the credential was locked meanwhile (another replica
    /// counted the last failure), in which case nothing is written and
    /// [`Opening::Locked`] says so. The count is written only when there is
    /// one to reset, so a steady-state login writes the session row alone.
    /// `cleared_rotation_before`: an operator's rotation request made
    /// before then is served (cleared). Returns the device's active
    /// working-key version as this transaction sees it.
    pub async fn open_session_in(
        tx: &mut Tx,
        f: &Finish,
        cleared_rotation_before: Option<i64>,
    ) -> Result<Opening> {
        let session = &f.session;
        let standing = Self::standing_in(tx, &[f]).await?;
        let s = standing.get(&session.credential_key());
        if s.is_some_and(|s| s.locked) {
            return Ok(Opening::Locked);
        }
        if s.and_then(|s| s.failures) != Some(0) || cleared_rotation_before.is_some() {
            Self::reset_failures_in(tx, session).await?;
        }
        if let Some(at) = cleared_rotation_before {
            sqlx::query(
                "UPDATE online_credentials SET rotate_requested_at_ms = NULL \
                 WHERE issuer_id = $1 AND device_id = $2 AND rotate_requested_at_ms <= $3",
            )
            .bind(session.issuer.as_str())
            .bind(session.device.to_string())
            .bind(at)
            .execute(&mut **tx)
            .await?;
        }
        Self::store_sessions_in(tx, &[f]).await?;
        Ok(Opening::Opened {
            active: s.and_then(|s| s.active),
        })
    }

    /// The certificates lockouts named for revocation, of credentials still
    /// locked, that the CA does not hold revoked (or holds under another
    /// spelling of the serial: the caller asks the CA): the work
    /// `Online::finish_lockouts` has left, usually none.
    pub async fn lockout_serials(&self) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT DISTINCT o.revoked_serial FROM online_credentials o \
             LEFT JOIN certificates c ON c.serial = o.revoked_serial \
             WHERE o.locked_at_ms IS NOT NULL AND o.revoked_serial IS NOT NULL \
               AND (c.status IS NULL OR c.status <> 'revoked')",
        )
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get("revoked_serial"))
            .collect::<std::result::Result<_, _>>()?)
    }

    /// An operator's unlock, in the caller's transaction: count to 0, lock
    /// and revoked serial cleared. Returns the credential as it was, `None`
    /// if it was not locked (nothing written).
    pub async fn unlock_in(
        tx: &mut Tx,
        issuer: &IssuerId,
        device: DeviceId,
    ) -> Result<Option<Credential>> {
        let device = device.to_string();
        let row = sqlx::query(
            "SELECT failures, locked_at_ms, revoked_serial, rotate_requested_at_ms, \
             last_login_at_ms FROM online_credentials \
             WHERE issuer_id = $1 AND device_id = $2",
        )
        .bind(issuer.as_str())
        .bind(device.as_str())
        .fetch_optional(&mut **tx)
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
        .execute(&mut **tx)
        .await?;
        Ok(Some(before))
    }

    // ---- transaction MAC failures ------------------------------------------

    /// One more consecutive MAC failure of a credential; the new streak.
    pub async fn record_mac_failure(&self, issuer: &IssuerId, device: DeviceId) -> Result<u32> {
        let device = &device.to_string();
        self.db
            .write("online.mac_failure", |mut tx| async move {
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
                let n: i64 = row.try_get("mac_failures")?;
                Ok((tx, u32::try_from(n).unwrap_or(u32::MAX)))
            })
            .await
    }

    /// A valid MAC ends a failure streak. Read first, so the common case (no
    /// streak) opens no write transaction at all.
    pub async fn clear_mac_failures(&self, issuer: &IssuerId, device: DeviceId) -> Result<()> {
        let device = &device.to_string();
        let streak = sqlx::query(
            "SELECT 1 FROM online_credentials \
             WHERE issuer_id = $1 AND device_id = $2 AND mac_failures > 0",
        )
        .bind(issuer.as_str())
        .bind(device.as_str())
        .fetch_optional(self.db.pool())
        .await?;
        if streak.is_none() {
            return Ok(());
        }
        self.db
            .write("online.mac_failures_clear", |mut tx| async move {
                sqlx::query(
                    "UPDATE online_credentials SET mac_failures = 0 \
                     WHERE issuer_id = $1 AND device_id = $2 AND mac_failures > 0",
                )
                .bind(issuer.as_str())
                .bind(device.as_str())
                .execute(&mut *tx)
                .await?;
                Ok((tx, ()))
            })
            .await
    }

    // ---- sessions --------------------------------------------------------

    /// A session by its token's hash, with whether its credential is locked
    /// now: one read for the check every session-bound call makes.
    pub async fn session(&self, token_hash: &str) -> Result<Option<StoredSession>> {
        let row = sqlx::query(
            "SELECT s.device_id, s.issuer_id, s.cert_serial, s.created_at_ms, s.expires_at_ms, \
             c.locked_at_ms FROM online_sessions s LEFT JOIN online_credentials c \
             ON c.issuer_id = s.issuer_id AND c.device_id = s.device_id \
             WHERE s.token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(self.db.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let locked: Option<i64> = row.try_get("locked_at_ms")?;
        Ok(Some(StoredSession {
            device: db::parse_col(&row, "device_id", "online_sessions.device_id")?,
            issuer: db::parse_col(&row, "issuer_id", "online_sessions.issuer_id")?,
            cert_serial: row.try_get("cert_serial")?,
            created_at_ms: row.try_get("created_at_ms")?,
            expires_at_ms: row.try_get("expires_at_ms")?,
            locked: locked.is_some(),
        }))
    }

    /// Ends one session (logout); whether it existed.
    pub async fn end_session(&self, token_hash: &str) -> Result<bool> {
        self.db
            .write("online.logout", |mut tx| async move {
                let n = sqlx::query("DELETE FROM online_sessions WHERE token_hash = $1")
                    .bind(token_hash)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                Ok((tx, n > 0))
            })
            .await
    }

    /// Deletes expired sessions and the seals of expired challenges; returns
    /// how many of each.
    pub async fn purge_expired(&self, now: i64) -> Result<(u64, u64)> {
        self.db
            .write("online.purge", |mut tx| async move {
                let sessions = sqlx::query("DELETE FROM online_sessions WHERE expires_at_ms <= $1")
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                let seals =
                    sqlx::query("DELETE FROM online_challenges_used WHERE expires_at_ms <= $1")
                        .bind(now)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                Ok((tx, (sessions, seals)))
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

    /// An operator asked for new keys for one device at its next login, in
    /// the caller's transaction.
    pub async fn request_rotation_in(
        tx: &mut Tx,
        issuer: &IssuerId,
        device: DeviceId,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO online_credentials (issuer_id, device_id, rotate_requested_at_ms) \
             VALUES ($1, $2, $3) ON CONFLICT (issuer_id, device_id) \
             DO UPDATE SET rotate_requested_at_ms = $3",
        )
        .bind(issuer.as_str())
        .bind(device.to_string())
        .bind(now)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// An operator asked for new keys for every device of the issuer: one
    /// row, read by each device's next login (no storm of HSM jobs); in the
    /// caller's transaction.
    pub async fn request_fleet_rotation_in(
        tx: &mut Tx,
        issuer: &IssuerId,
        now: i64,
        by: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO online_fleet_rotations (issuer_id, requested_at_ms, requested_by) \
             VALUES ($1, $2, $3) ON CONFLICT (issuer_id) \
             DO UPDATE SET requested_at_ms = $2, requested_by = $3",
        )
        .bind(issuer.as_str())
        .bind(now)
        .bind(by)
        .execute(&mut **tx)
        .await?;
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_across_rows() {
        assert_eq!(value_rows(2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(value_list(2), "$1, $2");
        assert_eq!(value_list_from(2, 3), "$2, $3, $4");
    }

    fn finish(device: &str, seal: u8, n: u8, created_at_ms: i64) -> Finish {
        Finish {
            seal: hex::encode([seal; 16]),
            seal_expires_at_ms: i64::MAX,
            token_hash: hex::encode([n; 32]),
            session: StoredSession {
                device: device.parse().unwrap(),
                issuer: "bank-a".parse().unwrap(),
                cert_serial: "01".into(),
                created_at_ms,
                expires_at_ms: i64::MAX,
                locked: false,
            },
            max_sessions: 2,
        }
    }

    /// One group: a seal twice (its first finish only), a seal used by an
    /// earlier group, a locked credential (its seal used up, no session),
    /// a first login (its credential row made), a count reset, and each
    /// credential left with its newest sessions up to the limit.
    #[tokio::test]
    async fn a_group_of_finishes_settles_each_finish_on_its_own() {
        let (_dir, db) = crate::migrate::test_database().await;
        let (ok, locked, new, counted) = (
            "A000000000000001",
            "A000000000000002",
            "A000000000000003",
            "A000000000000004",
        );
        for (device, failures, locked_at) in
            [(ok, 0, None), (locked, 10, Some(1)), (counted, 3, None)]
        {
            sqlx::query(
                "INSERT INTO online_credentials (issuer_id, device_id, failures, locked_at_ms) \
                 VALUES ('bank-a', $1, $2, $3)",
            )
            .bind(device)
            .bind(failures)
            .bind(locked_at)
            .execute(db.pool())
            .await
            .unwrap();
        }
        let write = |group: Vec<Finish>| {
            let db = db.clone();
            async move {
                let group = &group;
                db.write("test", |mut tx| async move {
                    let out = OnlineStore::finish_group_in(&mut tx, group).await?;
                    Ok::<_, OnlineError>((tx, out))
                })
                .await
                .unwrap()
            }
        };
        assert_eq!(
            write(vec![finish(ok, 0, 0, 1)]).await,
            [Finished::Opened { active: None }]
        );
        let out = write(vec![
            finish(ok, 1, 1, 2),
            finish(ok, 1, 2, 2),
            finish(ok, 0, 3, 2),
            finish(locked, 2, 4, 2),
            finish(new, 3, 5, 2),
            finish(counted, 4, 6, 2),
            finish(ok, 5, 7, 3),
        ])
        .await;
        use Finished::*;
        let opened = Opened { active: None };
        assert_eq!(
            out,
            [
                opened,
                ChallengeUsed,
                ChallengeUsed,
                Locked,
                opened,
                opened,
                opened
            ]
        );
        let used: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM online_challenges_used")
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert_eq!(used, 6, "s0 to s5, the locked credential's too");
        let sessions: Vec<(String, String)> = sqlx::query_as(
            "SELECT device_id, token_hash FROM online_sessions ORDER BY device_id, created_at_ms",
        )
        .fetch_all(db.pool())
        .await
        .unwrap();
        let of = |d: &str| sessions.iter().filter(|(x, _)| x == d).count();
        assert_eq!((of(ok), of(locked), of(new), of(counted)), (2, 0, 1, 1));
        assert!(
            !sessions.iter().any(|(_, t)| *t == hex::encode([0u8; 32])),
            "the oldest of three sessions ended"
        );
        let failures: Vec<(String, i64)> =
            sqlx::query_as("SELECT device_id, failures FROM online_credentials ORDER BY device_id")
                .fetch_all(db.pool())
                .await
                .unwrap();
        assert_eq!(
            failures,
            [
                (ok.into(), 0),
                (locked.into(), 10),
                (new.into(), 0),
                (counted.into(), 0)
            ]
        );
    }
}
