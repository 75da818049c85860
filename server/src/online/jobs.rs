//! Background work of the online service that must run once across
//! replicas: every replica offers every `online.jobs_interval_ms`, and the
//! one holding the lease (`online_jobs`, a conditional write) runs it:
//!
//! - end the grace period of replaced working-key versions
//!   (`retiring` → `retired`) and prune the working-key change log;
//! - delete expired sessions, the seals of expired login challenges and
//!   expired genuine-device challenges;
//! - finish lockouts a crash cut short (revoke the certificates they named)
//!   and chain staged audit records.
//!
//! Every replica, lease or not, refreshes its `keyward_sessions_active`
//! gauge from the database, so a scrape of any replica sees the fleet.

use std::time::Duration;

use crate::online::{Online, OnlineError};
use crate::state::AppState;

/// The lease's name.
const MAINTENANCE: &str = "online.maintenance";

/// Runs until the process ends.
pub async fn run(state: AppState) {
    let interval = Duration::from_millis(state.online.config().jobs_interval_ms.max(100));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = once(&state, interval).await {
            tracing::warn!(code = e.code(), error = %e, "online maintenance did not run; next tick retries");
        }
    }
}

/// One round: the gauge, then the jobs if this replica holds the lease.
/// Returns whether it ran the jobs.
pub async fn once(
    state: &AppState,
    interval: Duration,
) -> Result<bool, crate::online::OnlineError> {
    state.online.maintain(interval).await
}

impl Online {
    /// Takes (or keeps) the lease of job `name` for `holder` until
    /// `now + lease_ms` unless another holds an unexpired one; whether
    /// `holder` now runs the job.
    pub async fn claim_job(
        &self,
        name: &str,
        holder: &str,
        now: i64,
        lease_ms: i64,
    ) -> Result<bool, OnlineError> {
        self.store.claim_job(name, holder, now, lease_ms).await
    }

    /// [`once`] on this service.
    pub async fn maintain(&self, interval: Duration) -> Result<bool, OnlineError> {
        let now = keyward_kms::db::now_ms();
        let active = self.store.active_sessions(now).await?;
        self.metrics.sessions_active.set(active);
        // The lease outlives a missed tick or two, not a dead replica.
        let lease = i64::try_from(interval.as_millis().saturating_mul(3)).unwrap_or(i64::MAX);
        if !self
            .store
            .claim_job(MAINTENANCE, &self.replica, now, lease)
            .await?
        {
            return Ok(false);
        }
        let retired = self.kms.end_grace_periods().await?;
        self.kms.prune_key_changes().await?;
        let (sessions, _seals) = self.store.purge_expired(now).await?;
        self.provisioning.challenges().purge_expired().await?;
        // Lockouts and staged audit records a crash cut short are finished
        // here as well as at start-up.
        self.finish_lockouts().await?;
        self.audit.flush_staged().await?;
        if retired > 0 || sessions > 0 {
            tracing::info!(
                retired_versions = retired,
                expired_sessions = sessions,
                "online maintenance"
            );
        }
        Ok(true)
    }
}
