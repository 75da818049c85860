//! `POST /admin/v1/operators` and `POST /admin/v1/services`: client
//! certificates for people and for back-end systems (admin only).

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

/// Certifies a back-end system's key (profile `service`, CN = name): what
/// the transaction switch presents to `POST /admin/v1/macs/verify`.
pub async fn issue_service(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Json(body): Json<crate::wire::ca::ServiceRequest>,
) -> Result<Response, ApiError> {
    op.require(&state, &[Role::Admin]).await?;
    let subject = format!("{} (service)", body.name);
    let req = IssueRequest::service(body.name);
    issue_and_record(&state, &op, body.csr_pem.into_bytes(), req, subject)
        .await
        .map(|json| (StatusCode::CREATED, Json(json)).into_response())
}
