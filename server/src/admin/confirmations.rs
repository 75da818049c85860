//! `GET /admin/v1/confirmations/{id}`: a transaction confirmation's state,
//! attempts and deliveries, for operators and auditors; `…/evidence`: an
//! executed one's signed evidence receipt, for admins and auditors
//! (docs/admin-api.md).

use axum::extract::{Path, State};
use axum::{Extension, Json};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use keyward_ca::CaError;
use keyward_ca::Role;
use keyward_protocol::confirmation::Evidence;

use super::{ALL_ROLES, Operator};
use crate::http::ApiError;
use crate::state::AppState;
use crate::wire::confirmations as wire;

pub async fn show(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
) -> Result<Json<wire::ConfirmationView>, ApiError> {
    op.read(
        &state,
        ALL_ROLES,
        "confirmations.show",
        &format!("confirmation:{id}"),
    )
    .await?;
    let c = state.confirmations.show(&id).await?;
    let deliveries = state
        .outbox
        .messages_of(&c.id)
        .await
        .map_err(|e| ApiError::from(keyward_kms::KmsError::Database(e)))?;
    Ok(Json(wire::ConfirmationView {
        confirmation_id: c.id,
        device_id: c.device,
        issuer_id: c.issuer,
        customer_id: c.customer,
        state: c.state.as_str().to_owned(),
        attempts: c.attempts,
        max_attempts: c.max_attempts,
        amount_minor: c.amount_minor,
        currency: c.currency,
        payee_flagged: c.payee_flagged,
        created_at_ms: c.created_at_ms,
        expires_at_ms: c.expires_at_ms,
        decided_at_ms: c.decided_at_ms,
        deliveries,
    }))
}

/// Who may take a confirmation's evidence: it holds the transaction.
const EVIDENCE_ROLES: &[Role] = &[Role::Admin, Role::Auditor];

pub async fn evidence(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
) -> Result<Json<wire::EvidenceExport>, ApiError> {
    op.read(
        &state,
        EVIDENCE_ROLES,
        "confirmations.evidence",
        &format!("confirmation:{id}"),
    )
    .await?;
    let (stored, e) = state.confirmations.evidence(&id).await?;
    let receipt = Evidence::parse(&e.receipt).map_err(|_| internal("stored receipt unreadable"))?;
    let cert = |serial: &str| {
        let state = state.clone();
        let serial = serial.to_owned();
        async move {
            let serial = serial.parse()?;
            state
                .ca
                .get(&serial)
                .await?
                .map(|c| c.pem)
                .ok_or(CaError::UnknownSerial(serial))
        }
    };
    let signer = cert(&e.signer_serial).await?;
    let device = cert(&receipt.device_certificate_serial).await?;
    Ok(Json(wire::EvidenceExport {
        confirmation_id: stored.id,
        receipt: B64.encode(&e.receipt),
        signature: B64.encode(&e.signature),
        evidence_chain_pem: format!("{signer}{}", state.ca.chain_pem()),
        device_certificate_pem: device,
        transaction: B64.encode(&stored.received),
        message: (!e.message.is_empty()).then(|| B64.encode(&e.message)),
    }))
}

fn internal(what: &'static str) -> ApiError {
    crate::confirmation::ConfirmError::Evidence(what).into()
}
