//! TLS for both listeners: the server key in the HSM as a rustls signing key,
//! client-certificate verification against the Keyward root with the current
//! CRL, and hot swapping of the `ServerConfig` when the CRL changes.
//!
//! - [`HsmTlsKey`]: `rustls::sign::SigningKey` over the kms key
//!   `keyward/tls/server` (ECDSA P-256, `ECDSA_NISTP256_SHA256`). rustls signs
//!   synchronously on the tokio worker running the handshake, so the HSM call
//!   goes through the worker pool under `block_in_place`.
//! - [`TlsState`]: one `ArcSwap<ServerConfig>` per listener. rustls fixes the
//!   CRLs of a verifier when it is built, so a new CRL means a new config; a
//!   connection takes the config in force when it is accepted.
//! - Both listeners require a client certificate chaining to the Keyward
//!   root (clients send their chain: leaf + issuing CA), with end-entity
//!   revocation checked against the issuing CA's CRL. The admin listener
//!   also accepts clients without a certificate, so Prometheus reaches
//!   `/metrics`, `/live`, `/ready`; the admin API refuses them (`admin/`).
//!   A certificate that is presented is always verified: a revoked one fails
//!   the handshake on both listeners.
//! - Resumption: each listener keeps `server.tls_session_cache_entries`
//!   sessions in memory and sends one ticket per connection, so a terminal
//!   holds one session at a time. The store outlives CRL changes: a resumed
//!   session skips the handshake's certificate checks, and both listeners
//!   check revocation again on every request.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use keyward_kms::hsm::{PublicKey, SignMechanism};
use keyward_kms::signing::SigningKey as KmsSigningKey;
use rustls::crypto::CryptoProvider;
use rustls::server::{
    NoServerSessionStorage, ServerSessionMemoryCache, StoresServerSessions, WebPkiClientVerifier,
};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{RootCertStore, ServerConfig, SignatureAlgorithm, SignatureScheme};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, SubjectPublicKeyInfoDer};

use crate::metrics::{Listener, Metrics};

/// HSM label of the server's TLS key.
pub const TLS_KEY_LABEL: &str = "keyward/tls/server";

/// DER prefix of a P-256 SubjectPublicKeyInfo, before the 65-byte point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("the TLS key {0} is not an ECDSA P-256 key")]
    KeyType(String),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The SPKI (DER) of a P-256 public point.
pub fn p256_spki(point: &[u8]) -> Vec<u8> {
    let mut v = P256_SPKI_PREFIX.to_vec();
    v.extend_from_slice(point);
    v
}

/// The server's TLS private key, in the HSM.
#[derive(Debug, Clone)]
pub struct HsmTlsKey {
    key: KmsSigningKey,
    spki: Vec<u8>,
    metrics: Option<Metrics>,
}

impl HsmTlsKey {
    pub fn new(key: KmsSigningKey, metrics: Option<Metrics>) -> Result<Self, TlsError> {
        let spki = match key.public_key() {
            PublicKey::P256(point) => p256_spki(point),
            PublicKey::Rsa { .. } => return Err(TlsError::KeyType(key.label().to_owned())),
        };
        Ok(Self { key, spki, metrics })
    }

    pub fn spki(&self) -> &[u8] {
        &self.spki
    }
}

impl rustls::sign::SigningKey for HsmTlsKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn rustls::sign::Signer>> {
        offered
            .contains(&SignatureScheme::ECDSA_NISTP256_SHA256)
            .then(|| Box::new(HsmTlsSigner(self.clone())) as Box<dyn rustls::sign::Signer>)
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(self.spki.as_slice()))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ECDSA
    }
}

#[derive(Debug)]
struct HsmTlsSigner(HsmTlsKey);

impl rustls::sign::Signer for HsmTlsSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let start = Instant::now();
        let run = || {
            self.0
                .key
                .sign_blocking(SignMechanism::EcdsaSha256, message)
        };
        // On a multi-thread runtime, hand this worker's other tasks to another
        // thread while the HSM works; elsewhere just wait.
        let result = match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(run)
            }
            _ => run(),
        };
        if let Some(m) = &self.0.metrics {
            let outcome = match &result {
                Ok(_) => "ok",
                Err(keyward_kms::KmsError::Busy) => "busy",
                Err(_) => "error",
            };
            m.observe_hsm("tls_handshake_sign", outcome, start.elapsed());
        }
        result.map_err(|e| {
            tracing::error!(error = %e, "TLS handshake signature in the HSM failed");
            rustls::Error::General(format!("HSM signature failed ({})", e.code()))
        })
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ECDSA_NISTP256_SHA256
    }
}

/// What does not change while serving: the server's chain and key, and the
/// trust anchor for clients.
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    /// Leaf first, then the issuing CA.
    pub chain: Vec<CertificateDer<'static>>,
    pub key: HsmTlsKey,
    pub client_root: CertificateDer<'static>,
}

/// The CRL a config was built with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlInUse {
    pub number: i64,
    pub this_update_ms: i64,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A listener's TLS session store: `entries` sessions (none: resumption
/// off).
pub fn session_store(entries: usize) -> Arc<dyn StoresServerSessions> {
    if entries == 0 {
        Arc::new(NoServerSessionStorage {})
    } else {
        ServerSessionMemoryCache::new(entries)
    }
}

/// One listener's `ServerConfig`, resuming sessions from `sessions`.
pub fn server_config(
    material: &TlsMaterial,
    crl: &CertificateRevocationListDer<'static>,
    listener: Listener,
    sessions: &Arc<dyn StoresServerSessions>,
) -> Result<ServerConfig, TlsError> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    roots.add(material.client_root.clone())?;
    let mut verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .with_crls([crl.clone()])
            .only_check_end_entity_revocation();
    if listener == Listener::Admin {
        verifier = verifier.allow_unauthenticated();
    }
    let certified = CertifiedKey::new(material.chain.clone(), Arc::new(material.key.clone()));
    certified.keys_match()?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier.build()?)
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(certified)));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    cfg.session_storage = sessions.clone();
    // One ticket per connection: a reconnecting client uses one and gets
    // one, so a fleet fills the store once, not twice.
    cfg.send_tls13_tickets = usize::from(sessions.can_cache());
    Ok(cfg)
}

/// The configs in force, swapped when the CRL changes.
#[derive(Debug)]
pub struct TlsState {
    material: TlsMaterial,
    public: ArcSwap<ServerConfig>,
    admin: ArcSwap<ServerConfig>,
    /// Each listener's sessions, the same store across CRL changes.
    sessions: [Arc<dyn StoresServerSessions>; 2],
    crl: Mutex<CrlInUse>,
}

impl TlsState {
    /// `session_entries`: each listener's TLS session store
    /// (`server.tls_session_cache_entries`).
    pub fn new(
        material: TlsMaterial,
        crl_der: CertificateRevocationListDer<'static>,
        crl: CrlInUse,
        session_entries: usize,
    ) -> Result<Self, TlsError> {
        let sessions = [
            session_store(session_entries),
            session_store(session_entries),
        ];
        let [public, admin] = Self::configs(&material, &crl_der, &sessions)?;
        Ok(Self {
            public: ArcSwap::from_pointee(public),
            admin: ArcSwap::from_pointee(admin),
            material,
            sessions,
            crl: Mutex::new(crl),
        })
    }

    /// Both listeners' configs (public, admin) for `crl_der`.
    fn configs(
        material: &TlsMaterial,
        crl_der: &CertificateRevocationListDer<'static>,
        sessions: &[Arc<dyn StoresServerSessions>; 2],
    ) -> Result<[ServerConfig; 2], TlsError> {
        let [public, admin] = sessions;
        Ok([
            server_config(material, crl_der, Listener::Public, public)?,
            server_config(material, crl_der, Listener::Admin, admin)?,
        ])
    }

    /// The config new connections on `listener` get.
    pub fn config(&self, listener: Listener) -> Arc<ServerConfig> {
        match listener {
            Listener::Public => self.public.load_full(),
            Listener::Admin => self.admin.load_full(),
        }
    }

    /// The CRL in force.
    pub fn crl(&self) -> CrlInUse {
        self.crl.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Rebuilds both configs with `crl_der` unless it is the one in force.
    /// Returns whether anything changed.
    pub fn update_crl(
        &self,
        crl_der: CertificateRevocationListDer<'static>,
        info: CrlInUse,
    ) -> Result<bool, TlsError> {
        let mut current = self.crl.lock().unwrap_or_else(|p| p.into_inner());
        if *current == info {
            return Ok(false);
        }
        // Build both before swapping either: a failure changes nothing.
        let [public, admin] = Self::configs(&self.material, &crl_der, &self.sessions)?;
        self.public.store(Arc::new(public));
        self.admin.store(Arc::new(admin));
        *current = info;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_store_of_no_entries_resumes_nothing() {
        assert!(!session_store(0).can_cache());
        let store = session_store(1);
        assert!(store.put(vec![1], vec![2]));
        assert!(store.put(vec![3], vec![4]));
        assert_eq!(store.get(&[3]), Some(vec![4]));
        assert_eq!(store.get(&[1]), None, "beyond its size, the oldest goes");
    }

    #[test]
    fn p256_spki_is_91_bytes_of_der() {
        let spki = p256_spki(&[4u8; 65]);
        assert_eq!(spki.len(), 91);
        assert_eq!(spki[0], 0x30);
        assert_eq!(usize::from(spki[1]) + 2, spki.len());
        use x509_parser::prelude::FromDer;
        let (rest, parsed) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&spki).unwrap();
        assert!(rest.is_empty());
        assert_eq!(parsed.subject_public_key.data.len(), 65);
    }
}
