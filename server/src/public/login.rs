//! `POST /v1/login/start`, `POST /v1/login/finish`: device login
//! (docs/protocol.md §10). The protocol is [`crate::online::Online`]'s; this
//! file reads the wire into its domain requests and writes its answers back.
//!
//! Not behind the `Idempotency-Key` layer on purpose: a finish answer holds
//! a session token, which must never be stored, and a challenge is single
//! use anyway — a device whose answer was lost starts a new login.

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use keyward_kms::types::{Kcv, WorkingKeyRole};

use crate::http::ApiError;
use crate::online::challenge::SealedId;
use crate::online::login::{
    Challenge, FinishRequest, LoginStep, Opened, ReportedKcvs, StartRequest,
};
use crate::online::{Device, Refusal};
use crate::state::AppState;
use crate::wire::login as wire;

/// Step 1: the device's claims checked, a challenge (and maybe new keys).
pub async fn start(
    State(state): State<AppState>,
    Extension(device): Extension<Device>,
    Json(body): Json<wire::LoginStart>,
) -> Result<(StatusCode, Json<wire::LoginChallenge>), ApiError> {
    let req = match start_request(&body) {
        Ok(req) => req,
        Err(r) => {
            let e = state
                .online
                .login_refused(&device, LoginStep::Start, &body.issuer_id, r.into())
                .await;
            return Err(e.into());
        }
    };
    let answer = state.online.login_start(&device, &req).await?;
    Ok((StatusCode::CREATED, Json(challenge_answer(answer))))
}

/// Step 2: the response checked; a session.
pub async fn finish(
    State(state): State<AppState>,
    Extension(device): Extension<Device>,
    Json(body): Json<wire::LoginFinish>,
) -> Result<Json<wire::LoginAnswer>, ApiError> {
    let req = match finish_request(&body) {
        Ok(req) => req,
        Err(r) => {
            let e = state
                .online
                .login_refused(&device, LoginStep::Finish, &body.issuer_id, r.into())
                .await;
            return Err(e.into());
        }
    };
    let opened = state.online.login_finish(&device, &req).await?;
    Ok(Json(login_answer(opened)))
}

fn start_request(b: &wire::LoginStart) -> Result<StartRequest, Refusal> {
    Ok(StartRequest {
        issuer: b.issuer_id.parse().map_err(|_| Refusal::InvalidIssuerId)?,
        claimed: b.device_id.parse().map_err(|_| Refusal::InvalidDeviceId)?,
        psam_serial: b.psam_serial.clone(),
        esam_serial: b.esam_serial.clone(),
        key_version: b.key_version,
    })
}

fn finish_request(b: &wire::LoginFinish) -> Result<FinishRequest, Refusal> {
    let issuer = b.issuer_id.parse().map_err(|_| Refusal::InvalidIssuerId)?;
    let challenge = SealedId::decode(&b.challenge_id).ok_or(Refusal::InvalidChallengeId)?;
    let response = B64
        .decode(&b.response)
        .ok()
        .filter(|r| !r.is_empty() && r.len() <= 64)
        .ok_or(Refusal::InvalidResponse)?;
    let confirmation = b
        .key_confirmation
        .as_ref()
        .map(|c| {
            let kcvs = c
                .kcvs
                .iter()
                .map(|k| {
                    let role: WorkingKeyRole = k
                        .role
                        .parse()
                        .map_err(|_| Refusal::InvalidKeyConfirmation)?;
                    let kcv = Kcv::try_from(&k.kcv).map_err(|_| Refusal::InvalidKeyConfirmation)?;
                    Ok((role, kcv))
                })
                .collect::<Result<Vec<_>, Refusal>>()?;
            Ok::<_, Refusal>(ReportedKcvs {
                version: c.version,
                kcvs,
            })
        })
        .transpose()?;
    Ok(FinishRequest {
        issuer,
        challenge,
        response,
        confirmation,
    })
}

fn challenge_answer(c: Challenge) -> wire::LoginChallenge {
    wire::LoginChallenge {
        challenge_id: c.id,
        challenge: B64.encode(&c.challenge),
        expires_at_ms: c.expires_at_ms,
        key_version: c.key_version.map(|v| v.0),
        key_update: c.key_update.map(|offer| wire::KeyUpdate {
            version: offer.version.0,
            keys: offer
                .keys
                .iter()
                .map(|k| wire::OfferedKey {
                    role: k.role.as_str().to_owned(),
                    r: B64.encode(k.r),
                    kcv: (&k.kcv).into(),
                })
                .collect(),
        }),
    }
}

fn login_answer(o: Opened) -> wire::LoginAnswer {
    wire::LoginAnswer {
        session_token: o.token,
        expires_at_ms: o.expires_at_ms,
        device_id: o.device.to_string(),
        issuer_id: o.issuer.to_string(),
        key_version: o.key_version.map(|v| v.0),
        key_update: o.key_update.map(|u| u.as_str().to_owned()),
    }
}
