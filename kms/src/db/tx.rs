//! Write transactions shared by every crate that keeps tables in the shared
//! database (kms, CA, provisioning, server): the one unit of work
//! ([`Database::write`]), how it begins on each backend, and how it is retried
//! when it lost a race.
//!
//! The rule this enforces, for every protocol step: **HSM work happens before
//! the write transaction opens; a step's rows, its audit record's effect and
//! its outbox row commit in one transaction; no transaction is held across an
//! HSM call.** A store offers each write as a function over a caller's
//! transaction (`…_in(&mut tx, …)`), so a step that touches several stores
//! commits them together; the unit of work only begins, retries and commits.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keyward_config::DatabaseKind;
use sqlx::AnyPool;

use super::Database;
use super::group::Grouped;
pub use super::group::Tx;

/// Attempts of a transaction that keeps losing races.
pub const MAX_ATTEMPTS: u32 = 12;

/// The longest wait between two attempts: twelve attempts wait at most
/// about 1.5 s in all, about half that on average.
const MAX_BACKOFF: Duration = Duration::from_millis(250);

/// An error a unit of work can end with: it wraps database errors, and says
/// which one it carries so a lost race is retried.
pub trait TxError: From<sqlx::Error> {
    /// The database error inside, if this is one.
    fn database_error(&self) -> Option<&sqlx::Error>;
}

impl TxError for sqlx::Error {
    fn database_error(&self) -> Option<&sqlx::Error> {
        Some(self)
    }
}

/// Which failures mean "lost a race, run the whole unit again".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// PostgreSQL serialization failures and deadlocks.
    LostRaces,
    /// Those, and unique violations too: for a unit that reads a maximum and
    /// inserts the next value, where a concurrent twin inserting it first is a
    /// lost race, not bad input.
    LostRacesAndUniqueViolations,
}

impl Database {
    /// The unit of work: begins a write transaction ([`begin_write`]), runs
    /// `op` in it, commits what `op` hands back, and runs the whole again
    /// (exponential backoff with jitter, at most [`MAX_ATTEMPTS`]) when it lost a race
    /// on PostgreSQL. An error from `op` rolls everything back. `what` names
    /// the unit in logs.
    ///
    /// `op` owns the transaction and returns it with its value
    /// (`Ok((tx, value))`), so it can borrow the caller's data freely.
    pub async fn write<T, E, F, Fut>(&self, what: &'static str, op: F) -> Result<T, E>
    where
        E: TxError,
        F: FnMut(Tx) -> Fut,
        Fut: Future<Output = Result<(Tx, T), E>>,
    {
        self.write_with(what, Retry::LostRaces, op).await
    }

    /// [`Database::write`] with the retry rule spelled out.
    pub async fn write_with<T, E, F, Fut>(
        &self,
        what: &'static str,
        retry: Retry,
        op: F,
    ) -> Result<T, E>
    where
        E: TxError,
        F: FnMut(Tx) -> Fut,
        Fut: Future<Output = Result<(Tx, T), E>>,
    {
        self.unit(what, retry, None, op).await
    }

    /// [`Database::write`] for units that all read and write one hot
    /// balance (every load books to the float): on PostgreSQL a unit that
    /// lost a race runs again in its turn on `table` (`LOCK TABLE … IN
    /// SHARE ROW EXCLUSIVE MODE`, before any read, so the serializable
    /// snapshot is taken after the turn). Uncontended units run side by
    /// side; contended ones queue instead of aborting one another until
    /// their attempts run out. Plain reads of the table go on. SQLite's
    /// writers take turns anyway.
    pub async fn write_in_turn<T, E, F, Fut>(
        &self,
        what: &'static str,
        table: &'static str,
        op: F,
    ) -> Result<T, E>
    where
        E: TxError,
        F: FnMut(Tx) -> Fut,
        Fut: Future<Output = Result<(Tx, T), E>>,
    {
        self.unit(what, Retry::LostRaces, Some(table), op).await
    }

    /// One write statement as a unit of work of its own, for a statement
    /// that carries its whole condition: `make` builds it (again, for a
    /// retry). Returns the rows it affected.
    pub async fn execute<'q, F>(&self, what: &'static str, mut make: F) -> Result<u64, sqlx::Error>
    where
        F: FnMut() -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    {
        self.write(what, |mut tx| {
            let statement = make();
            async move {
                let n = statement.execute(&mut *tx).await?.rows_affected();
                Ok((tx, n))
            }
        })
        .await
    }

    async fn unit<T, E, F, Fut>(
        &self,
        what: &'static str,
        retry: Retry,
        turn: Option<&'static str>,
        mut op: F,
    ) -> Result<T, E>
    where
        E: TxError,
        F: FnMut(Tx) -> Fut,
        Fut: Future<Output = Result<(Tx, T), E>>,
    {
        let mut attempt = 1;
        loop {
            let result = if self.kind == DatabaseKind::Sqlite {
                match self.writer_turn_open().await {
                    Err(e) => Err(e.into()),
                    Ok(turn) => match self.grouped(turn, &mut op).await {
                        Grouped::Done(result) => result,
                        Grouped::Again if attempt < MAX_ATTEMPTS => {
                            tracing::debug!(attempt, what, "group commit failed; running again");
                            attempt += 1;
                            continue;
                        }
                        Grouped::Again => Err(sqlx::Error::Io(std::io::Error::other(
                            "the write transaction's group kept failing to commit",
                        ))
                        .into()),
                    },
                }
            } else {
                self.attempt(turn.filter(|_| attempt > 1), &mut op).await
            };
            match result {
                Err(e) if attempt < MAX_ATTEMPTS && self.lost_race(&e, retry) => {
                    tracing::debug!(attempt, what, "transaction lost a race; retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// One PostgreSQL attempt of a unit: its own serializable transaction,
    /// after a turn on `table` when it is a retry in turn.
    async fn attempt<T, E, F, Fut>(&self, table: Option<&'static str>, op: &mut F) -> Result<T, E>
    where
        E: TxError,
        F: FnMut(Tx) -> Fut,
        Fut: Future<Output = Result<(Tx, T), E>>,
    {
        // A retry in turn queues in this process first (holding no
        // connection, so the queue never drains the pool), then on the
        // table across replicas.
        let _in_turn = match table {
            Some(_) => Some(self.writer.lock().await),
            None => None,
        };
        let mut tx = begin_write(&self.pool, self.kind).await?;
        if let Some(table) = table {
            // `table` is a constant of the caller's, not input.
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE"
            )))
            .execute(&mut *tx)
            .await?;
        }
        let (tx, value) = op(tx).await?;
        tx.commit().await?;
        Ok(value)
    }

    /// On SQLite, this process's turn to write, to hold while a write
    /// transaction of the caller's own is open (the open group committed
    /// first): writers queue here, holding no pool connection, instead of
    /// inside the pool where a queue of writers would leave no connection
    /// for readers. Bounded by `acquire_timeout_ms` (then
    /// [`sqlx::Error::PoolTimedOut`], a 503). PostgreSQL needs no turn.
    pub async fn writer_turn(
        &self,
    ) -> Result<Option<tokio::sync::MutexGuard<'_, ()>>, sqlx::Error> {
        match self.kind {
            DatabaseKind::Sqlite => {
                let turn = self.writer_turn_open().await?;
                self.close_group(None).await;
                Ok(Some(turn))
            }
            DatabaseKind::Postgres => Ok(None),
        }
    }

    /// The writer's turn on SQLite, with the open group left open.
    async fn writer_turn_open(&self) -> Result<tokio::sync::MutexGuard<'_, ()>, sqlx::Error> {
        tokio::time::timeout(self.wait, self.writer.lock())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)
    }

    fn lost_race<E: TxError>(&self, e: &E, retry: Retry) -> bool {
        let Some(err) = e.database_error() else {
            return false;
        };
        is_serialization_failure(self.kind, err)
            || (retry == Retry::LostRacesAndUniqueViolations
                && self.kind == DatabaseKind::Postgres
                && matches!(err, sqlx::Error::Database(db) if db.is_unique_violation()))
    }
}

/// A write transaction that cannot deadlock on lock upgrades (SQLite:
/// `BEGIN IMMEDIATE` takes the write lock up front) and sees a serial order
/// (PostgreSQL: SERIALIZABLE, retried by [`Database::write`]).
pub async fn begin_write(pool: &AnyPool, kind: DatabaseKind) -> Result<Tx, sqlx::Error> {
    Ok(match kind {
        DatabaseKind::Sqlite => pool.begin_with("BEGIN IMMEDIATE").await?,
        DatabaseKind::Postgres => {
            pool.begin_with("BEGIN ISOLATION LEVEL SERIALIZABLE")
                .await?
        }
    }
    .into())
}

/// The backend `tx` runs on: a store's `…_in` function has the caller's
/// transaction, not its [`Database`], and some SQL differs by backend.
pub fn kind_of(tx: &Tx) -> DatabaseKind {
    if tx.backend_name() == <sqlx::Postgres as sqlx::Database>::NAME {
        DatabaseKind::Postgres
    } else {
        DatabaseKind::Sqlite
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

/// Exponential backoff with full jitter (0 to 2^attempt ms, capped at
/// [`MAX_BACKOFF`]): writers that collided on a hot row (the float account
/// every load posts to) spread out instead of colliding again in step.
fn backoff(attempt: u32) -> Duration {
    let ceiling = Duration::from_millis(1u64 << attempt.min(16)).min(MAX_BACKOFF);
    let jitter = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| f64::from(d.subsec_nanos() % 1_000_000) / 1_000_000.0)
        .unwrap_or(0.5);
    ceiling.mul_f64(jitter.max(0.1))
}
