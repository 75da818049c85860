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
    /// answers it. Its code is recorded when it is one of `known`; any
    /// other is the check itself failing (the registry did not answer) and
    /// is recorded as `registry_unavailable`. A refusal the trail cannot
    /// record is still refused. A check that failed because the database is
    /// away is not recorded at all: the trail is in that database, and
    /// trying would make the answer wait a second `acquire_timeout` (the
    /// bound a request that finds the database away is answered within).
    pub async fn refuse(
        self,
        state: &AppState,
        actor: &Actor,
        role: Option<String>,
        refusal: ApiError,
        known: &[&'static str],
    ) -> Response {
        if refusal.code == keyward_kms::db::UNAVAILABLE_CODE {
            tracing::warn!(
                route = %self.route,
                "request refused unrecorded: the database is away"
            );
            return refusal.into_response();
        }
        let code = known
            .iter()
            .copied()
            .find(|k| *k == refusal.code.as_ref())
            .unwrap_or("registry_unavailable");
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
        refusal.into_response()
    }
}
