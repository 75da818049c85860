//! `POST /admin/v1/macs/verify`: bulk transaction-MAC verification for
//! back-end systems (a `service` certificate: the bank's transaction
//! switch) and for operators (`admin`, `operator`: `kwctl mac verify`).
//!
//! This route only translates HTTP to the bulk engine (`crate::bulk`) and
//! back: who may call, the encoding from `Content-Type`, whole or streamed
//! (`Accept: application/x-ndjson` or `?stream=1`), the answer's body.

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use keyward_ca::Role;
use serde::Deserialize;

use super::still_valid;
use crate::audit::Actor;
use crate::bulk::codec::{self, Streamer};
use crate::bulk::{self, Caller, Encoding, Run};
use crate::edge::identity::{CertKind, ClientIdentity};
use crate::http::ApiError;
use crate::http::access::{Door, DoorRefusal};
use crate::state::AppState;
use crate::wire::macs as wire;

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
                    req.extensions_mut().insert(Caller {
                        kind,
                        actor: id.actor(),
                        request_id: door.request_id,
                    });
                    return next.run(req).await;
                }
                (Some(_), Err(e)) => (id.actor(), e, role),
                (None, _) => (id.actor(), DoorRefusal::ForbiddenRole(ALLOWED), role),
            }
        }
        Some((id, None)) => (id.actor(), DoorRefusal::CertificateRequired, None),
        None => (Actor::Anonymous, DoorRefusal::CertificateRequired, None),
    };
    door.refuse(&state, &actor, role, refusal).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyQuery {
    /// `1`: stream the answer as chunks complete.
    stream: Option<u8>,
}

/// `POST /admin/v1/macs/verify`.
pub async fn verify(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<VerifyQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let encoding = Encoding::of_media_type(&media_type)?;
    let accept_ndjson = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains(wire::NDJSON));
    let stream = q.stream == Some(1) || (encoding == Encoding::Json && accept_ndjson);
    let items = match codec::decode(&body, encoding, state.config.server.bulk_max_items) {
        Ok(items) => items,
        Err(e) => {
            bulk::refuse(&state, &caller, &e, encoding).await?;
            return Err(e.into());
        }
    };
    drop(body);
    let count = items.len();
    let mut run = Run::start(&state, caller, items, encoding, stream)?;
    if stream {
        return Ok(streamed(run, encoding, count));
    }
    let mut outcomes = Vec::with_capacity(count);
    while let Some(job) = run.next().await {
        outcomes.extend(job);
    }
    let summary = run.finish().await?;
    Ok((
        [(header::CONTENT_TYPE, encoding.answer_type(false))],
        codec::whole_answer(encoding, &outcomes, summary),
    )
        .into_response())
}

/// The streamed answer: a task sends each job's results as soon as kms has
/// them. If the client goes away nothing more is started; the batch's audit
/// record is written either way, and if it cannot be the body ends with an
/// error (the client sees a cut-off answer, not a complete one).
fn streamed(mut run: Run, encoding: Encoding, count: usize) -> Response {
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes, std::io::Error>::new(4);
    tokio::spawn(async move {
        let mut out = Streamer::new(encoding);
        let mut sent = match out.head(count) {
            Some(head) => tx.send_data(Bytes::from(head)).await.is_ok(),
            None => true,
        };
        while sent {
            let Some(outcomes) = run.next().await else {
                break;
            };
            sent = tx
                .send_data(Bytes::from(out.results(&outcomes)))
                .await
                .is_ok();
        }
        run.stop();
        let Ok(summary) = run.finish().await else {
            tx.abort(std::io::Error::other("audit record not written"));
            return;
        };
        if let Some(tail) = out.tail(summary).filter(|_| sent) {
            let _ = tx.send_data(Bytes::from(tail)).await;
        }
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, encoding.answer_type(true))],
        Body::new(body),
    )
        .into_response()
}
