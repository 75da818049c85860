//! `/admin/v1/audit*`: reading and verifying the audit trail (admin, auditor).

use axum::extract::{Query, State};
use axum::{Extension, Json};
use keyward_ca::Role;
use serde::Deserialize;

use super::Operator;
use crate::audit::{AuditEvent, Outcome};
use crate::http::ApiError;
use crate::state::AppState;
use crate::wire::{AuditRecords, AuditVerified};

const READERS: &[Role] = &[Role::Admin, Role::Auditor];

/// `GET /admin/v1/audit/verify`: recomputes the hash chain.
pub async fn verify(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
) -> Result<Json<AuditVerified>, ApiError> {
    op.require(&state, READERS).await?;
    let report = state
        .audit
        .verify_and_record(&op.actor, &op.request_id)
        .await?;
    Ok(Json(AuditVerified::from(&report)))
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
