//! `Idempotency-Key` on mutating requests: a retry with the same key gets the
//! first answer instead of doing the work twice.
//!
//! A client that did not hear the answer — its connection dropped, the request
//! timed out while the effect went on, a load balancer retried — sends the
//! same request again with the same key. The first request's handler runs in
//! a task of its own (a client that goes away does not cut it in half) and
//! its successful answer is stored in the database under (principal, key), so
//! any replica replays it. While the first is still running a retry gets
//! `409 request_in_progress` with `Retry-After`; the same key with another
//! method, path or body is `422 idempotency_key_reused`. A running key is
//! leased to the run that owns it ([`LEASE`], renewed while it runs): when
//! that run's process dies the lease lapses, and the next retry takes the
//! key over and runs the request, instead of meeting 409 until the purge.
//! Refusals and failures (4xx, 5xx) are not stored: they had no effect, and
//! a retry is tried anew.
//! Keys are 1–128 characters of `[A-Za-z0-9._:-]` (a UUID fits) and are kept
//! for [`KEEP`]. Answers of the customer routes are stored without their
//! personal data (names, national ids, contacts, accounts): their replay
//! carries the ids and states only.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use keyward_kms::db::{Database, now_ms};
use sha2::{Digest, Sha256};
use sqlx::Row;
use tracing::Instrument;

use super::error::{ApiError, RETRY_AFTER_SECS};
use crate::admin::Operator;
use crate::jobs::Job;
use crate::state::AppState;

/// The request header.
pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// Set on a replayed answer.
pub static REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// How long a key and its answer are kept.
pub const KEEP: Duration = Duration::from_secs(24 * 3600);
/// Largest answer stored for replay (bigger ones are answered, not stored).
const MAX_STORED_ANSWER: usize = 16 << 20;
/// How long a running key stays its run's without a renewal. Renewed every
/// third of it, so a live run keeps it through two missed renewals (a slow
/// database); a dead one frees it this long after its last renewal.
pub const LEASE: Duration = Duration::from_secs(30);

fn lease_ms() -> i64 {
    i64::try_from(LEASE.as_millis()).unwrap_or(i64::MAX)
}

/// What the store knew of a key when a request arrived with it.
enum Begun {
    /// First use, or a run whose lease lapsed: the request runs.
    New,
    /// Done before: its answer.
    Replay {
        status: u16,
        content_type: Option<String>,
        body: Vec<u8>,
    },
    /// The first request with this key is still running.
    Running,
    /// The key was used for another request.
    Mismatch,
}

/// The `http_idempotency` table, as one run sees it: `owner` is written on
/// the key it runs, and only that run renews, settles or drops it.
#[derive(Debug, Clone)]
struct Store {
    db: Database,
    owner: String,
}

impl Store {
    /// The store for one new run (a random owner id).
    fn for_run(db: Database) -> Self {
        Self {
            db,
            owner: uuid::Uuid::new_v4().to_string(),
        }
    }

    async fn begin(
        &self,
        principal: &str,
        key: &str,
        method: &str,
        path: &str,
        body_sha256: &str,
    ) -> Result<Begun, sqlx::Error> {
        let now = now_ms();
        let inserted = self
            .db
            .execute("http.idempotency", || {
                sqlx::query(
                    "INSERT INTO http_idempotency \
                 (principal, key, method, path, body_sha256, state, created_at_ms, owner, \
                  lease_until_ms) \
                 VALUES ($1, $2, $3, $4, $5, 'running', $6, $7, $8) ON CONFLICT DO NOTHING",
                )
                .bind(principal)
                .bind(key)
                .bind(method)
                .bind(path)
                .bind(body_sha256)
                .bind(now)
                .bind(&self.owner)
                .bind(now.saturating_add(lease_ms()))
            })
            .await?;
        if inserted == 1 {
            return Ok(Begun::New);
        }
        // The same request whose run's lease lapsed (its process died): one
        // retry takes it over, atomically. Rows from before leases lapse a
        // lease after they were made.
        let taken = self
            .db
            .execute("http.idempotency", || {
                sqlx::query(
                    "UPDATE http_idempotency SET owner = $6, lease_until_ms = $7 \
                 WHERE principal = $1 AND key = $2 AND method = $3 AND path = $4 \
                 AND body_sha256 = $5 AND state = 'running' \
                 AND COALESCE(lease_until_ms, created_at_ms + $9) < $8",
                )
                .bind(principal)
                .bind(key)
                .bind(method)
                .bind(path)
                .bind(body_sha256)
                .bind(&self.owner)
                .bind(now.saturating_add(lease_ms()))
                .bind(now)
                .bind(lease_ms())
            })
            .await?;
        if taken == 1 {
            tracing::warn!(key, "idempotency key taken over: its run's lease lapsed");
            return Ok(Begun::New);
        }
        let row = sqlx::query(
            "SELECT method, path, body_sha256, state, status, content_type, body \
             FROM http_idempotency WHERE principal = $1 AND key = $2",
        )
        .bind(principal)
        .bind(key)
        .fetch_optional(self.db.pool())
        .await?;
        // Purged between the two statements: treat as running (retry later).
        let Some(row) = row else {
            return Ok(Begun::Running);
        };
        let same = row.try_get::<String, _>("method")? == method
            && row.try_get::<String, _>("path")? == path
            && row.try_get::<String, _>("body_sha256")? == body_sha256;
        if !same {
            return Ok(Begun::Mismatch);
        }
        if row.try_get::<String, _>("state")? != "done" {
            return Ok(Begun::Running);
        }
        let status: i64 = row.try_get::<Option<i64>, _>("status")?.unwrap_or(200);
        Ok(Begun::Replay {
            status: u16::try_from(status).unwrap_or(200),
            content_type: row.try_get("content_type")?,
            body: row
                .try_get::<Option<Vec<u8>>, _>("body")?
                .unwrap_or_default(),
        })
    }

    async fn finish(
        &self,
        principal: &str,
        key: &str,
        status: u16,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<(), sqlx::Error> {
        self.db
            .execute("http.idempotency", || {
                sqlx::query(
                    "UPDATE http_idempotency SET state = 'done', status = $3, content_type = $4, \
                 body = $5, lease_until_ms = NULL \
                 WHERE principal = $1 AND key = $2 AND owner = $6",
                )
                .bind(principal)
                .bind(key)
                .bind(i64::from(status))
                .bind(content_type)
                .bind(body)
                .bind(&self.owner)
            })
            .await?;
        Ok(())
    }

    /// Drops the key (the request had no effect), unless another run took
    /// it over.
    async fn forget(&self, principal: &str, key: &str) -> Result<(), sqlx::Error> {
        self.db
            .execute("http.idempotency", || {
                sqlx::query(
                    "DELETE FROM http_idempotency WHERE principal = $1 AND key = $2 AND owner = $3",
                )
                .bind(principal)
                .bind(key)
                .bind(&self.owner)
            })
            .await?;
        Ok(())
    }

    /// Extends this run's lease; false when the key is no longer its own
    /// (taken over after a lapse, or settled).
    async fn renew(&self, principal: &str, key: &str) -> Result<bool, sqlx::Error> {
        let n = self
            .db
            .execute("http.idempotency", || {
                sqlx::query(
                    "UPDATE http_idempotency SET lease_until_ms = $4 \
                 WHERE principal = $1 AND key = $2 AND owner = $3 AND state = 'running'",
                )
                .bind(principal)
                .bind(key)
                .bind(&self.owner)
                .bind(now_ms().saturating_add(lease_ms()))
            })
            .await?;
        Ok(n == 1)
    }

    async fn purge(&self, older_than_ms: i64) -> Result<u64, sqlx::Error> {
        self.db
            .execute("http.idempotency", || {
                sqlx::query("DELETE FROM http_idempotency WHERE created_at_ms < $1")
                    .bind(older_than_ms)
            })
            .await
    }
}

fn valid_key(v: &HeaderValue) -> Option<String> {
    let b = v.as_bytes();
    let ok = (1..=128).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'));
    ok.then(|| String::from_utf8_lossy(b).into_owned())
}

fn mutating(m: &Method) -> bool {
    matches!(
        *m,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// The middleware, for routes behind the operator check (it keys answers by
/// the operator's certificate).
pub async fn admin(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(raw) = req.headers().get(&IDEMPOTENCY_KEY).cloned() else {
        return next.run(req).await;
    };
    if !mutating(req.method()) {
        return next.run(req).await;
    }
    let Some(key) = valid_key(&raw) else {
        return ApiError::bad_request(
            "invalid_idempotency_key",
            "Idempotency-Key: 1-128 characters of A-Z a-z 0-9 . _ : -",
        )
        .into_response();
    };
    let Some(principal) = req
        .extensions()
        .get::<Operator>()
        .map(|o| o.actor.to_string())
    else {
        return next.run(req).await;
    };
    let store = Store::for_run(state.kms.db().clone());
    let (parts, body) = req.into_parts();
    // The body limit layer outside has already bounded the body.
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::bad_request("invalid_request", "the request body could not be read")
                .into_response();
        }
    };
    let hash = fingerprint(parts.uri.query(), &bytes);
    let (method, path) = (parts.method.to_string(), parts.uri.path().to_owned());
    match store.begin(&principal, &key, &method, &path, &hash).await {
        Err(e) => return ApiError::from(keyward_kms::KmsError::Database(e)).into_response(),
        Ok(Begun::New) => {}
        Ok(Begun::Replay {
            status,
            content_type,
            body,
        }) => return replay(status, content_type.as_deref(), body),
        Ok(Begun::Running) => {
            return ApiError::new(
                StatusCode::CONFLICT,
                "request_in_progress",
                "a request with this Idempotency-Key is still running; retry later",
            )
            .retry_after(RETRY_AFTER_SECS)
            .into_response();
        }
        Ok(Begun::Mismatch) => {
            return ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this Idempotency-Key was used for another request",
            )
            .into_response();
        }
    }
    let personal = holds_personal_data(parts.uri.path());
    let req = Request::from_parts(parts, Body::from(bytes));
    // In a task of its own: a client that goes away (or a timeout) does not
    // stop the work, and its answer is still stored for the retry.
    let task = tokio::spawn(
        async move {
            let resp = {
                let run = next.run(req);
                tokio::pin!(run);
                let mut tick = tokio::time::interval(LEASE / 3);
                tick.tick().await; // the first tick is now
                loop {
                    tokio::select! {
                        resp = &mut run => break resp,
                        _ = tick.tick() => match store.renew(&principal, &key).await {
                            Ok(true) => {}
                            Ok(false) => tracing::warn!("idempotency key lease lost to a retry"),
                            Err(e) => tracing::warn!(error = %e, "idempotency key lease not renewed"),
                        },
                    }
                }
            };
            let (parts, body) = resp.into_parts();
            let bytes = axum::body::to_bytes(body, MAX_STORED_ANSWER)
                .await
                .unwrap_or_else(|_| Bytes::new());
            let stored = if parts.status.is_success() && !bytes.is_empty() {
                let ct = parts
                    .headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok());
                let kept = if personal {
                    redact_personal(&bytes)
                } else {
                    bytes.to_vec()
                };
                store
                    .finish(&principal, &key, parts.status.as_u16(), ct, &kept)
                    .await
            } else {
                store.forget(&principal, &key).await
            };
            if let Err(e) = stored {
                // The key stays `running` until its lease lapses: retries
                // get 409 until then, and run the request after.
                tracing::error!(error = %e, "idempotency key not settled");
            }
            Response::from_parts(parts, Body::from(bytes))
        }
        .instrument(tracing::Span::current()),
    );
    task.await
        .unwrap_or_else(|e| ApiError::internal(e).into_response())
}

/// Routes whose answers carry customers' personal data (names, national
/// ids, contact addresses, accounts): their stored replay keeps every other
/// member (ids, states, times) and drops those, so the idempotency table
/// never holds personal data for its 24 hours.
fn holds_personal_data(path: &str) -> bool {
    path.starts_with("/admin/v1/applications") || path.starts_with("/admin/v1/customers")
}

/// Members that hold personal data, removed at any depth.
const PERSONAL_MEMBERS: [&str; 4] = ["name", "national_id", "contact", "accounts"];

/// A JSON answer without [`PERSONAL_MEMBERS`]; anything that is not JSON is
/// not kept at all.
fn redact_personal(body: &[u8]) -> Vec<u8> {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                for m in PERSONAL_MEMBERS {
                    map.remove(m);
                }
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(mut v) => {
            strip(&mut v);
            serde_json::to_vec(&v).unwrap_or_default()
        }
        Err(_) => b"{}".to_vec(),
    }
}

fn replay(status: u16, content_type: Option<&str>, body: Vec<u8>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let mut resp = (status, body).into_response();
    if let Some(ct) = content_type.and_then(|c| HeaderValue::from_str(c).ok()) {
        resp.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    resp.headers_mut()
        .insert(REPLAYED.clone(), HeaderValue::from_static("true"));
    resp
}

/// Job `idempotency.purge`: deletes keys older than [`KEEP`], hourly (from
/// start). Idempotent, so it runs on every replica.
pub fn purge_job() -> Job<AppState> {
    Job::new(
        "idempotency.purge",
        Duration::from_secs(3600),
        |state: AppState| async move {
            let store = Store::for_run(state.kms.db().clone());
            let keep_ms = i64::try_from(KEEP.as_millis()).unwrap_or(i64::MAX);
            let n = store.purge(now_ms().saturating_sub(keep_ms)).await?;
            if n > 0 {
                tracing::info!(purged = n, "idempotency keys purged");
            }
            Ok(())
        },
    )
}

/// What a key is bound to besides method and path: the query and the
/// body (a query holds no NUL, so the two cannot run into each other). The
/// same key with another query is another request, not a replay.
pub fn fingerprint(query: Option<&str>, body: &[u8]) -> String {
    hex::encode(
        Sha256::new()
            .chain_update(query.unwrap_or_default())
            .chain_update([0])
            .chain_update(body)
            .finalize(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn personal_data_is_not_kept_for_replay() {
        assert!(holds_personal_data("/admin/v1/applications/A1/approve"));
        assert!(!holds_personal_data("/admin/v1/devices/01/init"));
        let body = br#"{"application_id":"A1","name":"Li Lei","national_id":"110101","contact":{"kind":"sms"},"nested":[{"accounts":["6222"],"state":"submitted"}]}"#;
        let kept: serde_json::Value = serde_json::from_slice(&redact_personal(body)).unwrap();
        assert_eq!(
            kept,
            serde_json::json!({"application_id": "A1", "nested": [{"state": "submitted"}]})
        );
        assert_eq!(redact_personal(b"not json"), b"{}");
    }

    #[test]
    fn keys_are_short_and_plain() {
        assert!(
            valid_key(&HeaderValue::from_static(
                "3f6a1c1e-7c1b-4b0e-9d1e-2a4c6e8f0a1b"
            ))
            .is_some()
        );
        assert!(valid_key(&HeaderValue::from_static("kwctl:device:42")).is_some());
        assert!(valid_key(&HeaderValue::from_static("")).is_none());
        assert!(valid_key(&HeaderValue::from_static("has space")).is_none());
        let long = "k".repeat(129);
        assert!(valid_key(&HeaderValue::from_str(&long).unwrap()).is_none());
    }
}
