//! The server's own certificates and the CRL it checks clients against: the
//! glue between the CA and the TLS listeners.
//!
//! - The server TLS certificate for the HSM key `keyward/tls/server`,
//!   kept in `data_dir/tls/` (`server.pem`: leaf then issuing CA, as served;
//!   `ca.pem`: the root) and re-issued by `init` only when it is missing,
//!   expired (or within [`RENEW_BEFORE_DAYS`] of it), revoked, for other
//!   names, for another key, or from another CA.
//! - The CRL refresh: on a schedule (`server.crl_refresh_secs`) and after
//!   every revocation, the CA re-signs its CRL if due and both TLS configs
//!   are rebuilt when the CRL number changes.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyward_ca::{Ca, CaError, CertStatus, Crl, Serial};
use keyward_config::Config;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::edge::tls::CrlInUse;
use crate::jobs::{Job, JobError};
use crate::metrics::{Metrics, timed_hsm};
use crate::state::AppState;

/// The server certificate is re-issued this close to its notAfter.
pub const RENEW_BEFORE_DAYS: i64 = 30;

/// Paths of the server's TLS files under `data_dir`.
#[derive(Debug, Clone)]
pub struct TlsPaths {
    pub dir: PathBuf,
    /// Leaf then issuing CA certificate: the chain the server presents.
    pub server_pem: PathBuf,
    /// The Keyward root: what clients verify the server with.
    pub ca_pem: PathBuf,
}

impl TlsPaths {
    pub fn new(config: &Config) -> Self {
        let dir = config.data_dir.join("tls");
        Self {
            server_pem: dir.join("server.pem"),
            ca_pem: dir.join("ca.pem"),
            dir,
        }
    }
}

/// All certificates in a PEM file, DER, in order.
pub fn read_pem_chain(path: &Path) -> std::io::Result<Vec<CertificateDer<'static>>> {
    let bytes = std::fs::read(path)?;
    let mut out = Vec::new();
    for pem in x509_parser::pem::Pem::iter_from_buffer(&bytes) {
        let pem = pem.map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        if pem.label == "CERTIFICATE" {
            out.push(CertificateDer::from(pem.contents));
        }
    }
    Ok(out)
}

/// Why the stored server certificate must be (re-)issued; `None` if it is
/// good. `renew_before_days`: how close to notAfter counts as expired.
pub async fn server_cert_problem(
    ca: &Ca,
    chain: &[CertificateDer<'_>],
    tls_spki: &[u8],
    names: &[String],
    renew_before_days: i64,
) -> Result<Option<&'static str>, CaError> {
    let Some(leaf) = chain.first() else {
        return Ok(Some("missing"));
    };
    let Ok((_, cert)) = X509Certificate::from_der(leaf.as_ref()) else {
        return Ok(Some("unreadable"));
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let left = cert.validity().not_after.timestamp() - now;
    if left <= 0 {
        return Ok(Some("expired"));
    }
    if left < renew_before_days * 86_400 {
        return Ok(Some("about to expire"));
    }
    if cert.public_key().raw != tls_spki {
        return Ok(Some("not for the HSM TLS key"));
    }
    let issued_by_ca = X509Certificate::from_der(ca.issuing_der())
        .ok()
        .is_some_and(|(_, issuing)| {
            cert.issuer().as_raw() == issuing.subject().as_raw()
                && cert.verify_signature(Some(issuing.public_key())).is_ok()
        });
    if !issued_by_ca || chain.get(1).map(|c| c.as_ref()) != Some(ca.issuing_der()) {
        return Ok(Some("not from the current issuing CA"));
    }
    if cert_names(&cert) != wanted_names(names) {
        return Ok(Some("names changed"));
    }
    let serial = Serial::from_bytes(cert.raw_serial())?;
    match ca.get(&serial).await? {
        Some(rec) if rec.status == CertStatus::Valid => Ok(None),
        Some(_) => Ok(Some("revoked")),
        None => Ok(Some("not in the CA registry")),
    }
}

/// SAN entries of a certificate, normalised.
fn cert_names(cert: &X509Certificate<'_>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => {
                    out.insert(d.to_ascii_lowercase());
                }
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        out.insert(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// `server.public_names`, normalised like [`cert_names`].
fn wanted_names(names: &[String]) -> BTreeSet<String> {
    names
        .iter()
        .map(|n| match n.parse::<IpAddr>() {
            Ok(ip) => ip.to_string(),
            Err(_) => n.to_ascii_lowercase(),
        })
        .collect()
}

/// A DER certificate's notAfter in Unix seconds; `None` if unreadable.
pub fn not_after(der: &[u8]) -> Option<i64> {
    X509Certificate::from_der(der)
        .ok()
        .map(|(_, cert)| cert.validity().not_after.timestamp())
}

/// Gets the current CRL (re-signing it if due) and swaps the TLS configs if it
/// changed. Serialised: a revocation and the schedule may call it at once.
pub async fn refresh_crl(state: &AppState) -> anyhow::Result<bool> {
    let _guard = state.crl_lock.lock().await;
    timed_hsm(&state.metrics, "crl_refresh", state.ca.refresh_crl_if_due()).await?;
    let crl = timed_hsm(&state.metrics, "crl_get", state.ca.crl()).await?;
    crate::fault_point!("crl.published");
    apply_crl(state, &crl)
}

/// Reloads the CRL whenever the online service asks (after a revocation it
/// made), until the process ends.
pub async fn crl_reload_on_request(state: AppState) {
    loop {
        state.online.crl_reload().requested().await;
        refresh_crl_logged(&state, "certificates revoked by the online service").await;
    }
}

/// [`refresh_crl`] after a revocation this process made, so its own TLS
/// listeners refuse the certificate at once; a failure is logged (the
/// revocation stands, and the schedule and the poll retry).
pub async fn refresh_crl_logged(state: &AppState, what: &str) {
    if let Err(e) = refresh_crl(state).await {
        tracing::error!(
            error = format!("{e:#}"),
            "{what}, but the TLS listeners could not load the new CRL yet; the schedule retries"
        );
    }
}

fn apply_crl(state: &AppState, crl: &Crl) -> anyhow::Result<bool> {
    let info = crl_in_use(crl)?;
    let changed = state
        .tls
        .update_crl(CertificateRevocationListDer::from(crl.der.clone()), info)?;
    if changed {
        state.metrics.tls_config_reloads.inc();
        tracing::info!(number = crl.number, "TLS listeners now check the new CRL");
    }
    update_crl_metrics(&state.metrics, &state.tls.crl());
    Ok(changed)
}

/// The [`CrlInUse`] of a CA CRL.
pub fn crl_in_use(crl: &Crl) -> anyhow::Result<CrlInUse> {
    Ok(CrlInUse {
        number: i64::try_from(crl.number)?,
        this_update_ms: crl.this_update_ms,
    })
}

/// `keyward_crl_age_seconds` and `keyward_crl_number` from the CRL in force.
pub fn update_crl_metrics(metrics: &Metrics, crl: &CrlInUse) {
    let now_ms = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    metrics
        .crl_age_seconds
        .set(((now_ms - crl.this_update_ms) / 1000).max(0));
    metrics.crl_number.set(crl.number);
}

/// Job `crl.refresh`, on every replica (each loads the CRL into its own TLS
/// verifiers): every `server.revocation_poll_ms` it looks whether any
/// replica revoked something or stored a newer CRL and, if so, loads it at
/// once; and every `server.crl_refresh_secs` it refreshes the CRL regardless
/// (re-signing it when due). A revocation on one replica thus reaches every
/// replica's handshakes within about one poll. A failed refresh keeps the
/// last good CRL in force and is retried next poll.
pub async fn crl_refresh_job(state: &AppState) -> Job<AppState> {
    let poll = Duration::from_millis(state.config.server.revocation_poll_ms.max(50));
    let every = Duration::from_secs(state.config.server.crl_refresh_secs.max(1));
    // The CRL was just loaded: what it reflects, and when.
    let seen = state.ca.revocation_marker().await.ok();
    let last = Arc::new(Mutex::new((seen, tokio::time::Instant::now())));
    Job::new("crl.refresh", poll, move |state: AppState| {
        let last = last.clone();
        async move {
            let marker = match state.ca.revocation_marker().await {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the revocation marker");
                    None
                }
            };
            let (seen, refreshed) = *last.lock().unwrap_or_else(|p| p.into_inner());
            let changed = marker.is_some() && marker != seen;
            if !changed && refreshed.elapsed() < every {
                return Ok(());
            }
            refresh_crl(&state)
                .await
                .map_err(|e| JobError::failed("crl_refresh_failed", e))?;
            *last.lock().unwrap_or_else(|p| p.into_inner()) = (marker, tokio::time::Instant::now());
            Ok(())
        }
    })
    .after_first_interval()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised() {
        let w = wanted_names(&["LocalHost".into(), "127.0.0.1".into(), "::1".into()]);
        assert!(w.contains("localhost"));
        assert!(w.contains("127.0.0.1"));
        assert!(w.contains("::1"));
    }
}
