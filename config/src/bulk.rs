//! The limits of bulk MAC verification (`POST /admin/v1/macs/verify`,
//! `Kms::verify_macs`), named here together because each is sized
//! against the others:
//!
//! | limit | value | what it bounds |
//! | --- | --- | --- |
//! | `server.bulk_max_items` | [`DEFAULT_MAX_ITEMS`] (config) | items of one request; more is refused whole, 413 `batch_too_large` |
//! | [`MAX_CALL_ITEMS`] (`keyward_kms::MAX_BULK_ITEMS`) | 100 000 | items of one `Kms::verify_macs` call; more is `too_many_items` |
//! | [`JOB_ITEMS`] | 512 | items of one HSM job, the only chunking of a batch |
//!
//! A request is one kms call, so `server.bulk_max_items` may not exceed
//! [`MAX_CALL_ITEMS`] (config validation refuses it): a larger limit would
//! admit requests kms then refuses. [`JOB_ITEMS`] is far below both: a
//! 10 000-item batch is 20 jobs, enough to keep every HSM worker busy to the
//! end, and a job short enough (a few ms) that online requests sharing the
//! workers do not wait behind it.

/// Default of `server.bulk_max_items`.
pub const DEFAULT_MAX_ITEMS: usize = 100_000;

/// Most items one bulk verification call to kms may carry.
pub const MAX_CALL_ITEMS: usize = 100_000;

/// Items verified in one HSM job; a streamed answer advances by this much.
pub const JOB_ITEMS: usize = 512;

const _: () = assert!(DEFAULT_MAX_ITEMS <= MAX_CALL_ITEMS && JOB_ITEMS <= MAX_CALL_ITEMS);
