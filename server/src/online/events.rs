//! The online protocols' audit events, typed: each names its action once and
//! carries exactly its fields, so a record's shape cannot drift between the
//! places that write it. They become the trail's generic online record
//! (action, target `device:<id>` or `issuer:<id>`, detail) in one place.

use keyward_device_provisioning::RedactedText;
use keyward_kms::types::{DeviceId, IssuerId, KeyVersion, MacAlgorithm};
use serde_json::json;

use crate::audit::AuditEvent;

/// Something the online service records.
#[derive(Debug, Clone)]
pub enum OnlineEvent {
    /// A login step (`login.start`, `login.finish`) refused; the issuer as
    /// the device sent it.
    LoginRefused {
        device: DeviceId,
        step: &'static str,
        issuer: String,
    },
    /// A session-bound call refused.
    SessionRefused { device: DeviceId, route: String },
    /// The failure that reached the issuer's limit locked the credential
    /// (and named the certificate to revoke, by policy).
    Lockout {
        device: DeviceId,
        issuer: IssuerId,
        failures: u32,
        revoked_serial: Option<String>,
    },
    /// A device confirmed an offered working-key version.
    KeyActivated {
        device: DeviceId,
        issuer: IssuerId,
        version: KeyVersion,
    },
    /// A wrong transaction MAC, with the credential's streak.
    MacFailure {
        device: DeviceId,
        issuer: IssuerId,
        algorithm: MacAlgorithm,
        version: KeyVersion,
        streak: u32,
    },
    /// An operator's unlock of a credential; the reason as the trail may
    /// keep it.
    Unlock {
        device: DeviceId,
        issuer: IssuerId,
        reason: RedactedText,
    },
    /// An operator asked for new working keys: one device, or the fleet.
    RotationRequest {
        issuer: IssuerId,
        device: Option<DeviceId>,
    },
    /// A refusal window closed: the refusals of `action` not recorded one by
    /// one (the first of the window was), `throttled` of them answered 429.
    RefusalsCounted {
        device: DeviceId,
        action: &'static str,
        counted: u64,
        throttled: u64,
        window_started_ms: i64,
        window_ms: u64,
    },
    /// A device refused `refused` times for `action` in a window is
    /// throttled (429) until the window ends.
    Throttled {
        device: DeviceId,
        action: &'static str,
        refused: u64,
        retry_after_ms: u64,
    },
}

impl OnlineEvent {
    /// The trail's action of a refusal event (the refusal windows' key).
    pub fn action(&self) -> &'static str {
        match self {
            Self::LoginRefused { step, .. } => step,
            Self::SessionRefused { .. } => "session.refused",
            Self::Lockout { .. } => "login.lockout",
            Self::KeyActivated { .. } => "key.activate",
            Self::MacFailure { .. } => "transaction.mac",
            Self::Unlock { .. } => "credential.unlock",
            Self::RotationRequest { .. } => "key.rotate_request",
            Self::RefusalsCounted { .. } => "refusal.window",
            Self::Throttled { .. } => "refusal.throttle",
        }
    }
}

impl From<OnlineEvent> for AuditEvent {
    fn from(e: OnlineEvent) -> Self {
        let device = |d: DeviceId| format!("device:{d}");
        let (action, target, detail) = match e {
            OnlineEvent::LoginRefused {
                device: d,
                step,
                issuer,
            } => (step, device(d), json!({ "issuer": issuer })),
            OnlineEvent::SessionRefused { device: d, route } => {
                ("session.refused", device(d), json!({ "route": route }))
            }
            OnlineEvent::Lockout {
                device: d,
                issuer,
                failures,
                revoked_serial,
            } => (
                "login.lockout",
                device(d),
                json!({ "issuer": issuer.as_str(), "failures": failures,
                        "revoked_serial": revoked_serial }),
            ),
            OnlineEvent::KeyActivated {
                device: d,
                issuer,
                version,
            } => (
                "key.activate",
                device(d),
                json!({ "issuer": issuer.as_str(), "version": version.0 }),
            ),
            OnlineEvent::MacFailure {
                device: d,
                issuer,
                algorithm,
                version,
                streak,
            } => (
                "transaction.mac",
                device(d),
                json!({ "issuer": issuer.as_str(), "algorithm": algorithm.as_str(),
                        "version": version.0, "consecutive_failures": streak }),
            ),
            OnlineEvent::Unlock {
                device: d,
                issuer,
                reason,
            } => (
                "credential.unlock",
                device(d),
                json!({ "issuer": issuer.as_str(), "reason": reason.as_str() }),
            ),
            OnlineEvent::RefusalsCounted {
                device: d,
                action,
                counted,
                throttled,
                window_started_ms,
                window_ms,
            } => (
                "refusal.window",
                device(d),
                json!({ "action": action, "counted": counted, "throttled": throttled,
                        "window_started_ms": window_started_ms, "window_ms": window_ms }),
            ),
            OnlineEvent::Throttled {
                device: d,
                action,
                refused,
                retry_after_ms,
            } => (
                "refusal.throttle",
                device(d),
                json!({ "action": action, "refused": refused, "retry_after_ms": retry_after_ms }),
            ),
            OnlineEvent::RotationRequest { issuer, device: d } => (
                "key.rotate_request",
                match d {
                    Some(d) => device(d),
                    None => format!("issuer:{issuer}"),
                },
                json!({ "issuer": issuer.as_str(), "fleet": d.is_none() }),
            ),
        };
        AuditEvent::Online {
            action,
            target,
            detail,
        }
    }
}
