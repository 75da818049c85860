//! Working keys and login credentials of devices, for operators
//! (docs/admin-api.md "Keys and credentials"):
//!
//! - `GET /admin/v1/devices/{id}/keys?issuer_id=I`: every working-key
//!   version (never key bytes);
//! - `GET /admin/v1/devices/{id}/credentials/{issuer}`: the failure count
//!   and lock;
//! - `POST /admin/v1/devices/{id}/credentials/{issuer}/unlock` (admin): the
//!   only way back from a lockout;
//! - `POST /admin/v1/issuers/{id}/rotations` (admin, operator): new working
//!   keys at the next login, for one device or the issuer's fleet (lazily:
//!   one row, no HSM work until each device logs in);
//! - `GET /admin/v1/issuers/{id}/rotations/pending`: devices that owe a key
//!   confirmation.

use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use keyward_ca::Role;
use keyward_device_provisioning::Reason;
use keyward_kms::types::{DeviceId, IssuerId};
use serde::Deserialize;
use serde_json::json;

use super::{ALL_ROLES, Operator, PROVISIONERS};
use crate::audit::{AuditEvent, Outcome};
use crate::http::ApiError;
use crate::online::OnlineError;
use crate::online::store::Credential;
use crate::state::AppState;
use crate::wire::login as wire;

fn credential(device: DeviceId, issuer: &IssuerId, c: &Credential) -> wire::Credential {
    wire::Credential {
        device_id: device.to_string(),
        issuer_id: issuer.to_string(),
        failures: c.failures,
        locked: c.locked_at_ms.is_some(),
        locked_at_ms: c.locked_at_ms,
        revoked_serial: c.revoked_serial.clone(),
        rotate_requested_at_ms: c.rotate_requested_at_ms,
        last_login_at_ms: c.last_login_at_ms,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerQuery {
    pub issuer_id: String,
}

/// `GET /admin/v1/devices/{id}/keys?issuer_id=I`.
pub async fn versions(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
    Query(q): Query<IssuerQuery>,
) -> Result<Json<wire::KeyVersions>, ApiError> {
    let device: DeviceId = id.parse()?;
    let issuer: IssuerId = q.issuer_id.parse()?;
    op.read(&state, ALL_ROLES, "keys.list", &format!("device:{device}"))
        .await?;
    state.kms.issuer(&issuer).await?;
    let versions = state.kms.key_versions(&issuer, device).await?;
    Ok(Json(wire::KeyVersions {
        device_id: device.to_string(),
        issuer_id: issuer.to_string(),
        versions: versions
            .iter()
            .map(|v| wire::KeyVersion {
                version: v.version.0,
                state: v.state.as_str().to_owned(),
                created_at_ms: v.created_at_ms,
                activated_at_ms: v.activated_at_ms,
                retire_at_ms: v.retire_at_ms,
            })
            .collect(),
    }))
}

/// `GET /admin/v1/devices/{id}/credentials/{issuer}`.
pub async fn show_credential(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path((id, issuer)): Path<(String, String)>,
) -> Result<Json<wire::Credential>, ApiError> {
    let device: DeviceId = id.parse()?;
    let issuer: IssuerId = issuer.parse()?;
    op.read(
        &state,
        ALL_ROLES,
        "credentials.show",
        &format!("device:{device}"),
    )
    .await?;
    state.kms.issuer(&issuer).await?;
    state.provisioning.device(device).await?;
    let c = state.online.store.credential(&issuer, device).await?;
    Ok(Json(credential(device, &issuer, &c)))
}

/// `POST /admin/v1/devices/{id}/credentials/{issuer}/unlock` (admin): the
/// failure count to 0 and the lock lifted, audited with the reason. Where
/// the lockout revoked the certificate, the device cannot connect until it
/// is re-certified (`kwctl device recertify`, two operators): the answer
/// says so.
pub async fn unlock(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path((id, issuer)): Path<(String, String)>,
    Json(body): Json<wire::UnlockRequest>,
) -> Result<Json<wire::UnlockAnswer>, ApiError> {
    op.require(&state, &[Role::Admin]).await?;
    let device: DeviceId = id.parse()?;
    let issuer: IssuerId = issuer.parse()?;
    let reason: Reason = body.reason.parse()?;
    state.provisioning.device(device).await?;
    let requested = AuditEvent::Online {
        action: "credential.unlock",
        target: format!("device:{device}"),
        detail: json!({ "issuer": issuer.as_str(), "reason": reason.as_str() }),
    };
    let store = state.online.store.clone();
    let (settled, iss) = (requested.clone(), issuer.clone());
    let before = op
        .recorded(
            &state,
            requested,
            async move { store.unlock(&iss, device).await },
            move |r| match r {
                Ok(Some(_)) => (settled, Outcome::Success),
                Ok(None) => (
                    settled,
                    Outcome::Refused {
                        code: "credential_not_locked",
                    },
                ),
                Err(e) => AuditEvent::failed("credential.unlock", e.code()),
            },
        )
        .await??;
    let Some(before) = before else {
        return Err(OnlineError::refused(
            keyward_kms::ErrorKind::Conflict,
            "credential_not_locked",
            "this credential is not locked",
        )
        .into());
    };
    let now = state.online.store.credential(&issuer, device).await?;
    Ok(Json(wire::UnlockAnswer {
        credential: credential(device, &issuer, &now),
        recertification_required: before.revoked_serial.is_some(),
    }))
}

/// `POST /admin/v1/issuers/{id}/rotations`.
pub async fn rotate(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(issuer): Path<String>,
    Json(body): Json<wire::RotateRequest>,
) -> Result<Json<wire::RotateAnswer>, ApiError> {
    op.require(&state, PROVISIONERS).await?;
    let issuer: IssuerId = issuer.parse()?;
    let device: Option<DeviceId> = body.device_id.as_deref().map(str::parse).transpose()?;
    state.kms.issuer(&issuer).await?;
    if let Some(d) = device {
        let bound = state.provisioning.bindings(d).await?;
        if !bound.iter().any(|b| b.issuer == issuer) {
            // The same code and status as login's refusal: the device has
            // no binding with this issuer.
            return Err(OnlineError::refused(
                keyward_kms::ErrorKind::Forbidden,
                "issuer_not_bound",
                "the device is not bound for this issuer",
            )
            .into());
        }
    }
    let target = match device {
        Some(d) => format!("device:{d}"),
        None => format!("issuer:{issuer}"),
    };
    let requested = AuditEvent::Online {
        action: "key.rotate_request",
        target,
        detail: json!({ "issuer": issuer.as_str(), "fleet": device.is_none() }),
    };
    let now = keyward_kms::db::now_ms();
    let (store, iss, by) = (state.online.store.clone(), issuer.clone(), op.name.clone());
    let settled = requested.clone();
    op.recorded(
        &state,
        requested,
        async move {
            match device {
                Some(d) => store.request_rotation(&iss, d, now).await,
                None => store.request_fleet_rotation(&iss, now, &by).await,
            }
        },
        move |r| match r {
            Ok(()) => (settled, Outcome::Success),
            Err(e) => AuditEvent::failed("key.rotate_request", e.code()),
        },
    )
    .await??;
    Ok(Json(wire::RotateAnswer {
        issuer_id: issuer.to_string(),
        device_id: device.map(|d| d.to_string()),
        requested_at_ms: now,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingQuery {
    #[serde(default)]
    pub limit: Option<u32>,
}

/// `GET /admin/v1/issuers/{id}/rotations/pending?limit=N` (default 100,
/// at most 10 000).
pub async fn pending(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(issuer): Path<String>,
    Query(q): Query<PendingQuery>,
) -> Result<Json<wire::PendingRotations>, ApiError> {
    let issuer: IssuerId = issuer.parse()?;
    op.read(
        &state,
        ALL_ROLES,
        "keys.pending",
        &format!("issuer:{issuer}"),
    )
    .await?;
    state.kms.issuer(&issuer).await?;
    let fleet = state.online.store.fleet_rotation(&issuer).await?;
    let rows = state
        .online
        .store
        .pending_rotations(&issuer, q.limit.unwrap_or(100).clamp(1, 10_000))
        .await?;
    Ok(Json(wire::PendingRotations {
        issuer_id: issuer.to_string(),
        devices: rows
            .into_iter()
            .map(|r| {
                let reason = if r.active_version.is_none() && !r.has_pending {
                    "no_keys"
                } else if r.has_pending {
                    "offered"
                } else if r.rotate_requested_at_ms.is_some() {
                    "requested"
                } else if fleet.is_some() {
                    "fleet"
                } else {
                    "offered"
                };
                wire::PendingDevice {
                    device_id: r.device,
                    reason: reason.to_owned(),
                    active_version: r.active_version,
                }
            })
            .collect(),
    }))
}
