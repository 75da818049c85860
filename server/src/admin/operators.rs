//! `POST /admin/v1/operators`: operator certificates (admin only).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use keyward_ca::{IssueRequest, Role};
use serde::Deserialize;

use super::Operator;
use super::certificates::issue_and_record;
use crate::http::ApiError;
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorBody {
    /// PKCS#10 request, PEM, made by the new operator (the key stays with them).
    csr_pem: String,
    /// The operator's name: the certificate's CN.
    name: String,
    /// `admin`, `operator` or `auditor`: the certificate's OU.
    role: String,
}

/// Certifies a new operator's key with a role.
pub async fn issue(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Json(body): Json<OperatorBody>,
) -> Result<Response, ApiError> {
    op.require(&state, &[Role::Admin]).await?;
    let role: Role = body.role.parse()?;
    let subject = format!("{} ({})", body.name, role.as_str());
    let req = IssueRequest::operator(body.name, role);
    issue_and_record(&state, &op, body.csr_pem.into_bytes(), req, subject)
        .await
        .map(|json| (StatusCode::CREATED, Json(json)).into_response())
}
