//! `GET /v1/ping`: who the server thinks the client is.

use axum::{Extension, Json};

use crate::edge::identity::{CertKind, ClientIdentity};
use crate::wire::{Ping, PingClient};

/// Answers with the peer address and the client certificate's identity.
pub async fn ping(Extension(id): Extension<ClientIdentity>) -> Json<Ping> {
    Json(body(&id))
}

/// The ping answer for `id` (also what a ping carried in a channel gets).
pub fn body(id: &ClientIdentity) -> Ping {
    let client = id.cert.as_ref().map(|c| {
        let (kind, device_id, role) = match &c.kind {
            CertKind::Device { device_id } => ("device", Some(device_id.clone()), None),
            CertKind::Operator(r) => ("operator", None, Some(r.as_str().to_owned())),
            CertKind::Service { .. } => ("service", None, None),
            CertKind::Other => ("other", None, None),
        };
        PingClient {
            kind: kind.to_owned(),
            common_name: c.common_name.clone(),
            device_id,
            role,
            serial: c.serial.clone(),
        }
    });
    Ping {
        pong: true,
        peer: id.peer.to_string(),
        client,
    }
}
