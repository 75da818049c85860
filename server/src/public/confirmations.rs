//! `POST /v1/confirmations` and `POST /v1/confirmations/{id}/confirm`:
//! transaction confirmation over a second channel, over a session
//! (docs/protocol.md §11). The protocol is [`crate::confirmation`]'s; this
//! file reads the wire into its requests and writes its answers back.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use crate::confirmation::ConfirmRequest;
use crate::http::ApiError;
use crate::online::{Device, Session};
use crate::state::AppState;
use crate::wire::confirmations as wire;

/// The body is the transaction, kept byte for byte.
pub async fn submit(
    State(state): State<AppState>,
    Extension(device): Extension<Device>,
    Extension(session): Extension<Session>,
    body: Bytes,
) -> Result<(StatusCode, Json<wire::Submitted>), ApiError> {
    let s = state.confirmations.submit(&device, &session, &body).await?;
    Ok((
        StatusCode::CREATED,
        Json(wire::Submitted {
            confirmation_id: s.id,
            expires_at_ms: s.expires_at_ms,
            max_attempts: s.max_attempts,
            payee_flagged: s.payee_flagged,
        }),
    ))
}

pub async fn confirm(
    State(state): State<AppState>,
    Extension(device): Extension<Device>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
    Json(body): Json<wire::Confirm>,
) -> Result<Json<wire::Executed>, ApiError> {
    let b64 = |v: &str, what: &'static str| {
        B64.decode(v)
            .map_err(|_| ApiError::bad_request("invalid_input", what))
    };
    let req = ConfirmRequest {
        id,
        transaction: b64(&body.transaction, "transaction is not base64")?,
        code: body.code,
        signature: b64(&body.signature, "signature is not base64")?,
    };
    let done = state.confirmations.confirm(&device, &session, req).await?;
    Ok(Json(wire::Executed {
        confirmation_id: done.id,
        state: "executed".to_owned(),
        executed_at_ms: done.executed_at_ms,
    }))
}
