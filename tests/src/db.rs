//! A fresh catalog database for each test.
//!
//! With `KEYWARD_TEST_DATABASE_URL` set (a `postgres://` URL) each test gets its
//! own schema `kwt_<random>` in that database, selected through the
//! connection's `search_path`, so tests run in parallel without seeing each
//! other's rows and need no CREATE DATABASE right. Without it each test gets a
//! SQLite file in its own temp dir. Either is removed when the [`TestDb`] is
//! dropped (a schema left by a killed run can be found by its `kwt_` prefix).

use anyhow::{Context, Result, bail};
use keyward_config::{DatabaseConfig, DatabaseKind};
use keyward_kms::catalog::Catalog;
use sqlx::{AssertSqlSafe, Connection};

/// Tests wait longer for SQLite's write lock than the service default
/// (`database.acquire_timeout_ms`, 1.5 s): two test processes share the 2
/// cores of a CI machine, and a slow test must not turn into a 503.
pub const TEST_ACQUIRE_TIMEOUT_MS: u64 = 5000;

/// Environment variable naming the PostgreSQL database tests may use.
pub const TEST_DATABASE_URL_ENV: &str = "KEYWARD_TEST_DATABASE_URL";

/// A test database that exists for the life of the value.
#[derive(Debug)]
pub struct TestDb {
    /// What to hand to [`Catalog::connect`] (or to a whole server config).
    pub config: DatabaseConfig,
    cleanup: Cleanup,
}

#[derive(Debug)]
enum Cleanup {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres { admin_url: String, schema: String },
}

impl TestDb {
    pub fn kind(&self) -> DatabaseKind {
        self.config.kind()
    }

    /// A catalog on this database (connected and migrated).
    pub async fn catalog(&self) -> Result<Catalog> {
        Catalog::connect(&self.config)
            .await
            .context("connecting the catalog to the test database")
    }
}

/// A fresh, empty database: PostgreSQL if `KEYWARD_TEST_DATABASE_URL` is set,
/// else SQLite. The schema is created by [`Catalog::connect`].
pub async fn test_database() -> Result<TestDb> {
    match std::env::var(TEST_DATABASE_URL_ENV) {
        Ok(url) if !url.trim().is_empty() => postgres(url.trim()).await,
        _ => sqlite(),
    }
}

/// A fresh SQLite file in its own temp dir.
pub fn sqlite() -> Result<TestDb> {
    let dir = tempfile::Builder::new().prefix("keyward-db-").tempdir()?;
    // A directory that does not exist yet: the catalog must create it.
    let path = dir.path().join("var").join("keyward.db");
    Ok(TestDb {
        config: DatabaseConfig {
            url: format!("sqlite://{}", path.display()),
            max_connections: 4,
            acquire_timeout_ms: TEST_ACQUIRE_TIMEOUT_MS,
        },
        cleanup: Cleanup::Sqlite(dir),
    })
}

/// A fresh schema in the PostgreSQL database `admin_url` (see the module).
pub async fn postgres(admin_url: &str) -> Result<TestDb> {
    if !(admin_url.starts_with("postgres://") || admin_url.starts_with("postgresql://")) {
        bail!("{TEST_DATABASE_URL_ENV} must be a postgres:// URL");
    }
    let schema = format!("kwt_{:016x}", rand::random::<u64>());
    let mut conn = sqlx::PgConnection::connect(admin_url)
        .await
        .with_context(|| {
            format!("connecting to {TEST_DATABASE_URL_ENV} (is PostgreSQL running?)")
        })?;
    sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut conn)
        .await
        .with_context(|| format!("creating test schema {schema}"))?;
    conn.close().await?;
    // `options=-c search_path=<schema>`: every pooled connection (and sqlx's
    // migration table) lives in the test's own schema.
    let sep = if admin_url.contains('?') { '&' } else { '?' };
    let url = format!("{admin_url}{sep}options=-c%20search_path%3D{schema}");
    Ok(TestDb {
        config: DatabaseConfig {
            url,
            max_connections: 4,
            acquire_timeout_ms: TEST_ACQUIRE_TIMEOUT_MS,
        },
        cleanup: Cleanup::Postgres {
            admin_url: admin_url.to_owned(),
            schema,
        },
    })
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Cleanup::Postgres { admin_url, schema } = &self.cleanup else {
            return; // the TempDir removes the SQLite files
        };
        let (admin_url, schema) = (admin_url.clone(), schema.clone());
        // Drop may run inside the test's runtime, which must not be blocked
        // on; a short-lived thread with its own runtime does the work.
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&admin_url).await?;
                sqlx::query("SET lock_timeout = '10s'")
                    .execute(&mut conn)
                    .await?;
                sqlx::query(AssertSqlSafe(format!(
                    "DROP SCHEMA IF EXISTS {schema} CASCADE"
                )))
                .execute(&mut conn)
                .await?;
                conn.close().await?;
                anyhow::Ok(())
            })
        })
        .join();
        if !matches!(done, Ok(Ok(()))) {
            eprintln!("warning: could not drop test schema (left behind, prefix kwt_)");
        }
    }
}
