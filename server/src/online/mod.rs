//! The online protocols' domain logic: what terminals do all day once they
//! are provisioned. Routes in [`crate::public`] translate HTTP into calls
//! here; nothing here sees HTTP, and every piece of protocol state lives in
//! the database (through [`store`]) so any replica can take any step.
//!
//! Rooms, as the protocols arrive (docs/protocol.md):
//! - [`login`]: random challenge/response, lockout, working-key delivery and
//!   rotation at login;
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
//! lower crates' errors and mapped to HTTP once, in `http/error.rs`.

pub mod error;
pub mod jobs;
pub mod login;
pub mod session;
pub mod store;
pub mod transaction;

use std::time::Duration;

use keyward_config::OnlineConfig;
use keyward_device_provisioning::DeviceState;
use keyward_kms::db::Database;
use keyward_kms::types::DeviceId;

pub use error::OnlineError;
pub use session::Session;
pub use store::OnlineStore;

use crate::audit::Actor;

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
    /// The audit actor (`device:ID#SERIAL`).
    pub actor: Actor,
    pub request_id: String,
}

impl Device {
    /// Audits a step of this device refused with `code` (`action`, the
    /// device as target, `detail`). Best effort: a refusal the trail cannot
    /// record is still refused.
    pub async fn audit_refusal(
        &self,
        state: &crate::state::AppState,
        action: &'static str,
        detail: serde_json::Value,
        code: &'static str,
    ) {
        let event = crate::audit::AuditEvent::Online {
            action,
            target: format!("device:{}", self.device_id),
            detail,
        };
        let outcome = crate::audit::Outcome::Refused { code };
        let _ = state
            .audit
            .append(&self.actor, &event, outcome, &self.request_id)
            .await;
    }
}

/// The online service's configuration and tables; cheap to clone.
#[derive(Debug, Clone)]
pub struct Online {
    pub store: OnlineStore,
    pub config: OnlineConfig,
    /// This replica's name for the run-once job leases.
    pub replica: String,
}

impl Online {
    pub fn new(db: &Database, config: OnlineConfig) -> Self {
        let mut id = [0u8; 8];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut id);
        Self {
            store: OnlineStore::new(db.clone()),
            config,
            replica: format!("replica-{}", hex::encode(id)),
        }
    }

    pub fn challenge_ttl(&self) -> Duration {
        Duration::from_millis(self.config.challenge_ttl_ms)
    }

    pub fn session_ttl_ms(&self) -> i64 {
        i64::try_from(self.config.session_ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX)
    }
}
