//! Bulk transaction-MAC verification, the bank switch's feature
//! (`POST /admin/v1/macs/verify`, `kwctl mac verify`).
//!
//! - [`codec`]: a request body, JSON or binary (docs/protocol.md §6.6), to
//!   items for kms, with the count checked against `server.bulk_max_items`
//!   before any item is read; answers back to bytes, whole or streamed.
//! - [`engine`]: one batch from its items to its answers in order, counted
//!   once for the summary, the metrics and the one audit record.
//!
//! The scheduling is kms's ([`keyward_kms::Kms::verify_batch`]): it knows
//! the HSM workers, cuts the batch into jobs once and keeps every worker
//! fed; the engine only takes the jobs' answers in order. The limits and
//! how they relate are in [`keyward_config::bulk`].
//!
//! The route (`admin/macs.rs`) only translates HTTP to this and back; a
//! refusal is a [`BatchError`], mapped to a status once in `http/error.rs`.

pub mod codec;
pub mod engine;

pub use codec::{Encoding, Items};
pub use engine::{Caller, Run, refuse};

/// Why a bulk request was refused whole.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("{items} items is more than the {max} one request may carry")]
    TooLarge { items: usize, max: usize },
    #[error(transparent)]
    Frame(#[from] crate::wire::macs::FrameError),
    #[error("the body is not a JSON object with an items array: {0}")]
    Json(String),
    #[error(
        "expected Content-Type application/json or {}",
        crate::wire::macs::BINARY
    )]
    MediaType,
}

impl BatchError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "batch_too_large",
            Self::Frame(_) => "malformed_frame",
            Self::Json(_) => "invalid_request",
            Self::MediaType => "unsupported_media_type",
        }
    }
}
