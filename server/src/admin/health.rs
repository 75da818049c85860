//! `/live`, `/ready`, `/metrics`: for Prometheus and orchestrators, and
//! `/openapi.json`, the API description of both listeners; all reachable
//! without a client certificate.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::edge::pki::update_crl_metrics;
use crate::metrics::timed_hsm;
use crate::state::AppState;

/// The process is up and serving HTTP.
pub async fn live() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "live" }))
}

/// How long `/ready` waits for the HSM and the database: an orchestrator
/// must hear `not_ready` quickly, not after its own probe timeout.
pub const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(900);

/// Ready when the HSM answers (through the worker pool), the database
/// answers, and the service is not shutting down. 503 with the failing
/// check otherwise (no error detail: the logs have it).
pub async fn ready(State(state): State<AppState>) -> Response {
    let mut checks = serde_json::Map::new();
    let mut ok = true;
    if state.draining() {
        ok = false;
        checks.insert("shutdown".into(), "draining".into());
    }
    let ping = timed_hsm(&state.metrics, "ready_ping", state.kms.ready());
    match tokio::time::timeout(READY_TIMEOUT, ping).await {
        Ok(Ok(())) => {
            checks.insert("hsm_and_database".into(), "ok".into());
        }
        Ok(Err(e)) => {
            ok = false;
            tracing::warn!(error = %e, "readiness check failed");
            checks.insert("hsm_and_database".into(), e.code().into());
        }
        Err(_) => {
            ok = false;
            tracing::warn!("readiness check timed out");
            checks.insert("hsm_and_database".into(), "timeout".into());
        }
    }
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": if ok { "ready" } else { "not_ready" },
        "checks": checks,
        "crl_number": state.tls.crl().number,
    });
    // Not an error document: a 503 here is an answer, not a failure.
    let mut resp = (status, Json(body)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// The Prometheus text exposition.
pub async fn metrics(State(state): State<AppState>) -> Response {
    state.metrics.sample(&state.kms);
    update_crl_metrics(&state.metrics, &state.tls.crl());
    let (content_type, body) = state.metrics.render();
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// docs/openapi.json: the OpenAPI 3.1 description of both listeners, built in.
pub const OPENAPI_JSON: &str = include_str!("../../../docs/openapi.json");

/// `GET /openapi.json`: [`OPENAPI_JSON`] as it is.
pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON).into_response()
}
