//! HTTP plumbing shared by the two listeners.
//!
//! - `error`: [`ApiError`], the one place errors become responses.
//! - `access`: [`access::Door`], refusals at a listener's door, audited.
//! - `layers`: the tower middleware stack (docs/stack-notes.md §8 order).
//! - [`idempotency`]: `Idempotency-Key` on mutating requests.

pub mod access;
pub mod error;
pub mod idempotency;
pub mod layers;

use std::time::Duration;

pub use error::ApiError;

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
        body_read_timeout: Duration::from_millis(s.body_read_timeout_ms.max(1)),
    }
}
