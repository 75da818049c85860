//! [`Ca`]: the root and issuing CAs with their HSM keys, and the registry's
//! read side. Every signature is made by an HSM key through kms, from a
//! blocking task (rcgen's signer is synchronous).
//!
//! - `bootstrap`: [`Ca::bootstrap`], creating or finding the keys, the two CA
//!   certificates and the first CRL; [`BootstrapReport`].
//! - `issue`: issuance under profiles ([`Ca::issue_from_csr`],
//!   [`Ca::issue_from_verified_csr`], [`Ca::issue_for_public_key`]) and the
//!   self-check of every leaf; [`IssuedCert`].
//! - `crl`: revocation and CRL signing and refresh; [`Crl`].

mod bootstrap;
mod crl;
mod issue;

use std::sync::Arc;

use base64::Engine;
use keyward_config::CaConfig;
use keyward_kms::types::DeviceId;
use time::OffsetDateTime;

use crate::error::{CaError, Result};
use crate::hsm_key::HsmKey;
use crate::registry::{CertFilter, CertRecord, CertStatus, Serial};
use crate::store::Store;
use keyward_kms::db::now_ms;

pub use bootstrap::BootstrapReport;
pub use crl::{Crl, RevocationMarker};
pub use issue::{IssuedCert, SignedCert};

/// HSM label of the root CA key pair.
pub const ROOT_KEY_LABEL: &str = "keyward/ca/root";
/// HSM label of the issuing CA key pair.
pub const ISSUING_KEY_LABEL: &str = "keyward/ca/issuing";

/// How far `notBefore` is backdated, for verifiers whose clocks lag.
const BACKDATE: time::Duration = time::Duration::minutes(5);

/// The Keyward CA. Cheap to clone: clones share one state.
#[derive(Debug, Clone)]
pub struct Ca {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    cfg: CaConfig,
    root: Authority,
    issuing: Authority,
}

/// A CA certificate with its HSM key, checked to belong together.
#[derive(Debug)]
struct Authority {
    der: Vec<u8>,
    pem: String,
    serial: Serial,
    not_after_ms: i64,
    ski: Vec<u8>,
    key: HsmKey,
}

impl Ca {
    pub fn root_pem(&self) -> &str {
        &self.inner.root.pem
    }

    /// The root CA certificate, DER.
    pub fn root_der(&self) -> &[u8] {
        &self.inner.root.der
    }

    /// The issuing CA certificate, PEM.
    pub fn issuing_pem(&self) -> &str {
        &self.inner.issuing.pem
    }

    /// The issuing CA certificate, DER.
    pub fn issuing_der(&self) -> &[u8] {
        &self.inner.issuing.der
    }

    /// The issuing CA's HSM key (OCSP responses are signed with it).
    pub(crate) fn issuing_key(&self) -> &HsmKey {
        &self.inner.issuing.key
    }

    /// Issuing then root certificate, PEM: what follows a leaf in a chain.
    pub fn chain_pem(&self) -> String {
        format!("{}{}", self.inner.issuing.pem, self.inner.root.pem)
    }

    // ---- registry --------------------------------------------------------------

    /// Registered certificates matching `filter`, newest first.
    pub async fn list(&self, filter: &CertFilter) -> Result<Vec<CertRecord>> {
        self.inner.store.list(filter).await
    }

    /// One registered certificate; `None` if the serial was never issued here.
    pub async fn get(&self, serial: &Serial) -> Result<Option<CertRecord>> {
        self.inner.store.certificate(serial).await
    }

    /// Whether a certificate is revoked. A serial this CA never issued is
    /// [`CaError::UnknownSerial`]: callers must refuse it, not treat it as good.
    pub async fn is_revoked(&self, serial: &Serial) -> Result<bool> {
        match self.inner.store.certificate(serial).await? {
            Some(rec) => Ok(rec.status == CertStatus::Revoked),
            None => Err(CaError::UnknownSerial(serial.clone())),
        }
    }

    /// A device's current certificate: the newest valid, unexpired one.
    pub async fn device_certificate(&self, device: DeviceId) -> Result<Option<CertRecord>> {
        self.inner
            .store
            .device_certificate(&device.to_string(), now_ms())
            .await
    }
}

/// Runs rcgen (whose signer blocks on the HSM) off the async workers.
async fn blocking<T, F>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(CaError::Task)?
}

/// Now, in whole seconds (what X.509 times carry), so registry times equal
/// certificate times.
fn now_s() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

fn ms(t: OffsetDateTime) -> i64 {
    t.unix_timestamp().saturating_mul(1000)
}

fn from_ms(ms: i64) -> Result<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .map_err(|_| CaError::CorruptRecord("timestamp"))
}

/// PEM with 64-character lines and a final newline.
fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        let pem = pem_encode("X509 CRL", &[0u8; 100]);
        assert!(pem.starts_with("-----BEGIN X509 CRL-----\n"));
        assert!(pem.ends_with("-----END X509 CRL-----\n"));
        assert!(pem.lines().all(|l| l.len() <= 64));
        let t = now_s();
        assert_eq!(from_ms(ms(t)).unwrap(), t);
    }
}
