//! `/admin/v1/batches`, `/admin/v1/devices`: manufacturing intake, the
//! genuine-device check, the init package, bindings and the lifecycle, as the
//! bank's provisioning station drives them through `kwctl`.
//!
//! Every state change goes through [`Operator::decide`]: a `requested`
//! record first, the provisioning decision in its own task, then the
//! decision's own audit record. A decision with an `_in` form goes through
//! [`Operator::decide_write`], which commits its rows and its record in one
//! transaction.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use keyward_device_provisioning::{
    Action, BatchId, BindRequest, ChallengeId, DeviceState, Provisioning, Reason,
};
use keyward_kms::types::{DeviceId, IssuerId, Kcv};
use serde::Deserialize;

use super::{ALL_ROLES, Operator, PROVISIONERS};
use crate::audit::StepError;
use crate::http::ApiError;
use crate::security::SecurityKind;
use crate::state::AppState;
use crate::wire::devices as wire;

// ---- batches ----------------------------------------------------------------

/// `POST /admin/v1/batches`: all or nothing.
pub async fn import_batch(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Json(body): Json<wire::ImportRequest>,
) -> Result<Response, ApiError> {
    op.require(&state, PROVISIONERS).await?;
    let batch: BatchId = body.batch_id.parse()?;
    let operator = op.operator_id()?;
    let p = state.provisioning.clone();
    let target = format!("batch:{batch}");
    let report = op
        .decide(&state, Action::ImportBatch, target, async move {
            p.import_batch(&batch, &body.manifest, &operator).await
        })
        .await?;
    crate::fault_point!("provisioning.import.committed");
    Ok((
        StatusCode::CREATED,
        Json(wire::ImportAnswer {
            batch_id: report.batch_id.as_str().to_owned(),
            state: "complete".to_owned(),
            rows: wire::ReportRow::all(&report),
        }),
    )
        .into_response())
}

/// `GET /admin/v1/batches/{id}`.
pub async fn batch(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
) -> Result<Json<wire::Batch>, ApiError> {
    let id: BatchId = id.parse()?;
    op.read(&state, ALL_ROLES, "batches.show", &format!("batch:{id}"))
        .await?;
    match state.provisioning.batch(&id).await? {
        Some(b) => Ok(Json(wire::Batch::from(&b))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_batch",
            format!("batch {id} is not registered"),
        )),
    }
}

/// `POST /admin/v1/batches/{id}/abort`: undoes an import whose process died
/// (its lease ran out) without waiting for the server's own recovery:
/// certificates revoked, batch removed, so the file imports again.
pub async fn abort_batch(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
) -> Result<Json<wire::AbortAnswer>, ApiError> {
    op.require(&state, PROVISIONERS).await?;
    let batch: BatchId = id.parse()?;
    let operator = op.operator_id()?;
    let p = state.provisioning.clone();
    let b = batch.clone();
    let decided = op
        .decide(
            &state,
            Action::AbortImport,
            format!("batch:{batch}"),
            async move { p.abort_batch(&b, &operator).await },
        )
        .await;
    let outcome = if decided.is_ok() {
        "success"
    } else {
        "failure"
    };
    if !matches!(&decided, Err(e) if e.status.is_client_error()) {
        state
            .metrics
            .import_recoveries
            .with_label_values(&[outcome])
            .inc();
    }
    let report = decided?;
    if report.revoked > 0 {
        refresh_crl_after(&state, "aborted import's certificates revoked").await;
    }
    Ok(Json(wire::AbortAnswer {
        batch_id: batch.as_str().to_owned(),
        state: "aborted".to_owned(),
        devices: report.devices,
        revoked: report.revoked,
    }))
}

// ---- devices: reads ---------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    state: Option<String>,
    batch_id: Option<String>,
    limit: Option<u32>,
    offset: Option<u32>,
}

/// `GET /admin/v1/devices`.
pub async fn list(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Query(q): Query<ListQuery>,
) -> Result<Json<wire::DeviceList>, ApiError> {
    let st = q
        .state
        .as_deref()
        .map(str::parse::<DeviceState>)
        .transpose()?;
    let batch = q
        .batch_id
        .as_deref()
        .map(str::parse::<BatchId>)
        .transpose()?;
    op.read(&state, ALL_ROLES, "devices.list", "-").await?;
    let devices = state
        .provisioning
        .devices(
            st,
            batch.as_ref(),
            q.limit.unwrap_or(100),
            q.offset.unwrap_or(0),
        )
        .await?;
    Ok(Json(wire::DeviceList {
        devices: devices.iter().map(wire::Device::from).collect(),
    }))
}

/// `GET /admin/v1/devices/{id}`: the device, its original keys, its bindings.
pub async fn show(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
) -> Result<Json<wire::DeviceDetail>, ApiError> {
    let device: DeviceId = id.parse()?;
    op.read(
        &state,
        ALL_ROLES,
        "devices.show",
        &format!("device:{device}"),
    )
    .await?;
    let p = &state.provisioning;
    Ok(Json(wire::DeviceDetail {
        device: (&p.device(device).await?).into(),
        inits: p
            .init_records(device)
            .await?
            .iter()
            .map(Into::into)
            .collect(),
        bindings: p.bindings(device).await?.iter().map(Into::into).collect(),
    }))
}

// ---- the genuine-device check -------------------------------------------------

/// `POST /admin/v1/devices/{id}/challenge`.
pub async fn challenge(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    op.require(&state, PROVISIONERS).await?;
    let device: DeviceId = id.parse()?;
    let p = state.provisioning.clone();
    let c = op
        .decide_write(
            &state,
            Action::BeginCheck,
            format!("device:{device}"),
            async move { p.prepare_begin_check(device).await },
            in_tx!(Provisioning::begin_check_in),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(wire::ChallengeAnswer::from(&c))).into_response())
}

/// `POST /admin/v1/devices/{id}/check`.
pub async fn check(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
    Json(body): Json<wire::CheckRequest>,
) -> Result<Json<wire::DeviceState>, ApiError> {
    op.require(&state, PROVISIONERS).await?;
    let device: DeviceId = id.parse()?;
    let challenge: ChallengeId = body.challenge_id.trim().parse()?;
    let signature = B64
        .decode(body.signature.trim())
        .map_err(|_| ApiError::bad_request("invalid_input", "signature: must be base64"))?;
    let p = state.provisioning.clone();
    // A failed answer is kept (the challenge used up, the failure counted)
    // and answered as the refusal it is: it commits with its record.
    op.decide_write(
        &state,
        Action::CompleteCheck,
        format!("device:{device}"),
        async move {
            p.prepare_complete_check(device, &challenge, &signature)
                .await
        },
        in_tx!(Provisioning::complete_check_in),
    )
    .await??;
    Ok(Json(wire::DeviceState {
        device_id: device.to_string(),
        state: DeviceState::Verified.as_str().to_owned(),
    }))
}

/// `POST /admin/v1/devices/{id}/check/reset`: clears the failed-check
/// counter of a device parked by failed checks.
pub async fn reset_check(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
    Json(body): Json<wire::ResetCheckRequest>,
) -> Result<Json<wire::ResetCheckAnswer>, ApiError> {
    op.require(&state, PROVISIONERS).await?;
    let device: DeviceId = id.parse()?;
    let reason: Reason = body.reason.parse()?;
    let operator = op.operator_id()?;
    let p = state.provisioning.clone();
    let cleared = op
        .decide_write(
            &state,
            Action::ResetCheck,
            format!("device:{device}"),
            async move { p.prepare_reset_check(device, &operator, &reason).await },
            in_tx!(Provisioning::reset_check_in),
        )
        .await?;
    Ok(Json(wire::ResetCheckAnswer {
        device_id: device.to_string(),
        check_failures_cleared: cleared,
    }))
}

// ---- re-certification ---------------------------------------------------------

/// `POST /admin/v1/devices/{id}/recertify`: one operator asks for a
/// certificate for the device's new key.
pub async fn recertify(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
    Json(body): Json<wire::RecertifyRequest>,
) -> Result<Response, ApiError> {
    op.require(&state, PROVISIONERS).await?;
    let device: DeviceId = id.parse()?;
    let reason: Reason = body.reason.parse()?;
    let operator = op.operator_id()?;
    let p = state.provisioning.clone();
    let pending = op
        .decide_write(
            &state,
            Action::RequestRecertify,
            format!("device:{device}"),
            async move {
                p.prepare_request_recertify(device, body.csr_pem.as_bytes(), &operator, &reason)
                    .await
            },
            in_tx!(Provisioning::request_recertify_in),
        )
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(wire::RecertifyAnswer::from(&pending)),
    )
        .into_response())
}

/// `POST /admin/v1/devices/{id}/recertify/approve`: a second operator
/// approves; the new certificate is issued, every other one revoked.
pub async fn approve_recertify(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
) -> Result<Json<wire::RecertifyAnswer>, ApiError> {
    op.require(&state, PROVISIONERS).await?;
    let device: DeviceId = id.parse()?;
    let operator = op.operator_id()?;
    let p = state.provisioning.clone();
    let q = p.clone();
    let done = op
        .decide_write(
            &state,
            Action::ApproveRecertify,
            format!("device:{device}"),
            async move { q.prepare_approve_recertify(device, &operator).await },
            move |mut tx, step| {
                let p = p.clone();
                async move {
                    let done = p
                        .approve_recertify_in(&mut tx, step)
                        .await
                        .map_err(StepError::Effect)?;
                    Ok((tx, done))
                }
            },
        )
        .await?;
    refresh_crl_after(&state, "device re-certified").await;
    Ok(Json(wire::RecertifyAnswer::from(&done)))
}

/// Both listeners refuse revoked certificates from now on; a failure is
/// logged and left to the schedule.
async fn refresh_crl_after(state: &AppState, what: &str) {
    crate::edge::pki::refresh_crl_logged(state, what).await;
}

// ---- original keys ------------------------------------------------------------

/// `POST /admin/v1/devices/{id}/init`: the init package.
pub async fn init(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
    Json(body): Json<wire::InitRequest>,
) -> Result<Response, ApiError> {
    op.require(&state, PROVISIONERS).await?;
    let device: DeviceId = id.parse()?;
    let issuer: IssuerId = body.issuer_id.parse()?;
    let operator = op.operator_id()?;
    let p = state.provisioning.clone();
    let package = op
        .decide_write(
            &state,
            Action::InitPackage,
            format!("device:{device}"),
            async move { p.prepare_init_package(device, &issuer, &operator).await },
            in_tx!(Provisioning::init_package_in),
        )
        .await?;
    crate::fault_point!("provisioning.init.committed");
    Ok((StatusCode::CREATED, Json(wire::InitPackage::from(&package))).into_response())
}

/// `POST /admin/v1/devices/{id}/init/confirm`: the device's KCVs.
pub async fn confirm(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
    Json(body): Json<wire::ConfirmRequest>,
) -> Result<Json<wire::DeviceIssuerState>, ApiError> {
    op.require(&state, PROVISIONERS).await?;
    let device: DeviceId = id.parse()?;
    let issuer: IssuerId = body.issuer_id.parse()?;
    let kcvs = body
        .kcvs
        .into_iter()
        .map(|k| Ok((k.name, Kcv::parse(&k.method, &k.value)?)))
        .collect::<Result<Vec<_>, ApiError>>()?;
    let (p, i) = (state.provisioning.clone(), issuer.clone());
    // A mismatch is kept (the package refused for good) and answered as
    // the refusal it is: the decision commits with its record either way.
    let confirmed = op
        .decide_write(
            &state,
            Action::ConfirmInit,
            format!("device:{device}"),
            async move { p.prepare_confirm_init(device, &i, &kcvs).await },
            in_tx!(Provisioning::confirm_init_in),
        )
        .await?
        .map_err(ApiError::from);
    if let Err(e) = &confirmed
        && e.code == "kcv_mismatch"
    {
        let detail = serde_json::json!({ "issuer": issuer.as_str(), "step": "init_confirm" });
        crate::security::raise(
            &state.audit,
            &state.metrics,
            &op.actor,
            &op.request_id,
            SecurityKind::KcvMismatch,
            format!("device:{device}"),
            detail,
        )
        .await
        .map_err(ApiError::audit_unavailable)?;
    }
    confirmed?;
    Ok(Json(wire::DeviceIssuerState {
        device_id: device.to_string(),
        issuer_id: issuer.as_str().to_owned(),
        state: Some("initialised".to_owned()),
    }))
}

/// `POST /admin/v1/devices/{id}/reinit`: allows one more init package.
pub async fn reinit(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
    Json(body): Json<wire::ReinitRequest>,
) -> Result<Json<wire::DeviceIssuerState>, ApiError> {
    op.require(&state, PROVISIONERS).await?;
    let device: DeviceId = id.parse()?;
    let issuer: IssuerId = body.issuer_id.parse()?;
    let reason: Reason = body.reason.parse()?;
    let operator = op.operator_id()?;
    let (p, i) = (state.provisioning.clone(), issuer.clone());
    op.decide_write(
        &state,
        Action::Reinit,
        format!("device:{device}"),
        async move { p.prepare_reinit(device, &i, &operator, &reason).await },
        in_tx!(Provisioning::reinit_in),
    )
    .await?;
    Ok(Json(wire::DeviceIssuerState {
        device_id: device.to_string(),
        issuer_id: issuer.as_str().to_owned(),
        state: None,
    }))
}

// ---- lifecycle and binding ----------------------------------------------------

/// `POST /admin/v1/devices/{id}/state`: suspend, resume, retire.
pub async fn set_state(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
    Json(body): Json<wire::StateRequest>,
) -> Result<Json<wire::StateAnswer>, ApiError> {
    op.require(&state, PROVISIONERS).await?;
    let device: DeviceId = id.parse()?;
    let to: DeviceState = body.to.parse()?;
    let reason: Reason = body.reason.parse()?;
    let operator = op.operator_id()?;
    let p = state.provisioning.clone();
    let prepare = {
        let p = p.clone();
        async move { p.prepare_transition(device, to, &operator, &reason).await }
    };
    let from = op
        .decide_write(
            &state,
            Action::Transition,
            format!("device:{device}"),
            prepare,
            move |mut tx, step| {
                let p = p.clone();
                async move {
                    let done = p
                        .transition_in(&mut tx, step)
                        .await
                        .map_err(StepError::Effect)?;
                    Ok((tx, done))
                }
            },
        )
        .await?;
    if to == DeviceState::Retired {
        refresh_crl_after(&state, "device retired").await;
    }
    Ok(Json(wire::StateAnswer {
        device_id: device.to_string(),
        from: from.as_str().to_owned(),
        state: to.as_str().to_owned(),
    }))
}

/// `POST /admin/v1/devices/{id}/bindings`: the device is `issued`.
pub async fn bind(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
    Json(body): Json<wire::BindRequest>,
) -> Result<Response, ApiError> {
    op.require(&state, PROVISIONERS).await?;
    let req = BindRequest {
        device: id.parse()?,
        customer: body.customer_id.parse()?,
        issuer: body.issuer_id.parse()?,
        accounts: body
            .accounts
            .iter()
            .map(|a| a.parse())
            .collect::<Result<_, _>>()?,
        secure_element: body.secure_element.parse()?,
    };
    let operator = op.operator_id()?;
    let p = state.provisioning.clone();
    let target = format!("device:{}", req.device);
    let binding = op
        .decide_write(
            &state,
            Action::Bind,
            target,
            async move { p.prepare_bind(req, &operator).await },
            in_tx!(Provisioning::bind_in),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(wire::Binding::from(&binding))).into_response())
}
