//! Intrusion signals: one piece every layer that detects one raises, so each
//! is recorded the same way — an audit record of its own (action
//! `security.<kind>`, outcome `refused` with the kind as code), the counter
//! `keyward_security_events_total{kind}` (bounded labels: the kind, never a
//! device id) to alert on, and a warning in the log.
//!
//! Raised today by a KCV mismatch on the init package confirmation; login's
//! key update raises the same [`SecurityKind::KcvMismatch`].

pub mod kind;

pub use kind::SecurityKind;

use crate::audit::{Actor, AuditError, AuditEvent, AuditLog, Outcome};
use crate::metrics::Metrics;

/// The audit record of an intrusion signal about `target` (`device:<id>`,
/// …); `detail` holds only non-secret identifiers (issuer, key names), never
/// key bytes or KCV values. For a signal recorded in the transaction of its
/// effect ([`crate::audit::AuditLog::stage_in`]); [`counted`] after commit.
pub fn event(
    kind: SecurityKind,
    target: String,
    detail: serde_json::Value,
) -> (AuditEvent, Outcome) {
    (
        AuditEvent::Security {
            kind,
            target,
            detail,
        },
        Outcome::Refused {
            code: kind.as_str(),
        },
    )
}

/// Counts a signal (`keyward_security_events_total{kind}`) and warns in the
/// log.
pub fn counted(metrics: &Metrics, kind: SecurityKind, request_id: &str) {
    metrics
        .security_events
        .with_label_values(&[kind.as_str()])
        .inc();
    tracing::warn!(kind = kind.as_str(), request_id, "security event");
}

/// Records an intrusion signal about `target` seen in request `request_id`
/// from `actor` ([`event`]) and counts it ([`counted`]). The counter goes up
/// even if the audit record cannot be written.
pub async fn raise(
    audit: &AuditLog,
    metrics: &Metrics,
    actor: &Actor,
    request_id: &str,
    kind: SecurityKind,
    target: String,
    detail: serde_json::Value,
) -> Result<(), AuditError> {
    counted(metrics, kind, request_id);
    let (event, outcome) = event(kind, target, detail);
    audit
        .append(actor, &event, outcome, request_id)
        .await
        .map(drop)
}
