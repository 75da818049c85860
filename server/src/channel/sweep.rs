//! The sweep of the channel tables, once across replicas through the job
//! runner: expired handshakes, expired or closed channels (their wrapped
//! keys go with them) and expired or spent tickets are deleted. Nothing
//! swept could still be used: a record for a swept channel, a key exchange
//! for a swept handshake and a swept ticket get the same answer as before
//! (`channel_closed`, `channel_closed`, `channel_refused`). Counted in
//! `keyward_channel_swept_total{kind}`; `keyward_channels_open` is set.

use std::time::Duration;

use keyward_kms::db::now_ms;

use super::{Channels, Result, store};
use crate::jobs::{Job, JobError};
use crate::state::AppState;

/// How often the sweep runs.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// The kinds `keyward_channel_swept_total` counts.
pub const SWEPT_KINDS: [&str; 3] = ["handshakes", "channels", "tickets"];

/// What one sweep removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    pub handshakes: u64,
    pub channels: u64,
    pub tickets: u64,
}

impl Channels {
    /// One sweep at the current time.
    pub async fn sweep(&self) -> Result<Swept> {
        let now = now_ms();
        let counts = store::sweep(self.db(), now).await?;
        let m = &self.0.metrics;
        for (kind, n) in SWEPT_KINDS.iter().zip(counts) {
            m.channel_swept.with_label_values(&[kind]).inc_by(n);
        }
        m.channels_open
            .set(store::count_open(self.db(), now).await?);
        let [handshakes, channels, tickets] = counts;
        Ok(Swept {
            handshakes,
            channels,
            tickets,
        })
    }
}

/// [`Channels::sweep`], once across replicas.
pub fn sweep_job() -> Job<AppState> {
    Job::new(
        "channel.sweep",
        SWEEP_INTERVAL,
        |state: AppState| async move {
            state
                .channels
                .sweep()
                .await
                .map(drop)
                .map_err(|e| JobError::failed(e.code(), e))
        },
    )
    .once_across_replicas()
}
