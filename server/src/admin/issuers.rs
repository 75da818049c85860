//! `/admin/v1/issuers`: the issuers (banks, payment systems) and their master
//! keys in the HSM. Creating one is an admin's act; reading is for everyone.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use keyward_ca::Role;
use keyward_kms::catalog::IssuerRecord;
use keyward_kms::types::{IssuerId, KeyFamily};
use serde::Deserialize;

use super::{ALL_ROLES, Operator};
use crate::audit::{AuditEvent, Outcome};
use crate::http::ApiError;
use crate::metrics::timed_hsm;
use crate::state::AppState;

/// An issuer as JSON: also what `keyward issuer` prints.
pub fn issuer_json(rec: &IssuerRecord) -> serde_json::Value {
    serde_json::json!({
        "issuer_id": rec.id.as_str(),
        "family": rec.family.as_str(),
        "created_at_ms": rec.created_at_ms,
        "master_keys": rec.master_keys.iter().map(|k| serde_json::json!({
            "role": k.role.as_str(),
            "label": k.label,
            "kcv": super::kcv_json(&k.kcv),
        })).collect::<Vec<_>>(),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    issuer_id: String,
    /// `tdes` or `aes`.
    family: String,
}

/// `POST /admin/v1/issuers`: generates the issuer's master keys in the HSM.
pub async fn create(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Json(body): Json<CreateBody>,
) -> Result<Response, ApiError> {
    op.require(&state, &[Role::Admin]).await?;
    let id: IssuerId = body.issuer_id.parse()?;
    let family: KeyFamily = body.family.parse()?;
    let event = AuditEvent::IssuerCreated {
        issuer: id.to_string(),
        family: family.as_str(),
    };
    op.audit(&state, &event, Outcome::Requested).await?;
    let (st, op2) = (state.clone(), op.clone());
    let task = tokio::spawn(async move {
        match timed_hsm(
            &st.metrics,
            "issuer_create",
            st.kms.create_issuer(id, family),
        )
        .await
        {
            Ok(rec) => {
                if let Err(e) = op2.audit(&st, &event, Outcome::Success).await {
                    tracing::error!(issuer = %rec.id, code = %e.code,
                        "issuer created but its success record could not be written");
                }
                Ok(issuer_json(&rec))
            }
            Err(e) => {
                let err = ApiError::from(e);
                op2.audit_failure(&st, "issuer.create", &err).await;
                Err(err)
            }
        }
    });
    let json = task.await.map_err(ApiError::internal)??;
    Ok((StatusCode::CREATED, Json(json)).into_response())
}

/// `GET /admin/v1/issuers`.
pub async fn list(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
) -> Result<Json<serde_json::Value>, ApiError> {
    op.read(&state, ALL_ROLES, "issuers.list", "-").await?;
    let list = state.kms.catalog().issuers().await?;
    Ok(Json(serde_json::json!({
        "issuers": list.iter().map(issuer_json).collect::<Vec<_>>(),
    })))
}

/// `GET /admin/v1/issuers/{id}`.
pub async fn show(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id: IssuerId = id.parse()?;
    op.read(&state, ALL_ROLES, "issuers.show", id.as_str())
        .await?;
    Ok(Json(issuer_json(&state.kms.issuer(&id).await?)))
}
