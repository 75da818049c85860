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
use std::time::Duration;

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
}

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

    /// Audits a step of `device` refused with `code`. Best effort: a
    /// refusal the trail cannot record is still refused.
    pub async fn audit_refusal(&self, device: &Device, event: OnlineEvent, code: &'static str) {
        let event = AuditEvent::from(event);
        let outcome = Outcome::Refused { code };
        let _ = self
            .audit
            .append(&device.actor, &event, outcome, &device.request_id)
            .await;
    }
}
