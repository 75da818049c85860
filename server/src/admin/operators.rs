//! `POST /admin/v1/operators`: operator certificates (admin only).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use keyward_ca::{IssueRequest, Role};

use super::Operator;
use super::certificates::issue_and_record;
use crate::http::ApiError;
use crate::state::AppState;

/// Certifies a new operator's key with a role.
pub async fn issue(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Json(body): Json<crate::wire::ca::OperatorRequest>,
) -> Result<Response, ApiError> {
    op.require(&state, &[Role::Admin]).await?;
    let role: Role = body.role.parse()?;
    let subject = format!("{} ({})", body.name, role.as_str());
    let req = IssueRequest::operator(body.name, role);
    issue_and_record(&state, &op, body.csr_pem.into_bytes(), req, subject)
        .await
        .map(|json| (StatusCode::CREATED, Json(json)).into_response())
}
