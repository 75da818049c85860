//! `POST /admin/v1/channel/keys`: a new secure-channel RSA key
//! (`kwctl channel rotate-key`, docs/protocol.md §14.9). Admins only; the
//! work and its audit are [`crate::channel::Channels::rotate_key`]'s.

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use keyward_ca::Role;

use super::Operator;
use crate::http::ApiError;
use crate::state::AppState;
use crate::wire::channel as wire;

pub async fn rotate_key(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
) -> Result<(StatusCode, Json<wire::RotatedKey>), ApiError> {
    op.require(&state, &[Role::Admin]).await?;
    let r = state.channels.rotate_key(&op.actor, &op.request_id).await?;
    Ok((
        StatusCode::CREATED,
        Json(wire::RotatedKey {
            label: r.label,
            cert_serial: r.serial,
            previous: r.previous,
        }),
    ))
}
