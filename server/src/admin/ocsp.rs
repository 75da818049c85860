//! `POST /ocsp` and `GET /ocsp/{request}`: the OCSP responder (RFC 6960) for
//! certificates of the issuing CA, reachable without a client certificate
//! (relying parties are not operators), on a concurrency budget and body
//! limit of their own (`server.ocsp_*`). The CA's responder builds the
//! answer, signed once and then cached ([`keyward_ca::OcspResponder`]); a
//! malformed request is an OCSP
//! `malformedRequest` response (HTTP 200), not an HTTP error. Only a
//! server-side failure (HSM, database) is an HTTP error, mapped as usual.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use keyward_ca::{OCSP_REQUEST_CONTENT_TYPE, OCSP_RESPONSE_CONTENT_TYPE, malformed_request_der};

use crate::http::ApiError;
use crate::metrics::timed_hsm;
use crate::state::AppState;

/// `POST /ocsp` with an `application/ocsp-request` body (RFC 6960 A.1.1).
pub async fn post(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case(OCSP_REQUEST_CONTENT_TYPE) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "an OCSP request is sent as application/ocsp-request",
        ));
    }
    answer(&state, &body).await
}

/// `GET /ocsp/{request}`: the DER request, base64 then URL-encoded
/// (RFC 6960 A.1.1). URL-safe base64 and missing padding are accepted too;
/// anything that does not decode is answered `malformedRequest`.
pub async fn get(
    State(state): State<AppState>,
    Path(encoded): Path<String>,
) -> Result<Response, ApiError> {
    let encoded = encoded.trim_start_matches('/');
    let decoded = [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(encoded).ok());
    match decoded {
        Some(der) => answer(&state, &der).await,
        None => Ok(ocsp_reply(malformed_request_der())),
    }
}

async fn answer(state: &AppState, request_der: &[u8]) -> Result<Response, ApiError> {
    let answer = timed_hsm(&state.metrics, "ocsp_sign", state.ocsp.respond(request_der)).await?;
    state
        .metrics
        .ocsp_responses
        .with_label_values(&[answer.source.as_str()])
        .inc();
    Ok(ocsp_reply(answer.der))
}

fn ocsp_reply(der: Vec<u8>) -> Response {
    (
        [
            (header::CONTENT_TYPE, OCSP_RESPONSE_CONTENT_TYPE),
            // Answers are short-lived and not for shared caches.
            (header::CACHE_CONTROL, "no-store"),
        ],
        der,
    )
        .into_response()
}
