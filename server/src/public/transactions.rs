//! `POST /v1/transactions`: a device's transaction, over a session
//! (docs/protocol.md §10.5). The protocol is [`crate::online::Online`]'s;
//! this file reads the wire into its request and writes its verdict back.

use axum::extract::State;
use axum::{Extension, Json};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use keyward_kms::types::{KeyVersion, Padding};
use keyward_kms::{PinBlock, PinFormat};

use crate::http::ApiError;
use crate::online::transaction::{TransactionRequest, TransactionVerdict};
use crate::online::{Device, OnlineError, Refusal, Session};
use crate::state::AppState;
use crate::wire::transactions as wire;

pub async fn verify(
    State(state): State<AppState>,
    Extension(device): Extension<Device>,
    Extension(session): Extension<Session>,
    Json(body): Json<wire::TransactionRequest>,
) -> Result<Json<wire::TransactionAnswer>, ApiError> {
    let req = request(body)?;
    let verdict = state.online.transaction(&device, &session, req).await?;
    Ok(Json(answer(verdict)))
}

/// A base64 field, or the refusal naming it.
fn b64(value: &str, refusal: &'static str) -> Result<Vec<u8>, OnlineError> {
    B64.decode(value)
        .map_err(|_| Refusal::InvalidInput(refusal).into())
}

fn request(b: wire::TransactionRequest) -> Result<TransactionRequest, OnlineError> {
    let algorithm = b.algorithm.parse()?;
    let padding = b.padding.map(Padding::from_number).transpose()?;
    let message = b64(&b.message, "message is not base64")?;
    let mac = b64(&b.mac, "mac is not base64")?;
    let accounts = b
        .accounts
        .into_iter()
        .map(|a| {
            Ok((
                a.name,
                b64(&a.iv, "an account iv is not base64")?,
                b64(&a.data, "an account field is not base64")?,
            ))
        })
        .collect::<Result<Vec<_>, OnlineError>>()?;
    let pin_block = match b.pin_block {
        None => None,
        Some(p) => Some(PinBlock {
            format: PinFormat::from_number(p.format)?,
            block: b64(&p.block, "pin_block.block is not base64")?,
            pan: p.pan,
        }),
    };
    Ok(TransactionRequest {
        version: KeyVersion(b.key_version),
        algorithm,
        padding,
        message,
        mac,
        accounts,
        pin_block,
    })
}

fn answer(v: TransactionVerdict) -> wire::TransactionAnswer {
    let (result, code) = if v.mac_valid {
        ("valid", "mac_valid")
    } else {
        ("invalid", "mac_invalid")
    };
    wire::TransactionAnswer {
        result: result.into(),
        code: code.into(),
        key_version: v.version.0,
        accounts: v
            .accounts
            .into_iter()
            .map(|(name, bound)| wire::AccountCheck { name, bound })
            .collect(),
        pin_block: v.pin_block.map(|b| B64.encode(b)),
    }
}
