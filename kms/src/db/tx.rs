//! Write transactions shared by every crate that keeps tables in the shared
//! database (kms, CA, provisioning, server): how to begin one on each backend,
//! and how to retry one that lost a race.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keyward_config::DatabaseKind;
use sqlx::{Any, AnyPool, Transaction};

/// Attempts of a PostgreSQL transaction that keeps losing serialization races.
pub const MAX_ATTEMPTS: u32 = 8;

/// A write transaction that cannot deadlock on lock upgrades (SQLite:
/// `BEGIN IMMEDIATE` takes the write lock up front) and sees a serial order
/// (PostgreSQL: SERIALIZABLE, retried with [`retrying`]).
pub async fn begin_write(
    pool: &AnyPool,
    kind: DatabaseKind,
) -> Result<Transaction<'static, Any>, sqlx::Error> {
    match kind {
        DatabaseKind::Sqlite => pool.begin_with("BEGIN IMMEDIATE").await,
        DatabaseKind::Postgres => pool.begin_with("BEGIN ISOLATION LEVEL SERIALIZABLE").await,
    }
}

/// PostgreSQL's "try again" answers: serialization failure and deadlock.
/// SQLite writers are serialised by `BEGIN IMMEDIATE`, so it has none.
pub fn is_serialization_failure(kind: DatabaseKind, e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    kind == DatabaseKind::Postgres && matches!(db.code().as_deref(), Some("40001" | "40P01"))
}

/// Runs `op` (one whole transaction) again, with a short jittered backoff,
/// while `is_race` says its error was a lost race; at most [`MAX_ATTEMPTS`].
pub async fn retrying<T, E, F, Fut>(
    what: &'static str,
    is_race: impl Fn(&E) -> bool,
    mut op: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempt = 1;
    loop {
        match op().await {
            Err(e) if attempt < MAX_ATTEMPTS && is_race(&e) => {
                tracing::debug!(attempt, what, "transaction lost a race; retrying");
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

fn backoff(attempt: u32) -> Duration {
    let jitter = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos() % 4_000_000)
        .unwrap_or(0);
    Duration::from_millis(u64::from(attempt) * 2) + Duration::from_nanos(u64::from(jitter))
}
