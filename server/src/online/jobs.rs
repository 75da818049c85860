//! The online service's background jobs, both every
//! `online.jobs_interval_ms` ([`crate::jobs`] runs them):
//!
//! - [`maintenance`], once across replicas (job `online.maintenance`): end
//!   the grace period of replaced working-key versions (`retiring` →
//!   `retired`) and prune the working-key change log; delete expired
//!   sessions and expired challenges (counted as
//!   `keyward_login_challenges_total{event="expired"}`);
//! - [`sessions_gauge`], on every replica (job `online.sessions_gauge`):
//!   refresh `keyward_sessions_active` from the database, so a scrape of any
//!   replica sees the fleet.

use std::time::Duration;

use crate::jobs::Job;
use crate::online::OnlineError;
use crate::state::AppState;

/// The interval of both jobs.
fn interval(state: &AppState) -> Duration {
    Duration::from_millis(state.online.config.jobs_interval_ms.max(100))
}

/// [`maintenance`] as a job, once across replicas.
pub fn maintenance_job(state: &AppState) -> Job<AppState> {
    Job::new(
        "online.maintenance",
        interval(state),
        |state: AppState| async move { maintenance(&state).await.map_err(Into::into) },
    )
    .once_across_replicas()
}

/// [`sessions_gauge`] as a job, on every replica.
pub fn sessions_gauge_job(state: &AppState) -> Job<AppState> {
    Job::new(
        "online.sessions_gauge",
        interval(state),
        |state: AppState| async move { sessions_gauge(&state).await.map_err(Into::into) },
    )
}

/// Sets `keyward_sessions_active` from the database.
pub async fn sessions_gauge(state: &AppState) -> Result<(), OnlineError> {
    let now = keyward_kms::db::now_ms();
    let active = state.online.store.active_sessions(now).await?;
    state.metrics.sessions_active.set(active);
    Ok(())
}

/// One round of the once-across-replicas maintenance.
pub async fn maintenance(state: &AppState) -> Result<(), OnlineError> {
    let online = &state.online;
    let now = keyward_kms::db::now_ms();
    let retired = state.kms.end_grace_periods().await?;
    state.kms.prune_key_changes().await?;
    let sessions = online.store.purge_sessions(now).await?;
    let expired = state.provisioning.challenges().purge_expired().await?;
    for (purpose, n) in &expired {
        if purpose == "login" {
            state
                .metrics
                .login_challenges
                .with_label_values(&["expired"])
                .inc_by(*n);
        }
    }
    if retired > 0 || sessions > 0 {
        tracing::info!(
            retired_versions = retired,
            expired_sessions = sessions,
            "online maintenance"
        );
    }
    Ok(())
}
