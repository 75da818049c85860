//! `/admin/v1/audit*`: reading and verifying the audit trail (admin, auditor).

use axum::extract::{Query, State};
use axum::{Extension, Json};
use keyward_ca::Role;
use serde::Deserialize;

use super::Operator;
use crate::audit::{AuditEvent, Outcome};
use crate::http::ApiError;
use crate::state::AppState;

const READERS: &[Role] = &[Role::Admin, Role::Auditor];

/// `GET /admin/v1/audit/verify`: recomputes the hash chain.
pub async fn verify(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
) -> Result<Json<serde_json::Value>, ApiError> {
    op.require(&state, READERS).await?;
    let report = state.audit.verify_chain().await?;
    // Recorded after the check, so the check covers what came before it.
    op.audit(
        &state,
        &AuditEvent::AuditVerified {
            records: report.records,
            first_bad: report.first_bad,
        },
        if report.ok() {
            Outcome::Success
        } else {
            Outcome::Failed {
                code: "audit_chain_broken",
            }
        },
    )
    .await?;
    Ok(Json(serde_json::json!({
        "ok": report.ok(),
        "records": report.records,
        "first_bad": report.first_bad,
        "problem": report.problem,
        "head_seq": report.head_seq,
    })))
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
) -> Result<Json<serde_json::Value>, ApiError> {
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
    Ok(Json(serde_json::json!({ "records": records })))
}
