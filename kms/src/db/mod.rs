//! Database plumbing shared by every crate that keeps tables in Keyward's one
//! database (kms's key catalog, the CA registry, provisioning, the server's
//! audit trail). It lives here, at the lowest layer that needs it, but outside
//! the key catalog: the catalog is one user of it like the others.
//!
//! # Layout
//! - [`Database`]: the connection pool and its backend, opened once per
//!   process and shared by every store.
//! - `tx`: the unit of work, [`Database::write`]: one write transaction,
//!   committed whole, retried whole on a lost race. Stores offer their writes
//!   as `…_in(&mut tx, …)` functions so one step's rows in several stores
//!   commit together.
//! - `migrate`: [`EmbeddedMigrations`], one crate's migrations for both
//!   backends, sharing sqlx's `_sqlx_migrations` table in disjoint version
//!   ranges.
//! - `column`: reading text columns back into domain types ([`parse_col`],
//!   [`parse_opt`], [`int_col`], [`ColumnError`]).
//! - `error`: what a database error means for the caller ([`error_kind`],
//!   [`error_code`]): away or saturated is `Unavailable` (503), the rest 500.
//! - [`now_ms`]: the one wall clock every stored timestamp is written with.
//!
//! The rule: **HSM work happens before the write transaction opens; a
//! protocol step's rows, its audit record's effect and its outbox row commit
//! in one transaction; no transaction is held across an HSM call.**
//!
//! Must not: know any crate's tables; hold a transaction across an HSM call.

mod column;
mod error;
mod group;
mod migrate;
mod tx;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use keyward_config::{DatabaseConfig, DatabaseKind};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Connection, Row};

pub use column::{ColumnError, int_col, parse_col, parse_opt};
pub use error::{ERROR_CODE, UNAVAILABLE_CODE, error_code, error_kind};
pub use migrate::{Embedded, EmbeddedMigrations};
pub use tx::{MAX_ATTEMPTS, Retry, Tx, TxError, begin_write, is_serialization_failure, kind_of};

/// The shared database: one connection pool and the backend it speaks to.
/// Cheap to clone; clones share the pool.
#[derive(Debug, Clone)]
pub struct Database {
    pool: AnyPool,
    kind: DatabaseKind,
    /// SQLite takes one writer at a time: this process's writers queue
    /// here, holding no pool connection, instead of inside the pool where
    /// a queue of writers would leave no connection for readers. On
    /// PostgreSQL the retries of [`Database::write_in_turn`] queue here.
    writer: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// SQLite's open group of units of work (`group`).
    groups: std::sync::Arc<group::Groups>,
    /// How long a writer waits for its turn (`database.acquire_timeout_ms`,
    /// as SQLite's own busy timeout): then it is a 503, not a hang.
    wait: std::time::Duration,
}

impl Database {
    /// Connects (no migrations: each owner runs its own). For SQLite the file
    /// and its directory are created when missing and the journal is switched
    /// to WAL (readers do not block the writer).
    pub async fn connect(cfg: &DatabaseConfig) -> Result<Self, sqlx::Error> {
        sqlx::any::install_default_drivers();
        let kind = cfg.kind();
        let url = match kind {
            DatabaseKind::Sqlite => prepare_sqlite(&cfg.url).await?,
            DatabaseKind::Postgres => cfg.url.clone(),
        };
        let wait = cfg.acquire_timeout_ms.max(1);
        let pool = AnyPoolOptions::new()
            .max_connections(cfg.max_connections.max(1))
            // Bounds getting a connection, including opening one: a database
            // that is away is a fast 503, not a request timeout.
            .acquire_timeout(std::time::Duration::from_millis(wait))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if kind == DatabaseKind::Sqlite {
                        // Per-connection settings; sqlx's defaults agree today,
                        // this keeps them true if those defaults change.
                        sqlx::query("PRAGMA foreign_keys = ON")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA synchronous = FULL")
                            .execute(&mut *conn)
                            .await?;
                        // A writer waits this long for the write lock, then
                        // SQLITE_BUSY (503 database_unavailable).
                        // `wait` is a number from the config, not text.
                        sqlx::query(sqlx::AssertSqlSafe(format!("PRAGMA busy_timeout = {wait}")))
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        Ok(Self {
            pool,
            kind,
            writer: std::sync::Arc::default(),
            groups: std::sync::Arc::default(),
            wait: std::time::Duration::from_millis(wait),
        })
    }

    /// The connection pool, for stores' queries.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Which backend this is, for SQL that differs and for reports.
    pub fn kind(&self) -> DatabaseKind {
        self.kind
    }

    /// Readiness: the database answers a query.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// [`is_serialization_failure`] for this database's backend.
    pub fn is_serialization_failure(&self, e: &sqlx::Error) -> bool {
        is_serialization_failure(self.kind, e)
    }

    /// Applies `migrations` for this backend; a second run changes nothing.
    pub async fn migrate(
        &self,
        migrations: &EmbeddedMigrations,
    ) -> Result<(), sqlx::migrate::MigrateError> {
        migrations.run(&self.pool, self.kind).await
    }
}

/// Wall-clock unix milliseconds: what every stored timestamp is written with
/// and compared against, also by other processes sharing the database. A
/// clock before 1970 reads 0; one past the year 292 million saturates.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A file or directory holding catalog data (national ids, contacts, key
/// metadata) that other users of the machine may read: start-up refuses it.
#[derive(Debug, thiserror::Error)]
#[error(
    "{} is accessible to other users (mode {mode:03o}); fix it with `chmod {fix} {}` \
     (Keyward creates it {fix})",
    path.display(),
    path.display()
)]
pub struct InsecurePermissions {
    pub path: std::path::PathBuf,
    pub mode: u32,
    pub fix: &'static str,
}

/// Creates `dir` (and missing parents) readable by the owner only (0700).
/// An existing directory is left as it is.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
}

/// Creates `file` empty with mode 0600 unless it exists (SQLite then opens
/// it, and gives its `-wal` and `-shm` files the same mode).
fn create_private_file(file: &Path) -> std::io::Result<()> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    match o.open(file) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Refuses ([`InsecurePermissions`], naming the path and the `chmod` that
/// fixes it) a catalog file or data directory that other users may read,
/// write or enter. A path that does not exist passes.
pub fn refuse_shared(path: &Path, is_dir: bool) -> Result<(), InsecurePermissions> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let Ok(meta) = std::fs::metadata(path) else {
            return Ok(());
        };
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o007 != 0 {
            return Err(InsecurePermissions {
                path: path.to_owned(),
                mode,
                fix: if is_dir { "700" } else { "600" },
            });
        }
    }
    #[cfg(not(unix))]
    let _ = (path, is_dir);
    Ok(())
}

/// Makes a SQLite URL ready to open: creates the file's directory (0700) and
/// the file (0600), refuses a file other users may read ([`refuse_shared`]),
/// asks for the file to be created (`mode=rwc`) unless the URL chose a mode,
/// and turns on WAL once (it is a property of the file, not of a connection).
async fn prepare_sqlite(url: &str) -> Result<String, sqlx::Error> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    let param = |name: &str| {
        query.and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
        })
    };
    let mode = param("mode");
    if path.is_empty() || path == ":memory:" || mode == Some("memory") {
        return Ok(url.to_owned());
    }
    if let Some(dir) = Path::new(path).parent()
        && !dir.as_os_str().is_empty()
    {
        create_private_dir(dir).map_err(|e| {
            sqlx::Error::Configuration(
                format!(
                    "cannot create directory {} for the catalog: {e}",
                    dir.display()
                )
                .into(),
            )
        })?;
    }
    if mode != Some("ro") {
        create_private_file(Path::new(path)).map_err(|e| {
            sqlx::Error::Configuration(format!("cannot create the catalog file {path}: {e}").into())
        })?;
    }
    refuse_shared(Path::new(path), false).map_err(|e| sqlx::Error::Configuration(Box::new(e)))?;
    let url = match (mode, query) {
        (Some(_), _) => url.to_owned(),
        (None, Some(_)) => format!("{url}&mode=rwc"),
        (None, None) => format!("{url}?mode=rwc"),
    };
    if mode != Some("ro") {
        let mut conn = sqlx::AnyConnection::connect(&url).await?;
        let row = sqlx::query("PRAGMA journal_mode = WAL")
            .fetch_one(&mut conn)
            .await?;
        let journal: String = row.try_get(0)?;
        if !journal.eq_ignore_ascii_case("wal") {
            tracing::warn!(journal = %journal, "SQLite refused WAL journaling; writers will block readers");
        }
        conn.close().await?;
    }
    Ok(url)
}
