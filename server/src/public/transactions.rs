//! `POST /v1/transactions`: a device's transaction, over a session
//! (docs/protocol.md §10.5). The protocol is in
//! [`crate::online::transaction`].

use axum::extract::State;
use axum::{Extension, Json};

use crate::http::ApiError;
use crate::online::{Device, Session};
use crate::state::AppState;
use crate::wire::transactions as wire;

pub async fn verify(
    State(state): State<AppState>,
    Extension(device): Extension<Device>,
    Extension(session): Extension<Session>,
    Json(body): Json<wire::TransactionRequest>,
) -> Result<Json<wire::TransactionAnswer>, ApiError> {
    Ok(Json(
        state.online.transaction(&device, &session, &body).await?,
    ))
}
