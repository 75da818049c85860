//! Refusals at a listener's door — no certificate, a certificate of the
//! wrong kind or role, a revoked one — audited the same way by every
//! middleware that admits requests (`require_operator`, `require_device`,
//! `require_verifier`).

use axum::extract::{MatchedPath, Request};
use axum::response::{IntoResponse, Response};

use super::ApiError;
use super::layers::request_id;
use crate::audit::{Actor, AuditEvent, Outcome};
use crate::state::AppState;

/// What an audit record of a refused request names, read before the
/// request goes on (or not).
#[derive(Debug, Clone)]
pub struct Door {
    pub method: String,
    pub route: String,
    pub request_id: String,
}

impl Door {
    /// The request's method, matched route (`fallback` when the caller
    /// knows it: a middleware on one route) and request id.
    pub fn of(req: &Request, fallback: &str) -> Self {
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map_or_else(|| fallback.to_owned(), |p| p.as_str().to_owned());
        Self {
            method: req.method().to_string(),
            route,
            request_id: request_id(req.extensions()),
        }
    }

    /// Audits `refusal` (as `role` when the certificate has one) and
    /// answers it. A check that could not be made is recorded as
    /// `registry_unavailable`, except when the database is away: the trail
    /// is in that database, and trying would make the answer wait a second
    /// `acquire_timeout` (the bound a request that finds the database away
    /// is answered within). A refusal the trail cannot record is still
    /// refused.
    pub async fn refuse(
        self,
        state: &AppState,
        actor: &Actor,
        role: Option<String>,
        refusal: DoorRefusal,
    ) -> Response {
        let code = refusal.recorded_code();
        let answer = refusal.into_answer();
        if answer.code == keyward_kms::db::UNAVAILABLE_CODE {
            tracing::warn!(
                route = %self.route,
                "request refused unrecorded: the database is away"
            );
            return closing(answer);
        }
        let event = AuditEvent::AccessRefused {
            method: self.method,
            route: self.route,
            code,
            role,
        };
        let _ = state
            .audit
            .append(actor, &event, Outcome::Refused { code }, &self.request_id)
            .await;
        closing(answer)
    }
}

/// A door's answer, read from the headers alone: the body is never read
/// (the caller was not admitted), so the connection ends after it
/// (`Connection: close`; HTTP/2 resets the stream instead).
fn closing(answer: ApiError) -> Response {
    let mut resp = answer.into_response();
    resp.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    resp
}

/// Why a door refused a request: the one set of refusals every admitting
/// middleware answers with, each with its code, status and message here.
#[derive(Debug)]
pub enum DoorRefusal {
    /// No client certificate (401 `client_certificate_required`).
    CertificateRequired,
    /// A certificate without the role or kind this door admits (403
    /// `forbidden_role`; the roles it needs).
    ForbiddenRole(&'static str),
    /// Revoked, expired or unknown to the CA (403 `certificate_revoked`).
    Revoked(&'static str),
    /// Not a device certificate, on the device listener (403
    /// `device_certificate_required`).
    DeviceCertificateRequired,
    /// A device certificate that is not the device's current registered
    /// one, or of a retired device (403 `device_certificate_not_current`).
    DeviceCertificateNotCurrent,
    /// The check itself could not be made (the registry or the CA did not
    /// answer): its own answer, recorded as `registry_unavailable`.
    CheckFailed(ApiError),
}

impl DoorRefusal {
    /// The code the audit record carries.
    fn recorded_code(&self) -> &'static str {
        match self {
            Self::CertificateRequired => "client_certificate_required",
            Self::ForbiddenRole(_) => "forbidden_role",
            Self::Revoked(_) => "certificate_revoked",
            Self::DeviceCertificateRequired => "device_certificate_required",
            Self::DeviceCertificateNotCurrent => "device_certificate_not_current",
            Self::CheckFailed(_) => "registry_unavailable",
        }
    }

    /// The answer the client gets.
    pub fn into_answer(self) -> ApiError {
        use axum::http::StatusCode;
        match self {
            Self::CertificateRequired => ApiError::certificate_required(),
            Self::ForbiddenRole(needed) => ApiError::forbidden_role(needed),
            Self::Revoked(message) => {
                ApiError::new(StatusCode::FORBIDDEN, "certificate_revoked", message)
            }
            Self::DeviceCertificateRequired => ApiError::new(
                StatusCode::FORBIDDEN,
                "device_certificate_required",
                "this listener accepts device certificates only",
            ),
            Self::DeviceCertificateNotCurrent => ApiError::new(
                StatusCode::FORBIDDEN,
                "device_certificate_not_current",
                "this is not the device's current registered certificate",
            ),
            Self::CheckFailed(e) => e,
        }
    }
}

impl<E: Into<ApiError>> From<E> for DoorRefusal {
    fn from(e: E) -> Self {
        Self::CheckFailed(e.into())
    }
}
