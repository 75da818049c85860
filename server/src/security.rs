//! Intrusion signals: one piece every layer that detects one raises, so each
//! is recorded the same way — an audit record of its own (action
//! `security.<kind>`, outcome `refused` with the kind as code), the counter
//! `keyward_security_events_total{kind}` (bounded labels: the kind, never a
//! device id) to alert on, and a warning in the log.
//!
//! Raised today by a KCV mismatch on the init package confirmation; login's
//! key update raises the same [`SecurityKind::KcvMismatch`].

use crate::audit::{Actor, AuditError, AuditEvent, AuditLog, Outcome};
use crate::metrics::Metrics;

/// What was detected; [`SecurityKind::as_str`] is the stable name (the
/// audit action's suffix and the metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecurityKind {
    /// A device reported key check values that differ from those of the keys
    /// it was sent (seed CN102004977A: the keys may have been intercepted
    /// or replaced).
    KcvMismatch,
}

impl SecurityKind {
    pub const ALL: [SecurityKind; 1] = [Self::KcvMismatch];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::KcvMismatch => "kcv_mismatch",
        }
    }
}

/// Records an intrusion signal about `target` (`device:<id>`, …) seen in
/// request `request_id` from `actor`; `detail` holds only non-secret
/// identifiers (issuer, key names), never key bytes or KCV values. The
/// counter goes up even if the audit record cannot be written.
pub async fn raise(
    audit: &AuditLog,
    metrics: &Metrics,
    actor: &Actor,
    request_id: &str,
    kind: SecurityKind,
    target: String,
    detail: serde_json::Value,
) -> Result<(), AuditError> {
    metrics
        .security_events
        .with_label_values(&[kind.as_str()])
        .inc();
    tracing::warn!(kind = kind.as_str(), target = %target, request_id,
        "security event");
    let event = AuditEvent::Security {
        kind,
        target,
        detail,
    };
    audit
        .append(
            actor,
            &event,
            Outcome::Refused {
                code: kind.as_str(),
            },
            request_id,
        )
        .await
        .map(drop)
}
