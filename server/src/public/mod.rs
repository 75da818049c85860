//! The public (device) listener: the routes terminals call over mutual TLS
//! with their device certificate, one file per device protocol (mirroring
//! `admin/`). Handlers here only translate HTTP to the domain: the protocol
//! logic lives in [`crate::online`].
//!
//! - `ping`: `GET /v1/ping`, the identity the TLS layer saw (a device's
//!   first connectivity check).

mod ping;

use axum::Router;
use axum::routing::get;

use crate::http::{layers, stack_config};
use crate::metrics::Listener;
use crate::state::AppState;

/// Routes of the public (device) listener, with the middleware stack.
pub fn router(state: AppState) -> Router {
    let router = Router::new()
        .route("/v1/ping", get(ping::ping))
        .with_state(state.clone());
    layers::apply(
        router,
        &stack_config(&state, Listener::Public),
        state.metrics.clone(),
    )
}
