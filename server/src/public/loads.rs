//! `POST /v1/loads`, `POST /v1/loads/{id}/report`, `POST /v1/loads/status`:
//! the e-purse load over a session (docs/protocol.md §13). The protocol is
//! [`crate::load`]'s; this file reads the wire into its requests and writes
//! its answers back.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use crate::http::ApiError;
use crate::load::{Settled, Signed};
use crate::online::{Device, Session};
use crate::state::AppState;
use crate::wire::loads as wire;

fn signed(body: wire::Signed) -> Result<Signed, ApiError> {
    let b64 = |v: &str, what: &'static str| {
        B64.decode(v)
            .map_err(|_| ApiError::bad_request("invalid_input", what))
    };
    Ok(Signed {
        payload: b64(&body.payload, "payload is not base64")?,
        signature: b64(&body.signature, "signature is not base64")?,
    })
}

fn state(s: Settled) -> wire::LoadState {
    wire::LoadState {
        load_id: s.load_id,
        state: s.state.as_str().to_owned(),
    }
}

pub async fn request(
    State(app): State<AppState>,
    Extension(device): Extension<Device>,
    Extension(session): Extension<Session>,
    Json(body): Json<wire::Signed>,
) -> Result<(StatusCode, Json<wire::Permit>), ApiError> {
    let p = app.loads.request(&device, &session, signed(body)?).await?;
    Ok((
        StatusCode::CREATED,
        Json(wire::Permit {
            load_id: p.load_id,
            permit: B64.encode(&p.permit),
            signature: B64.encode(&p.signature),
            balance_after_minor: p.balance_after_minor,
            certificate_chain: p.chain_pem,
        }),
    ))
}

pub async fn report(
    State(app): State<AppState>,
    Extension(device): Extension<Device>,
    Extension(_session): Extension<Session>,
    Path(id): Path<String>,
    Json(body): Json<wire::Signed>,
) -> Result<Json<wire::LoadState>, ApiError> {
    let s = app.loads.report(&device, &id, signed(body)?).await?;
    Ok(Json(state(s)))
}

pub async fn status(
    State(app): State<AppState>,
    Extension(device): Extension<Device>,
    Extension(_session): Extension<Session>,
    Json(body): Json<wire::Signed>,
) -> Result<Json<wire::StatusSettled>, ApiError> {
    let settled = app.loads.status(&device, signed(body)?).await?;
    Ok(Json(wire::StatusSettled {
        settled: settled.into_iter().map(state).collect(),
    }))
}
