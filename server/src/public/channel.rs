//! `POST /v1/channel/hello`, `POST /v1/channel/key-exchange`,
//! `POST /v1/channel/records`, `POST /v1/channel/resume`: the card-to-server
//! secure channel relayed by a terminal (docs/protocol.md §14). No session: the card proves itself in
//! the key exchange; the terminal still needs its device certificate, as
//! on every public route. The protocol is [`crate::channel`]'s; this file
//! reads base64 in and writes it back.

use axum::extract::State;
use axum::{Extension, Json};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use keyward_protocol::channel::ChannelId;

use crate::channel::Answer;
use crate::edge::identity::ClientIdentity;
use crate::http::ApiError;
use crate::online::Device;
use crate::state::AppState;
use crate::wire::channel as wire;

fn b64(v: &str, what: &'static str) -> Result<Vec<u8>, ApiError> {
    B64.decode(v)
        .map_err(|_| ApiError::bad_request("invalid_input", what))
}

fn channel_id(v: &str) -> Result<ChannelId, ApiError> {
    let bad = || ApiError::bad_request("invalid_input", "channel_id is not 32 hex digits");
    let bytes = hex::decode(v).map_err(|_| bad())?;
    Ok(ChannelId(bytes.try_into().map_err(|_| bad())?))
}

pub async fn hello(
    State(app): State<AppState>,
    Extension(terminal): Extension<Device>,
    Json(body): Json<wire::Hello>,
) -> Result<Json<wire::HelloAnswer>, ApiError> {
    let ch = b64(&body.client_hello, "client_hello is not base64")?;
    let sh = app.channels.hello(&terminal, ch).await?;
    Ok(Json(wire::HelloAnswer {
        channel_id: sh.channel.to_string(),
        server_hello: B64.encode(sh.encode()),
    }))
}

pub async fn key_exchange(
    State(app): State<AppState>,
    Extension(terminal): Extension<Device>,
    Json(body): Json<wire::KeyExchange>,
) -> Result<Json<wire::Finished>, ApiError> {
    let id = channel_id(&body.channel_id)?;
    let cke = b64(&body.key_exchange, "key_exchange is not base64")?;
    let opened = app.channels.key_exchange(&terminal, id, cke).await?;
    Ok(Json(wire::Finished {
        server_finished: B64.encode(opened.server_finished),
        ticket: B64.encode(opened.ticket),
    }))
}

pub async fn resume(
    State(app): State<AppState>,
    Extension(terminal): Extension<Device>,
    Json(body): Json<wire::Resume>,
) -> Result<Json<wire::Resumed>, ApiError> {
    let rh = b64(&body.resume_hello, "resume_hello is not base64")?;
    let r = app.channels.resume(&terminal, rh).await?;
    Ok(Json(wire::Resumed {
        channel_id: r.channel.to_string(),
        server_hello: B64.encode(r.server_hello),
        server_finished: B64.encode(r.server_finished),
        ticket: B64.encode(r.ticket),
    }))
}

pub async fn records(
    State(app): State<AppState>,
    Extension(terminal): Extension<Device>,
    Extension(identity): Extension<ClientIdentity>,
    Json(body): Json<wire::RecordIn>,
) -> Result<Json<wire::RecordOut>, ApiError> {
    let record = b64(&body.record, "record is not base64")?;
    let ping = serde_json::to_vec(&super::ping::body(&identity)).unwrap_or_default();
    let out = match app.channels.record(&terminal, record, &ping).await? {
        Answer::Record(r) => wire::RecordOut {
            key_update: None,
            record: Some(B64.encode(r)),
            closed: false,
        },
        Answer::Rekeyed { key_update, record } => wire::RecordOut {
            key_update: Some(B64.encode(key_update)),
            record: Some(B64.encode(record)),
            closed: false,
        },
        Answer::KeyUpdated => wire::RecordOut {
            key_update: None,
            record: None,
            closed: false,
        },
        Answer::Closed => wire::RecordOut {
            key_update: None,
            record: None,
            closed: true,
        },
    };
    Ok(Json(out))
}
