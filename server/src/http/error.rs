//! Errors → HTTP responses, in one place.
//!
//! Every failure becomes `{"error": {"code", "message", "request_id"}}` with
//! the right status. Client errors (4xx) say what was wrong with the request;
//! server errors (5xx) say only "internal error" (or that the HSM is busy) and
//! the full error chain is logged under the same request id. Messages of the
//! lower crates never carry key material, so a 4xx may quote them.
//!
//! [`ApiError::into_response`] does not know the request id; it leaves an
//! [`ErrorBody`] in the response extensions, and the `normalize` middleware
//! (`http/layers.rs`) renders it with the id. The same middleware turns bare
//! error responses made elsewhere (timeouts, body limit, axum rejections) into
//! the same JSON shape.

use std::borrow::Cow;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keyward_ca::CaError;
use keyward_device_provisioning::ProvisioningError;
use keyward_kms::{ErrorKind, KmsError};

use crate::audit::AuditError;
use crate::online::OnlineError;

/// What the client is told (the request id is added by `normalize`).
#[derive(Debug, Clone)]
pub struct ErrorBody {
    pub code: Cow<'static, str>,
    pub message: Cow<'static, str>,
    /// More members of the error object (a batch report's `rows`).
    pub extra: Option<serde_json::Map<String, serde_json::Value>>,
}

/// An error on its way to becoming a response.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: Cow<'static, str>,
    pub message: Cow<'static, str>,
    /// More members of the error object, for client errors that carry a report.
    extra: Option<serde_json::Map<String, serde_json::Value>>,
    /// The cause, logged (never sent) for server errors.
    source: Option<anyhow::Error>,
    /// `Retry-After` seconds, for answers a client should retry.
    retry_after: Option<u32>,
}

const INTERNAL: &str = "internal error; quote the request id to the operator";

/// Every stable code either listener answers with, and its one status: a
/// code means the same thing, with the same status, on every route. An
/// answer takes its status from here (the kind or the status it was made
/// with only counts for a code not listed); docs/protocol.md §10.4 and
/// docs/admin-api.md "Errors" list the same pairs, and a route test holds
/// the three together.
pub const CODES: &[(&str, StatusCode)] = &[
    // 400: the request is malformed.
    ("bad_request", StatusCode::BAD_REQUEST),
    ("receipt_outside_window", StatusCode::BAD_REQUEST),
    ("receipt_invalid", StatusCode::BAD_REQUEST),
    ("invalid_request", StatusCode::BAD_REQUEST),
    ("body_unreadable", StatusCode::BAD_REQUEST),
    ("invalid_idempotency_key", StatusCode::BAD_REQUEST),
    ("invalid_input", StatusCode::BAD_REQUEST),
    ("channel_malformed", StatusCode::BAD_REQUEST),
    ("channel_unsupported", StatusCode::BAD_REQUEST),
    ("account_field_not_utf8", StatusCode::BAD_REQUEST),
    ("malformed_frame", StatusCode::BAD_REQUEST),
    ("use_operators_endpoint", StatusCode::BAD_REQUEST),
    ("use_services_endpoint", StatusCode::BAD_REQUEST),
    ("profile_reserved", StatusCode::BAD_REQUEST),
    ("csr_invalid", StatusCode::BAD_REQUEST),
    ("csr_signature", StatusCode::BAD_REQUEST),
    ("csr_subject_mismatch", StatusCode::BAD_REQUEST),
    ("unsupported_key", StatusCode::BAD_REQUEST),
    ("profile_requirements", StatusCode::BAD_REQUEST),
    ("accounts_not_held", StatusCode::BAD_REQUEST),
    ("secure_element_missing", StatusCode::BAD_REQUEST),
    ("invalid_checkpoint", StatusCode::BAD_REQUEST),
    ("key_version_not_usable", StatusCode::BAD_REQUEST),
    ("key_version_superseded", StatusCode::BAD_REQUEST),
    ("message_too_long", StatusCode::BAD_REQUEST),
    ("algorithm_family_mismatch", StatusCode::BAD_REQUEST),
    ("invalid_issuer_id", StatusCode::BAD_REQUEST),
    ("invalid_device_id", StatusCode::BAD_REQUEST),
    ("invalid_serial", StatusCode::BAD_REQUEST),
    ("invalid_challenge_id", StatusCode::BAD_REQUEST),
    ("invalid_response", StatusCode::BAD_REQUEST),
    ("invalid_key_confirmation", StatusCode::BAD_REQUEST),
    ("transaction_malformed", StatusCode::BAD_REQUEST),
    ("duplicate_field", StatusCode::BAD_REQUEST),
    ("unknown_field", StatusCode::BAD_REQUEST),
    ("field_missing", StatusCode::BAD_REQUEST),
    ("field_invalid", StatusCode::BAD_REQUEST),
    ("load_malformed", StatusCode::BAD_REQUEST),
    ("load_version", StatusCode::BAD_REQUEST),
    // 401, 403: who the caller is, or what it may do.
    ("client_certificate_required", StatusCode::UNAUTHORIZED),
    ("receipt_signature_invalid", StatusCode::UNAUTHORIZED),
    ("forbidden_role", StatusCode::FORBIDDEN),
    ("refused_pre_send", StatusCode::FORBIDDEN),
    ("certificate_revoked", StatusCode::FORBIDDEN),
    ("device_certificate_required", StatusCode::FORBIDDEN),
    ("device_certificate_not_current", StatusCode::FORBIDDEN),
    ("device_id_mismatch", StatusCode::FORBIDDEN),
    ("device_suspended", StatusCode::FORBIDDEN),
    ("device_not_issued", StatusCode::FORBIDDEN),
    ("issuer_not_bound", StatusCode::FORBIDDEN),
    ("secure_element_mismatch", StatusCode::FORBIDDEN),
    ("credential_locked", StatusCode::FORBIDDEN),
    ("challenge_invalid", StatusCode::FORBIDDEN),
    ("response_invalid", StatusCode::FORBIDDEN),
    ("kcv_mismatch", StatusCode::FORBIDDEN),
    ("certificate_invalid", StatusCode::FORBIDDEN),
    ("proof_of_possession_failed", StatusCode::FORBIDDEN),
    ("self_approval", StatusCode::FORBIDDEN),
    ("device_certificates_by_provisioning", StatusCode::FORBIDDEN),
    ("pan_not_bound", StatusCode::FORBIDDEN),
    ("session_required", StatusCode::FORBIDDEN),
    ("session_invalid", StatusCode::FORBIDDEN),
    ("session_expired", StatusCode::FORBIDDEN),
    ("session_device_mismatch", StatusCode::FORBIDDEN),
    ("session_certificate_mismatch", StatusCode::FORBIDDEN),
    ("payer_account_not_held", StatusCode::FORBIDDEN),
    ("confirmation_refused", StatusCode::FORBIDDEN),
    ("load_signature_invalid", StatusCode::FORBIDDEN),
    ("channel_refused", StatusCode::FORBIDDEN),
    ("channel_closed", StatusCode::FORBIDDEN),
    ("channel_not_carried", StatusCode::FORBIDDEN),
    ("load_device_mismatch", StatusCode::FORBIDDEN),
    ("load_report_mismatch", StatusCode::FORBIDDEN),
    // 404, 405: no such thing.
    ("not_found", StatusCode::NOT_FOUND),
    ("unknown_serial", StatusCode::NOT_FOUND),
    ("unknown_issuer", StatusCode::NOT_FOUND),
    ("unknown_batch", StatusCode::NOT_FOUND),
    ("unknown_device", StatusCode::NOT_FOUND),
    ("unknown_application", StatusCode::NOT_FOUND),
    ("unknown_customer", StatusCode::NOT_FOUND),
    ("method_not_allowed", StatusCode::METHOD_NOT_ALLOWED),
    ("unknown_confirmation", StatusCode::NOT_FOUND),
    ("unknown_load", StatusCode::NOT_FOUND),
    ("unknown_credit", StatusCode::NOT_FOUND),
    ("account_not_found", StatusCode::NOT_FOUND),
    ("transfer_not_found", StatusCode::NOT_FOUND),
    ("unknown_message", StatusCode::NOT_FOUND),
    // 408, 413, 415: the body.
    ("body_timeout", StatusCode::REQUEST_TIMEOUT),
    ("body_too_large", StatusCode::PAYLOAD_TOO_LARGE),
    ("batch_too_large", StatusCode::PAYLOAD_TOO_LARGE),
    ("too_many_items", StatusCode::PAYLOAD_TOO_LARGE),
    ("unsupported_media_type", StatusCode::UNSUPPORTED_MEDIA_TYPE),
    ("transaction_too_large", StatusCode::PAYLOAD_TOO_LARGE),
    // 409: the state does not allow it (now).
    ("request_in_progress", StatusCode::CONFLICT),
    ("already_revoked", StatusCode::CONFLICT),
    ("self_revocation", StatusCode::CONFLICT),
    ("issuer_exists", StatusCode::CONFLICT),
    ("unknown_key_version", StatusCode::CONFLICT),
    ("key_version_not_pending", StatusCode::CONFLICT),
    ("credential_not_locked", StatusCode::CONFLICT),
    ("batch_exists", StatusCode::CONFLICT),
    ("batch_complete", StatusCode::CONFLICT),
    ("import_running", StatusCode::CONFLICT),
    ("import_aborted", StatusCode::CONFLICT),
    ("device_state", StatusCode::CONFLICT),
    ("check_locked", StatusCode::CONFLICT),
    ("public_key_reused", StatusCode::CONFLICT),
    ("no_pending_recertification", StatusCode::CONFLICT),
    ("recertification_pending", StatusCode::CONFLICT),
    ("no_pending_init", StatusCode::CONFLICT),
    ("reinit_required", StatusCode::CONFLICT),
    ("application_state", StatusCode::CONFLICT),
    ("customer_exists", StatusCode::CONFLICT),
    ("customer_not_approved", StatusCode::CONFLICT),
    ("issuer_not_initialised", StatusCode::CONFLICT),
    ("device_bound_elsewhere", StatusCode::CONFLICT),
    ("already_bound", StatusCode::CONFLICT),
    ("invalid_transition", StatusCode::CONFLICT),
    ("conflict", StatusCode::CONFLICT),
    ("audit_chain_broken", StatusCode::CONFLICT),
    ("confirmation_tampered", StatusCode::CONFLICT),
    ("load_sequence_stale", StatusCode::CONFLICT),
    ("load_sequence_conflict", StatusCode::CONFLICT),
    ("load_finished", StatusCode::CONFLICT),
    ("exceeds_balance", StatusCode::CONFLICT),
    ("already_posted", StatusCode::CONFLICT),
    ("already_voided", StatusCode::CONFLICT),
    ("not_pending", StatusCode::CONFLICT),
    ("not_doubtful", StatusCode::CONFLICT),
    ("already_reconciled", StatusCode::CONFLICT),
    ("exists_with_different_amount", StatusCode::CONFLICT),
    ("exists_with_different_accounts", StatusCode::CONFLICT),
    ("account_exists", StatusCode::CONFLICT),
    ("account_kind_mismatch", StatusCode::CONFLICT),
    ("account_mismatch", StatusCode::CONFLICT),
    ("evidence_not_available", StatusCode::CONFLICT),
    ("receipt_replayed", StatusCode::CONFLICT),
    // 422: well-formed, refused as a whole.
    ("idempotency_key_reused", StatusCode::UNPROCESSABLE_ENTITY),
    ("batch_rejected", StatusCode::UNPROCESSABLE_ENTITY),
    ("field_too_long", StatusCode::UNPROCESSABLE_ENTITY),
    ("amount_invalid", StatusCode::UNPROCESSABLE_ENTITY),
    ("amount_over_limit", StatusCode::UNPROCESSABLE_ENTITY),
    ("currency_unknown", StatusCode::UNPROCESSABLE_ENTITY),
    ("account_invalid", StatusCode::UNPROCESSABLE_ENTITY),
    ("text_forbidden_character", StatusCode::UNPROCESSABLE_ENTITY),
    ("text_not_nfc", StatusCode::UNPROCESSABLE_ENTITY),
    ("payee_confusable", StatusCode::UNPROCESSABLE_ENTITY),
    ("payee_line_too_long", StatusCode::UNPROCESSABLE_ENTITY),
    ("currency_mismatch", StatusCode::UNPROCESSABLE_ENTITY),
    ("amount_not_positive", StatusCode::UNPROCESSABLE_ENTITY),
    ("amount_exceeds_maximum", StatusCode::UNPROCESSABLE_ENTITY),
    ("currency_invalid", StatusCode::UNPROCESSABLE_ENTITY),
    ("account_id_invalid", StatusCode::UNPROCESSABLE_ENTITY),
    ("transfer_id_invalid", StatusCode::UNPROCESSABLE_ENTITY),
    ("floor_invalid", StatusCode::UNPROCESSABLE_ENTITY),
    ("overflow", StatusCode::UNPROCESSABLE_ENTITY),
    // 429: a device refused too often, until its refusal window ends
    // (`Retry-After`).
    ("too_many_refusals", StatusCode::TOO_MANY_REQUESTS),
    ("too_many_logins", StatusCode::TOO_MANY_REQUESTS),
    // 500, 501: the server's fault, or the HSM's capability.
    ("internal_error", StatusCode::INTERNAL_SERVER_ERROR),
    ("hsm_error", StatusCode::INTERNAL_SERVER_ERROR),
    ("key_missing", StatusCode::INTERNAL_SERVER_ERROR),
    ("database_error", StatusCode::INTERNAL_SERVER_ERROR),
    ("audit_error", StatusCode::INTERNAL_SERVER_ERROR),
    ("ca_key_mismatch", StatusCode::INTERNAL_SERVER_ERROR),
    ("ca_expired", StatusCode::INTERNAL_SERVER_ERROR),
    ("ca_config", StatusCode::INTERNAL_SERVER_ERROR),
    ("ca_self_check", StatusCode::INTERNAL_SERVER_ERROR),
    ("certificate_encoding", StatusCode::INTERNAL_SERVER_ERROR),
    ("ocsp_encoding", StatusCode::INTERNAL_SERVER_ERROR),
    // A posting the server built wrong: its bug, nothing was written.
    ("unbalanced_posting", StatusCode::INTERNAL_SERVER_ERROR),
    ("posting_empty", StatusCode::INTERNAL_SERVER_ERROR),
    ("posting_mixes_transfers", StatusCode::INTERNAL_SERVER_ERROR),
    ("hsm_mechanism_missing", StatusCode::NOT_IMPLEMENTED),
    // 503: retry later (`Retry-After`).
    ("timeout", StatusCode::SERVICE_UNAVAILABLE),
    ("overloaded", StatusCode::SERVICE_UNAVAILABLE),
    ("presend_check_unavailable", StatusCode::SERVICE_UNAVAILABLE),
    ("hsm_busy", StatusCode::SERVICE_UNAVAILABLE),
    ("hsm_unavailable", StatusCode::SERVICE_UNAVAILABLE),
    ("hsm_module", StatusCode::SERVICE_UNAVAILABLE),
    ("hsm_token_not_found", StatusCode::SERVICE_UNAVAILABLE),
    ("hsm_login", StatusCode::SERVICE_UNAVAILABLE),
    ("database_unavailable", StatusCode::SERVICE_UNAVAILABLE),
    ("audit_unavailable", StatusCode::SERVICE_UNAVAILABLE),
];

/// The status of `code`, if it is one of [`CODES`].
pub fn status_of(code: &str) -> Option<StatusCode> {
    CODES.iter().find(|(c, _)| *c == code).map(|(_, s)| *s)
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        let code = code.into();
        Self {
            status: status_of(&code).unwrap_or(status),
            code,
            message: message.into(),
            extra: None,
            source: None,
            retry_after: None,
        }
    }

    /// Adds a member to the error object (client errors only).
    pub fn with_member(mut self, name: &str, value: serde_json::Value) -> Self {
        self.extra
            .get_or_insert_with(Default::default)
            .insert(name.to_owned(), value);
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// The operator's role does not allow the action.
    pub fn forbidden_role(needed: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden_role",
            format!("this action needs the {needed} role"),
        )
    }

    /// No (operator) client certificate on a route that needs one.
    pub fn certificate_required() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "client_certificate_required",
            "an operator client certificate is required",
        )
    }

    /// A server-side failure: generic message, cause logged.
    pub fn internal(source: impl Into<anyhow::Error>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal_error".into(),
            message: INTERNAL.into(),
            extra: None,
            source: Some(source.into()),
            retry_after: None,
        }
    }

    /// Load shed or concurrency limit.
    pub fn overloaded() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "the server is at its request limit; retry later",
        )
        .retry_after(RETRY_AFTER_SECS)
    }

    /// The audit record for a security operation could not be written, so the
    /// operation was not done (fail closed).
    pub fn audit_unavailable(source: AuditError) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "audit_unavailable".into(),
            message: "the audit trail cannot be written; the operation was not performed".into(),
            extra: None,
            source: Some(source.into()),
            retry_after: Some(RETRY_AFTER_SECS),
        }
    }

    /// Asks the client to retry after `secs` (`Retry-After`).
    pub fn retry_after(mut self, secs: u32) -> Self {
        self.retry_after = Some(secs);
        self
    }

    fn with_source(mut self, source: impl Into<anyhow::Error>) -> Self {
        self.source = Some(source.into());
        self
    }
}

/// Seconds a client is told to wait after a busy or unavailable answer.
pub const RETRY_AFTER_SECS: u32 = 1;

impl ApiError {
    /// The one mapping from an error's kind to an answer. Client kinds say
    /// what was wrong (the lower crates' messages never carry key material);
    /// busy and unavailable are 503 with `Retry-After` and keep their code;
    /// internal errors keep their code but not their message, and the cause
    /// is logged.
    pub fn from_kind(
        kind: ErrorKind,
        code: &'static str,
        source: impl Into<anyhow::Error> + std::fmt::Display,
    ) -> Self {
        let status = match kind {
            ErrorKind::Invalid => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::Busy => {
                return Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    code,
                    "the service is at capacity; retry later",
                )
                .retry_after(RETRY_AFTER_SECS)
                .with_source(source);
            }
            ErrorKind::Unavailable => {
                return Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    code,
                    "a service this request needs is unavailable; retry later",
                )
                .retry_after(RETRY_AFTER_SECS)
                .with_source(source);
            }
            ErrorKind::Internal => return Self::internal(source).with_code(code),
            ErrorKind::Unsupported => StatusCode::NOT_IMPLEMENTED,
        };
        let message = source.to_string();
        Self::new(status, code, message)
    }
}

impl From<KmsError> for ApiError {
    fn from(e: KmsError) -> Self {
        Self::from_kind(e.kind(), e.code(), e)
    }
}

impl From<CaError> for ApiError {
    fn from(e: CaError) -> Self {
        Self::from_kind(e.kind(), e.code(), e)
    }
}

impl From<ProvisioningError> for ApiError {
    /// By kind; a rejected batch is 422 with its row-by-row report.
    fn from(e: ProvisioningError) -> Self {
        if let Some(report) = e.import_report() {
            let rows = serde_json::to_value(crate::wire::devices::ReportRow::all(report))
                .unwrap_or_default();
            return Self::new(StatusCode::UNPROCESSABLE_ENTITY, e.code(), e.to_string())
                .with_member("rows", rows);
        }
        Self::from_kind(e.kind(), e.code(), e)
    }
}

impl From<OnlineError> for ApiError {
    fn from(e: OnlineError) -> Self {
        if let OnlineError::Throttled { retry_after_secs }
        | OnlineError::TooManyLogins { retry_after_secs } = e
        {
            return Self::new(StatusCode::TOO_MANY_REQUESTS, e.code(), e.to_string())
                .retry_after(retry_after_secs);
        }
        Self::from_kind(e.kind(), e.code(), e)
    }
}

impl From<crate::outbox::receipts::ReceiptError> for ApiError {
    /// A receipt whose signature does not verify lacks its credential: 401.
    fn from(e: crate::outbox::receipts::ReceiptError) -> Self {
        use crate::outbox::receipts::ReceiptError as E;
        match e {
            E::SignatureInvalid => Self::new(StatusCode::UNAUTHORIZED, e.code(), e.to_string()),
            e => Self::from_kind(e.kind(), e.code(), e),
        }
    }
}

impl From<crate::confirmation::ConfirmError> for ApiError {
    fn from(e: crate::confirmation::ConfirmError) -> Self {
        Self::from_kind(e.kind(), e.code(), e)
    }
}

impl From<crate::load::LoadError> for ApiError {
    fn from(e: crate::load::LoadError) -> Self {
        Self::from_kind(e.kind(), e.code(), e)
    }
}

impl From<crate::channel::ChannelError> for ApiError {
    fn from(e: crate::channel::ChannelError) -> Self {
        Self::from_kind(e.kind(), e.code(), e)
    }
}

impl From<crate::bulk::BatchError> for ApiError {
    /// A bulk verification refused whole: too many items is 413, a frame
    /// that cannot be cut into items or a body that is not the JSON shape
    /// is 400, another content type 415.
    fn from(e: crate::bulk::BatchError) -> Self {
        use crate::bulk::BatchError as E;
        let status = match e {
            E::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            E::Frame(_) | E::Json(_) => StatusCode::BAD_REQUEST,
            E::MediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        };
        Self::new(status, e.code(), e.to_string())
    }
}

impl<E: Into<ApiError>> From<crate::audit::StepError<E>> for ApiError {
    /// The step's own error as it maps; an outcome record that could not be
    /// staged is 503 `audit_unavailable` (the step did not happen).
    fn from(e: crate::audit::StepError<E>) -> Self {
        use crate::audit::StepError;
        match e {
            StepError::Effect(e) => e.into(),
            StepError::Audit(e) => Self::audit_unavailable(e),
            StepError::Database(e) => Self::from_kind(
                keyward_kms::db::error_kind(&e),
                keyward_kms::db::error_code(&e),
                e,
            ),
        }
    }
}

impl From<Box<keyward_device_provisioning::Refused>> for ApiError {
    fn from(r: Box<keyward_device_provisioning::Refused>) -> Self {
        r.error.into()
    }
}

impl From<AuditError> for ApiError {
    fn from(e: AuditError) -> Self {
        match &e {
            AuditError::Database(db) => {
                let (kind, code) = (
                    keyward_kms::db::error_kind(db),
                    keyward_kms::db::error_code(db),
                );
                if kind == ErrorKind::Internal {
                    Self::internal(e).with_code("audit_error")
                } else {
                    Self::from_kind(kind, code, e)
                }
            }
            _ => Self::from_kind(e.kind(), e.code(), e),
        }
    }
}

impl ApiError {
    /// Keeps the stable code of a server error (the message stays generic).
    fn with_code(mut self, code: &'static str) -> Self {
        self.status = status_of(code).unwrap_or(self.status);
        self.code = code.into();
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Runs inside the request's trace span, which carries the request id.
        let cause = self.source.as_ref().map(|src| format!("{src:#}"));
        match server_error_level(self.status) {
            Some(tracing::Level::ERROR) => tracing::error!(
                status = self.status.as_u16(),
                code = %self.code,
                error = cause.as_deref().unwrap_or("-"),
                "request failed"
            ),
            Some(_) => tracing::warn!(
                status = self.status.as_u16(),
                code = %self.code,
                error = cause.as_deref().unwrap_or("-"),
                "request failed"
            ),
            None => {
                tracing::info!(status = self.status.as_u16(), code = %self.code, message = %self.message, "request refused");
            }
        }
        let body = ErrorBody {
            code: self.code,
            message: self.message,
            extra: self.extra.filter(|_| self.status.is_client_error()),
        };
        let mut resp = (self.status, render(&body, None)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        resp.extensions_mut().insert(body);
        resp
    }
}

/// How loud a failed answer is logged: ERROR only for a 500 (something is
/// broken); a 501 (the HSM lacks a capability, as SoftHSM lacks PIN
/// translation) and a 503 (busy or away, retried) are expected and WARN;
/// `None` for a client error.
pub fn server_error_level(status: StatusCode) -> Option<tracing::Level> {
    match status {
        s if !s.is_server_error() => None,
        StatusCode::NOT_IMPLEMENTED | StatusCode::SERVICE_UNAVAILABLE => Some(tracing::Level::WARN),
        _ => Some(tracing::Level::ERROR),
    }
}

/// The JSON error document.
pub fn render(body: &ErrorBody, request_id: Option<&str>) -> axum::Json<serde_json::Value> {
    let mut error = body.extra.clone().unwrap_or_default();
    error.insert("code".into(), body.code.clone().into());
    error.insert("message".into(), body.message.clone().into());
    error.insert("request_id".into(), request_id.into());
    axum::Json(serde_json::json!({ "error": error }))
}

/// The error body for a bare status made outside the handlers (axum's
/// rejections, the timeout layer, a panic); its code's status in [`CODES`]
/// is the status answered, so a JSON body of the wrong shape (axum: 422) is
/// `400 invalid_request` like every other malformed body.
pub fn body_for_status(status: StatusCode) -> ErrorBody {
    let (code, message): (&'static str, &'static str) = match status {
        StatusCode::BAD_REQUEST => ("bad_request", "the request is malformed"),
        StatusCode::NOT_FOUND => ("not_found", "no such route"),
        StatusCode::METHOD_NOT_ALLOWED => {
            ("method_not_allowed", "method not allowed on this route")
        }
        StatusCode::PAYLOAD_TOO_LARGE => ("body_too_large", "the request body exceeds the limit"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported_media_type",
            "expected Content-Type: application/json",
        ),
        StatusCode::UNPROCESSABLE_ENTITY => (
            "invalid_request",
            "the request body does not fit the schema",
        ),
        StatusCode::SERVICE_UNAVAILABLE => ("timeout", "the request took too long"),
        StatusCode::REQUEST_TIMEOUT => ("body_timeout", "the request body did not arrive in time"),
        s if s.is_client_error() => ("bad_request", "the request is malformed"),
        _ => ("internal_error", INTERNAL),
    };
    ErrorBody {
        code: code.into(),
        message: message.into(),
        extra: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_retry_later(e: ApiError, code: &str) {
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE, "{e:?}");
        assert_eq!(e.code, code);
        let resp = e.into_response();
        assert_eq!(resp.headers()["retry-after"], "1");
    }

    /// An HSM at capacity is 503 + `Retry-After` whichever layer it came
    /// through: kms directly, the CA, provisioning, provisioning through its
    /// certifier (a batch import: it answered 500 before), the online layer.
    #[test]
    fn hsm_busy_is_503_retry_after_from_every_path() {
        use keyward_device_provisioning::CertifierError;
        assert_retry_later(KmsError::Busy.into(), "hsm_busy");
        assert_retry_later(CaError::Kms(KmsError::Busy).into(), "hsm_busy");
        assert_retry_later(ProvisioningError::Kms(KmsError::Busy).into(), "hsm_busy");
        let certifier: CertifierError = CaError::Kms(KmsError::Busy).into();
        assert_retry_later(ProvisioningError::Certifier(certifier).into(), "hsm_busy");
        assert_retry_later(OnlineError::Kms(KmsError::Busy).into(), "hsm_busy");
        // An HSM that is gone: 503 too, with its own code.
        let gone = KmsError::HsmUnavailable {
            function: "C_Sign",
            rv: keyward_kms::hsm::Rv::new(0x32), // CKR_DEVICE_REMOVED
        };
        let code = gone.code();
        assert_retry_later(gone.into(), code);
        // A key handle outdated by reconnects under the request: retry too.
        assert_retry_later(KmsError::Stale.into(), "hsm_unavailable");
        assert_retry_later(OnlineError::Kms(KmsError::Stale).into(), "hsm_unavailable");
        assert_retry_later(ApiError::overloaded(), "overloaded");
    }

    #[test]
    fn server_errors_hide_their_cause() {
        let e: ApiError = KmsError::Pkcs11 {
            function: "C_Sign",
            rv: keyward_kms::hsm::Rv::new(0x6), // CKR_FUNCTION_FAILED
        }
        .into();
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(e.code, "hsm_error");
        assert!(!e.message.contains("C_Sign"));
    }

    #[test]
    fn provisioning_refusals_keep_their_code_and_report() {
        use keyward_device_provisioning::{ImportReport, RowOutcome, RowReport};
        let e: ApiError = ProvisioningError::SelfApproval.into();
        assert_eq!(
            (e.status, e.code.as_ref()),
            (StatusCode::FORBIDDEN, "self_approval")
        );
        let report = ImportReport {
            batch_id: "B1".parse().unwrap(),
            rows: vec![RowReport {
                line: 2,
                device_id: None,
                outcome: RowOutcome::Rejected {
                    code: "csr_signature",
                    reason: "the CSR signature does not verify",
                },
            }],
        };
        let e: ApiError = ProvisioningError::BatchRejected(Box::new(report)).into();
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        let body = ErrorBody {
            code: e.code.clone(),
            message: e.message.clone(),
            extra: e.extra.clone(),
        };
        let json = render(&body, Some("rid")).0;
        assert_eq!(json["error"]["code"], "batch_rejected");
        assert_eq!(json["error"]["rows"][0]["code"], "csr_signature");
        assert_eq!(json["error"]["request_id"], "rid");
    }

    /// The table decides, whatever kind the lower crate gave the error.
    #[test]
    fn a_code_has_the_status_of_the_table() {
        let e: ApiError = KmsError::UnknownKeyVersion {
            issuer: "bank-a".parse().unwrap(),
            device: "0102030405060708".parse().unwrap(),
            version: keyward_kms::types::KeyVersion(9),
        }
        .into();
        assert_eq!(
            (e.status, e.code.as_ref()),
            (StatusCode::CONFLICT, "unknown_key_version")
        );
        let e: ApiError = KmsError::MechanismMissing {
            name: "CKM_X",
            number: 1,
            purpose: "test",
        }
        .into();
        assert_eq!(e.status, StatusCode::NOT_IMPLEMENTED);
        assert_eq!(
            server_error_level(StatusCode::NOT_IMPLEMENTED),
            Some(tracing::Level::WARN)
        );
        assert_eq!(
            server_error_level(StatusCode::INTERNAL_SERVER_ERROR),
            Some(tracing::Level::ERROR)
        );
        let bare = body_for_status(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(status_of(&bare.code), Some(StatusCode::BAD_REQUEST));
    }

    #[test]
    fn client_errors_say_what_was_wrong() {
        let e: ApiError = KmsError::Invalid {
            field: "device_id",
            reason: "16 hex digits".into(),
        }
        .into();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.code, "invalid_input");
        assert!(e.message.contains("device_id"));
    }
}
