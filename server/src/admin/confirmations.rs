//! `GET /admin/v1/confirmations/{id}`: a transaction confirmation's state,
//! attempts and deliveries, for operators and auditors (docs/admin-api.md).

use axum::extract::{Path, State};
use axum::{Extension, Json};

use super::{ALL_ROLES, Operator};
use crate::http::ApiError;
use crate::state::AppState;
use crate::wire::confirmations as wire;

pub async fn show(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
) -> Result<Json<wire::ConfirmationView>, ApiError> {
    op.read(
        &state,
        ALL_ROLES,
        "confirmations.show",
        &format!("confirmation:{id}"),
    )
    .await?;
    let c = state.confirmations.show(&id).await?;
    let deliveries = state
        .outbox
        .messages_of(&c.id)
        .await
        .map_err(|e| ApiError::from(keyward_kms::KmsError::Database(e)))?;
    Ok(Json(wire::ConfirmationView {
        confirmation_id: c.id,
        device_id: c.device,
        issuer_id: c.issuer,
        customer_id: c.customer,
        state: c.state.as_str().to_owned(),
        attempts: c.attempts,
        max_attempts: c.max_attempts,
        amount_minor: c.amount_minor,
        currency: c.currency,
        payee_flagged: c.payee_flagged,
        created_at_ms: c.created_at_ms,
        expires_at_ms: c.expires_at_ms,
        decided_at_ms: c.decided_at_ms,
        deliveries,
    }))
}
