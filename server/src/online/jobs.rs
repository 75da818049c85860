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

use crate::state::AppState;

/// The lease's name.
const MAINTENANCE: &str = "online.maintenance";

/// Runs until the process ends.
pub async fn run(state: AppState) {
    let interval = Duration::from_millis(state.online.config.jobs_interval_ms.max(100));
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
    let online = &state.online;
    let now = keyward_kms::db::now_ms();
    let active = online.store.active_sessions(now).await?;
    state.metrics.sessions_active.set(active);
    // The lease outlives a missed tick or two, not a dead replica.
    let lease = i64::try_from(interval.as_millis().saturating_mul(3)).unwrap_or(i64::MAX);
    if !online
        .store
        .claim_job(MAINTENANCE, &online.replica, now, lease)
        .await?
    {
        return Ok(false);
    }
    let retired = state.kms.end_grace_periods().await?;
    state.kms.prune_key_changes().await?;
    let (sessions, _seals) = online.store.purge_expired(now).await?;
    state.provisioning.challenges().purge_expired().await?;
    // Lockouts and staged audit records a crash cut short are finished here
    // as well as at start-up.
    crate::online::login::finish_lockouts(state).await?;
    state.audit.flush_staged().await?;
    if retired > 0 || sessions > 0 {
        tracing::info!(
            retired_versions = retired,
            expired_sessions = sessions,
            "online maintenance"
        );
    }
    Ok(true)
}
