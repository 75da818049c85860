//! The public (device) listener: the routes terminals call over mutual TLS
//! with their device certificate, one file per device protocol (mirroring
//! `admin/`). Handlers here only translate HTTP to the domain: the protocol
//! logic lives in [`crate::online`].
//!
//! Every route sits behind [`require_device`]: the TLS layer has verified
//! the chain and the CRL at the handshake, and this middleware checks, per
//! request, that the client certificate is a **device** certificate (not an
//! operator's, a load permit's or the server's) and that it is the device's
//! **current registered** one and not revoked — so a revocation, a
//! retirement or a re-certification stops a kept-alive connection at its
//! next request. It puts a [`Device`] in the request's extensions for the
//! handlers. Refusals are `403` with a stable code, audited
//! (`access.refused`).
//!
//! - `ping`: `GET /v1/ping`, the identity the server saw (a device's first
//!   connectivity check).
//! - `login`: `POST /v1/login/start`, `POST /v1/login/finish`.
//! - `session`: `GET|DELETE /v1/session`, behind
//!   [`session::require_session`] like every session-bound route.
//! - `transactions`: `POST /v1/transactions` (session-bound).
//! - `loads`: `POST /v1/loads`, `POST /v1/loads/{id}/report`,
//!   `POST /v1/loads/status` (session-bound): the e-purse load.
//! - `channel`: `POST /v1/channel/hello`, `/v1/channel/key-exchange`,
//!   `/v1/channel/records` (no session: the card proves itself in the key
//!   exchange): the card-to-server secure channel.
//! - `confirmations`: `POST /v1/confirmations`,
//!   `POST /v1/confirmations/{id}/confirm` (session-bound): transaction
//!   confirmation over a second channel.

mod channel;
mod confirmations;
mod loads;
mod login;
mod ping;
pub mod session;
mod transactions;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use keyward_ca::Serial;
use keyward_device_provisioning::DeviceState;
use keyward_kms::types::DeviceId;

use crate::audit::Actor;
use crate::edge::identity::{CertKind, ClientIdentity, PeerCertificate};
use crate::http::access::{Door, DoorRefusal};
use crate::http::layers::{self, Intake};
use crate::http::stack_config;
use crate::metrics::Listener;
use crate::state::AppState;

/// Routes of the public (device) listener, with the middleware stack.
/// The requests a channel carries run through a second copy of them, built
/// here once (never per record); it is handed to the records route as an
/// extension, not kept in [`AppState`], which the routes themselves hold.
pub fn router(state: AppState) -> Router {
    let carried = channel::CarriedRouter(routes(state.clone()));
    routes(state).layer(axum::Extension(carried))
}

fn routes(state: AppState) -> Router {
    // One budget for the listener; the body is read after the doors (device,
    // then session), never for a caller they refuse.
    let intake = Intake::new(&stack_config(&state, Listener::Public));
    let with_session = intake
        .apply(
            Router::new()
                .route("/v1/session", get(session::show).delete(session::end))
                .route("/v1/transactions", post(transactions::verify))
                .route("/v1/confirmations", post(confirmations::submit))
                .route(
                    "/v1/confirmations/{id}/confirm",
                    post(confirmations::confirm),
                )
                .route("/v1/loads", post(loads::request))
                .route("/v1/loads/status", post(loads::status))
                .route("/v1/loads/{id}/report", post(loads::report)),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            session::require_session,
        ));
    let router = intake
        .apply(
            Router::new()
                .route("/v1/ping", get(ping::ping))
                .route("/v1/login/start", post(login::start))
                .route("/v1/login/finish", post(login::finish))
                .route("/v1/channel/hello", post(channel::hello))
                .route("/v1/channel/key-exchange", post(channel::key_exchange))
                .route("/v1/channel/records", post(channel::records))
                .route("/v1/channel/resume", post(channel::resume)),
        )
        .merge(with_session)
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_device,
        ))
        .with_state(state.clone());
    layers::apply(router, Listener::Public, state.metrics.clone())
}

pub use crate::online::Device;

/// Admits only a device's current, unrevoked device certificate; audits
/// every refusal. Cost: one read per request (the device's registry row
/// joined with its certificate's CA record), no cache — a revocation is
/// seen at the very next request.
async fn require_device(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let door = Door::of(&req, "");
    let identity = req.extensions().get::<ClientIdentity>().cloned();
    let (actor, refused) = match &identity {
        None => (Actor::Anonymous, DoorRefusal::CertificateRequired),
        Some(id) => match &id.cert {
            None => (id.actor(), DoorRefusal::CertificateRequired),
            Some(cert) => match current_device(&state, cert).await {
                Ok((device_id, device_state, state_changed_at_ms)) => {
                    req.extensions_mut().insert(Device {
                        device_id,
                        serial: cert.serial.clone(),
                        state: device_state,
                        state_changed_at_ms,
                        actor: id.actor(),
                        request_id: door.request_id.clone(),
                    });
                    return next.run(req).await;
                }
                Err(e) => (id.actor(), e),
            },
        },
    };
    door.refuse(&state, &actor, None, refused).await
}

/// The device a verified client certificate stands for, if it is a device
/// certificate, in validity, the device's registered one, of a device that
/// is not retired, and not revoked. Fails closed: a registry that does not
/// answer refuses the request (5xx).
async fn current_device(
    state: &AppState,
    cert: &PeerCertificate,
) -> Result<(DeviceId, DeviceState, i64), DoorRefusal> {
    let CertKind::Device { device_id } = &cert.kind else {
        return Err(DoorRefusal::DeviceCertificateRequired);
    };
    let not_current = || DoorRefusal::DeviceCertificateNotCurrent;
    let device: DeviceId = device_id.parse().map_err(|_| not_current())?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if cert.not_after <= now {
        return Err(DoorRefusal::Revoked("this device certificate has expired"));
    }
    let Some(standing) = state.online.device_standing(device).await? else {
        return Err(not_current());
    };
    let serial: Serial = cert.serial.parse().map_err(|_| not_current())?;
    let registered = standing
        .cert_serial
        .as_deref()
        .and_then(|s| s.parse::<Serial>().ok())
        .is_some_and(|s| s == serial);
    if !registered || standing.state == DeviceState::Retired {
        return Err(not_current());
    }
    let revoked = match standing.revoked {
        Some(revoked) => Ok(revoked),
        None => state.ca.is_revoked(&serial).await,
    };
    match revoked {
        Ok(false) => Ok((device, standing.state, standing.state_changed_at_ms)),
        Ok(true) | Err(keyward_ca::CaError::UnknownSerial(_)) => {
            Err(DoorRefusal::Revoked("this device certificate is revoked"))
        }
        Err(e) => Err(e.into()),
    }
}
