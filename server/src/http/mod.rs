//! HTTP plumbing shared by the listeners, and the public (device) router.
//!
//! - `error`: [`ApiError`], the one place errors become responses.
//! - `layers`: the tower middleware stack (docs/stack-notes.md §8 order).
//! - [`public_router`]: the device listener's routes. Device protocols come
//!   later; `/v1/ping` answers with the identity the TLS layer saw.

pub mod error;
pub mod layers;

use std::time::Duration;

use axum::routing::get;
use axum::{Extension, Json, Router};

pub use error::ApiError;

use crate::identity::{CertKind, ClientIdentity};
use crate::metrics::Listener;
use crate::state::AppState;

/// The stack limits of `listener` from the configuration.
pub fn stack_config(state: &AppState, listener: Listener) -> layers::StackConfig {
    let s = &state.config.server;
    layers::StackConfig {
        listener,
        request_timeout: Duration::from_millis(s.request_timeout_ms),
        max_body_bytes: s.max_body_bytes,
        max_concurrent_requests: s.max_concurrent_requests.max(1),
    }
}

/// Routes of the public (device) listener, with the middleware stack.
pub fn public_router(state: AppState) -> Router {
    let router = Router::new()
        .route("/v1/ping", get(ping))
        .with_state(state.clone());
    layers::apply(
        router,
        &stack_config(&state, Listener::Public),
        state.metrics.clone(),
    )
}

/// `GET /v1/ping`: who the server thinks the client is.
async fn ping(Extension(id): Extension<ClientIdentity>) -> Json<serde_json::Value> {
    let client = id.cert.as_ref().map(|c| {
        let (kind, device_id, role) = match &c.kind {
            CertKind::Device { device_id } => ("device", Some(device_id.clone()), None),
            CertKind::Operator(r) => ("operator", None, Some(r.as_str())),
            CertKind::Other => ("other", None, None),
        };
        serde_json::json!({
            "kind": kind,
            "common_name": c.common_name,
            "device_id": device_id,
            "role": role,
            "serial": c.serial,
        })
    });
    Json(serde_json::json!({
        "pong": true,
        "peer": id.peer.to_string(),
        "client": client,
    }))
}
