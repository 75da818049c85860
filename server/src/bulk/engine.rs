//! One batch from its items to its answers: kms verifies it job by job
//! ([`keyward_kms::MacBatch`]); the engine takes the answers in order and
//! counts them once, for the summary, the metrics (added once per batch,
//! not once per item) and the batch's one audit record (counts only, never
//! a message or a MAC).

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use keyward_kms::types::MacAlgorithm;
use keyward_kms::{MacBatch, MacOutcome};

use super::{BatchError, Encoding, Items};
use crate::audit::{Actor, AuditEvent, Outcome};
use crate::http::ApiError;
use crate::state::AppState;
use crate::wire::macs::Summary;

/// Who asked for a batch.
#[derive(Debug, Clone)]
pub struct Caller {
    /// `service` or `operator`: a bounded metric label.
    pub kind: &'static str,
    pub actor: Actor,
    pub request_id: String,
}

/// A batch being verified: [`Run::next`] gives the answers in order, job by
/// job; [`Run::finish`] writes the metrics and the audit record.
#[derive(Debug)]
pub struct Run {
    state: AppState,
    caller: Caller,
    encoding: Encoding,
    streamed: bool,
    batch: MacBatch,
    algorithms: std::vec::IntoIter<Option<MacAlgorithm>>,
    tally: Tally,
    started: Instant,
    last: Option<Instant>,
}

impl Run {
    /// Starts verifying `items` (already within `server.bulk_max_items`).
    pub fn start(
        state: &AppState,
        caller: Caller,
        items: Items,
        encoding: Encoding,
        streamed: bool,
    ) -> Result<Self, BatchError> {
        state
            .metrics
            .mac_batch_items
            .with_label_values(&[caller.kind])
            .observe(items.len() as f64);
        // Refused only over kms's per-call ceiling, which config validation
        // keeps `server.bulk_max_items` under.
        let count = items.len();
        let batch = state
            .kms
            .verify_batch(items.items)
            .map_err(|_| BatchError::TooLarge {
                items: count,
                max: keyward_kms::MAX_BULK_ITEMS,
            })?;
        Ok(Self {
            state: state.clone(),
            caller,
            encoding,
            streamed,
            batch,
            algorithms: items.algorithms.into_iter(),
            tally: Tally::default(),
            started: Instant::now(),
            last: None,
        })
    }

    /// The next answers in input order, counted; `None` after the last.
    pub async fn next(&mut self) -> Option<Vec<MacOutcome>> {
        let outcomes = self.batch.next().await?;
        self.last = Some(Instant::now());
        for o in &outcomes {
            let alg = self.algorithms.next().flatten();
            self.tally.add(alg, o);
        }
        Some(outcomes)
    }

    /// Verifies nothing more than what is under way (the client went away).
    pub fn stop(&mut self) {
        self.batch.stop();
    }

    /// Counts what is still running, then the metrics and the one audit
    /// record (fail closed: without it the answer is an error). Gives the
    /// batch's summary.
    pub async fn finish(mut self) -> Result<Summary, ApiError> {
        self.stop();
        while self.next().await.is_some() {}
        let Self {
            state,
            caller,
            tally,
            ..
        } = &self;
        for ((alg, result), n) in &tally.by_label {
            state
                .metrics
                .mac_verifications
                .with_label_values(&[*alg, *result])
                .inc_by(*n);
        }
        // Jobs overlap: the batch's HSM time is its span, not a sum.
        let hsm = self.last.map_or(0.0, |l| (l - self.started).as_secs_f64());
        state
            .metrics
            .mac_batch_hsm_seconds
            .with_label_values(&[caller.kind])
            .observe(hsm);
        let event = AuditEvent::MacBatchVerified {
            summary: tally.summary,
            error_codes: tally.codes.clone(),
            encoding: self.encoding,
            streamed: self.streamed,
        };
        state
            .audit
            .append(&caller.actor, &event, Outcome::Success, &caller.request_id)
            .await
            .map_err(ApiError::audit_unavailable)?;
        crate::fault_point!("bulk.batch.audited");
        Ok(tally.summary)
    }
}

/// Audits a batch refused whole (fail closed: no record, 503).
pub async fn refuse(
    state: &AppState,
    caller: &Caller,
    e: &BatchError,
    encoding: Encoding,
) -> Result<(), ApiError> {
    let code = e.code();
    let event = AuditEvent::MacBatchRefused {
        code,
        encoding,
        too_large: match e {
            BatchError::TooLarge { items, max } => Some((*items, *max)),
            _ => None,
        },
    };
    state
        .audit
        .append(
            &caller.actor,
            &event,
            Outcome::Refused { code },
            &caller.request_id,
        )
        .await
        .map(drop)
        .map_err(ApiError::audit_unavailable)
}

/// Counts of one batch by result, by error code, and by metric labels.
#[derive(Debug, Default)]
struct Tally {
    summary: Summary,
    codes: BTreeMap<&'static str, u64>,
    by_label: HashMap<(&'static str, &'static str), u64>,
}

impl Tally {
    fn add(&mut self, alg: Option<MacAlgorithm>, o: &MacOutcome) {
        self.summary.add_outcome(o);
        let result = match o {
            MacOutcome::Valid => "valid",
            MacOutcome::Invalid => "invalid",
            MacOutcome::Error(e) => {
                *self.codes.entry(e.code()).or_default() += 1;
                "error"
            }
        };
        let alg = alg.map_or("unknown", MacAlgorithm::as_str);
        *self.by_label.entry((alg, result)).or_default() += 1;
    }
}
