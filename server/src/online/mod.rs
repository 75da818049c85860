//! The online service: what terminals do all day once they are provisioned.
//! [`Online`] holds its parts (kms, CA, provisioning, audit, metrics, its
//! private store, a CRL reload handle, its configuration) and offers the
//! protocol steps as methods over domain inputs and outputs; routes in
//! `public/` and `admin/` translate HTTP into calls here and nothing else.
//! Nothing here sees HTTP, and every piece of protocol state lives in the
//! database (its own tables through the private `store`) so any replica can
//! take any step. A step's HSM work happens before its write transaction;
//! its rows and its audit record's effect commit together.
//!
//! Rooms, as the protocols arrive (docs/protocol.md):
//! - [`login`]: random challenge/response (sealed challenges, [`challenge`]),
//!   lockout, working-key delivery and rotation at login;
//! - [`keys`]: what operators do to credentials and working keys (unlock,
//!   rotation requests, pending rotations);
//! - [`session`]: the bearer sessions a login opens, checked on every later
//!   online call;
//! - [`transaction`]: a device's transaction MAC, account fields and PIN
//!   block, over a session;
//! - [`jobs`]: its background jobs (grace-period retirement, expired
//!   sessions and challenges once across replicas; the sessions gauge);
//! - next: signed confirmations over the second channel, the e-purse ledger
//!   (loads and reversals, one transaction with their ledger entries), the
//!   card-to-server secure channel.
//!
//! [`error::OnlineError`] is the error of this layer, sorted by kind like the
//! lower crates' errors and mapped to HTTP once, in `http/error.rs`; its
//! refusals are one table, [`Refusal`]; its audit records are typed,
//! [`OnlineEvent`].

pub mod challenge;
pub mod error;
pub mod events;
pub mod jobs;
pub mod keys;
pub mod login;
pub mod refusal;
pub mod session;
mod store;
pub mod transaction;

use std::sync::Arc;
use std::time::{Duration, Instant};

use keyward_ca::Ca;
use keyward_config::OnlineConfig;
use keyward_device_provisioning::{DeviceState, Provisioning};
use keyward_kms::Kms;
use keyward_kms::types::DeviceId;

pub use error::OnlineError;
pub use events::OnlineEvent;
pub use refusal::Refusal;
pub use session::Session;
use store::OnlineStore;
pub use store::{Credential, DeviceStanding};

use crate::audit::{Actor, AuditEvent, AuditLog, Outcome};
use crate::metrics::Metrics;
use crate::refusals::{Closed, RefusalWindows};

/// The device behind a public request: its registered, unrevoked device
/// certificate, as the public listener's per-request check found it. What
/// the online protocols act for.
#[derive(Debug, Clone)]
pub struct Device {
    pub device_id: DeviceId,
    /// The certificate's serial, upper-case hex: the registry's
    /// `cert_serial` for the device.
    pub serial: String,
    pub state: DeviceState,
    /// When the device's state last changed (suspended, resumed, retired):
    /// a session opened before it is over, so a resume never revives one.
    pub state_changed_at_ms: i64,
    /// The audit actor (`device:ID#SERIAL`).
    pub actor: Actor,
    pub request_id: String,
}

/// The online service: its parts, and the protocol steps as methods over
/// domain inputs and outputs. Routes translate HTTP into calls here and the
/// results back; nothing here sees HTTP, and every piece of protocol state
/// lives in the database (its own tables through a private store, the
/// catalog's and the registry's through kms and provisioning) so any
/// replica can take any step. Cheap to clone: one `Arc`.
#[derive(Debug, Clone)]
pub struct Online(Arc<Parts>);

/// What the online service stands on.
#[derive(Debug)]
pub struct Parts {
    kms: Kms,
    ca: Ca,
    provisioning: Provisioning,
    audit: AuditLog,
    metrics: Metrics,
    store: OnlineStore,
    config: OnlineConfig,
    crl: CrlReload,
    /// This replica's name for the run-once job leases.
    replica: String,
    /// Refusals per (device, action), so one device cannot flood the trail.
    refusals: RefusalWindows<(DeviceId, &'static str)>,
    /// Login starts per device in its minute (each one an HSM-random
    /// challenge and its seal), bounded by `online.login_starts_per_minute`.
    starts: RefusalWindows<DeviceId>,
}

/// A device's refusal window: one record in full per action, then a count.
pub const REFUSAL_WINDOW: Duration = Duration::from_secs(60);
/// Refusals of one action a device gets recorded one by one per window.
pub const FULL_REFUSALS_PER_WINDOW: u32 = 1;
/// Refusals of one action in a window after which the device's calls of
/// that action are answered 429 `too_many_refusals` until the window ends.
pub const THROTTLE_AFTER: u64 = 100;
/// The window of `online.login_starts_per_minute`.
pub const LOGIN_WINDOW: Duration = Duration::from_secs(60);
/// Devices whose refusals one replica tracks at most (the oldest window
/// closes early to make room).
pub const TRACKED_REFUSERS: usize = 10_000;

impl std::ops::Deref for Online {
    type Target = Parts;
    fn deref(&self) -> &Parts {
        &self.0
    }
}

/// Asks the edge to load a new CRL into its TLS listeners now (after a
/// revocation this service made); the edge's refresh job also does it on
/// its schedule. A handle, so the online layer needs nothing of the edge.
#[derive(Debug, Clone, Default)]
pub struct CrlReload(Arc<tokio::sync::Notify>);

impl CrlReload {
    /// Wakes the edge's reloader; `what` is logged.
    pub fn reload(&self, what: &str) {
        tracing::info!(what, "CRL reload requested");
        self.0.notify_one();
    }

    /// Waits for the next request (the edge's reloader loop).
    pub async fn requested(&self) {
        self.0.notified().await;
    }
}

impl Online {
    pub fn new(
        kms: Kms,
        ca: Ca,
        provisioning: Provisioning,
        audit: AuditLog,
        metrics: Metrics,
        config: OnlineConfig,
        crl: CrlReload,
    ) -> Self {
        let mut id = [0u8; 8];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut id);
        Self(Arc::new(Parts {
            store: OnlineStore::new(kms.db().clone()),
            kms,
            ca,
            provisioning,
            audit,
            metrics,
            config,
            crl,
            replica: format!("replica-{}", hex::encode(id)),
            refusals: RefusalWindows::new(
                FULL_REFUSALS_PER_WINDOW,
                REFUSAL_WINDOW,
                TRACKED_REFUSERS,
            )
            .marking(THROTTLE_AFTER),
            starts: RefusalWindows::new(0, LOGIN_WINDOW, TRACKED_REFUSERS),
        }))
    }

    /// The `[online]` configuration.
    pub fn config(&self) -> &OnlineConfig {
        &self.config
    }

    /// This replica's name (job leases).
    pub fn replica(&self) -> &str {
        &self.replica
    }

    /// The CRL reload handle the edge listens on.
    pub fn crl_reload(&self) -> &CrlReload {
        &self.crl
    }

    fn challenge_ttl(&self) -> Duration {
        Duration::from_millis(self.config.challenge_ttl_ms)
    }

    fn session_ttl_ms(&self) -> i64 {
        i64::try_from(self.config.session_ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX)
    }

    /// Audits a step of `device` refused with `code`, within the device's
    /// refusal window ([`Online::refusal_recorded`]). Best effort: a refusal
    /// the trail cannot record is still refused.
    pub async fn audit_refusal(&self, device: &Device, event: OnlineEvent, code: &'static str) {
        let _ = self.refusal_recorded(device, event, code, false).await;
    }

    /// A refusal of `device`, within its window for the event's action: the
    /// first of the window (and one the caller must `keep`) is recorded in
    /// full, the others are counted and written as one `refusal.window`
    /// record when the window closes. The refusal that reaches
    /// [`THROTTLE_AFTER`] is recorded, with the throttle it starts, before
    /// any call is answered 429.
    async fn refusal_recorded(
        &self,
        device: &Device,
        event: OnlineEvent,
        code: &'static str,
        keep: bool,
    ) -> std::result::Result<(), crate::audit::AuditError> {
        let action = event.action();
        let now = Instant::now();
        let seen = self
            .refusals
            .admit((device.device_id, action), now, keep, false);
        if let Some(closed) = seen.closed {
            self.window_recorded(closed).await;
        }
        if seen.record {
            let outcome = Outcome::Refused { code };
            self.audit
                .append(
                    &device.actor,
                    &AuditEvent::from(event),
                    outcome,
                    &device.request_id,
                )
                .await?;
        } else {
            self.metrics
                .audit_suppressed
                .with_label_values(&[crate::metrics::Listener::Public.as_str()])
                .inc();
        }
        if seen.seen == THROTTLE_AFTER {
            let event = OnlineEvent::Throttled {
                device: device.device_id,
                action,
                refused: THROTTLE_AFTER,
                retry_after_ms: duration_ms(REFUSAL_WINDOW),
            };
            let outcome = Outcome::Refused {
                code: "too_many_refusals",
            };
            self.audit
                .append(
                    &Actor::System,
                    &AuditEvent::from(event),
                    outcome,
                    &device.request_id,
                )
                .await?;
        }
        Ok(())
    }

    /// Refuses a call of `action` from a device throttled for it (429 until
    /// its window ends), counting the call in the window; no HSM or
    /// database work is done for it.
    pub async fn check_throttle(
        &self,
        device: &Device,
        action: &'static str,
    ) -> Result<(), OnlineError> {
        let now = Instant::now();
        let key = (device.device_id, action);
        let Some(wait) = self.refusals.retry_after(&key, now, THROTTLE_AFTER) else {
            return Ok(());
        };
        let counted = self.refusals.admit(key, now, false, true);
        if let Some(closed) = counted.closed {
            self.window_recorded(closed).await;
        }
        self.metrics
            .audit_suppressed
            .with_label_values(&[crate::metrics::Listener::Public.as_str()])
            .inc();
        let secs = u32::try_from(wait.as_secs().saturating_add(1)).unwrap_or(u32::MAX);
        Err(OnlineError::Throttled {
            retry_after_secs: secs,
        })
    }

    /// Writes the count of every refusal window that ended (`all`: every
    /// window, at shutdown); returns how many records it wrote. Run on
    /// every replica by a job: the windows are per replica.
    pub async fn close_refusal_windows(&self, all: bool) -> usize {
        let closed = if all {
            self.refusals.take_all()
        } else {
            self.refusals.take_closed(Instant::now())
        };
        let n = closed.len();
        for c in closed {
            self.window_recorded(c).await;
        }
        n
    }

    /// One closed window's count, as a record. Best effort, like the
    /// refusals it counts; a write that fails is logged.
    async fn window_recorded(&self, c: Closed<(DeviceId, &'static str)>) {
        let ((device, action), counted) = (c.key, c.counted);
        let event = OnlineEvent::RefusalsCounted {
            device,
            action,
            counted,
            throttled: c.throttled,
            window_started_ms: c.started_ms,
            window_ms: duration_ms(self.refusals.window()),
        };
        let outcome = Outcome::Refused {
            code: "refusals_counted",
        };
        if let Err(e) = self
            .audit
            .append(&Actor::System, &AuditEvent::from(event), outcome, "-")
            .await
        {
            tracing::error!(%device, action, counted, error = %e,
                "a refusal window's count could not be recorded");
        }
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
