//! The network service: two TLS listeners driven by hand (docs/stack-notes.md §8).
//!
//! accept → spawn → TLS handshake (time-limited) → read the client
//! certificate → [`ClientIdentity`] in every request's extensions → hyper-util
//! `auto::Builder` (HTTP/1.1 and HTTP/2) → axum router with the middleware
//! stack. Connections are watched by a `GracefulShutdown`: on shutdown the
//! listeners stop accepting, in-flight requests finish (up to
//! [`DRAIN_TIMEOUT`]) and the process exits.
//!
//! Slow and idle clients: at most `server.max_connections_per_address` open
//! anonymous connections per client IP and listener, and as many with a
//! client certificate ([`AddressSlots`]: anonymous ones cannot crowd out
//! certificate holders at the same address); a first request's headers within
//! `server.header_read_timeout_ms` of the handshake (HTTP/1.1 and HTTP/2; a
//! silent connection is closed then), HTTP/1.1 headers within it also
//! between requests on a kept-alive connection; bodies within
//! `server.body_read_timeout_ms` (a layer, [`crate::http::layers`]); and a
//! connection with no request in flight for `server.idle_timeout_ms` is shut
//! down gracefully, then closed [`CLOSE_GRACE`] later if the client ignores
//! that (an HTTP/2 client, or one that never sent a byte).
//!
//! Opening the state and undoing dead imports before (and beside) the
//! listeners: [`crate::edge::startup`].
//!
//! Failed handshakes are counted per listener and written to the audit trail
//! as `tls.client_refused`, at most [`REFUSALS_PER_MINUTE`] records per
//! listener per minute (a port scan must not flood the trail); the records
//! that were skipped are counted in `keyward_audit_suppressed_total` and in
//! the next record's `suppressed_before`. The log lines of refused
//! connections are limited the same way, with their own budget: the lines
//! skipped are counted in `keyward_log_suppressed_total` and in the next
//! line's `suppressed_before`.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use keyward_config::Config;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::audit::{Actor, AuditEvent, Outcome};
use crate::edge::identity::ClientIdentity;
use crate::edge::startup::{open_state, recover_imports};
use crate::metrics::Listener;
use crate::refusals::RefusalWindows;
use crate::state::AppState;

/// Time a client has to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time in-flight requests get to finish after a shutdown signal.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Refused-client audit records (and, separately, log lines) per listener
/// per minute.
pub const REFUSALS_PER_MINUTE: u32 = 30;
/// Time an idle connection that was asked to close gets before it is cut.
pub const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The two bound listeners.
#[derive(Debug)]
pub struct Listeners {
    pub public: TcpListener,
    pub admin: TcpListener,
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
    // Before listening: nothing a killed import issued stays valid, and its
    // batch can be imported again.
    recover_imports(&state)
        .await
        .context("recovering unfinished batch imports")?;
    // What a crash cut short: audit records staged with their effects, and
    // lockouts whose certificate is not revoked yet.
    state
        .audit
        .flush_staged()
        .await
        .context("chaining staged audit records")?;
    state
        .online
        .finish_lockouts()
        .await
        .context("finishing interrupted lockouts")?;
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
    state.audit.chain_in_background();
    #[cfg(feature = "faults")]
    tokio::spawn(crate::fault::hsm_faults_on_signal(state.kms.clone()));
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
    // Every refusal window's count is written, and every staged record
    // chained, before the trail stops.
    state.online.close_refusal_windows(true).await;
    if let Err(e) = state.audit.flush_staged().await {
        tracing::warn!(error = %e, "staged audit records are chained at the next start");
    }
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
    // Every connection holds a receiver; `closed()` is all of them gone.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let limits = Arc::new(Limits::new(&state));
    let jobs = crate::jobs::server_runner(&state)
        .await
        .start(state.clone());
    let crl_reloads = tokio::spawn(crate::edge::pki::crl_reload_on_request(state.clone()));

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
        let Some(slot) = limits.per_address.acquire(listener, peer.ip()) else {
            limits.refuse_over_cap(&state, listener, peer);
            drop(stream);
            continue;
        };
        let router = match listener {
            Listener::Public => public_router.clone(),
            Listener::Admin => admin_router.clone(),
        };
        let ctx = Connection {
            state: state.clone(),
            listener,
            peer,
            router,
            stop: stop_rx.clone(),
            limits: limits.clone(),
            _slot: slot,
        };
        tokio::spawn(connection(ctx, stream));
    }

    state.set_draining();
    jobs.stop().await;
    crl_reloads.abort();
    drop(listeners);
    drop(stop_rx);
    tracing::info!(
        connections = stop_tx.receiver_count(),
        "shutting down: draining connections"
    );
    let _ = stop_tx.send(true);
    if tokio::time::timeout(DRAIN_TIMEOUT, stop_tx.closed())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain timeout; closing them");
    }
    Ok(())
}

/// What every connection task shares: the per-address counts and the
/// refusal limiters.
#[derive(Debug)]
struct Limits {
    per_address: AddressSlots,
    audit: RefusalLimiter,
    log: RefusalLimiter,
    header_read_timeout: Duration,
    idle_timeout: Duration,
}

impl Limits {
    fn new(state: &AppState) -> Self {
        let s = &state.config.server;
        Self {
            per_address: AddressSlots::new(s.max_connections_per_address.max(1)),
            audit: RefusalLimiter::default(),
            log: RefusalLimiter::default(),
            header_read_timeout: Duration::from_millis(s.header_read_timeout_ms.max(1)),
            idle_timeout: Duration::from_millis(s.idle_timeout_ms.max(1)),
        }
    }

    /// Counts and (within the log budget) logs a connection closed for the
    /// per-address cap.
    fn refuse_over_cap(&self, state: &AppState, listener: Listener, peer: SocketAddr) {
        state
            .metrics
            .connections_refused
            .with_label_values(&[listener.as_str(), "per_address_limit"])
            .inc();
        if let Some(suppressed_before) = self.admit_log(state, listener) {
            tracing::info!(
                listener = listener.as_str(),
                %peer,
                suppressed_before,
                "connection refused: too many from this address"
            );
        }
    }

    /// `Some(lines suppressed since the last one)` when a refusal may be
    /// logged; counts the line in `keyward_log_suppressed_total` otherwise.
    fn admit_log(&self, state: &AppState, listener: Listener) -> Option<u64> {
        let admitted = self.log.admit(listener, Instant::now());
        if admitted.is_none() {
            state
                .metrics
                .log_suppressed
                .with_label_values(&[listener.as_str()])
                .inc();
        }
        admitted
    }
}

/// Open connections per (listener, client address), in three pools, so
/// that anonymous connections from an address cannot lock out the
/// certificate holders behind it (operators behind the same NAT as an
/// attacker):
///
/// - **anonymous**: connections before their handshake, and those without a
///   client certificate after it; at most `max`;
/// - **certified**: connections that presented a valid client certificate
///   (moved here after the handshake, freeing their anonymous place); at
///   most `max`;
/// - **probation**: when the anonymous pool is full, at most
///   [`PROBATION_SLOTS`] more connections get a handshake, within
///   [`PROBATION_HANDSHAKE`], and stay only if they present a certificate.
#[derive(Debug)]
struct AddressSlots {
    max: usize,
    open: Counts,
}

/// Connections past a full anonymous pool that may still show a certificate.
pub const PROBATION_SLOTS: usize = 8;
/// The handshake time of a connection on probation.
pub const PROBATION_HANDSHAKE: Duration = Duration::from_secs(2);

/// Open connections per (listener, address, pool).
type Counts = Arc<Mutex<HashMap<(usize, IpAddr, Pool), usize>>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Pool {
    Anonymous,
    Probation,
    Certified,
}

/// One open connection's place in [`AddressSlots`], given back on drop.
#[derive(Debug)]
struct Slot {
    key: (usize, IpAddr, Pool),
    open: Counts,
    /// The anonymous and certified pools' size.
    max: usize,
}

impl AddressSlots {
    fn new(max: usize) -> Self {
        Self {
            max,
            open: Arc::default(),
        }
    }

    /// A place for a new connection: anonymous, else on probation.
    fn acquire(&self, listener: Listener, ip: IpAddr) -> Option<Slot> {
        let key = |pool| (listener as usize, ip, pool);
        take(&self.open, key(Pool::Anonymous), self.max, self.max)
            .or_else(|| take(&self.open, key(Pool::Probation), PROBATION_SLOTS, self.max))
    }
}

/// A place in the pool of `key` if it holds fewer than `limit`.
fn take(open: &Counts, key: (usize, IpAddr, Pool), limit: usize, max: usize) -> Option<Slot> {
    let mut counts = open.lock().unwrap_or_else(|p| p.into_inner());
    let n = counts.entry(key).or_insert(0);
    if *n >= limit {
        return None;
    }
    *n += 1;
    Some(Slot {
        key,
        open: open.clone(),
        max,
    })
}

impl Slot {
    fn on_probation(&self) -> bool {
        self.key.2 == Pool::Probation
    }

    /// After the handshake: a certificate holder moves to the certified
    /// pool (giving its place back); a connection on probation without one
    /// has no place (`None`), nor has a certificate holder past the
    /// certified pool's size.
    fn settle(self, certified: bool) -> Option<Slot> {
        let (listener, ip, pool) = self.key;
        match (certified, pool) {
            (true, Pool::Certified) | (false, Pool::Anonymous) => Some(self),
            (true, _) => take(
                &self.open,
                (listener, ip, Pool::Certified),
                self.max,
                self.max,
            ),
            (false, _) => None,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Requests in flight on one connection and when the last one ended.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    /// Whether any request began (the first one's headers were read).
    spoke: AtomicBool,
    last: Mutex<Instant>,
}

/// One request in flight ([`Activity::start`]).
#[derive(Debug)]
struct Busy(Arc<Activity>);

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            spoke: AtomicBool::new(false),
            last: Mutex::new(Instant::now()),
        })
    }

    fn start(self: &Arc<Self>) -> Busy {
        self.spoke.store(true, Ordering::SeqCst);
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Busy(self.clone())
    }

    /// How long nothing has been in flight (zero while something is).
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return Duration::ZERO;
        }
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        *self.0.last.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What one accepted connection is served with.
#[derive(Debug)]
struct Connection {
    state: AppState,
    listener: Listener,
    peer: SocketAddr,
    /// The listener's router.
    router: Router,
    /// Flips on shutdown: the connection closes gracefully.
    stop: tokio::sync::watch::Receiver<bool>,
    limits: Arc<Limits>,
    /// Its place in the per-address count, held as long as the connection.
    _slot: Slot,
}

/// Handshake, then HTTP until the client leaves, goes idle or shutdown asks.
async fn connection(ctx: Connection, stream: TcpStream) {
    let Connection {
        state,
        listener,
        peer,
        router,
        mut stop,
        limits,
        _slot: slot,
    } = ctx;
    let _ = stream.set_nodelay(true);
    let acceptor = TlsAcceptor::from(state.tls.config(listener));
    let handshake_time = if slot.on_probation() {
        PROBATION_HANDSHAKE
    } else {
        HANDSHAKE_TIMEOUT
    };
    let tls = match tokio::time::timeout(handshake_time, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            return refused(&state, &limits, listener, peer, &handshake_reason(&e)).await;
        }
        Err(_) => return refused(&state, &limits, listener, peer, "handshake timed out").await,
    };
    let identity = ClientIdentity::from_peer_certs(peer, tls.get_ref().1.peer_certificates());
    // Held as long as the connection.
    let Some(_slot) = slot.settle(identity.cert.is_some()) else {
        return limits.refuse_over_cap(&state, listener, peer);
    };
    tracing::debug!(
        listener = listener.as_str(),
        %peer,
        client = identity.cert.as_ref().map(|c| c.common_name.as_str()).unwrap_or("-"),
        "connection"
    );
    let activity = Activity::new();
    let seen = activity.clone();
    let svc = tower::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(identity.clone());
        let busy = seen.start();
        let call = router.clone().oneshot(req);
        async move {
            let out = call.await;
            drop(busy);
            out
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection(TokioIo::new(tls), TowerToHyperService::new(svc));
    tokio::pin!(conn);
    let opened = Instant::now();
    let idle = limits.idle_timeout;
    let every = idle.min(limits.header_read_timeout) / 4;
    let mut tick =
        tokio::time::interval(every.clamp(Duration::from_millis(10), Duration::from_secs(1)));
    // Why the connection was asked to close, and when.
    let mut closing: Option<(bool, Instant)> = None;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, %peer, "connection ended with an error");
                }
                break;
            }
            _ = stop.changed(), if closing.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing = Some((false, Instant::now()));
            }
            _ = tick.tick() => match closing {
                // Silent since the handshake: its first request's headers
                // are late (hyper's own timer starts only at a first byte).
                None if !activity.spoke.load(Ordering::SeqCst) && opened.elapsed() >= limits.header_read_timeout => {
                    tracing::debug!(%peer, listener = listener.as_str(), "closing a silent connection");
                    break;
                }
                None if activity.idle_for() >= idle => {
                    tracing::debug!(%peer, listener = listener.as_str(), "closing an idle connection");
                    conn.as_mut().graceful_shutdown();
                    closing = Some((true, Instant::now()));
                }
                // An idle client that ignores the close (or never spoke).
                Some((true, at)) if at.elapsed() >= CLOSE_GRACE && activity.idle_for() > Duration::ZERO => break,
                _ => {}
            },
        }
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
    limits: &Limits,
    listener: Listener,
    peer: SocketAddr,
    reason: &str,
) {
    state
        .metrics
        .tls_handshake_failures
        .with_label_values(&[listener.as_str()])
        .inc();
    if let Some(suppressed_before) = limits.admit_log(state, listener) {
        tracing::info!(
            listener = listener.as_str(),
            %peer,
            reason,
            suppressed_before,
            "TLS handshake refused"
        );
    }
    match limits.audit.admit(listener, Instant::now()) {
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

/// At most [`REFUSALS_PER_MINUTE`] refusals (audit records, or log lines)
/// per listener per minute: the refusal windows the online service keeps per
/// device, with one source per listener.
#[derive(Debug)]
struct RefusalLimiter(RefusalWindows<Listener>);

impl Default for RefusalLimiter {
    fn default() -> Self {
        Self(RefusalWindows::new(
            REFUSALS_PER_MINUTE,
            Duration::from_secs(60),
            2,
        ))
    }
}

impl RefusalLimiter {
    /// `Some(suppressed since the last record)` when a record may be written.
    fn admit(&self, listener: Listener, now: Instant) -> Option<u64> {
        let admitted = self.0.admit(listener, now, false, false);
        admitted
            .record
            .then(|| admitted.closed.map_or(0, |c| c.counted))
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
