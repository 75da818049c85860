//! Prometheus metrics: one registry owned by the server, rendered in the text
//! format on the admin listener's `/metrics`.
//!
//! Names follow `keyward_<subsystem>_<what>_<unit>`; counters end in `_total`.
//! Labels are bounded: HTTP routes are the matched route *templates*
//! (`/admin/v1/ca/certificates/{serial}`), never raw paths, and no device id,
//! serial or peer address is ever a label value.
//!
//! Counters kept by lower crates as plain atomics (HSM pool, derived-key
//! cache) are copied into the registry when `/metrics` is scraped
//! ([`Metrics::sample`]), so `kms` needs no metrics dependency.

use std::time::Duration;

use keyward_kms::Kms;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Every metric the server exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub hsm_pool_busy: IntGauge,
    pub hsm_pool_queued: IntGauge,
    pub hsm_pool_workers: IntGauge,
    pub hsm_jobs_rejected: IntCounter,
    pub hsm_jobs_completed: IntCounter,
    pub hsm_op_duration: HistogramVec,
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    pub cache_evictions: IntCounter,
    pub certificates_issued: IntCounterVec,
    pub certificates_revoked: IntCounter,
    pub provisioning_decisions: IntCounterVec,
    pub security_events: IntCounterVec,
    /// Transaction confirmations by outcome (docs/protocol.md §11).
    pub confirmations: IntCounterVec,
    /// E-purse load steps by outcome (docs/protocol.md §13).
    pub loads: IntCounterVec,
    /// Secure-channel handshakes by outcome ([`crate::channel::HANDSHAKE_OUTCOMES`]).
    pub channel_handshakes: IntCounterVec,
    /// Secure-channel full handshakes opened, by mode
    /// ([`crate::channel::MODE_LABELS`]).
    pub channel_handshake_modes: IntCounterVec,
    /// Secure-channel records by outcome ([`crate::channel::RECORD_OUTCOMES`]).
    pub channel_records: IntCounterVec,
    /// Expired or spent channel rows the sweep removed, by kind
    /// ([`crate::channel::SWEPT_KINDS`]).
    pub channel_swept: IntCounterVec,
    /// Open, unexpired channels (the shared table, counted by the sweep).
    pub channels_open: IntGauge,
    /// Load reversals by reason ([`crate::load::REVERSAL_REASONS`]).
    pub load_reversals: IntCounterVec,
    /// Loads by state, and the amount they hold (minor units, all
    /// currencies summed: a gauge to alert on, the ledger is the account).
    pub loads_in_state: IntGaugeVec,
    pub loads_amount_in_state: IntGaugeVec,
    /// Seconds the oldest overdue pending load has waited past its timeout
    /// (0 when none): the sweeper's lag.
    pub load_sweeper_lag_seconds: IntGauge,
    /// 503 answers because a dependency (`database`, `hsm`) was away or full.
    pub dependency_unavailable: IntCounterVec,
    pub crl_age_seconds: IntGauge,
    pub crl_number: IntGauge,
    pub tls_config_reloads: IntCounter,
    pub db_pool_connections: IntGaugeVec,
    pub tls_handshake_failures: IntCounterVec,
    pub audit_records: IntCounterVec,
    pub audit_write_failures: IntCounter,
    pub audit_suppressed: IntCounterVec,
    pub log_suppressed: IntCounterVec,
    pub connections_refused: IntCounterVec,
    pub ocsp_responses: IntCounterVec,
    /// Unfinished imports taken over (by recovery or an operator's abort).
    pub import_recoveries: IntCounterVec,
    /// Login steps by outcome (`success` or the refusal code).
    pub logins: IntCounterVec,
    /// Login challenges by event (`issued`, `expired`).
    pub login_challenges: IntCounterVec,
    pub login_lockouts: IntCounterVec,
    /// New working-key versions offered, by issuer and trigger.
    pub key_rotations: IntCounterVec,
    pub sessions_active: IntGauge,
    /// Bulk-verified MACs by algorithm and result (`valid`, `invalid`, `error`).
    pub mac_verifications: IntCounterVec,
    /// Items per bulk verification request, by caller kind.
    pub mac_batch_items: HistogramVec,
    /// HSM (and key look-up) time per bulk verification request.
    pub mac_batch_hsm_seconds: HistogramVec,
    /// Device transaction MACs by algorithm and result.
    pub transaction_macs: IntCounterVec,
    /// Credentials that reached a streak of consecutive MAC failures.
    pub mac_failure_streaks: IntCounterVec,
    /// Outbox messages still to send, and the age of the oldest.
    pub outbox_backlog: IntGauge,
    pub outbox_oldest_age_seconds: IntGauge,
    /// Outbox delivery attempts by channel and outcome (sent, retry, gave_up).
    pub outbox_deliveries: IntCounterVec,
    /// notAfter of the certificates a serving replica uses (server, evidence,
    /// issuing_ca, root_ca): renewal is an operator's step, so it is alerted.
    pub certificate_expiry: IntGaugeVec,
    /// Background job runs that failed, and when each last succeeded, by
    /// job name: a job that fails or hangs on every tick is otherwise silent.
    pub job_failures: IntCounterVec,
    pub job_last_success: IntGaugeVec,
    /// HSM checkpoints of the audit trail not written (a broken trail, the
    /// HSM or database away): the checkpoint falls behind the head.
    pub audit_checkpoint_failures: IntCounter,
}

/// The listener a connection arrived on (a bounded label value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Listener {
    Public,
    Admin,
}

impl Listener {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "public",
            Self::Admin => "admin",
        }
    }
}

fn counter(r: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    let c = IntCounter::with_opts(Opts::new(name, help))?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge(r: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    let g = IntGauge::with_opts(Opts::new(name, help))?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn gauge_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> prometheus::Result<HistogramVec> {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)?;
    r.register(Box::new(h.clone()))?;
    Ok(h)
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> prometheus::Result<Self> {
        let r = Registry::new();
        // 0.5 ms .. ~16 s: covers a cached MAC check and a slow RSA keygen.
        let latency = prometheus::exponential_buckets(0.0005, 2.0, 16)?;
        let m = Self {
            http_requests: counter_vec(
                &r,
                "keyward_http_requests_total",
                "HTTP requests answered, by matched route template and status code.",
                &["listener", "route", "status"],
            )?,
            http_duration: histogram_vec(
                &r,
                "keyward_http_request_duration_seconds",
                "Time from request to response head, by matched route template.",
                &["listener", "route"],
                latency.clone(),
            )?,
            hsm_pool_busy: gauge(
                &r,
                "keyward_hsm_pool_busy",
                "HSM worker sessions running a job now.",
            )?,
            hsm_pool_queued: gauge(
                &r,
                "keyward_hsm_pool_queued",
                "HSM jobs waiting for a worker session.",
            )?,
            hsm_pool_workers: gauge(
                &r,
                "keyward_hsm_pool_workers",
                "HSM worker threads, each with its session: hsm.sessions interactive plus hsm.bulk_sessions bulk.",
            )?,
            hsm_jobs_rejected: counter(
                &r,
                "keyward_hsm_jobs_rejected_total",
                "HSM jobs refused because the queue was full (answered 503 hsm_busy).",
            )?,
            hsm_jobs_completed: counter(
                &r,
                "keyward_hsm_jobs_completed_total",
                "HSM jobs finished, with any outcome.",
            )?,
            hsm_op_duration: histogram_vec(
                &r,
                "keyward_hsm_operation_duration_seconds",
                "Latency of HSM-backed operations called by the server, by operation and outcome.",
                &["operation", "outcome"],
                latency,
            )?,
            cache_hits: counter(
                &r,
                "keyward_hsm_derived_key_cache_hits_total",
                "Derived-key cache hits.",
            )?,
            cache_misses: counter(
                &r,
                "keyward_hsm_derived_key_cache_misses_total",
                "Derived-key cache misses (a derivation in the HSM).",
            )?,
            cache_evictions: counter(
                &r,
                "keyward_hsm_derived_key_cache_evictions_total",
                "Derived keys evicted from the cache (session object destroyed).",
            )?,
            certificates_issued: counter_vec(
                &r,
                "keyward_certificates_issued_total",
                "Certificates issued by this process, by profile.",
                &["profile"],
            )?,
            provisioning_decisions: counter_vec(
                &r,
                "keyward_provisioning_decisions_total",
                "Provisioning decisions (import, check, init, customer review, bind, lifecycle), by action and outcome.",
                &["action", "outcome"],
            )?,
            security_events: counter_vec(
                &r,
                "keyward_security_events_total",
                "Intrusion signals (security.* audit records), by kind; alert on any increase.",
                &["kind"],
            )?,
            confirmations: counter_vec(
                &r,
                "keyward_confirmations_total",
                "Transaction confirmations by outcome: submitted, submit_refused, refused_pre_send, stepped_up (also submitted), executed, refused (wrong or expired code, bad signature), failed (attempts ran out), tampered.",
                &["outcome"],
            )?,
            loads: counter_vec(
                &r,
                "keyward_loads_total",
                "E-purse load steps by outcome: permitted, refused, posted, voided (failure report or proven not applied), doubtful (voided without proof: timeout or bad report), late_applied, not_applied, report_refused.",
                &["outcome"],
            )?,
            channel_handshakes: counter_vec(
                &r,
                "keyward_channel_handshakes_total",
                "Secure-channel handshake steps by outcome: hello (a ServerHello answered), opened (keys derived, Finished answered), resumed (a ticket opened a channel), refused (a key exchange: certificate, signature or pre-master; or a resumption: ticket or binder), expired (no handshake to continue).",
                &["outcome"],
            )?,
            channel_handshake_modes: counter_vec(
                &r,
                "keyward_channel_handshake_modes_total",
                "Secure-channel full handshakes opened, by mode: rsa-transport, ecdhe-p256 (forward secret).",
                &["mode"],
            )?,
            channel_records: counter_vec(
                &r,
                "keyward_channel_records_total",
                "Secure-channel records by outcome: data (a card's record opened and answered), close, key_update (the card's), server_key_update (the server's direction moved to its next key), refused (the channel closed on it).",
                &["outcome"],
            )?,
            channel_swept: counter_vec(
                &r,
                "keyward_channel_swept_total",
                "Secure-channel rows removed by the sweep, by kind: handshakes (expired), channels (expired or closed), tickets (expired or spent).",
                &["kind"],
            )?,
            channels_open: gauge(
                &r,
                "keyward_channels_open",
                "Open, unexpired secure channels (the shared table, as of the last sweep).",
            )?,
            load_reversals: counter_vec(
                &r,
                "keyward_load_reversals_total",
                "E-purse loads reversed (voided), by reason: failure (the purse's report), bad_report (a report that did not verify or add up), timeout (the sweeper), proven_not_applied (the purse's next message).",
                &["reason"],
            )?,
            loads_in_state: gauge_vec(
                &r,
                "keyward_loads",
                "Unsettled e-purse loads by state: pending (in flight), doubtful (awaiting the purse's proof). Settled loads are counted by keyward_loads_total.",
                &["state"],
            )?,
            loads_amount_in_state: gauge_vec(
                &r,
                "keyward_loads_amount_minor",
                "Amount held by unsettled e-purse loads by state (pending, doubtful), minor units of every currency summed.",
                &["state"],
            )?,
            load_sweeper_lag_seconds: gauge(
                &r,
                "keyward_load_sweeper_lag_seconds",
                "Seconds the oldest pending load has waited past its report timeout (0: none overdue).",
            )?,
            dependency_unavailable: counter_vec(
                &r,
                "keyward_dependency_unavailable_total",
                "Requests answered 503 because a dependency was unavailable or at capacity, by dependency (database, hsm).",
                &["dependency"],
            )?,
            certificates_revoked: counter(
                &r,
                "keyward_certificates_revoked_total",
                "Certificates revoked by this process.",
            )?,
            crl_age_seconds: gauge(
                &r,
                "keyward_crl_age_seconds",
                "Seconds since thisUpdate of the CRL the TLS listeners check client certificates against.",
            )?,
            crl_number: gauge(
                &r,
                "keyward_crl_number",
                "CRL number in force on the TLS listeners.",
            )?,
            tls_config_reloads: counter(
                &r,
                "keyward_tls_config_reloads_total",
                "TLS server configurations rebuilt for a new CRL.",
            )?,
            db_pool_connections: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "keyward_db_pool_connections",
                        "Database pool connections by state (idle, in_use).",
                    ),
                    &["state"],
                )?;
                r.register(Box::new(g.clone()))?;
                g
            },
            tls_handshake_failures: counter_vec(
                &r,
                "keyward_tls_handshake_failures_total",
                "TLS handshakes that failed or timed out, by listener.",
                &["listener"],
            )?,
            audit_records: counter_vec(
                &r,
                "keyward_audit_records_total",
                "Audit records written, by action.",
                &["action"],
            )?,
            audit_write_failures: counter(
                &r,
                "keyward_audit_write_failures_total",
                "Audit records that could not be written (the operation was refused).",
            )?,
            audit_suppressed: counter_vec(
                &r,
                "keyward_audit_suppressed_total",
                "Refused-TLS-client audit records not written because of the rate limit, by listener.",
                &["listener"],
            )?,
            log_suppressed: counter_vec(
                &r,
                "keyward_log_suppressed_total",
                "Refused-connection log lines not written because of the rate limit, by listener.",
                &["listener"],
            )?,
            connections_refused: counter_vec(
                &r,
                "keyward_connections_refused_total",
                "Connections closed before the TLS handshake, by listener and reason (per_address_limit).",
                &["listener", "reason"],
            )?,
            ocsp_responses: counter_vec(
                &r,
                "keyward_ocsp_responses_total",
                "OCSP answers by source (cached, signed, refused, throttled).",
                &["source"],
            )?,
            import_recoveries: counter_vec(
                &r,
                "keyward_import_recoveries_total",
                "Batch imports whose process died, taken over and undone (certificates revoked, batch removed), by outcome (success, failure).",
                &["outcome"],
            )?,
            logins: counter_vec(
                &r,
                "keyward_logins_total",
                "Device login steps by outcome: success, or the refusal code.",
                &["outcome"],
            )?,
            login_challenges: counter_vec(
                &r,
                "keyward_login_challenges_total",
                "Login challenges issued, and answered after they expired.",
                &["event"],
            )?,
            login_lockouts: counter_vec(
                &r,
                "keyward_login_lockouts_total",
                "Credentials locked after consecutive failed responses, by issuer.",
                &["issuer"],
            )?,
            key_rotations: counter_vec(
                &r,
                "keyward_key_rotations_total",
                "New working-key versions offered at login, by issuer and trigger (initial, requested, fleet, age).",
                &["issuer", "trigger"],
            )?,
            sessions_active: gauge(
                &r,
                "keyward_sessions_active",
                "Unexpired device sessions (every replica reads the shared table).",
            )?,
            mac_verifications: counter_vec(
                &r,
                "keyward_mac_verifications_total",
                "Bulk-verified transaction MACs by algorithm and result (valid, invalid, error).",
                &["algorithm", "result"],
            )?,
            mac_batch_items: histogram_vec(
                &r,
                "keyward_mac_batch_items",
                "Items per bulk MAC verification request, by caller (service, operator).",
                &["caller"],
                prometheus::exponential_buckets(1.0, 4.0, 10)?,
            )?,
            mac_batch_hsm_seconds: histogram_vec(
                &r,
                "keyward_mac_batch_hsm_seconds",
                "Time in key look-up and the HSM per bulk MAC verification request, by caller.",
                &["caller"],
                prometheus::exponential_buckets(0.001, 2.0, 18)?,
            )?,
            transaction_macs: counter_vec(
                &r,
                "keyward_transaction_macs_total",
                "Device transaction MACs verified, by algorithm and result (valid, invalid).",
                &["algorithm", "result"],
            )?,
            mac_failure_streaks: counter_vec(
                &r,
                "keyward_transaction_mac_failure_streaks_total",
                "Device credentials that reached 5 consecutive transaction MAC failures, by issuer.",
                &["issuer"],
            )?,
            outbox_backlog: gauge(
                &r,
                "keyward_outbox_backlog",
                "Outbox messages still to send (pending or failed and to be retried).",
            )?,
            outbox_oldest_age_seconds: gauge(
                &r,
                "keyward_outbox_oldest_age_seconds",
                "Age of the oldest outbox message still to send (0 when none).",
            )?,
            outbox_deliveries: counter_vec(
                &r,
                "keyward_outbox_deliveries_total",
                "Outbox delivery attempts by channel (file, webhook, smtp) and outcome (sent, retry, gave_up).",
                &["channel", "outcome"],
            )?,
            certificate_expiry: gauge_vec(
                &r,
                "keyward_certificate_expiry_timestamp_seconds",
                "notAfter (Unix seconds) of the certificates this replica serves with: server, evidence, issuing_ca, root_ca.",
                &["certificate"],
            )?,
            job_failures: counter_vec(
                &r,
                "keyward_job_failures_total",
                "Background job runs that failed (retried next tick), by job name.",
                &["name"],
            )?,
            job_last_success: gauge_vec(
                &r,
                "keyward_job_last_success_timestamp_seconds",
                "When each background job last finished a run without error (Unix seconds), by job name; only the lease holder runs a once-across-replicas job.",
                &["name"],
            )?,
            audit_checkpoint_failures: counter(
                &r,
                "keyward_audit_checkpoint_failures_total",
                "Audit trail HSM checkpoints that could not be written (retried every second).",
            )?,
            registry: r,
        };
        for event in ["issued", "expired"] {
            m.login_challenges.with_label_values(&[event]);
        }
        m.logins.with_label_values(&["success"]);
        // Every security event kind is exported from the start (as 0), so an
        // alert on `increase(...) > 0` sees the first one.
        for kind in crate::security::kind::SecurityKind::ALL {
            m.security_events.with_label_values(&[kind.as_str()]);
        }
        for outcome in crate::confirmation::OUTCOMES {
            m.confirmations.with_label_values(&[outcome]);
        }
        for outcome in crate::load::OUTCOMES {
            m.loads.with_label_values(&[outcome]);
        }
        for outcome in crate::channel::HANDSHAKE_OUTCOMES {
            m.channel_handshakes.with_label_values(&[outcome]);
        }
        for mode in crate::channel::MODE_LABELS {
            m.channel_handshake_modes.with_label_values(&[mode]);
        }
        for kind in crate::channel::SWEPT_KINDS {
            m.channel_swept.with_label_values(&[kind]);
        }
        for outcome in crate::channel::RECORD_OUTCOMES {
            m.channel_records.with_label_values(&[outcome]);
        }
        for reason in crate::load::REVERSAL_REASONS {
            m.load_reversals.with_label_values(&[reason]);
        }
        for state in crate::load::State::UNSETTLED {
            m.loads_in_state.with_label_values(&[state.as_str()]);
            m.loads_amount_in_state.with_label_values(&[state.as_str()]);
        }
        Ok(m)
    }

    /// Copies the kms counters and gauges into the registry.
    pub fn sample(&self, kms: &Kms) {
        let stats = kms.stats();
        self.hsm_pool_busy
            .set(i64::try_from(stats.hsm_busy).unwrap_or(i64::MAX));
        self.hsm_pool_queued
            .set(i64::try_from(stats.hsm_queued).unwrap_or(i64::MAX));
        self.hsm_pool_workers
            .set(i64::try_from(stats.hsm_workers).unwrap_or(i64::MAX));
        catch_up(&self.hsm_jobs_rejected, stats.hsm_rejected);
        catch_up(&self.hsm_jobs_completed, stats.hsm_completed);
        catch_up(&self.cache_hits, stats.cache_hits);
        catch_up(&self.cache_misses, stats.cache_misses);
        catch_up(&self.cache_evictions, stats.cache_evictions);
        let size = i64::from(stats.db_connections);
        let idle = i64::try_from(stats.db_idle).unwrap_or(i64::MAX);
        self.db_pool_connections
            .with_label_values(&["idle"])
            .set(idle);
        self.db_pool_connections
            .with_label_values(&["in_use"])
            .set((size - idle).max(0));
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> (String, String) {
        let encoder = TextEncoder::new();
        let mut out = String::new();
        if let Err(e) = encoder.encode_utf8(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics");
        }
        (encoder.format_type().to_owned(), out)
    }

    /// Records one HSM-backed operation's latency and outcome.
    pub fn observe_hsm(&self, operation: &'static str, outcome: &'static str, took: Duration) {
        self.hsm_op_duration
            .with_label_values(&[operation, outcome])
            .observe(took.as_secs_f64());
    }
}

/// Raises `counter` to `total` (counters only go up; a lower total, after a
/// restart of the source, is ignored).
fn catch_up(counter: &IntCounter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

/// Times an HSM-backed future and records it under `operation`; the outcome
/// label is `ok`, `busy` (queue full) or `error`.
pub async fn timed_hsm<T, E, F>(metrics: &Metrics, operation: &'static str, fut: F) -> Result<T, E>
where
    F: std::future::Future<Output = Result<T, E>>,
    E: HsmOutcome,
{
    let start = std::time::Instant::now();
    let out = fut.await;
    let outcome = match &out {
        Ok(_) => "ok",
        Err(e) => e.outcome(),
    };
    metrics.observe_hsm(operation, outcome, start.elapsed());
    out
}

/// Classifies an error for the `outcome` label.
pub trait HsmOutcome {
    fn outcome(&self) -> &'static str;
}

impl HsmOutcome for keyward_kms::KmsError {
    fn outcome(&self) -> &'static str {
        match self {
            keyward_kms::KmsError::Busy => "busy",
            e if e.is_client_error() => "rejected",
            _ => "error",
        }
    }
}

impl HsmOutcome for keyward_ca::CaError {
    fn outcome(&self) -> &'static str {
        match self {
            keyward_ca::CaError::Kms(e) => e.outcome(),
            e if e.is_client_error() => "rejected",
            _ => "error",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_renders_every_family() {
        let m = Metrics::new().unwrap();
        m.http_requests
            .with_label_values(&["admin", "/live", "200"])
            .inc();
        m.observe_hsm("tls_sign", "ok", Duration::from_millis(2));
        m.certificates_issued.with_label_values(&["device"]).inc();
        m.tls_handshake_failures
            .with_label_values(&["public"])
            .inc();
        let (ct, text) = m.render();
        assert!(ct.starts_with("text/plain"));
        for name in [
            "keyward_http_requests_total",
            "keyward_hsm_operation_duration_seconds_bucket",
            "keyward_certificates_issued_total",
            "keyward_tls_handshake_failures_total",
            "keyward_hsm_pool_busy",
        ] {
            assert!(text.contains(name), "{name} missing");
        }
    }

    /// A registered family: its name and its label names.
    struct Family {
        name: String,
        labels: Vec<String>,
    }

    /// The families this file registers, read from its own source: each
    /// `"keyward_…"` literal and the label list of its call.
    fn registered() -> Vec<Family> {
        let src = include_str!("metrics.rs");
        let src = &src[..src.find("#[cfg(test)]").unwrap()];
        let mut out = Vec::new();
        let mut rest = src;
        while let Some(i) = rest.find("\"keyward_") {
            rest = &rest[i + 1..];
            let end = rest.find('"').unwrap();
            let name = rest[..end].to_owned();
            let call = &rest[..rest.find(")?").unwrap()];
            let labels = call
                .find("&[")
                .map(|j| {
                    let list = &call[j + 2..j + call[j..].find(']').unwrap()];
                    list.split(',')
                        .map(|l| l.trim().trim_matches('"').to_owned())
                        .filter(|l| !l.is_empty())
                        .collect()
                })
                .unwrap_or_default();
            out.push(Family { name, labels });
        }
        out
    }

    /// A label matcher: label, operator, value.
    type Matcher = (String, String, String);

    /// Every `keyward_…` selector in `text`: the name and its matchers.
    fn selectors(text: &str) -> Vec<(String, Vec<Matcher>)> {
        let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
        let mut out = Vec::new();
        let mut at = 0;
        while let Some(i) = text[at..].find("keyward_") {
            let start = at + i;
            let end = text[start..]
                .find(|c: char| !word(c))
                .map_or(text.len(), |e| start + e);
            at = end;
            if text[..start].chars().next_back().is_some_and(word) {
                continue;
            }
            let name = text[start..end].to_owned();
            let mut matchers = Vec::new();
            if text[end..].starts_with('{') {
                let close = end + text[end..].find('}').unwrap();
                for m in text[end + 1..close].split(',') {
                    let m = m.trim();
                    let Some(op_at) = m.find(['=', '!']) else {
                        continue;
                    };
                    let op_len = if m[op_at..].starts_with('=') && !m[op_at..].starts_with("=~") {
                        1
                    } else {
                        2
                    };
                    let value = m[op_at + op_len..].trim().trim_matches(['"', '\\']);
                    matchers.push((
                        m[..op_at].trim().to_owned(),
                        m[op_at..op_at + op_len].to_owned(),
                        value.to_owned(),
                    ));
                }
            }
            out.push((name, matchers));
        }
        out
    }

    /// The query text of the operations pack: the alert and recording rules
    /// and their tests as written, and every `expr` of the dashboard.
    fn ops_pack_queries() -> Vec<(String, String)> {
        let ops = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops");
        let mut out = Vec::new();
        let mut yml = vec![ops.join("prometheus/keyward-rules.yml")];
        for e in std::fs::read_dir(ops.join("prometheus/tests")).unwrap() {
            yml.push(e.unwrap().path());
        }
        for path in yml {
            out.push((
                path.display().to_string(),
                std::fs::read_to_string(&path).unwrap(),
            ));
        }
        let dashboard = ops.join("grafana/keyward.json");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&dashboard).unwrap()).unwrap();
        fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    for (k, v) in m {
                        match (k.as_str(), v) {
                            ("expr" | "query", serde_json::Value::String(s)) => out.push(s.clone()),
                            _ => exprs(v, out),
                        }
                    }
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
                _ => {}
            }
        }
        let mut found = Vec::new();
        exprs(&json, &mut found);
        assert!(
            found.len() >= 20,
            "the dashboard has {} queries",
            found.len()
        );
        out.push((dashboard.display().to_string(), found.join("\n")));
        out
    }

    /// The alert rules, their tests and the dashboard query only metrics this
    /// registry exports, with its label names; where a family's label values
    /// are all exported from the start (outcomes, kinds, states), a value
    /// matched exactly is one of them. A rule over a misspelt name would
    /// never fire.
    #[test]
    fn ops_pack_queries_only_exported_metrics() {
        let families = registered();
        assert!(families.len() >= 50, "{} families parsed", families.len());
        let (_, fresh) = Metrics::new().unwrap().render();
        // Label values exported from the start, by (family, label); the
        // login outcomes are only `success` until a refusal happens.
        let mut seeded: std::collections::HashMap<(String, String), Vec<String>> =
            std::collections::HashMap::new();
        for (name, matchers) in selectors(&fresh) {
            if name == "keyward_logins_total" {
                continue;
            }
            for (label, _, value) in matchers {
                seeded.entry((name.clone(), label)).or_default().push(value);
            }
        }
        for (file, text) in ops_pack_queries() {
            for (name, matchers) in selectors(&text) {
                let family = families
                    .iter()
                    .find(|f| f.name == name)
                    .or_else(|| {
                        let base = ["_bucket", "_sum", "_count"]
                            .iter()
                            .find_map(|s| name.strip_suffix(s))?;
                        families.iter().find(|f| f.name == base)
                    })
                    .unwrap_or_else(|| panic!("{file}: {name} is not a metric the server exports"));
                for (label, op, value) in matchers {
                    let known = family.labels.contains(&label)
                        || ["instance", "job"].contains(&label.as_str())
                        || (label == "le" && name.ends_with("_bucket"));
                    assert!(known, "{file}: {name} has no label {label}");
                    let Some(values) = seeded.get(&(family.name.clone(), label.clone())) else {
                        continue;
                    };
                    let wanted: Vec<&str> = match op.as_str() {
                        "=" => vec![value.as_str()],
                        "=~" if value
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "_|".contains(c)) =>
                        {
                            value.split('|').collect()
                        }
                        _ => vec![],
                    };
                    for v in wanted {
                        assert!(
                            values.iter().any(|x| x == v),
                            "{file}: {name}{{{label}=\"{v}\"}} is never exported (values: {values:?})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn catch_up_only_rises() {
        let c = IntCounter::new("x_total", "x").unwrap();
        catch_up(&c, 5);
        catch_up(&c, 3);
        catch_up(&c, 7);
        assert_eq!(c.get(), 7);
    }
}
