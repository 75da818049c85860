//! `/admin/v1/batches`, `/admin/v1/devices`: manufacturing intake, the
//! genuine-device check, the init package, bindings and the lifecycle, as the
//! bank's provisioning station drives them through `kwctl`.
//!
//! Every state change goes through [`Operator::decide`]: a `requested`
//! record first, the provisioning decision in its own task, then the
//! decision's own audit record.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use keyward_device_provisioning::{
    Action, BatchId, BatchRecord, BindRequest, Binding, DeviceRecord, DeviceState, ImportReport,
    InitRecord, Reason, RowOutcome,
};
use keyward_kms::types::{DeviceId, IssuerId, Kcv};
use keyward_kms::wrap::InitPackage;
use serde::Deserialize;

use super::{ALL_ROLES, Operator, PROVISIONERS, kcv_json};
use crate::http::ApiError;
use crate::state::AppState;

// ---- JSON -------------------------------------------------------------------

/// The rows of an import report (also the `rows` of a `batch_rejected` error).
pub fn report_rows(report: &ImportReport) -> serde_json::Value {
    report
        .rows
        .iter()
        .map(|r| {
            let mut row = serde_json::json!({
                "line": r.line,
                "device_id": r.device_id.map(|d| d.to_string()),
            });
            let fields = match &r.outcome {
                RowOutcome::Registered { cert_serial } => serde_json::json!({
                    "outcome": "registered", "cert_serial": cert_serial,
                }),
                RowOutcome::Valid => serde_json::json!({ "outcome": "valid" }),
                RowOutcome::Rejected { code, reason } => serde_json::json!({
                    "outcome": "rejected", "code": code, "reason": reason,
                }),
            };
            if let (Some(row), Some(fields)) = (row.as_object_mut(), fields.as_object()) {
                row.extend(fields.clone());
            }
            row
        })
        .collect()
}

fn batch_json(b: &BatchRecord) -> serde_json::Value {
    serde_json::json!({
        "batch_id": b.id.as_str(),
        "state": b.state.as_str(),
        "device_count": b.device_count,
        "imported_by": b.imported_by,
        "imported_at_ms": b.imported_at_ms,
        "completed_at_ms": b.completed_at_ms,
    })
}

fn device_json(d: &DeviceRecord) -> serde_json::Value {
    serde_json::json!({
        "device_id": d.device_id.to_string(),
        "batch_id": d.batch_id.as_str(),
        "state": d.state.as_str(),
        "psam_serial": d.psam_serial.as_ref().map(|s| s.as_str()),
        "esam_serial": d.esam_serial.as_ref().map(|s| s.as_str()),
        "model": d.model,
        "firmware": d.firmware,
        "key_kind": d.key_kind.as_str(),
        "cert_serial": d.cert_serial,
        "check_failures": d.check_failures,
        "verified_at_ms": d.verified_at_ms,
        "created_at_ms": d.created_at_ms,
        "state_changed_at_ms": d.state_changed_at_ms,
    })
}

fn init_json(i: &InitRecord) -> serde_json::Value {
    serde_json::json!({
        "issuer_id": i.issuer.as_str(),
        "state": i.state.as_str(),
        "tmk_kcv": kcv_json(&i.tmk_kcv),
        "auth_kcv": kcv_json(&i.auth_kcv),
        "packages": i.packages,
        "packaged_at_ms": i.packaged_at_ms,
        "confirmed_at_ms": i.confirmed_at_ms,
        "reinit_by": i.reinit_by,
    })
}

fn binding_json(b: &Binding) -> serde_json::Value {
    serde_json::json!({
        "device_id": b.device.to_string(),
        "issuer_id": b.issuer.as_str(),
        "customer_id": b.customer.as_str(),
        "secure_element": b.secure_element.as_str(),
        "psam_serial": b.psam_serial.as_ref().map(|s| s.as_str()),
        "esam_serial": b.esam_serial.as_ref().map(|s| s.as_str()),
        "accounts": b.accounts.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
        "bound_by": b.bound_by,
        "bound_at_ms": b.bound_at_ms,
    })
}

/// The init package as the device receives it (docs/admin-api.md).
fn package_json(p: &InitPackage) -> serde_json::Value {
    serde_json::json!({
        "device_id": p.device.to_string(),
        "issuer_id": p.issuer.as_str(),
        "family": p.family.as_str(),
        "scheme": p.scheme.as_str(),
        "ephemeral_point": p.ephemeral_point.as_ref().map(|e| B64.encode(e)),
        "keys": p.keys.iter().map(|k| serde_json::json!({
            "name": k.name,
            "wrapped": B64.encode(&k.wrapped),
            "kcv": kcv_json(&k.kcv),
        })).collect::<Vec<_>>(),
    })
}

// ---- batches ----------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportBody {
    batch_id: String,
    /// The manifest text (format: `device-provisioning/src/intake.rs`).
    manifest: String,
}

/// `POST /admin/v1/batches`: all or nothing.
pub async fn import_batch(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Json(body): Json<ImportBody>,
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
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({
            "batch_id": report.batch_id.as_str(),
            "state": "complete",
            "rows": report_rows(&report),
        })),
    )
        .into_response())
}

/// `GET /admin/v1/batches/{id}`.
pub async fn batch(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id: BatchId = id.parse()?;
    op.read(&state, ALL_ROLES, "batches.show", &format!("batch:{id}"))
        .await?;
    match state.provisioning.batch(&id).await? {
        Some(b) => Ok(Json(batch_json(&b))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_batch",
            format!("batch {id} is not registered"),
        )),
    }
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
) -> Result<Json<serde_json::Value>, ApiError> {
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
    Ok(Json(serde_json::json!({
        "devices": devices.iter().map(device_json).collect::<Vec<_>>(),
    })))
}

/// `GET /admin/v1/devices/{id}`: the device, its original keys, its bindings.
pub async fn show(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let device: DeviceId = id.parse()?;
    op.read(
        &state,
        ALL_ROLES,
        "devices.show",
        &format!("device:{device}"),
    )
    .await?;
    let p = &state.provisioning;
    let mut v = device_json(&p.device(device).await?);
    let inits = p.init_records(device).await?;
    let bindings = p.bindings(device).await?;
    if let Some(obj) = v.as_object_mut() {
        obj.insert("inits".into(), inits.iter().map(init_json).collect());
        obj.insert(
            "bindings".into(),
            bindings.iter().map(binding_json).collect(),
        );
    }
    Ok(Json(v))
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
        .decide(
            &state,
            Action::BeginCheck,
            format!("device:{device}"),
            async move { p.begin_check(device).await },
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({
            "device_id": c.device.to_string(),
            "challenge": hex::encode_upper(c.bytes),
            "expires_at_ms": c.expires_at_ms,
        })),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckBody {
    /// Base64 of the DER signature over the challenge bytes.
    signature: String,
}

/// `POST /admin/v1/devices/{id}/check`.
pub async fn check(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
    Json(body): Json<CheckBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    op.require(&state, PROVISIONERS).await?;
    let device: DeviceId = id.parse()?;
    let signature = B64
        .decode(body.signature.trim())
        .map_err(|_| ApiError::bad_request("invalid_input", "signature: must be base64"))?;
    let p = state.provisioning.clone();
    op.decide(
        &state,
        Action::CompleteCheck,
        format!("device:{device}"),
        async move { p.complete_check(device, &signature).await },
    )
    .await?;
    Ok(Json(serde_json::json!({
        "device_id": device.to_string(),
        "state": DeviceState::Verified.as_str(),
    })))
}

// ---- original keys ------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitBody {
    issuer_id: String,
}

/// `POST /admin/v1/devices/{id}/init`: the init package.
pub async fn init(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
    Json(body): Json<InitBody>,
) -> Result<Response, ApiError> {
    op.require(&state, PROVISIONERS).await?;
    let device: DeviceId = id.parse()?;
    let issuer: IssuerId = body.issuer_id.parse()?;
    let p = state.provisioning.clone();
    let package = op
        .decide(
            &state,
            Action::InitPackage,
            format!("device:{device}"),
            async move { p.init_package(device, &issuer).await },
        )
        .await?;
    Ok((StatusCode::CREATED, Json(package_json(&package))).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmBody {
    issuer_id: String,
    kcvs: Vec<KcvItem>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KcvItem {
    name: String,
    method: String,
    value: String,
}

/// `POST /admin/v1/devices/{id}/init/confirm`: the device's KCVs.
pub async fn confirm(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
    Json(body): Json<ConfirmBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    op.require(&state, PROVISIONERS).await?;
    let device: DeviceId = id.parse()?;
    let issuer: IssuerId = body.issuer_id.parse()?;
    let kcvs = body
        .kcvs
        .into_iter()
        .map(|k| Ok((k.name, Kcv::parse(&k.method, &k.value)?)))
        .collect::<Result<Vec<_>, ApiError>>()?;
    let (p, i) = (state.provisioning.clone(), issuer.clone());
    op.decide(
        &state,
        Action::ConfirmInit,
        format!("device:{device}"),
        async move { p.confirm_init(device, &i, &kcvs).await },
    )
    .await?;
    Ok(Json(serde_json::json!({
        "device_id": device.to_string(),
        "issuer_id": issuer.as_str(),
        "state": "initialised",
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReinitBody {
    issuer_id: String,
    reason: String,
}

/// `POST /admin/v1/devices/{id}/reinit`: allows one more init package.
pub async fn reinit(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
    Json(body): Json<ReinitBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    op.require(&state, PROVISIONERS).await?;
    let device: DeviceId = id.parse()?;
    let issuer: IssuerId = body.issuer_id.parse()?;
    let reason: Reason = body.reason.parse()?;
    let operator = op.operator_id()?;
    let (p, i) = (state.provisioning.clone(), issuer.clone());
    op.decide(
        &state,
        Action::Reinit,
        format!("device:{device}"),
        async move { p.reinit(device, &i, &operator, &reason).await },
    )
    .await?;
    Ok(Json(serde_json::json!({
        "device_id": device.to_string(),
        "issuer_id": issuer.as_str(),
    })))
}

// ---- lifecycle and binding ----------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateBody {
    /// `suspended`, `issued` (resume) or `retired`.
    to: String,
    reason: String,
}

/// `POST /admin/v1/devices/{id}/state`: suspend, resume, retire.
pub async fn set_state(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
    Json(body): Json<StateBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    op.require(&state, PROVISIONERS).await?;
    let device: DeviceId = id.parse()?;
    let to: DeviceState = body.to.parse()?;
    let reason: Reason = body.reason.parse()?;
    let operator = op.operator_id()?;
    let p = state.provisioning.clone();
    let from = op
        .decide(
            &state,
            Action::Transition,
            format!("device:{device}"),
            async move { p.transition(device, to, &operator, &reason).await },
        )
        .await?;
    if to == DeviceState::Retired {
        // Both listeners refuse the revoked device certificate from now on.
        if let Err(e) = crate::pki::refresh_crl(&state).await {
            tracing::error!(
                error = format!("{e:#}"),
                "device retired, but the TLS listeners could not load the new CRL yet; the schedule retries"
            );
        }
    }
    Ok(Json(serde_json::json!({
        "device_id": device.to_string(),
        "from": from.as_str(),
        "state": to.as_str(),
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindBody {
    customer_id: String,
    issuer_id: String,
    /// `psam`, `esam` or `both`.
    secure_element: String,
    accounts: Vec<String>,
}

/// `POST /admin/v1/devices/{id}/bindings`: the device is `issued`.
pub async fn bind(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
    Json(body): Json<BindBody>,
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
        .decide(&state, Action::Bind, target, async move {
            p.bind(req, &operator).await
        })
        .await?;
    Ok((StatusCode::CREATED, Json(binding_json(&binding))).into_response())
}
