//! `/admin/v1/ca/*`: the certificate registry, issuance, revocation, the CRL.
//!
//! Issuance and revocation write a `requested` audit record before they act
//! (and do not act if it cannot be written) and run to completion in their
//! own task (a request timeout does not cut a revocation in half); the
//! certificate's row and the outcome record commit in one transaction.

use axum::Extension;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use keyward_ca::{
    Ca, CertFilter, CertStatus, IssueRequest, Profile, RevocationReason, Role, Serial, SignedCert,
};
use keyward_kms::types::DeviceId;
use serde::Deserialize;

use super::{ALL_ROLES, Operator};
use crate::audit::{AuditEvent, Outcome, StepError};
use crate::http::ApiError;
use crate::metrics::timed_hsm;
use crate::state::AppState;
use crate::wire::ca as wire;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    profile: Option<String>,
    status: Option<String>,
    device_id: Option<String>,
    limit: Option<u32>,
    offset: Option<u32>,
}

/// `GET /admin/v1/ca/certificates`: newest first, filtered.
pub async fn list(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Query(q): Query<ListQuery>,
) -> Result<Json<wire::CertificateList>, ApiError> {
    op.require(&state, ALL_ROLES).await?;
    let filter = CertFilter {
        profile: q
            .profile
            .as_deref()
            .map(str::parse::<Profile>)
            .transpose()?,
        status: q
            .status
            .as_deref()
            .map(str::parse::<CertStatus>)
            .transpose()?,
        device_id: q
            .device_id
            .as_deref()
            .map(str::parse::<DeviceId>)
            .transpose()?,
        limit: q.limit,
        offset: q.offset,
    };
    op.audit(
        &state,
        &AuditEvent::OperatorAction {
            action: "certificates.list",
            target: "-".into(),
        },
        Outcome::Success,
    )
    .await?;
    let records = state.ca.list(&filter).await?;
    Ok(Json(wire::CertificateList {
        certificates: records
            .iter()
            .map(|r| wire::Certificate::new(r, false))
            .collect(),
    }))
}

/// `GET /admin/v1/ca/certificates/{serial}`: one record with its PEM and the
/// chain above it (`chain_pem`: issuing CA, then root).
pub async fn show(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(serial): Path<String>,
) -> Result<Json<wire::Certificate>, ApiError> {
    op.require(&state, ALL_ROLES).await?;
    let serial: Serial = serial.parse()?;
    op.audit(
        &state,
        &AuditEvent::OperatorAction {
            action: "certificates.show",
            target: serial.to_string(),
        },
        Outcome::Success,
    )
    .await?;
    match state.ca.get(&serial).await? {
        Some(r) => {
            // What a device (or its station) needs to present the
            // certificate: the chain above it, issuing CA then root.
            let mut c = wire::Certificate::new(&r, true);
            c.chain_pem = Some(state.ca.chain_pem());
            Ok(Json(c))
        }
        None => Err(keyward_ca::CaError::UnknownSerial(serial).into()),
    }
}

/// `POST /admin/v1/ca/certificates`: certify the key of a CSR.
pub async fn issue(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Json(body): Json<wire::IssueRequest>,
) -> Result<Response, ApiError> {
    let profile: Profile = body.profile.parse()?;
    let allowed: &[Role] = match profile {
        Profile::Device => return refuse_device_profile(&state, &op).await,
        Profile::ServerTls => &[Role::Admin],
        // Only `keyward init` (and the key rotations) certify the server's
        // own HSM keys: a permit, a channel key or a receipt certified for
        // any other key would let its holder sign what purses, cards or
        // auditors accept as the bank's.
        Profile::LoadPermit | Profile::Channel | Profile::Evidence => {
            return Err(ApiError::bad_request(
                "profile_reserved",
                "load-permit, channel and evidence certificates are issued by keyward init \
                 for the server's own HSM keys only",
            ));
        }
        Profile::Operator => {
            return Err(ApiError::bad_request(
                "use_operators_endpoint",
                "operator certificates are issued by POST /admin/v1/operators",
            ));
        }
        Profile::Service => {
            return Err(ApiError::bad_request(
                "use_services_endpoint",
                "service certificates are issued by POST /admin/v1/services",
            ));
        }
    };
    op.require(&state, allowed).await?;
    let device_id = body
        .device_id
        .as_deref()
        .map(str::parse::<DeviceId>)
        .transpose()?;
    let req = IssueRequest {
        profile,
        device_id,
        operator: None,
        dns_names: body.dns_names,
        common_name: body.common_name,
    };
    let subject = match (&req.device_id, req.dns_names.first(), &req.common_name) {
        (Some(d), _, _) => d.to_string(),
        (None, Some(n), _) => n.clone(),
        (None, None, Some(cn)) => cn.clone(),
        _ => "-".into(),
    };
    issue_and_record(&state, &op, body.csr_pem.into_bytes(), req, subject)
        .await
        .map(|json| (StatusCode::CREATED, Json(json)).into_response())
}

/// Device certificates come only from the provisioning pipeline (batch
/// import, or a re-certification a second operator approves): one operator
/// must not mint a second identity for a device with a key of their choice.
/// Refused with 403 `device_certificates_by_provisioning`, audited.
async fn refuse_device_profile(state: &AppState, op: &Operator) -> Result<Response, ApiError> {
    const CODE: &str = "device_certificates_by_provisioning";
    let event = AuditEvent::OperatorAction {
        action: "certificate.issue",
        target: "profile:device".into(),
    };
    op.audit(state, &event, Outcome::Refused { code: CODE })
        .await?;
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        CODE,
        "device certificates come from batch import (POST /admin/v1/batches) or \
         re-certification (POST /admin/v1/devices/{id}/recertify)",
    ))
}

/// Shared by certificate and operator issuance: audit `requested`, sign
/// (HSM, no transaction open), then register the certificate and stage its
/// outcome record in one transaction, in a task of its own; count it.
pub async fn issue_and_record(
    state: &AppState,
    op: &Operator,
    csr: Vec<u8>,
    req: IssueRequest,
    subject: String,
) -> Result<wire::Issued, ApiError> {
    let profile = req.profile;
    let requested = AuditEvent::CertificateIssued {
        serial: None,
        profile: profile.as_str().into(),
        subject,
    };
    let st = state.clone();
    let sign = async move {
        timed_hsm(
            &st.metrics,
            "certificate_issue",
            st.ca.sign_from_csr(&csr, req),
        )
        .await
        .map_err(StepError::Effect)
    };
    let issued = op
        .recorded_write(
            state,
            requested,
            sign,
            |mut tx, signed: SignedCert| async move {
                Ca::register_in(&mut tx, &signed)
                    .await
                    .map_err(StepError::Effect)?;
                Ok((tx, signed.cert))
            },
            move |r| match r {
                Ok(cert) => (
                    AuditEvent::CertificateIssued {
                        serial: Some(cert.serial.to_string()),
                        profile: profile.as_str().into(),
                        subject: cert.subject.clone(),
                    },
                    Outcome::Success,
                ),
                Err(e) => AuditEvent::failed("certificate.issue", e.code()),
            },
        )
        .await??;
    state
        .metrics
        .certificates_issued
        .with_label_values(&[profile.as_str()])
        .inc();
    Ok(wire::Issued::new(&issued, &state.ca.chain_pem()))
}

/// `POST /admin/v1/ca/certificates/{serial}/revoke`: the revocation and its
/// outcome record commit together; the CRL is signed after (HSM work), and
/// a failure there is left to the schedule (the revision the revocation
/// bumped makes the next CRL a fresh one).
pub async fn revoke(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(serial): Path<String>,
    body: Option<Json<wire::RevokeRequest>>,
) -> Result<Json<wire::Revoked>, ApiError> {
    op.require(&state, &[Role::Admin, Role::Operator]).await?;
    let serial: Serial = serial.parse()?;
    let reason: RevocationReason = body
        .and_then(|Json(b)| b.reason)
        .as_deref()
        .unwrap_or("unspecified")
        .parse()?;
    let record = state
        .ca
        .get(&serial)
        .await?
        .ok_or_else(|| keyward_ca::CaError::UnknownSerial(serial.clone()))?;
    if record.profile != Profile::Device && op.role != Role::Admin {
        return op.refuse(&state, "admin").await;
    }
    let event = AuditEvent::CertificateRevoked {
        serial: serial.to_string(),
        reason: reason.as_str().into(),
    };
    if op.serial.parse::<Serial>().ok().as_ref() == Some(&serial) {
        return refuse_self_revocation(&state, &op, &event).await;
    }
    let done = event.clone();
    let s = serial.clone();
    op.recorded_write(
        &state,
        event,
        async { Ok::<_, StepError<keyward_ca::CaError>>(()) },
        move |mut tx, ()| {
            let serial = s.clone();
            async move {
                Ca::revoke_in(&mut tx, &serial, reason, Ca::revocation_time_ms())
                    .await
                    .map_err(StepError::Effect)?;
                Ok((tx, ()))
            }
        },
        move |r| match r {
            Ok(()) => (done.clone(), Outcome::Success),
            Err(e) => AuditEvent::failed("certificate.revoke", e.code()),
        },
    )
    .await??;
    tracing::info!(serial = %serial, reason = %reason, "certificate revoked");
    state.metrics.certificates_revoked.inc();
    // Both listeners refuse the certificate from now on.
    crate::edge::pki::refresh_crl_logged(&state, "certificate revoked").await;
    Ok(Json(wire::Revoked {
        serial: serial.as_str().to_owned(),
        status: "revoked".to_owned(),
        reason: reason.as_str().to_owned(),
        crl_number: state.tls.crl().number,
    }))
}

/// An operator revoking the certificate it is calling with would lock
/// itself out (the last admin, the whole installation): refused with 409
/// `self_revocation`, audited; another admin revokes it.
async fn refuse_self_revocation<T>(
    state: &AppState,
    op: &Operator,
    event: &AuditEvent,
) -> Result<T, ApiError> {
    const CODE: &str = "self_revocation";
    op.audit(state, event, Outcome::Refused { code: CODE })
        .await?;
    Err(ApiError::new(
        StatusCode::CONFLICT,
        CODE,
        "this is the certificate of the operator making the request; revoking it would \
         lock that operator out: another admin must revoke it",
    ))
}

/// `GET /admin/v1/ca/crl`: the current CRL, PEM.
pub async fn crl(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
) -> Result<Response, ApiError> {
    op.require(&state, ALL_ROLES).await?;
    op.audit(
        &state,
        &AuditEvent::OperatorAction {
            action: "crl.get",
            target: "-".into(),
        },
        Outcome::Success,
    )
    .await?;
    let crl = timed_hsm(&state.metrics, "crl_get", state.ca.crl()).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-pem-file"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        crl.pem,
    )
        .into_response())
}
