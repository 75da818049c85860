//! `POST /admin/v1/outbox/receipts`: the SMS/IM gateway reports that a
//! message was delivered or failed (docs/protocol.md §12.4). Two
//! credentials: the gateway's `service` client certificate (mutual TLS, as
//! every admin caller) and a Standard Webhooks v1 signature under a secret
//! of `[outbox.receipts]`, with its timestamp window and replay check
//! (`crate::outbox::receipts`). Each receipt and each refusal is audited.

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use keyward_kms::db::now_ms;
use serde_json::json;

use super::still_valid;
use crate::audit::{Actor, AuditEvent, Outcome};
use crate::edge::identity::{CertKind, ClientIdentity};
use crate::http::ApiError;
use crate::http::access::{Door, DoorRefusal};
use crate::outbox::receipts::{Checked, ReceiptError};
use crate::state::AppState;

/// The caller this route admitted.
#[derive(Debug, Clone)]
pub struct Gateway {
    actor: Actor,
    request_id: String,
}

/// Admits a valid `service` certificate only; refuses (and audits) any
/// other certificate and none.
pub async fn require_service(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let door = Door::of(&req, "/admin/v1/outbox/receipts");
    let identity = req.extensions().get::<ClientIdentity>().cloned();
    let (actor, refusal, role) = match identity.as_ref().map(|i| (i, i.cert.as_ref())) {
        Some((id, Some(cert))) => {
            let role = match &cert.kind {
                CertKind::Operator(r) => Some(r.as_str().to_owned()),
                CertKind::Device { .. } => Some("device".to_owned()),
                _ => None,
            };
            let service = matches!(cert.kind, CertKind::Service { .. });
            match (service, still_valid(&state, cert).await) {
                (true, Ok(())) => {
                    req.extensions_mut().insert(Gateway {
                        actor: id.actor(),
                        request_id: door.request_id,
                    });
                    return next.run(req).await;
                }
                (true, Err(e)) => (id.actor(), e, role),
                (false, _) => (id.actor(), DoorRefusal::ForbiddenRole("service"), role),
            }
        }
        Some((id, None)) => (id.actor(), DoorRefusal::CertificateRequired, None),
        None => (Actor::Anonymous, DoorRefusal::CertificateRequired, None),
    };
    door.refuse(&state, &actor, role, refusal).await
}

/// `POST /admin/v1/outbox/receipts` → 204.
pub async fn receive(
    State(state): State<AppState>,
    Extension(gw): Extension<Gateway>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let now = now_ms();
    let checked = state.outbox.receipts().check(
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
        &body,
        now / 1000,
    );
    let result = match checked {
        Ok(r) => record(&state, &gw, &r, now).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(e) => {
            if e.kind().is_client() {
                let code = e.code();
                let event = event("outbox.receipt", "-", json!({ "code": code }));
                let _ = state
                    .audit
                    .append(&gw.actor, &event, Outcome::Refused { code }, &gw.request_id)
                    .await;
            }
            Err(e.into())
        }
    }
}

/// The receipt, its id and its audit record, in one transaction.
async fn record(state: &AppState, gw: &Gateway, r: &Checked, now: i64) -> Result<(), ReceiptError> {
    let event = event(
        "outbox.receipt",
        &r.message_id.to_string(),
        json!({ "status": r.status.as_str(), "receipt_id": r.receipt_id }),
    );
    let (audit, receipts, event) = (&state.audit, state.outbox.receipts(), &event);
    state
        .kms
        .db()
        .write("outbox.receipt", |mut tx| async move {
            receipts.record_in(&mut tx, r, now).await?;
            audit
                .stage_in(&mut tx, &gw.actor, event, Outcome::Success, &gw.request_id)
                .await?;
            Ok::<_, ReceiptError>((tx, ()))
        })
        .await?;
    state.audit.chain_staged().await;
    Ok(())
}

fn event(action: &'static str, message: &str, detail: serde_json::Value) -> AuditEvent {
    AuditEvent::Online {
        action,
        target: format!("message:{message}"),
        detail,
    }
}
