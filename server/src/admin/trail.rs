//! `/admin/v1/audit*`: reading and verifying the audit trail (admin, auditor).

use axum::extract::{Query, State};
use axum::{Extension, Json};
use keyward_ca::Role;
use serde::Deserialize;

use super::Operator;
use crate::audit::{AuditError, AuditEvent, Outcome};
use crate::http::ApiError;
use crate::state::AppState;
use crate::wire::{AuditCheckpoint, AuditRecords, AuditVerified};

const READERS: &[Role] = &[Role::Admin, Role::Auditor];

/// `GET /admin/v1/audit/verify`: recomputes the hash chain and its MACs and
/// compares with the HSM checkpoint. With the fields of a stored signed
/// checkpoint as query parameters (`seq`, `hash`, `at_ms`, `signature`,
/// `key`, `key_sha256`), also checks the trail against it.
pub async fn verify(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Query(against): Query<AgainstQuery>,
) -> Result<Json<AuditVerified>, ApiError> {
    op.require(&state, READERS).await?;
    let stored = against.checkpoint()?;
    let report = state
        .audit
        .verify_and_record(&op.actor, &op.request_id, stored.as_ref())
        .await?;
    Ok(Json(AuditVerified::from(&report)))
}

/// A stored checkpoint, as query parameters: all or none.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgainstQuery {
    seq: Option<i64>,
    hash: Option<String>,
    at_ms: Option<i64>,
    signature: Option<String>,
    key: Option<String>,
    key_sha256: Option<String>,
}

impl AgainstQuery {
    fn checkpoint(self) -> Result<Option<AuditCheckpoint>, ApiError> {
        match self {
            Self {
                seq: None,
                hash: None,
                at_ms: None,
                signature: None,
                key: None,
                key_sha256: None,
            } => Ok(None),
            Self {
                seq: Some(seq),
                hash: Some(hash),
                at_ms: Some(at_ms),
                signature: Some(signature),
                key: Some(key),
                key_sha256: Some(key_sha256),
            } => Ok(Some(AuditCheckpoint {
                seq,
                hash,
                at_ms,
                signature,
                key,
                key_sha256,
            })),
            _ => Err(AuditError::InvalidCheckpoint(
                "give all of seq, hash, at_ms, signature, key and key_sha256, or none",
            )
            .into()),
        }
    }
}

/// `GET /admin/v1/audit/checkpoint`: the head, verified from the HSM
/// checkpoint and signed by the HSM audit signing key, for the operator to
/// store outside the installation (409 `audit_chain_broken` while the trail
/// does not verify).
pub async fn checkpoint(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
) -> Result<Json<AuditCheckpoint>, ApiError> {
    op.require(&state, READERS).await?;
    let signed = state.audit.signed_checkpoint().await?;
    op.audit(
        &state,
        &AuditEvent::OperatorAction {
            action: "audit.checkpoint",
            target: format!("seq:{}", signed.seq),
        },
        Outcome::Success,
    )
    .await?;
    Ok(Json(signed))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecentQuery {
    limit: Option<i64>,
}

/// `GET /admin/v1/audit?limit=N`: the newest records (default 100, at most 1000).
pub async fn recent(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Query(q): Query<RecentQuery>,
) -> Result<Json<AuditRecords>, ApiError> {
    op.require(&state, READERS).await?;
    op.audit(
        &state,
        &AuditEvent::OperatorAction {
            action: "audit.read",
            target: "-".into(),
        },
        Outcome::Success,
    )
    .await?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let records = state.audit.recent(limit).await?;
    Ok(Json(AuditRecords { records }))
}
