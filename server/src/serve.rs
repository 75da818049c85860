//! The network service: two TLS listeners driven by hand (docs/stack-notes.md §8).
//!
//! accept → spawn → TLS handshake (time-limited) → read the client
//! certificate → [`ClientIdentity`] in every request's extensions → hyper-util
//! `auto::Builder` (HTTP/1.1 and HTTP/2) → axum router with the middleware
//! stack. Connections are watched by a `GracefulShutdown`: on shutdown the
//! listeners stop accepting, in-flight requests finish (up to
//! [`DRAIN_TIMEOUT`]) and the process exits.
//!
//! Failed handshakes are counted per listener and written to the audit trail
//! as `tls.client_refused`, at most [`REFUSALS_PER_MINUTE`] records per
//! listener per minute (a port scan must not flood the trail); the records
//! that were skipped are counted in `keyward_audit_suppressed_total` and in
//! the next record's `suppressed_before`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use keyward_config::Config;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::audit::{Actor, AuditEvent, Outcome};
use crate::bootstrap;
use crate::identity::ClientIdentity;
use crate::metrics::{Listener, Metrics};
use crate::pki::{self, TlsPaths};
use crate::state::AppState;
use crate::tls::{HsmTlsKey, TLS_KEY_LABEL, TlsMaterial, TlsState};

/// Time a client has to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time in-flight requests get to finish after a shutdown signal.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Refused-client audit records per listener per minute.
pub const REFUSALS_PER_MINUTE: u32 = 30;

/// The two bound listeners.
#[derive(Debug)]
pub struct Listeners {
    pub public: TcpListener,
    pub admin: TcpListener,
}

/// Opens everything a serving replica needs — HSM, database, CA, the server
/// TLS key and certificate, the CRL — and checks it, as `keyward serve` does
/// before it binds. Route tests build their router on the same state.
pub async fn open_state(config: Config) -> anyhow::Result<AppState> {
    let metrics = Metrics::new().context("creating the metrics registry")?;
    let opened = bootstrap::open(&config, Some(metrics.clone())).await?;
    state_from(config, opened, metrics).await
}

/// [`open_state`] on an installation already opened (with `metrics`), for a
/// process that also ran `init` on it (tests: one HSM open per process).
pub async fn state_from(
    config: Config,
    opened: bootstrap::Opened,
    metrics: Metrics,
) -> anyhow::Result<AppState> {
    if opened.ca_report.created_anything() || !opened.migrated.is_empty() {
        tracing::warn!("serve created CA or schema objects: run `keyward init` before `serve`");
    }
    if !opened.kms.has_audit_key().await? {
        bail!(
            "no audit MAC key {} in the HSM: run `keyward init` first",
            keyward_kms::AUDIT_MAC_LABEL
        );
    }
    let key = match opened.kms.signing_key(TLS_KEY_LABEL).await {
        Ok(k) => k,
        Err(keyward_kms::KmsError::KeyMissing(_)) => {
            bail!("no server TLS key {TLS_KEY_LABEL} in the HSM: run `keyward init` first")
        }
        Err(e) => return Err(e).context("loading the server TLS key"),
    };
    let key = HsmTlsKey::new(key, Some(metrics.clone()))?;
    let paths = TlsPaths::new(&config);
    let chain = pki::read_pem_chain(&paths.server_pem).unwrap_or_default();
    if let Some(problem) = pki::server_cert_problem(
        &opened.ca,
        &chain,
        key.spki(),
        &config.server.public_names,
        0,
    )
    .await?
    {
        bail!(
            "server TLS certificate {}: {problem}; run `keyward init`",
            paths.server_pem.display()
        );
    }
    let crl = opened.ca.crl().await.context("loading the CRL")?;
    let crl_info = pki::crl_in_use(&crl)?;
    let material = TlsMaterial {
        chain,
        key,
        client_root: CertificateDer::from(opened.ca.root_der().to_vec()),
    };
    let tls = TlsState::new(
        material,
        CertificateRevocationListDer::from(crl.der.clone()),
        crl_info.clone(),
    )?;
    pki::update_crl_metrics(&metrics, &crl_info);
    Ok(AppState::new(
        config,
        opened.kms,
        opened.ca,
        opened.provisioning,
        opened.audit,
        metrics,
        tls,
    ))
}

/// `keyward serve`: opens everything, verifies the audit trail from its HSM
/// checkpoint (refusing to serve on a break unless `allow_broken_audit`),
/// binds both listeners, prints their addresses as one JSON line on stdout
/// (`{"listening": {"public": …, "admin": …}}`, useful with port 0), and
/// serves until SIGTERM or ctrl-c, writing the audit checkpoint as it goes
/// and once more at the end.
pub async fn serve(config: Config, allow_broken_audit: bool) -> anyhow::Result<()> {
    let state = open_state(config).await?;
    crate::audit::verify::check_at_start(&state.audit, allow_broken_audit).await?;
    let server = &state.config.server;
    let public = TcpListener::bind(&server.public_listen)
        .await
        .with_context(|| format!("binding server.public_listen {}", server.public_listen))?;
    let admin = TcpListener::bind(&server.admin_listen)
        .await
        .with_context(|| format!("binding server.admin_listen {}", server.admin_listen))?;
    let (public_addr, admin_addr) = (public.local_addr()?, admin.local_addr()?);
    let started = format!("public {public_addr}, admin {admin_addr}");
    state
        .audit
        .append(
            &Actor::System,
            &AuditEvent::Service {
                action: "start",
                detail: started.clone(),
            },
            Outcome::Success,
            "-",
        )
        .await
        .context("writing the audit trail")?;
    tracing::info!(public = %public_addr, admin = %admin_addr, "listening");
    {
        use std::io::Write;
        let line = serde_json::json!({
            "listening": { "public": public_addr.to_string(), "admin": admin_addr.to_string() }
        });
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    let checkpoints = tokio::spawn(
        state
            .audit
            .clone()
            .checkpoint_loop(crate::audit::CHECKPOINT_INTERVAL),
    );
    let served = run(
        state.clone(),
        Listeners { public, admin },
        shutdown_signal(),
    )
    .await;
    checkpoints.abort();
    served?;
    let _ = state
        .audit
        .append(
            &Actor::System,
            &AuditEvent::Service {
                action: "stop",
                detail: started,
            },
            Outcome::Success,
            "-",
        )
        .await;
    if let Err(e) = state.audit.checkpoint().await {
        tracing::error!(error = %e, "the last audit checkpoint could not be written");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Serves until `shutdown` resolves, then drains.
pub async fn run(
    state: AppState,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let public_router = crate::public_app(state.clone());
    let admin_router = crate::admin_app(state.clone());
    let graceful = GracefulShutdown::new();
    let limiter = std::sync::Arc::new(RefusalLimiter::default());
    let refresher = tokio::spawn(crate::pki::crl_refresh_loop(state.clone()));

    tokio::pin!(shutdown);
    loop {
        let (listener, accepted) = tokio::select! {
            () = &mut shutdown => break,
            r = listeners.public.accept() => (Listener::Public, r),
            r = listeners.admin.accept() => (Listener::Admin, r),
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, listener = listener.as_str(), "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let router = match listener {
            Listener::Public => public_router.clone(),
            Listener::Admin => admin_router.clone(),
        };
        tokio::spawn(connection(
            state.clone(),
            listener,
            stream,
            peer,
            router,
            graceful.watcher(),
            limiter.clone(),
        ));
    }

    state.set_draining();
    refresher.abort();
    drop(listeners);
    tracing::info!(
        connections = graceful.count(),
        "shutting down: draining connections"
    );
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain timeout; closing them");
    }
    Ok(())
}

async fn connection(
    state: AppState,
    listener: Listener,
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    watcher: Watcher,
    limiter: std::sync::Arc<RefusalLimiter>,
) {
    let _ = stream.set_nodelay(true);
    let acceptor = TlsAcceptor::from(state.tls.config(listener));
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            return refused(&state, &limiter, listener, peer, &handshake_reason(&e)).await;
        }
        Err(_) => return refused(&state, &limiter, listener, peer, "handshake timed out").await,
    };
    let identity = ClientIdentity::from_peer_certs(peer, tls.get_ref().1.peer_certificates());
    tracing::debug!(
        listener = listener.as_str(),
        %peer,
        client = identity.cert.as_ref().map(|c| c.common_name.as_str()).unwrap_or("-"),
        "connection"
    );
    let svc = tower::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(identity.clone());
        router.clone().oneshot(req)
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(tls), TowerToHyperService::new(svc));
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(error = %e, %peer, "connection ended with an error");
    }
}

/// A short reason for a failed handshake (the rustls error when there is one).
fn handshake_reason(e: &std::io::Error) -> String {
    let text = match e.get_ref() {
        Some(inner) => inner.to_string(),
        None => e.to_string(),
    };
    // Bounded and single-line: it lands in the audit trail.
    text.lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(200)
        .collect()
}

async fn refused(
    state: &AppState,
    limiter: &RefusalLimiter,
    listener: Listener,
    peer: SocketAddr,
    reason: &str,
) {
    state
        .metrics
        .tls_handshake_failures
        .with_label_values(&[listener.as_str()])
        .inc();
    tracing::info!(listener = listener.as_str(), %peer, reason, "TLS handshake refused");
    match limiter.admit(listener, Instant::now()) {
        Some(suppressed) => {
            let event = AuditEvent::TlsClientRefused {
                listener: listener.as_str(),
                reason: reason.to_owned(),
                suppressed,
            };
            // The refusal already happened; a failed write is logged and counted.
            let _ = state
                .audit
                .append(
                    &Actor::Peer(peer.ip().to_string()),
                    &event,
                    Outcome::Refused {
                        code: "tls_handshake_refused",
                    },
                    "-",
                )
                .await;
        }
        None => state
            .metrics
            .audit_suppressed
            .with_label_values(&[listener.as_str()])
            .inc(),
    }
}

/// At most [`REFUSALS_PER_MINUTE`] refusal records per listener per minute.
#[derive(Debug, Default)]
struct RefusalLimiter {
    windows: Mutex<[Window; 2]>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Window {
    started: Option<Instant>,
    written: u32,
    suppressed: u64,
}

impl RefusalLimiter {
    /// `Some(suppressed since the last record)` when a record may be written.
    fn admit(&self, listener: Listener, now: Instant) -> Option<u64> {
        let mut w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let w = &mut w[listener as usize];
        if w.started
            .is_none_or(|s| now.duration_since(s) >= Duration::from_secs(60))
        {
            w.started = Some(now);
            w.written = 0;
        }
        if w.written < REFUSALS_PER_MINUTE {
            w.written += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed += 1;
            None
        }
    }
}

/// Resolves on SIGTERM or ctrl-c.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("ctrl-c received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_records_are_rate_limited_per_listener() {
        let l = RefusalLimiter::default();
        let t0 = Instant::now();
        for _ in 0..REFUSALS_PER_MINUTE {
            assert_eq!(l.admit(Listener::Public, t0), Some(0));
        }
        assert_eq!(l.admit(Listener::Public, t0), None);
        assert_eq!(l.admit(Listener::Public, t0), None);
        // The other listener has its own budget.
        assert_eq!(l.admit(Listener::Admin, t0), Some(0));
        // A new window reports what was skipped.
        let t1 = t0 + Duration::from_secs(61);
        assert_eq!(l.admit(Listener::Public, t1), Some(2));
        assert_eq!(l.admit(Listener::Public, t1), Some(0));
    }
}
