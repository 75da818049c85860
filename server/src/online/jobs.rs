//! The online service's background work, which [`crate::jobs`] runs every
//! `online.jobs_interval_ms`:
//!
//! - [`Online::maintain`], once across replicas (job `online.maintenance`):
//!   end the grace period of replaced working-key versions (`retiring` →
//!   `retired`) and prune the working-key change log; delete expired
//!   sessions, the seals of expired login challenges and expired
//!   genuine-device challenges; finish lockouts a crash cut short (revoke the
//!   certificates they named) and chain staged audit records;
//! - [`Online::refresh_sessions_gauge`], on every replica (job
//!   `online.sessions_gauge`): `keyward_sessions_active` from the database,
//!   so a scrape of any replica sees the fleet.

use crate::online::{Online, OnlineError};

impl Online {
    /// Sets `keyward_sessions_active` from the database.
    pub async fn refresh_sessions_gauge(&self) -> Result<(), OnlineError> {
        let now = keyward_kms::db::now_ms();
        let active = self.store.active_sessions(now).await?;
        self.metrics.sessions_active.set(active);
        Ok(())
    }

    /// One round of the once-across-replicas maintenance.
    pub async fn maintain(&self) -> Result<(), OnlineError> {
        let now = keyward_kms::db::now_ms();
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
        Ok(())
    }
}
