//! The card-to-server secure channel (`/v1/channel/*`, docs/protocol.md
//! §14). The messages are `keyward_protocol::channel`'s binary formats,
//! carried here in base64: the terminal relays them and can read none of
//! what a record carries.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `POST /v1/channel/hello`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// The card's ClientHello (`KWC1`), base64.
    pub client_hello: String,
}

/// `POST /v1/channel/hello` → 200.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloAnswer {
    /// The channel id (32 hex digits), to name in the key exchange.
    pub channel_id: String,
    /// The ServerHello (`KWC2`), base64.
    pub server_hello: String,
}

/// `POST /v1/channel/key-exchange`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyExchange {
    pub channel_id: String,
    /// The card's CardKeyExchange (`KWC3`), base64.
    pub key_exchange: String,
}

/// `POST /v1/channel/key-exchange` → 200.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finished {
    /// The ServerFinished (`KWC4`), base64.
    pub server_finished: String,
    /// The card's resumption ticket (`KWC6`), base64.
    pub ticket: String,
}

/// `POST /v1/channel/resume`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resume {
    /// The card's ResumeHello (`KWC5`), base64.
    pub resume_hello: String,
}

/// `POST /v1/channel/resume` → 200: the channel is open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resumed {
    pub channel_id: String,
    /// The ServerHello (`KWC2`, mode resumption, no chain), base64.
    pub server_hello: String,
    /// The ServerFinished (`KWC4`), base64.
    pub server_finished: String,
    /// The next ticket (`KWC6`), base64.
    pub ticket: String,
}

/// `POST /v1/channel/records`: one record (`KWCR`), base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordIn {
    pub record: String,
}

/// `POST /v1/channel/records` → 200: the server's record answering a data
/// record; none after a close or a key update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordOut {
    /// The server's key update record (`KWCR` type 3), base64, when its
    /// direction moved to its next key: the card opens it before `record`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_update: Option<String>,
    pub record: Option<String>,
    /// Whether the channel is closed now (the card's close record).
    pub closed: bool,
}

/// What a card's data record carries: one request to a public route
/// (docs/protocol.md §14.8). It runs as the card, through the same routes
/// as a direct call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Carried {
    /// `GET`, `POST` or `DELETE`.
    pub method: String,
    /// The route's path, e.g. `/v1/login/start`.
    pub path: String,
    /// Request headers by lower-case name; only `authorization` (the
    /// session's bearer token) is carried.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The JSON body, if the route takes one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
    /// The exporter value of `path` in this channel (base64 of 16 bytes,
    /// docs/protocol.md §14.3): binds the request to the channel.
    pub exporter: String,
}

/// The server's data record answering a [`Carried`] request: the route's
/// status and JSON body (`null` when it has none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CarriedAnswer {
    pub status: u16,
    pub body: serde_json::Value,
}

/// `POST /admin/v1/channel/keys` → 201: the new current channel key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotatedKey {
    /// The new key's HSM label.
    pub label: String,
    /// Its `channel` certificate's serial.
    pub cert_serial: String,
    /// The key new handshakes used before; handshakes begun under it
    /// finish under it.
    pub previous: String,
}
