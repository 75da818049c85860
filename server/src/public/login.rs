//! `POST /v1/login/start`, `POST /v1/login/finish`: device login
//! (docs/protocol.md §10). The protocol is in [`crate::online::login`].
//!
//! Not behind the `Idempotency-Key` layer on purpose: a finish answer holds
//! a session token, which must never be stored, and a challenge is single
//! use anyway — a device whose answer was lost starts a new login.

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};

use crate::http::ApiError;
use crate::online::Device;
use crate::state::AppState;
use crate::wire::login as wire;

/// Step 1: the device's claims checked, a challenge (and maybe new keys).
pub async fn start(
    State(state): State<AppState>,
    Extension(device): Extension<Device>,
    Json(body): Json<wire::LoginStart>,
) -> Result<(StatusCode, Json<wire::LoginChallenge>), ApiError> {
    let answer = state.online.login_start(&device, &body).await?;
    Ok((StatusCode::CREATED, Json(answer)))
}

/// Step 2: the response checked; a session.
pub async fn finish(
    State(state): State<AppState>,
    Extension(device): Extension<Device>,
    Json(body): Json<wire::LoginFinish>,
) -> Result<Json<wire::LoginAnswer>, ApiError> {
    Ok(Json(state.online.login_finish(&device, &body).await?))
}
