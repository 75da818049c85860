//! `/admin/v1/issuers`: the issuers (banks, payment systems) and their master
//! keys in the HSM. Creating one is an admin's act; reading is for everyone.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use keyward_ca::Role;
use keyward_kms::catalog::{IssuerRecord, MasterKeyRole};
use keyward_kms::types::{IssuerId, KeyFamily};
use keyward_kms::{Kms, KmsError, NewIssuer, NewIssuerKey};

use super::{ALL_ROLES, Operator};
use crate::audit::{Actor, AuditError, AuditEvent, AuditLog, Outcome, StepError};
use crate::http::ApiError;
use crate::metrics::{Metrics, timed_hsm};
use crate::state::AppState;
use crate::wire::issuers as wire;

/// Why [`create_recorded`] failed.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The `requested` record could not be written: nothing was created.
    #[error("the audit trail cannot be written; no issuer was created: {0}")]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Kms(#[from] KmsError),
}

/// Creates an issuer and its master keys between their audit records, for
/// the admin API and `keyward issuer create` alike: `requested` first
/// (nothing is created if it cannot be written), then the keys in the HSM,
/// then the issuer's rows committed with its outcome record; a failure
/// leaves no key behind that this call made, and its code is recorded. The
/// HSM work is timed in `metrics` when given.
pub async fn create_recorded(
    kms: &Kms,
    audit: &AuditLog,
    metrics: Option<&Metrics>,
    actor: &Actor,
    request_id: &str,
    id: IssuerId,
    family: KeyFamily,
) -> Result<IssuerRecord, CreateError> {
    let event = AuditEvent::IssuerCreated {
        issuer: id.to_string(),
        family: family.as_str(),
    };
    let issuer = id.clone();
    let mut made: Option<NewIssuer> = None;
    let kept = &mut made;
    let prepare = async move {
        let new = match metrics {
            Some(m) => timed_hsm(m, "issuer_create", kms.prepare_issuer(id, family)).await,
            None => kms.prepare_issuer(id, family).await,
        }
        .map_err(StepError::Effect)?;
        *kept = Some(new.clone());
        Ok(new)
    };
    let created = audit
        .recorded_prepared_write(
            kms.db(),
            actor,
            request_id,
            &event,
            prepare,
            |mut tx, new: NewIssuer| async move {
                let record = Kms::create_issuer_in(&mut tx, &new)
                    .await
                    .map_err(StepError::Effect)?;
                Ok((tx, record))
            },
            |r: Result<&IssuerRecord, &StepError<KmsError>>| match r {
                Ok(_) => (event.clone(), Outcome::Success),
                Err(e) => AuditEvent::failed("issuer.create", e.code()),
            },
        )
        .await?;
    let failed = match created {
        Ok(record) => return Ok(record),
        Err(e) => e,
    };
    if let Some(new) = &made {
        kms.discard_issuer(new).await;
    }
    Err(match failed {
        StepError::Audit(e) => CreateError::Audit(e),
        StepError::Effect(e) => CreateError::Kms(kms.creation_refused(&issuer, e).await),
        StepError::Database(e) => CreateError::Kms(kms.creation_refused(&issuer, e.into()).await),
    })
}

/// `POST /admin/v1/issuers`: generates the issuer's master keys in the HSM,
/// in a task of its own (a client timeout does not cut it in half).
pub async fn create(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Json(body): Json<wire::CreateIssuer>,
) -> Result<Response, ApiError> {
    op.require(&state, &[Role::Admin]).await?;
    let id: IssuerId = body.issuer_id.parse()?;
    let family: KeyFamily = body.family.parse()?;
    let st = state.clone();
    let task = tokio::spawn(async move {
        let metrics = Some(&st.metrics);
        create_recorded(
            &st.kms,
            &st.audit,
            metrics,
            &op.actor,
            &op.request_id,
            id,
            family,
        )
        .await
    });
    match task.await.map_err(ApiError::internal)? {
        Ok(rec) => Ok((StatusCode::CREATED, Json(wire::Issuer::from(&rec))).into_response()),
        Err(CreateError::Audit(e)) => Err(ApiError::audit_unavailable(e)),
        Err(CreateError::Kms(e)) => Err(e.into()),
    }
}

/// `POST /admin/v1/issuers/{id}/keys` (admin): generates a token key the
/// issuer lacks (the zone PIN key of an issuer created before there was
/// one); `200` with the issuer either way, audited `issuer.add_key`.
pub async fn add_key(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
    Json(body): Json<wire::AddIssuerKey>,
) -> Result<Json<wire::Issuer>, ApiError> {
    op.require(&state, &[Role::Admin]).await?;
    let id: IssuerId = id.parse()?;
    let role: MasterKeyRole = body.role.to_ascii_uppercase().parse()?;
    if role != MasterKeyRole::Zpk {
        return Err(KmsError::Invalid {
            field: "role",
            reason: "only ZPK can be added to an existing issuer".into(),
        }
        .into());
    }
    let requested = AuditEvent::OperatorAction {
        action: "issuer.add_key",
        target: format!("issuer:{id}"),
    };
    let (kms, at) = (state.kms.clone(), id.clone());
    let settled = requested.clone();
    op.recorded_write(
        &state,
        requested,
        async move {
            kms.prepare_issuer_key(&at, role)
                .await
                .map_err(StepError::Effect)
        },
        |mut tx, new: NewIssuerKey| async move {
            let added = Kms::add_issuer_key_in(&mut tx, &new)
                .await
                .map_err(StepError::Effect)?;
            Ok((tx, added))
        },
        move |r: Result<&bool, &StepError<KmsError>>| match r {
            Ok(_) => (settled.clone(), Outcome::Success),
            Err(e) => AuditEvent::failed("issuer.add_key", e.code()),
        },
    )
    .await??;
    Ok(Json(wire::Issuer::from(&state.kms.issuer(&id).await?)))
}

/// `GET /admin/v1/issuers`.
pub async fn list(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
) -> Result<Json<wire::IssuerList>, ApiError> {
    op.read(&state, ALL_ROLES, "issuers.list", "-").await?;
    let list = state.kms.issuers().await?;
    Ok(Json(wire::IssuerList {
        issuers: list.iter().map(wire::Issuer::from).collect(),
    }))
}

/// `GET /admin/v1/issuers/{id}`.
pub async fn show(
    State(state): State<AppState>,
    Extension(op): Extension<Operator>,
    Path(id): Path<String>,
) -> Result<Json<wire::Issuer>, ApiError> {
    let id: IssuerId = id.parse()?;
    op.read(&state, ALL_ROLES, "issuers.show", id.as_str())
        .await?;
    Ok(Json(wire::Issuer::from(&state.kms.issuer(&id).await?)))
}
