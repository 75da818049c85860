//! `POST /v1/channel/hello`, `POST /v1/channel/key-exchange`,
//! `POST /v1/channel/records`, `POST /v1/channel/resume`: the card-to-server
//! secure channel relayed by a terminal (docs/protocol.md §14). No session: the card proves itself in
//! the key exchange; the terminal still needs its device certificate, as
//! on every public route. The protocol is [`crate::channel`]'s; this file
//! reads base64 in and writes it back, and runs a data record's carried
//! request ([`carry`]) as the card through the public router itself.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::{Extension, Json};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use keyward_protocol::channel::{ChannelId, MAX_PLAINTEXT};
use tower::ServiceExt as _;

use crate::channel::Answer;
use crate::edge::identity::{ClientIdentity, PeerCertificate};
use crate::http::ApiError;
use crate::http::error::{ErrorBody, render, status_of};
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

/// The public routes a carried request runs through (`super::router`
/// builds them once).
#[derive(Clone)]
pub struct CarriedRouter(pub axum::Router);

pub async fn records(
    State(app): State<AppState>,
    Extension(terminal): Extension<Device>,
    Extension(identity): Extension<ClientIdentity>,
    Extension(CarriedRouter(routes)): Extension<CarriedRouter>,
    Json(body): Json<wire::RecordIn>,
) -> Result<Json<wire::RecordOut>, ApiError> {
    let record = b64(&body.record, "record is not base64")?;
    let (peer, request_id) = (identity.peer, terminal.request_id.clone());
    let run = |card, plain| carry(routes, peer, request_id, card, plain);
    let out = match app.channels.record(&terminal, record, run).await? {
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

/// The routes a channel carries (`*`: one id segment); the channel's own
/// routes are not among them.
const CARRIED: [&str; 10] = [
    "/v1/ping",
    "/v1/login/start",
    "/v1/login/finish",
    "/v1/session",
    "/v1/transactions",
    "/v1/confirmations",
    "/v1/confirmations/*/confirm",
    "/v1/loads",
    "/v1/loads/status",
    "/v1/loads/*/report",
];

/// Whether `path` is one of [`CARRIED`], segment by segment (no query, no
/// escapes, no dot segments can pass).
fn carried_route(path: &str) -> bool {
    let id = |s: &str| {
        (1..=64).contains(&s.len())
            && s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    };
    CARRIED.iter().any(|t| {
        t.split('/').count() == path.split('/').count()
            && t.split('/')
                .zip(path.split('/'))
                .all(|(t, s)| if t == "*" { id(s) } else { t == s })
    })
}

/// Runs the request a data record carries as the card (`card`: the
/// certificate its key exchange proved) through the public routes, so the
/// route's own doors (`require_device`: current, unrevoked; the session)
/// and logic apply exactly as to a direct call; the terminal's identity
/// only lends the peer address and request id. The answer's plaintext
/// (`CarriedAnswer`).
async fn carry(
    routes: axum::Router,
    peer: SocketAddr,
    request_id: String,
    card: Option<PeerCertificate>,
    plain: Vec<u8>,
) -> Vec<u8> {
    let (status, body) = match carried_request(&plain, &request_id) {
        Err(e) => error_answer(e, &request_id),
        Ok(mut req) => {
            req.extensions_mut()
                .insert(ClientIdentity { peer, cert: card });
            let resp = match routes.oneshot(req).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            let status = resp.status().as_u16();
            match axum::body::to_bytes(resp.into_body(), MAX_PLAINTEXT).await {
                Ok(b) if b.is_empty() => (status, serde_json::Value::Null),
                Ok(b) => match serde_json::from_slice(&b) {
                    Ok(v) => (status, v),
                    Err(_) => too_large(&request_id),
                },
                Err(_) => too_large(&request_id),
            }
        }
    };
    let answer = wire::CarriedAnswer { status, body };
    match serde_json::to_vec(&answer) {
        Ok(v) if v.len() <= MAX_PLAINTEXT => v,
        _ => serde_json::to_vec(&{
            let (status, body) = too_large(&request_id);
            wire::CarriedAnswer { status, body }
        })
        .unwrap_or_default(),
    }
}

/// An answer the channel cannot carry (every route's answer fits a record;
/// this is the guard, not a path taken).
fn too_large(request_id: &str) -> (u16, serde_json::Value) {
    let e = ApiError::internal(anyhow::anyhow!("a carried answer does not fit a record"));
    tracing::error!(request_id, "a carried answer does not fit a record");
    error_answer(e, request_id)
}

/// The HTTP request a record's plaintext stands for: a [`wire::Carried`]
/// to a [`CARRIED`] route, with only the session's `authorization` header.
fn carried_request(plain: &[u8], request_id: &str) -> Result<Request, ApiError> {
    let bad = |m: &'static str| ApiError::bad_request("invalid_input", m);
    let c: wire::Carried = serde_json::from_slice(plain)
        .map_err(|_| bad("the carried request is not the documented JSON"))?;
    let method = match c.method.as_str() {
        "GET" => Method::GET,
        "POST" => Method::POST,
        "DELETE" => Method::DELETE,
        _ => return Err(bad("the carried method is not GET, POST or DELETE")),
    };
    if !carried_route(&c.path) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "channel_not_carried",
            "this route is not carried in a channel",
        ));
    }
    let mut req = Request::builder()
        .method(method)
        .uri(&c.path)
        .header("x-request-id", request_id);
    for (name, value) in &c.headers {
        if name != "authorization" {
            return Err(bad("only the authorization header is carried"));
        }
        let value =
            HeaderValue::from_str(value).map_err(|_| bad("a carried header is not text"))?;
        req = req.header(AUTHORIZATION, value);
    }
    let body = match &c.body {
        Some(v) => {
            req = req.header(CONTENT_TYPE, "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    req.body(body)
        .map_err(|_| bad("the carried request is not a valid request"))
}

/// A refusal as the route stack would answer it: its code's status and the
/// JSON error document with the request id.
fn error_answer(e: ApiError, request_id: &str) -> (u16, serde_json::Value) {
    let status = status_of(&e.code).unwrap_or(e.status).as_u16();
    let body = ErrorBody {
        code: e.code,
        message: e.message,
        extra: None,
    };
    (status, render(&body, Some(request_id)).0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_listed_routes_are_carried() {
        for p in [
            "/v1/ping",
            "/v1/login/start",
            "/v1/session",
            "/v1/transactions",
            "/v1/confirmations/c-1_a/confirm",
            "/v1/loads/L1/report",
            "/v1/loads/status",
        ] {
            assert!(carried_route(p), "{p}");
        }
        for p in [
            "/v1/channel/records",
            "/v1/channel/hello",
            "/v1/ping?x=1",
            "/v1/ping/",
            "v1/ping",
            "//v1/ping",
            "/v1/loads/../channel/report",
            "/v1/loads/%2e%2e/report",
            "/v1/confirmations//confirm",
            "/admin/v1/devices",
            "",
        ] {
            assert!(!carried_route(p), "{p}");
        }
    }

    #[test]
    fn a_carried_request_is_checked_before_it_runs() {
        let code = |plain: &[u8]| carried_request(plain, "rid").unwrap_err().code;
        assert_eq!(
            code(br#"{"method":"POST","path":"/v1/channel/hello","exporter":"AA=="}"#),
            "channel_not_carried"
        );
        assert_eq!(
            code(br#"{"method":"PUT","path":"/v1/ping","exporter":"AA=="}"#),
            "invalid_input"
        );
        assert_eq!(
            code(br#"{"method":"GET","path":"/v1/ping","headers":{"x-request-id":"a"},"exporter":"AA=="}"#),
            "invalid_input"
        );
        assert_eq!(
            code(br#"{"method":"GET","path":"/v1/ping","extra":1}"#),
            "invalid_input"
        );
        assert_eq!(code(b"not json"), "invalid_input");
        assert_eq!(
            code(br#"{"method":"GET","path":"/v1/ping"}"#),
            "invalid_input",
            "no exporter value"
        );
        let req = carried_request(
            br#"{"method":"POST","path":"/v1/transactions","headers":{"authorization":"Bearer t"},"body":{"a":1},"exporter":"AA=="}"#,
            "rid",
        )
        .unwrap();
        assert_eq!(req.method(), Method::POST);
        assert_eq!(req.headers()[AUTHORIZATION], "Bearer t");
        assert_eq!(req.headers()["x-request-id"], "rid");
        assert_eq!(req.headers()[CONTENT_TYPE], "application/json");
    }
}
