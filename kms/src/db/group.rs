//! Group commit on SQLite: units of work that queue for the one writer run
//! one after another in **one** transaction, each under its own savepoint,
//! and commit together, so a burst of protocol steps pays one WAL sync
//! instead of one each (`synchronous = FULL` stays: every answer a unit
//! gives is durable before it is given).
//!
//! The rules that keep it a unit of work:
//! - a unit's writes are rolled back to its savepoint when it fails, or
//!   when its caller goes away mid-unit (its [`Tx`] goes back to the group
//!   on drop, and the next writer rolls it back before going on);
//! - a unit's caller gets its answer, value or error, only after the
//!   group committed (an error may rest on rows of the units before it,
//!   which a later read outside the group must see); a group whose commit
//!   (or a rollback to a savepoint) failed wrote nothing, and each of its
//!   units runs again in a new group;
//! - a group is committed by whichever of its units gets the writer's turn
//!   after its own unit ran (turns are first come, first served, so every
//!   unit queued behind it has joined by then), when it is full, or by a
//!   writer that needs the turn for a transaction of its own
//!   ([`Database::writer_turn`]); the commit runs in a task of its own, so a
//!   caller going away never cuts it short.
//!
//! PostgreSQL commits concurrent transactions side by side and syncs its
//! WAL for them together already: there each unit is its own transaction.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

use sqlx::{Any, AnyConnection, Transaction};
use tokio::sync::{MutexGuard, watch};

use super::Database;

/// Units in one group at most: a bound on the work one failure repeats.
const GROUP_MAX: usize = 64;

/// The savepoint each unit runs under.
const SAVEPOINT: &str = "SAVEPOINT keyward_unit";
const RELEASE: &str = "RELEASE SAVEPOINT keyward_unit";
const ROLLBACK: &str = "ROLLBACK TO SAVEPOINT keyward_unit";

/// A write transaction on the shared database, as a unit of work sees it:
/// the connection to run statements on (`&mut *tx`). Dropped without being
/// handed back, its writes are rolled back (the whole transaction, or in a
/// group the unit's savepoint).
pub struct Tx {
    inner: Option<Transaction<'static, Any>>,
    /// The group this unit runs in (and its id), where the transaction goes
    /// back on drop.
    group: Option<(Arc<Groups>, u64)>,
}

impl std::fmt::Debug for Tx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tx")
            .field("grouped", &self.group.is_some())
            .finish_non_exhaustive()
    }
}

impl From<Transaction<'static, Any>> for Tx {
    fn from(t: Transaction<'static, Any>) -> Self {
        Self {
            inner: Some(t),
            group: None,
        }
    }
}

impl Tx {
    /// Commits a transaction of its own (not a group's, which
    /// [`Database::write`] commits).
    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        if self.group.is_some() {
            return Err(gone());
        }
        self.inner.take().ok_or_else(gone)?.commit().await
    }

    /// Rolls back a transaction of its own.
    pub async fn rollback(mut self) -> Result<(), sqlx::Error> {
        if self.group.is_some() {
            return Err(gone());
        }
        self.inner.take().ok_or_else(gone)?.rollback().await
    }

    fn take(mut self) -> Option<Transaction<'static, Any>> {
        self.inner.take()
    }
}

/// A transaction already handed back: a bug, answered as an unavailable
/// database rather than a panic.
fn gone() -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::other("the write transaction is gone"))
}

impl Deref for Tx {
    type Target = AnyConnection;

    #[allow(clippy::expect_used)]
    fn deref(&self) -> &AnyConnection {
        // Only the consuming methods take it, so it is always here.
        self.inner.as_ref().expect("a live transaction")
    }
}

impl DerefMut for Tx {
    #[allow(clippy::expect_used)]
    fn deref_mut(&mut self) -> &mut AnyConnection {
        self.inner.as_mut().expect("a live transaction")
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        if let (Some(t), Some((groups, id))) = (self.inner.take(), &self.group) {
            groups.hand_back(t, *id);
        }
    }
}

/// How a group ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Committed,
    /// Nothing of it was written: its units run again.
    Failed,
}

/// The open group, if any (one per process: SQLite has one writer).
#[derive(Debug, Default)]
pub(super) struct Groups {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    open: Option<Open>,
}

#[derive(Debug)]
struct Open {
    id: u64,
    /// `None` while a unit runs in it.
    tx: Option<Transaction<'static, Any>>,
    /// The unit that ran last dropped the transaction (it failed, or its
    /// caller went away): its savepoint is to be rolled back.
    dropped: bool,
    units: usize,
    ended: Arc<watch::Sender<Option<Ended>>>,
}

/// What a unit run in a group came to.
pub(super) enum Grouped<T, E> {
    Done(Result<T, E>),
    /// The group failed: run the unit again.
    Again,
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Groups {
    fn hand_back(&self, t: Transaction<'static, Any>, id: u64) {
        let mut s = lock(&self.state);
        if let Some(open) = s.open.as_mut().filter(|o| o.id == id && o.tx.is_none()) {
            open.tx = Some(t);
            open.dropped = true;
        }
        // Otherwise its group is gone already: dropping rolls back.
    }
}

impl Database {
    /// Runs `op` as one unit in the open group (or a new one), holding the
    /// writer's turn `turn` while it runs; returns once the group ended.
    pub(super) async fn grouped<T, E, F, Fut>(
        &self,
        turn: MutexGuard<'_, ()>,
        op: &mut F,
    ) -> Grouped<T, E>
    where
        E: From<sqlx::Error>,
        F: FnMut(super::Tx) -> Fut,
        Fut: std::future::Future<Output = Result<(super::Tx, T), E>>,
    {
        let (tx, id, mut ended) = match self.join().await {
            Ok(joined) => joined,
            Err(e) => return Grouped::Done(Err(e.into())),
        };
        let mut tx = Tx {
            inner: Some(tx),
            group: Some((self.groups.clone(), id)),
        };
        if let Err(e) = sqlx::query(SAVEPOINT).execute(&mut *tx).await {
            drop(tx);
            self.fail_open(id);
            return Grouped::Done(Err(e.into()));
        }
        match op(tx).await {
            Ok((tx, value)) => {
                let mut t = tx.take();
                let released = match t.as_mut() {
                    Some(t) => sqlx::query(RELEASE).execute(&mut **t).await.map(|_| ()),
                    None => Err(gone()),
                };
                let full = match (t, released) {
                    (Some(t), Ok(())) => {
                        let mut s = lock(&self.groups.state);
                        match s.open.as_mut().filter(|o| o.id == id) {
                            Some(open) => {
                                open.tx = Some(t);
                                open.units += 1;
                                open.units >= GROUP_MAX
                            }
                            None => false,
                        }
                    }
                    _ => {
                        self.fail_open(id);
                        false
                    }
                };
                if full {
                    self.close_group(Some(id)).await;
                }
                drop(turn);
                match self.committed(id, &mut ended).await {
                    Ended::Committed => Grouped::Done(Ok(value)),
                    Ended::Failed => Grouped::Again,
                }
            }
            Err(e) => {
                // The unit's transaction went back to the group on drop.
                self.roll_back_dropped(id).await;
                drop(turn);
                // Its error may rest on rows of units before it in the group
                // (a pending offer, a spent ticket): answered once those are
                // committed, or run again if they never are.
                match self.committed(id, &mut ended).await {
                    Ended::Committed => Grouped::Done(Err(e)),
                    Ended::Failed => Grouped::Again,
                }
            }
        }
    }

    /// The open group's transaction (its last unit's savepoint rolled back
    /// if that unit dropped it), or a new group's.
    async fn join(
        &self,
    ) -> Result<
        (
            Transaction<'static, Any>,
            u64,
            watch::Receiver<Option<Ended>>,
        ),
        sqlx::Error,
    > {
        let open = {
            let mut s = lock(&self.groups.state);
            match s.open.as_mut() {
                Some(o) if o.tx.is_some() => Some((o.id, o.ended.subscribe())),
                Some(_) => {
                    // Its transaction never came back: nothing of it stays.
                    if let Some(o) = s.open.take() {
                        o.ended.send_replace(Some(Ended::Failed));
                    }
                    None
                }
                None => None,
            }
        };
        if let Some((id, ended)) = open {
            self.roll_back_dropped(id).await;
            let mut s = lock(&self.groups.state);
            if let Some(t) = s
                .open
                .as_mut()
                .filter(|o| o.id == id)
                .and_then(|o| o.tx.take())
            {
                return Ok((t, id, ended));
            }
        }
        let t = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let (send, ended) = watch::channel(None);
        let mut s = lock(&self.groups.state);
        s.next_id += 1;
        let id = s.next_id;
        if let Some(old) = s.open.replace(Open {
            id,
            tx: None,
            dropped: false,
            units: 0,
            ended: Arc::new(send),
        }) {
            old.ended.send_replace(Some(Ended::Failed));
        }
        Ok((t, id, ended))
    }

    /// If the last unit of group `id` dropped its transaction, rolls its
    /// savepoint back; a group that cannot is failed.
    async fn roll_back_dropped(&self, id: u64) {
        let taken = {
            let mut s = lock(&self.groups.state);
            match s.open.as_mut().filter(|o| o.id == id && o.dropped) {
                Some(o) => {
                    o.dropped = false;
                    o.tx.take()
                }
                None => return,
            }
        };
        let Some(mut t) = taken else {
            self.fail_open(id);
            return;
        };
        let undone = async {
            sqlx::query(ROLLBACK).execute(&mut *t).await?;
            sqlx::query(RELEASE).execute(&mut *t).await
        }
        .await;
        match undone {
            Ok(_) => {
                let mut s = lock(&self.groups.state);
                if let Some(o) = s.open.as_mut().filter(|o| o.id == id) {
                    o.tx = Some(t);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "a unit's savepoint did not roll back; its group runs again");
                self.fail_open(id);
            }
        }
    }

    /// Ends group `id` with nothing written, if it is still open.
    fn fail_open(&self, id: u64) {
        let mut s = lock(&self.groups.state);
        if s.open.as_ref().is_some_and(|o| o.id == id)
            && let Some(o) = s.open.take()
        {
            o.ended.send_replace(Some(Ended::Failed));
        }
    }

    /// Waits for group `id` to end, committing it if it is still open when
    /// this unit's turn comes round again.
    async fn committed(&self, id: u64, ended: &mut watch::Receiver<Option<Ended>>) -> Ended {
        loop {
            if let Some(e) = *ended.borrow_and_update() {
                return e;
            }
            tokio::select! {
                changed = ended.changed() => {
                    if changed.is_err() {
                        return ended.borrow().unwrap_or(Ended::Failed);
                    }
                }
                turn = self.writer.lock() => {
                    self.close_group(Some(id)).await;
                    drop(turn);
                }
            }
        }
    }

    /// Commits the open group if it is `id` (any group when `id` is
    /// `None`; a unit's savepoint it dropped rolled back first). The caller
    /// holds the writer's turn; the commit runs in a task of its own, so a
    /// caller going away never cuts it short.
    pub(super) async fn close_group(&self, id: Option<u64>) {
        let open_id = {
            let s = lock(&self.groups.state);
            match s.open.as_ref() {
                Some(o) if id.is_none_or(|id| o.id == id) => o.id,
                _ => return,
            }
        };
        self.roll_back_dropped(open_id).await;
        let open = {
            let mut s = lock(&self.groups.state);
            if s.open.as_ref().is_some_and(|o| o.id == open_id) {
                s.open.take()
            } else {
                None
            }
        };
        let Some(open) = open else {
            return;
        };
        let done = tokio::spawn(async move {
            let ended = match open.tx {
                Some(t) => match t.commit().await {
                    Ok(()) => Ended::Committed,
                    Err(e) => {
                        tracing::warn!(error = %e, units = open.units, "a group commit failed; its units run again");
                        Ended::Failed
                    }
                },
                // Its transaction never came back: none of it.
                None => Ended::Failed,
            };
            open.ended.send_replace(Some(ended));
        });
        let _ = done.await;
    }
}

#[cfg(test)]
mod tests {
    use keyward_config::DatabaseConfig;

    use super::*;

    async fn db(dir: &tempfile::TempDir) -> Database {
        let cfg = DatabaseConfig {
            url: format!("sqlite://{}/group.db", dir.path().display()),
            ..DatabaseConfig::default()
        };
        let db = Database::connect(&cfg).await.unwrap();
        sqlx::query("CREATE TABLE t (n INTEGER PRIMARY KEY)")
            .execute(db.pool())
            .await
            .unwrap();
        db
    }

    async fn rows(db: &Database) -> Vec<i64> {
        sqlx::query_scalar("SELECT n FROM t ORDER BY n")
            .fetch_all(db.pool())
            .await
            .unwrap()
    }

    /// Concurrent units share commits; a failing unit's rows (written
    /// before it failed) are rolled back alone; every unit that answered
    /// ok is durable, and only those.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn units_commit_together_and_fail_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(&dir).await;
        let mut tasks = Vec::new();
        for n in 0..200i64 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                db.write("test", |mut tx| async move {
                    sqlx::query("INSERT INTO t (n) VALUES ($1)")
                        .bind(n)
                        .execute(&mut *tx)
                        .await?;
                    if n % 7 == 0 {
                        // Written, then refused: none of it stays.
                        sqlx::query("INSERT INTO t (n) VALUES ($1)")
                            .bind(n)
                            .execute(&mut *tx)
                            .await?;
                    }
                    Ok::<_, sqlx::Error>((tx, n))
                })
                .await
            }));
        }
        let mut ok = Vec::new();
        for t in tasks {
            if let Ok(n) = t.await.unwrap() {
                ok.push(n);
            }
        }
        ok.sort_unstable();
        let expected: Vec<i64> = (0..200).filter(|n| n % 7 != 0).collect();
        assert_eq!(ok, expected);
        assert_eq!(rows(&db).await, expected);
    }

    /// A unit whose caller goes away mid-unit leaves nothing, and the
    /// units around it commit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_unit_cancelled_midway_is_rolled_back_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = db(&dir).await;
        let mut tasks = Vec::new();
        for n in 0..60i64 {
            let db = db.clone();
            let unit = async move {
                db.write("test", |mut tx| async move {
                    sqlx::query("INSERT INTO t (n) VALUES ($1)")
                        .bind(n)
                        .execute(&mut *tx)
                        .await?;
                    if n % 5 == 0 {
                        // Never finishes: its caller gives up (below), the
                        // writer's turn is free again.
                        std::future::pending::<()>().await;
                    }
                    Ok::<_, sqlx::Error>((tx, n))
                })
                .await
            };
            let patience = if n % 5 == 0 { 20 } else { 20_000 };
            tasks.push(tokio::spawn(tokio::time::timeout(
                std::time::Duration::from_millis(patience),
                unit,
            )));
        }
        let mut ok = Vec::new();
        for t in tasks {
            if let Ok(Ok(n)) = t.await.unwrap() {
                ok.push(n);
            }
        }
        ok.sort_unstable();
        let expected: Vec<i64> = (0..60).filter(|n| n % 5 != 0).collect();
        assert_eq!(ok, expected);
        assert_eq!(rows(&db).await, expected);
        // The writer is free again: a transaction of one's own goes through.
        let turn = db.writer_turn().await.unwrap();
        let mut tx = super::super::begin_write(db.pool(), db.kind())
            .await
            .unwrap();
        sqlx::query("INSERT INTO t (n) VALUES (1000)")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        drop(turn);
        assert_eq!(rows(&db).await.len(), expected.len() + 1);
    }
}
