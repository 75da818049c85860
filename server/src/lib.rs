//! The Keyward server as a library: the two listeners' routers, the service
//! loop and everything they share. The binaries (`keyward`, `kwctl`) are thin
//! shells over it, and route tests drive the routers in process.
//!
//! # Layout
//! - [`public`]: the **public (device) listener**'s routes, one file per
//!   device protocol (login, transactions, confirmations, loads, secure
//!   channel as they arrive); [`public_app`] builds its router.
//! - [`admin`]: the **admin listener**: health, metrics, OCSP and the admin
//!   API for operators (roles); [`admin_app`] builds its router.
//! - [`online`]: the **online protocols' domain logic** — sessions and
//!   challenges, rotation policy, confirmations, the e-purse ledger, the
//!   secure channel — with its own error type and store; routes in
//!   [`public`] call it, it never sees HTTP.
//! - [`bulk`]: **bulk MAC verification** (the bank switch's feature): the
//!   engine from items to counted, audited answers, and its encodings;
//!   `admin/macs.rs` is its route.
//! - [`wire`]: request and response bodies of both APIs, defined once and
//!   used by the routes, `kwctl`, `kwsim` and the tests.
//! - [`http`]: plumbing both listeners share: the middleware stack and
//!   [`http::ApiError`], the one place errors become responses.
//! - [`edge`]: the TLS listeners, connection handling, graceful shutdown
//!   ([`run`]); the HSM-backed rustls key and client verification; server
//!   certificate checks and CRL refresh; the client certificate seen on a
//!   connection; opening the state and recovering imports before listening.
//! - [`audit`]: the audit trail, hash-chained and keyed by HSM MACs, with
//!   its HSM checkpoint and signed checkpoints; [`migrate`]: its schema;
//!   [`security`]: intrusion signals (audit record, metric, log) raised the
//!   same way wherever they are detected.
//! - [`outbox`]: the **crash-safe outbox**: messages a protocol step
//!   enqueues in its own transaction, delivered at least once with a stable
//!   id by a job through its senders (file, signed HTTPS webhook).
//! - [`jobs`]: the background jobs (CRL refresh, pruning, recovery, online
//!   maintenance) and their runner, some once across replicas by a lease.
//! - [`metrics`]: the Prometheus registry; [`state`]: what handlers share.
//! - [`bootstrap`]: opening HSM, database and CA; `init`. [`cli`]: the
//!   `keyward` commands.
//!
//! Must not: hold a server or CA private key outside the HSM; send an
//! internal error's detail to a client; perform a security operation whose
//! audit record could not be written.

pub mod admin;
pub mod audit;
pub mod bootstrap;
pub mod bulk;
pub mod channel;
pub mod cli;
pub mod confirmation;
pub mod edge;
pub mod fault;
pub mod http;
pub mod jobs;
pub mod ledger;
pub mod load;
pub mod metrics;
pub mod migrate;
pub mod online;
pub mod outbox;
pub mod public;
pub mod refusals;
pub mod security;
pub mod state;
pub mod wire;

pub use edge::serve::{Listeners, run};
pub use state::AppState;

/// The public (device) listener's router, with its middleware stack.
pub fn public_app(state: AppState) -> axum::Router {
    public::router(state)
}

/// The admin listener's router, with its middleware stack.
pub fn admin_app(state: AppState) -> axum::Router {
    admin::router(state)
}
