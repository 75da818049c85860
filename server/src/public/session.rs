//! `GET /v1/session`, `DELETE /v1/session`, and [`require_session`], the
//! middleware every session-bound device route sits behind (MAC, PIN,
//! confirmation, load as they arrive).

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use crate::http::ApiError;
use crate::online::{Device, OnlineEvent, Session};
use crate::state::AppState;
use crate::wire::login as wire;

/// The bearer token of a request, if it has one.
fn bearer(req: &Request) -> Option<&str> {
    let value = req.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Admits a request only with a session of the calling device, opened over
/// this certificate, unexpired, with the device in service and the
/// credential unlocked; puts the [`Session`] in its extensions. Refusals
/// are 403 with a stable code and audited within the device's refusal
/// window; a device refused too often is answered 429 `too_many_refusals`
/// (`Retry-After`) until its window ends.
pub async fn require_session(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(device) = req.extensions().get::<Device>().cloned() else {
        return ApiError::certificate_required().into_response();
    };
    if let Err(e) = state
        .online
        .check_throttle(&device, "session.refused")
        .await
    {
        return ApiError::from(e).into_response();
    }
    match state.online.authorize_session(&device, bearer(&req)).await {
        Ok(session) => {
            req.extensions_mut().insert(session);
            next.run(req).await
        }
        Err(e) => {
            if e.kind().is_client() {
                let event = OnlineEvent::SessionRefused {
                    device: device.device_id,
                    route: req.uri().path().to_owned(),
                };
                state.online.audit_refusal(&device, event, e.code()).await;
            }
            ApiError::from(e).into_response()
        }
    }
}

/// `GET /v1/session`: the session the token stands for.
pub async fn show(Extension(session): Extension<Session>) -> Json<wire::SessionInfo> {
    Json(wire::SessionInfo {
        device_id: session.device.to_string(),
        issuer_id: session.issuer.to_string(),
        created_at_ms: session.created_at_ms,
        expires_at_ms: session.expires_at_ms,
    })
}

/// `DELETE /v1/session`: logout.
pub async fn end(
    State(state): State<AppState>,
    Extension(session): Extension<Session>,
) -> Result<StatusCode, ApiError> {
    state.online.logout(&session).await?;
    Ok(StatusCode::NO_CONTENT)
}
