//! The tower middleware of both listeners (docs/stack-notes.md §8), in two
//! parts, so that no body byte is read before the caller is admitted.
//!
//! [`apply`] wraps every route of a listener, outermost first:
//!
//! 1. catch-panic (safety net for the layers below; the inner one answers)
//! 2. request id: an incoming `x-request-id` is kept only if it is 1-64 of
//!    `[A-Za-z0-9._-]`, else a UUID is made; echoed on the response
//! 3. sensitive request headers (`authorization`, `cookie`) hidden from logs
//! 4. trace: one span per request carrying the request id
//! 5. metrics: `keyward_http_requests_total{listener,route,status}` and the
//!    duration histogram, with the matched route template as `route`
//! 6. normalize: every error response becomes the JSON error document with
//!    the request id, and the status its code has in `error::CODES`
//! 7. catch-panic (500 through normalize, so it has a request id and JSON)
//!
//! Then each route group's door (`require_operator`, `require_device`,
//! `require_verifier`: certificate and role, from the headers and the TLS
//! session only), and inside it the group's [`Intake`]:
//!
//! 8. body read: the whole body is read within `body_read_timeout` of the
//!    door (→ 408 `body_timeout`) and within the group's body limit (→ 413
//!    `body_too_large`, once the rest was read and dropped, so the answer
//!    is not lost to a reset), *before* a concurrency permit is taken, so
//!    slow senders hold no permit
//! 9. body limit → 413 `body_too_large`
//! 10. load-shed + concurrency limit (one semaphore per [`Intake`]: the
//!     admin API with health and metrics, anonymous OCSP, batch imports,
//!     bulk verification) → 503 `overloaded`
//! 11. timeout of the handler, from its permit → 503 `timeout`
//!
//! A request the door refuses is answered from its headers with
//! `Connection: close`: an anonymous client cannot make the server buffer
//! a body. Both parts are added after routing (`Router::layer`,
//! `Router::route_layer`), so `MatchedPath` is known to the metrics layer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower::ServiceBuilder;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use super::error::{ApiError, ErrorBody, body_for_status, render, server_error_level, status_of};
use crate::metrics::{Listener, Metrics};

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Limits of one route group's [`Intake`].
#[derive(Debug, Clone)]
pub struct StackConfig {
    pub listener: Listener,
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
    pub max_concurrent_requests: usize,
    pub body_read_timeout: Duration,
}

#[derive(Debug, Clone)]
struct MetricsCtx {
    metrics: Metrics,
    listener: Listener,
}

/// Wraps every route of a listener's `router` in the outer stack (1-7).
pub fn apply<S>(router: Router<S>, listener: Listener, metrics: Metrics) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let ctx = Arc::new(MetricsCtx { metrics, listener });
    let listener = listener.as_str();
    let stack = ServiceBuilder::new()
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(middleware::from_fn(sanitize_request_id))
        .layer(SetRequestIdLayer::new(
            X_REQUEST_ID.clone(),
            MakeRequestUuid,
        ))
        .layer(PropagateRequestIdLayer::new(X_REQUEST_ID.clone()))
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
            header::COOKIE,
            header::PROXY_AUTHORIZATION,
        ]))
        .layer(
            TraceLayer::new_for_http()
                .on_failure(log_failure)
                .make_span_with(move |req: &Request| {
                    let request_id = req
                        .headers()
                        .get(&X_REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    tracing::info_span!(
                        "request",
                        listener,
                        method = %req.method(),
                        path = req.uri().path(),
                        request_id,
                    )
                }),
        )
        .layer(middleware::from_fn_with_state(ctx, record_metrics))
        .layer(middleware::from_fn(normalize))
        .layer(CatchPanicLayer::custom(panic_response));
    // axum's own 2 MB extractor limit would undercut the configured one.
    router
        .layer(stack)
        .layer(axum::extract::DefaultBodyLimit::disable())
}

/// The inner stack (8-11) of one route group, sharing one concurrency
/// budget among every router it is applied to.
#[derive(Debug, Clone)]
pub struct Intake {
    limits: BodyLimits,
    request_timeout: Duration,
    permits: Arc<tokio::sync::Semaphore>,
}

impl Intake {
    pub fn new(cfg: &StackConfig) -> Self {
        Self {
            limits: BodyLimits {
                timeout: cfg.body_read_timeout,
                max_bytes: cfg.max_body_bytes,
            },
            request_timeout: cfg.request_timeout,
            permits: Arc::new(tokio::sync::Semaphore::new(
                cfg.max_concurrent_requests.max(1),
            )),
        }
    }

    /// Adds the stack to the routes of `router` so far, inside any door
    /// added after it (`route_layer` wraps what is already there).
    pub fn apply<S>(&self, router: Router<S>) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        let stack = ServiceBuilder::new()
            .layer(middleware::from_fn_with_state(self.limits, read_body))
            .layer(tower_http::limit::RequestBodyLimitLayer::new(
                self.limits.max_bytes,
            ))
            .layer(HandleErrorLayer::new(|err: tower::BoxError| async move {
                if err.is::<tower::load_shed::error::Overloaded>() {
                    ApiError::overloaded()
                } else {
                    ApiError::internal(anyhow::anyhow!("middleware: {err}"))
                }
            }))
            .load_shed()
            .layer(GlobalConcurrencyLimitLayer::with_semaphore(
                self.permits.clone(),
            ))
            .layer(TimeoutLayer::with_status_code(
                StatusCode::SERVICE_UNAVAILABLE,
                self.request_timeout,
            ));
        router.route_layer(stack)
    }
}

#[derive(Debug, Clone, Copy)]
struct BodyLimits {
    timeout: Duration,
    max_bytes: usize,
}

/// Reads the whole request body within the time and size limits, so that a
/// handler (and the concurrency permit it holds) never waits on a slow
/// sender. An oversize body is read on and dropped (within the same time,
/// up to [`DRAIN_MAX`]) before its 413 goes out: a server that closes while
/// the client still sends makes the kernel reset the connection, which can
/// destroy the answer before the client reads it.
async fn read_body(State(limits): State<BodyLimits>, req: Request, next: Next) -> Response {
    use http_body_util::BodyExt;
    let (parts, mut body) = req.into_parts();
    let deadline = tokio::time::Instant::now() + limits.timeout;
    // Sized once from the announced length (an admitted caller's, within the
    // limit), so a large body is not copied through doubling buffers.
    let announced = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .filter(|n| *n <= limits.max_bytes)
        .unwrap_or(0);
    let mut buf = bytes::BytesMut::with_capacity(announced);
    // Bytes read past the limit, when over it.
    let mut drained: Option<usize> = None;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(None) => break,
            Ok(Some(Ok(frame))) => frame,
            // Over the limit, whatever else happens: 413.
            _ if drained.is_some() => return too_large_answer(),
            Err(_) => {
                return ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    "the request body did not arrive in time",
                )
                .into_response();
            }
            Ok(Some(Err(e))) if too_large(&e) => return too_large_answer(),
            Ok(Some(Err(_))) => {
                return ApiError::bad_request(
                    "body_unreadable",
                    "the request body could not be read",
                )
                .into_response();
            }
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        match drained.as_mut() {
            Some(n) => {
                *n += data.len();
                if *n > DRAIN_MAX {
                    return too_large_answer();
                }
            }
            None if buf.len() + data.len() > limits.max_bytes => {
                drained = Some(buf.len() + data.len());
                buf = bytes::BytesMut::new();
            }
            None => buf.extend_from_slice(&data),
        }
    }
    if drained.is_some() {
        return too_large_answer();
    }
    next.run(Request::from_parts(
        parts,
        axum::body::Body::from(buf.freeze()),
    ))
    .await
}

/// Most bytes of an oversize body read and dropped before its 413; a client
/// that sends more may see the connection reset.
const DRAIN_MAX: usize = 64 << 20;

/// `413 body_too_large`, with `Connection: close`: the rest of the body was
/// read and dropped, so the connection ends cleanly after the answer.
fn too_large_answer() -> Response {
    let mut resp = ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "the request body exceeds the limit",
    )
    .into_response();
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

fn too_large(e: &axum::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// The trace layer's line for a 5xx at the level [`server_error_level`]
/// gives it: a 501 or 503 is an expected answer, not an error to page on.
fn log_failure(
    class: tower_http::classify::ServerErrorsFailureClass,
    latency: Duration,
    _span: &tracing::Span,
) {
    use tower_http::classify::ServerErrorsFailureClass as C;
    let ms = latency.as_millis();
    match class {
        C::StatusCode(s) if server_error_level(s) == Some(tracing::Level::WARN) => {
            tracing::warn!(status = s.as_u16(), latency_ms = ms, "response failed");
        }
        C::StatusCode(s) => {
            tracing::error!(status = s.as_u16(), latency_ms = ms, "response failed");
        }
        C::Error(e) => tracing::error!(error = %e, latency_ms = ms, "response failed"),
    }
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("handler panicked");
    StatusCode::INTERNAL_SERVER_ERROR.into_response()
}

/// Keeps a well-formed caller request id (so calls can be correlated across
/// systems) and drops anything that could forge log lines.
async fn sanitize_request_id(mut req: Request, next: Next) -> Response {
    let ok = req
        .headers()
        .get(&X_REQUEST_ID)
        .map(|v| {
            let b = v.as_bytes();
            (1..=64).contains(&b.len())
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        })
        .unwrap_or(true);
    if !ok {
        req.headers_mut().remove(&X_REQUEST_ID);
    }
    next.run(req).await
}

async fn record_metrics(State(ctx): State<Arc<MetricsCtx>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let start = Instant::now();
    let resp = next.run(req).await;
    let listener = ctx.listener.as_str();
    if let Some(dependency) = resp
        .extensions()
        .get::<ErrorBody>()
        .and_then(|e| unavailable_dependency(&e.code))
    {
        ctx.metrics
            .dependency_unavailable
            .with_label_values(&[dependency])
            .inc();
    }
    ctx.metrics
        .http_duration
        .with_label_values(&[listener, &route])
        .observe(start.elapsed().as_secs_f64());
    ctx.metrics
        .http_requests
        .with_label_values(&[listener, &route, resp.status().as_str()])
        .inc();
    resp
}

/// Which dependency an error code says was unavailable or full, if any.
fn unavailable_dependency(code: &str) -> Option<&'static str> {
    match code {
        keyward_kms::db::UNAVAILABLE_CODE => Some("database"),
        "hsm_busy" | "hsm_unavailable" => Some("hsm"),
        _ => None,
    }
}

/// The request id the stack assigned, for handlers (audit records).
pub fn request_id(req_ext: &axum::http::Extensions) -> String {
    req_ext
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
        .unwrap_or("-")
        .to_owned()
}

async fn normalize(req: Request, next: Next) -> Response {
    let rid = request_id(req.extensions());
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let error = match parts.extensions.remove::<ErrorBody>() {
        Some(e) => e,
        None => {
            let is_json = parts
                .headers
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
            if is_json {
                return Response::from_parts(parts, body);
            }
            body_for_status(status)
        }
    };
    drop(body);
    let mut out = render(&error, Some(&rid)).into_response();
    *out.status_mut() = status_of(&error.code).unwrap_or(status);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for (name, value) in &parts.headers {
        out.headers_mut().insert(name.clone(), value.clone());
    }
    *out.extensions_mut() = parts.extensions;
    // Kept for the metrics layer outside (its code says which dependency).
    out.extensions_mut().insert(error);
    out
}
