//! [`Leases`]: table `jobs` (server migration 2030), one row per job that
//! runs once across replicas; whoever holds the unexpired lease runs it.
//! Times are each replica's wall clock in ms, so replicas' clocks must agree
//! to well within a lease.

use keyward_kms::db::Database;
use sqlx::Row;

use super::JobError;

/// One job's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub holder: String,
    pub lease_until_ms: i64,
    /// When the holder last claimed it to run the job.
    pub last_run_at_ms: Option<i64>,
}

/// Handle on the `jobs` table; cheap to clone.
#[derive(Debug, Clone)]
pub struct Leases {
    db: Database,
}

impl Leases {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Takes (or renews) the lease of job `name` for `holder` until
    /// `now + lease_ms` unless another holder's lease is unexpired; whether
    /// `holder` now runs the job. One conditional write, so of two replicas
    /// asking at once exactly one wins.
    pub async fn claim(
        &self,
        name: &str,
        holder: &str,
        now: i64,
        lease_ms: i64,
    ) -> Result<bool, JobError> {
        self.db
            .write("jobs.claim", |mut tx| async move {
                let n = sqlx::query(
                    "INSERT INTO jobs (name, holder, lease_until_ms, last_run_at_ms) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO UPDATE \
                     SET holder = $2, lease_until_ms = $3, last_run_at_ms = $4 \
                     WHERE jobs.holder = $2 OR jobs.lease_until_ms < $4",
                )
                .bind(name)
                .bind(holder)
                .bind(now.saturating_add(lease_ms))
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                Ok((tx, n == 1))
            })
            .await
    }

    /// Ends every lease `holder` has (a replica shutting down), so others
    /// need not wait for them to lapse. How many it ended.
    pub async fn release_all(&self, holder: &str) -> Result<u64, JobError> {
        self.db
            .write("jobs.release", |mut tx| async move {
                let n = sqlx::query(
                    "UPDATE jobs SET lease_until_ms = 0 WHERE holder = $1 AND lease_until_ms > 0",
                )
                .bind(holder)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                Ok((tx, n))
            })
            .await
    }

    /// The row of job `name`, if it was ever claimed.
    pub async fn get(&self, name: &str) -> Result<Option<Lease>, JobError> {
        let row =
            sqlx::query("SELECT holder, lease_until_ms, last_run_at_ms FROM jobs WHERE name = $1")
                .bind(name)
                .fetch_optional(self.db.pool())
                .await?;
        row.map(|r| {
            Ok(Lease {
                holder: r.try_get("holder")?,
                lease_until_ms: r.try_get("lease_until_ms")?,
                last_run_at_ms: r.try_get("last_run_at_ms")?,
            })
        })
        .transpose()
    }
}
