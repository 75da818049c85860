//! `POST /admin/v1/macs/verify`: bulk transaction-MAC verification for
//! back-end systems (a `service` certificate: the bank's transaction
//! switch) and for operators (`admin`, `operator`: `kwctl mac verify`).
//!
//! The request is JSON or the binary encoding of docs/protocol.md §6.6; the
//! answer is one verdict per item, in order, in the request's encoding, all
//! at once or streamed as chunks complete (`Accept: application/x-ndjson`
//! or `?stream=1`). A batch over `server.bulk_max_items` is refused whole
//! (413 `batch_too_large`) and so is a binary frame that cannot be cut into
//! items (400 `malformed_frame`); anything wrong with one item is that
//! item's `error`. Items go to [`Kms::verify_macs`](keyward_kms::Kms) in
//! chunks of [`CHUNK`], which bounds both kms's per-call limit and how long
//! a streamed answer waits for its next bytes.
//!
//! One audit record per batch, with counts by result and error code; never
//! a message or a MAC.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use keyward_ca::Role;
use keyward_kms::service::{MacItem, MacOutcome};
use keyward_kms::types::{DeviceId, IssuerId, KeyVersion, MacAlgorithm, Padding};
use serde::Deserialize;

use super::still_valid;
use crate::audit::{Actor, AuditEvent, Outcome};
use crate::edge::identity::{CertKind, ClientIdentity};
use crate::http::ApiError;
use crate::http::access::Door;
use crate::state::AppState;
use crate::wire::macs as wire;

/// Items handed to kms at once (within its `MAX_BULK_ITEMS`).
pub const CHUNK: usize = 4096;

/// Chunks verified at once: while one finishes on the HSM workers the next
/// is already queued for them.
const IN_FLIGHT: usize = 2;

/// Why a bulk request was refused whole; mapped to HTTP in `http/error.rs`.
#[derive(Debug, thiserror::Error)]
pub enum MacBatchError {
    #[error("{items} items is more than the {max} one request may carry")]
    TooLarge { items: usize, max: usize },
    #[error(transparent)]
    Frame(#[from] wire::FrameError),
    #[error("the body is not a JSON object with an items array: {0}")]
    Json(String),
    #[error("expected Content-Type application/json or {}", wire::BINARY)]
    MediaType,
}

impl MacBatchError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "batch_too_large",
            Self::Frame(_) => "malformed_frame",
            Self::Json(_) => "invalid_request",
            Self::MediaType => "unsupported_media_type",
        }
    }
}

/// Who called: a service, or an operator with a role that may verify.
#[derive(Debug, Clone)]
pub struct Verifier {
    /// `service` or `operator`: a bounded metric label.
    pub kind: &'static str,
    pub actor: Actor,
    pub request_id: String,
}

/// The roles, by name, that may call this route (for the refusal message).
const ALLOWED: &str = "service, admin or operator";

/// Admits a valid service certificate or an admin/operator one; refuses
/// (and audits) devices, auditors, other certificates and no certificate.
pub async fn require_verifier(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let door = Door::of(&req, "/admin/v1/macs/verify");
    let identity = req.extensions().get::<ClientIdentity>().cloned();
    let (actor, refusal, role) = match identity.as_ref().map(|i| (i, i.cert.as_ref())) {
        Some((id, Some(cert))) => {
            let kind = match &cert.kind {
                CertKind::Service { .. } => Some("service"),
                CertKind::Operator(Role::Admin | Role::Operator) => Some("operator"),
                _ => None,
            };
            let role = match &cert.kind {
                CertKind::Operator(r) => Some(r.as_str().to_owned()),
                CertKind::Device { .. } => Some("device".to_owned()),
                _ => None,
            };
            match (kind, still_valid(&state, cert).await) {
                (Some(kind), Ok(())) => {
                    req.extensions_mut().insert(Verifier {
                        kind,
                        actor: id.actor(),
                        request_id: door.request_id,
                    });
                    return next.run(req).await;
                }
                (Some(_), Err(e)) => (id.actor(), e, role),
                (None, _) => (id.actor(), ApiError::forbidden_role(ALLOWED), role),
            }
        }
        Some((id, None)) => (id.actor(), ApiError::certificate_required(), None),
        None => (Actor::Anonymous, ApiError::certificate_required(), None),
    };
    let known = [
        "certificate_revoked",
        "forbidden_role",
        "client_certificate_required",
    ];
    door.refuse(&state, &actor, role, refusal, &known).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyQuery {
    /// `1`: stream the answer as chunks complete.
    stream: Option<u8>,
}

/// The encoding of a request and its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Json,
    Binary,
}

impl Encoding {
    fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Binary => "binary",
        }
    }
}

/// An item ready for kms, or why it cannot be checked; the algorithm (when
/// known) labels the metric.
type Prepared = (Option<MacAlgorithm>, Result<MacItem, &'static str>);

/// `POST /admin/v1/macs/verify`.
pub async fn verify(
    State(state): State<AppState>,
    Extension(caller): Extension<Verifier>,
    Query(q): Query<VerifyQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let max = state.config.server.bulk_max_items;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let encoding = match content_type.as_str() {
        "application/json" => Encoding::Json,
        t if t == wire::BINARY => Encoding::Binary,
        _ => return Err(MacBatchError::MediaType.into()),
    };
    let accept_ndjson = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains(wire::NDJSON));
    let stream = q.stream == Some(1) || (encoding == Encoding::Json && accept_ndjson);
    let items = match decode(&body, encoding, max) {
        Ok(items) => items,
        Err(e) => {
            refuse(&state, &caller, &e, encoding).await?;
            return Err(e.into());
        }
    };
    drop(body);
    state
        .metrics
        .mac_batch_items
        .with_label_values(&[caller.kind])
        .observe(items.len() as f64);
    if stream {
        return Ok(streamed(state, caller, items, encoding));
    }
    let mut verdicts = Vec::with_capacity(items.len());
    let mut chunks = Chunks::start(&state, items);
    while let Some(chunk) = chunks.next().await {
        verdicts.extend(chunk);
    }
    let tally = chunks.finish().await;
    tally.finish(&state, &caller, encoding, false).await?;
    Ok(match encoding {
        Encoding::Json => {
            let mut summary = wire::Summary::default();
            let results = verdicts
                .iter()
                .map(|v| {
                    summary.add(v);
                    wire::ItemResult::from(v)
                })
                .collect();
            Json(wire::VerifyAnswer {
                count: verdicts.len() as u64,
                summary,
                results,
            })
            .into_response()
        }
        Encoding::Binary => {
            let mut out = wire::encode_answer_header(verdicts.len() as u32);
            for v in &verdicts {
                wire::encode_verdict(&mut out, v);
            }
            ([(header::CONTENT_TYPE, wire::BINARY)], out).into_response()
        }
    })
}

/// Audits a batch refused whole (fail closed: no record, 503).
async fn refuse(
    state: &AppState,
    caller: &Verifier,
    e: &MacBatchError,
    encoding: Encoding,
) -> Result<(), ApiError> {
    let code = e.code();
    let mut detail = serde_json::json!({ "encoding": encoding.as_str(), "code": code });
    if let MacBatchError::TooLarge { items, max } = e {
        detail["items"] = (*items).into();
        detail["max"] = (*max).into();
    }
    let event = AuditEvent::Online {
        action: "mac.verify_batch",
        target: "-".into(),
        detail,
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

/// Cuts the body into items; the count is checked before any item is read.
fn decode(body: &[u8], encoding: Encoding, max: usize) -> Result<Vec<Prepared>, MacBatchError> {
    match encoding {
        Encoding::Binary => {
            let count = wire::decode_request_header(body)? as usize;
            if count > max {
                return Err(MacBatchError::TooLarge { items: count, max });
            }
            Ok(wire::decode_request(body)?
                .into_iter()
                .map(binary_item)
                .collect())
        }
        Encoding::Json => {
            #[derive(Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Loose {
                items: Vec<serde_json::Value>,
            }
            let loose: Loose =
                serde_json::from_slice(body).map_err(|e| MacBatchError::Json(e.to_string()))?;
            if loose.items.len() > max {
                return Err(MacBatchError::TooLarge {
                    items: loose.items.len(),
                    max,
                });
            }
            Ok(loose.items.into_iter().map(json_item).collect())
        }
    }
}

fn algorithm(name: &str) -> Result<MacAlgorithm, &'static str> {
    name.parse().map_err(|_| "unsupported_algorithm")
}

fn padding(n: u8) -> Result<Option<Padding>, &'static str> {
    match n {
        0 => Ok(None),
        n => Padding::from_number(n)
            .map(Some)
            .map_err(|_| "invalid_padding"),
    }
}

fn issuer(s: &str) -> Result<IssuerId, &'static str> {
    s.parse().map_err(|_| "invalid_issuer_id")
}

fn json_item(v: serde_json::Value) -> Prepared {
    let Ok(it) = serde_json::from_value::<wire::Item>(v) else {
        return (None, Err("invalid_item"));
    };
    let alg = algorithm(&it.algorithm);
    let known = alg.ok();
    let item = (|| {
        let algorithm = alg?;
        let device: DeviceId = it.device_id.parse().map_err(|_| "invalid_device_id")?;
        let message = B64.decode(&it.message).map_err(|_| "invalid_message")?;
        // CUP-ECB's MAC is 8 ASCII hex characters; they may come as they are.
        let mac = if algorithm == MacAlgorithm::CupEcb
            && it.mac.len() == 8
            && it.mac.bytes().all(|b| b.is_ascii_hexdigit())
        {
            it.mac.into_bytes()
        } else {
            B64.decode(&it.mac).map_err(|_| "invalid_mac")?
        };
        Ok(MacItem {
            issuer: issuer(&it.issuer_id)?,
            device,
            version: KeyVersion(it.key_version),
            algorithm,
            padding: padding(it.padding.unwrap_or(0))?,
            message,
            mac,
        })
    })();
    (known, item)
}

fn binary_item(it: wire::BinaryItem) -> Prepared {
    let alg = wire::algorithm_name(it.algorithm)
        .ok_or("unsupported_algorithm")
        .and_then(algorithm);
    let known = alg.ok();
    let item = (|| {
        let issuer_text = std::str::from_utf8(&it.issuer_id).map_err(|_| "invalid_issuer_id")?;
        Ok(MacItem {
            issuer: issuer(issuer_text)?,
            device: DeviceId::from_bytes(it.device_id),
            version: KeyVersion(it.key_version),
            algorithm: alg?,
            padding: padding(it.padding)?,
            message: it.message,
            mac: it.mac,
        })
    })();
    (known, item)
}

/// Counts of one batch, for the audit record and the metrics (added to the
/// counters once per batch, not once per item).
#[derive(Debug, Default)]
struct Tally {
    summary: wire::Summary,
    codes: BTreeMap<String, u64>,
    by_label: HashMap<(&'static str, &'static str), u64>,
    /// When kms first started and last finished on this batch's chunks:
    /// they overlap, so the batch's HSM time is the span, not a sum.
    hsm: Option<(Instant, Instant)>,
}

impl Tally {
    fn add(&mut self, alg: Option<MacAlgorithm>, v: &wire::Verdict) {
        self.summary.add(v);
        if let wire::Verdict::Error(code) = v {
            *self.codes.entry(code.clone()).or_default() += 1;
        }
        let alg = alg.map_or("unknown", MacAlgorithm::as_str);
        *self.by_label.entry((alg, v.as_str())).or_default() += 1;
    }

    fn merge(&mut self, other: Tally) {
        self.summary.valid += other.summary.valid;
        self.summary.invalid += other.summary.invalid;
        self.summary.error += other.summary.error;
        for (code, n) in other.codes {
            *self.codes.entry(code).or_default() += n;
        }
        for (labels, n) in other.by_label {
            *self.by_label.entry(labels).or_default() += n;
        }
        self.hsm = match (self.hsm, other.hsm) {
            (Some((a0, a1)), Some((b0, b1))) => Some((a0.min(b0), a1.max(b1))),
            (a, b) => a.or(b),
        };
    }

    /// The one audit record of a batch; counts only.
    async fn finish(
        &self,
        state: &AppState,
        caller: &Verifier,
        encoding: Encoding,
        streamed: bool,
    ) -> Result<(), ApiError> {
        for ((alg, result), n) in &self.by_label {
            state
                .metrics
                .mac_verifications
                .with_label_values(&[*alg, *result])
                .inc_by(*n);
        }
        state
            .metrics
            .mac_batch_hsm_seconds
            .with_label_values(&[caller.kind])
            .observe(self.hsm.map_or(0.0, |(from, to)| (to - from).as_secs_f64()));
        let event = AuditEvent::Online {
            action: "mac.verify_batch",
            target: "-".into(),
            detail: serde_json::json!({
                "items": self.summary.total(),
                "valid": self.summary.valid,
                "invalid": self.summary.invalid,
                "error": self.summary.error,
                "error_codes": self.codes,
                "encoding": encoding.as_str(),
                "streamed": streamed,
            }),
        };
        state
            .audit
            .append(&caller.actor, &event, Outcome::Success, &caller.request_id)
            .await
            .map(drop)
            .map_err(ApiError::audit_unavailable)
    }
}

/// A chunk being verified: its verdicts and counts when done.
type ChunkTask = tokio::task::JoinHandle<(Vec<wire::Verdict>, Tally)>;

/// Verifies a batch [`CHUNK`] items at a time with [`IN_FLIGHT`] chunks
/// running at once (the HSM workers never wait for the next chunk to be
/// handed over); [`Chunks::next`] gives each chunk's verdicts in order.
struct Chunks {
    state: AppState,
    rest: std::vec::IntoIter<Prepared>,
    /// Each running chunk's item count and task.
    running: VecDeque<(usize, ChunkTask)>,
    tally: Tally,
}

impl Chunks {
    fn start(state: &AppState, items: Vec<Prepared>) -> Self {
        let mut chunks = Self {
            state: state.clone(),
            rest: items.into_iter(),
            running: VecDeque::with_capacity(IN_FLIGHT),
            tally: Tally::default(),
        };
        chunks.fill();
        chunks
    }

    fn fill(&mut self) {
        while self.running.len() < IN_FLIGHT {
            let chunk: Vec<Prepared> = self.rest.by_ref().take(CHUNK).collect();
            if chunk.is_empty() {
                return;
            }
            let len = chunk.len();
            let task = tokio::spawn(run_chunk(self.state.clone(), chunk));
            self.running.push_back((len, task));
        }
    }

    /// The next chunk's verdicts, `None` after the last.
    async fn next(&mut self) -> Option<Vec<wire::Verdict>> {
        let (len, task) = self.running.pop_front()?;
        self.fill();
        Some(match task.await {
            Ok((verdicts, t)) => {
                self.tally.merge(t);
                verdicts
            }
            // A panicked chunk: its items are errors, the batch goes on.
            Err(_) => {
                let v = vec![wire::Verdict::Error("internal_error".into()); len];
                for item in &v {
                    self.tally.add(None, item);
                }
                v
            }
        })
    }

    /// Stops sending chunks; the ones running are finished and counted.
    async fn finish(mut self) -> Tally {
        self.rest = Vec::new().into_iter();
        while self.next().await.is_some() {}
        self.tally
    }
}

/// Verifies one chunk: the items that could be read go to kms together,
/// the others keep their error. A failure of kms as a whole (the pool is
/// closed, say) is every item's error, not the request's.
async fn run_chunk(state: AppState, chunk: Vec<Prepared>) -> (Vec<wire::Verdict>, Tally) {
    let mut tally = Tally::default();
    let mut algs = Vec::with_capacity(chunk.len());
    let mut verdicts: Vec<Option<wire::Verdict>> = Vec::with_capacity(chunk.len());
    let mut ready = Vec::with_capacity(chunk.len());
    for (alg, item) in chunk {
        algs.push(alg);
        match item {
            Ok(item) => {
                verdicts.push(None);
                ready.push(item);
            }
            Err(code) => verdicts.push(Some(wire::Verdict::Error(code.to_owned()))),
        }
    }
    let started = Instant::now();
    let outcomes = match state.kms.verify_macs(ready).await {
        Ok(o) => o.into_iter().map(verdict).collect::<Vec<_>>(),
        Err(e) => {
            let n = verdicts.iter().filter(|v| v.is_none()).count();
            vec![wire::Verdict::Error(e.code().to_owned()); n]
        }
    };
    tally.hsm = Some((started, Instant::now()));
    let mut outcomes = outcomes.into_iter();
    let out: Vec<wire::Verdict> = verdicts
        .into_iter()
        .map(|v| {
            v.or_else(|| outcomes.next())
                .unwrap_or_else(|| wire::Verdict::Error("internal_error".into()))
        })
        .collect();
    for (alg, v) in algs.into_iter().zip(&out) {
        tally.add(alg, v);
    }
    (out, tally)
}

fn verdict(o: MacOutcome) -> wire::Verdict {
    match o {
        MacOutcome::Valid => wire::Verdict::Valid,
        MacOutcome::Invalid => wire::Verdict::Invalid,
        MacOutcome::Error(code) => wire::Verdict::Error(code.to_owned()),
    }
}

/// The streamed answer: a task verifies chunk after chunk and sends each
/// chunk's results as soon as it has them. If the client goes away the task
/// stops; the batch's audit record is written either way, and if it cannot
/// be the body ends with an error (the client sees a cut-off answer, not a
/// complete one).
fn streamed(
    state: AppState,
    caller: Verifier,
    items: Vec<Prepared>,
    encoding: Encoding,
) -> Response {
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes, std::io::Error>::new(4);
    let count = items.len();
    tokio::spawn(async move {
        let mut sent = true;
        if encoding == Encoding::Binary {
            let head = wire::encode_answer_header(count as u32);
            sent = tx.send_data(Bytes::from(head)).await.is_ok();
        }
        let mut index = 0u64;
        let mut chunks = Chunks::start(&state, if sent { items } else { Vec::new() });
        while sent {
            let Some(verdicts) = chunks.next().await else {
                break;
            };
            let mut out = Vec::with_capacity(verdicts.len() * 32);
            for v in &verdicts {
                match encoding {
                    Encoding::Binary => wire::encode_verdict(&mut out, v),
                    Encoding::Json => {
                        let line = wire::StreamLine {
                            index: Some(index),
                            item: Some(v.into()),
                            summary: None,
                        };
                        if serde_json::to_writer(&mut out, &line).is_ok() {
                            out.push(b'\n');
                        }
                    }
                }
                index += 1;
            }
            sent = tx.send_data(Bytes::from(out)).await.is_ok();
        }
        let tally = chunks.finish().await;
        let audited = tally.finish(&state, &caller, encoding, true).await;
        if audited.is_err() {
            tx.abort(std::io::Error::other("audit record not written"));
            return;
        }
        if sent && encoding == Encoding::Json {
            let line = wire::StreamLine {
                index: None,
                item: None,
                summary: Some(tally.summary),
            };
            if let Ok(mut out) = serde_json::to_vec(&line) {
                out.push(b'\n');
                let _ = tx.send_data(Bytes::from(out)).await;
            }
        }
    });
    let content_type = match encoding {
        Encoding::Json => wire::NDJSON,
        Encoding::Binary => wire::BINARY,
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, content_type)],
        Body::new(body),
    )
        .into_response()
}
