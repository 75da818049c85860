//! Issuance: a certificate for a verified CSR's key or an HSM public key,
//! under a profile, signed by the issuing CA key and self-checked before it
//! is registered and handed out.

use keyward_kms::db::Tx;
use keyward_kms::hsm::PublicKey;
use rcgen::{CertificateParams, Issuer, SerialNumber};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::{BACKDATE, Ca, blocking, from_ms, ms, now_s};
use crate::csr::VerifiedCsr;
use crate::error::{CaError, Result};
use crate::hsm_key::SubjectKey;
use crate::profile::{self, IssueRequest, Profile, Role};
use crate::registry::Serial;
use crate::store::{NewCert, Store};

/// Attempts to find an unused serial (a clash of 127-bit random serials
/// means a broken RNG, not bad luck).
const SERIAL_ATTEMPTS: usize = 4;

/// A certificate signed but not yet registered ([`Ca::sign_from_csr`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCert {
    pub cert: IssuedCert,
    device_id: Option<String>,
    role: Option<Role>,
}

impl SignedCert {
    /// The registry row it becomes.
    fn record(&self) -> NewCert<'_> {
        let c = &self.cert;
        NewCert {
            serial: &c.serial,
            profile: c.profile,
            subject: &c.subject,
            device_id: self.device_id.clone(),
            role: self.role,
            not_before_ms: c.not_before_ms,
            not_after_ms: c.not_after_ms,
            pem: &c.pem,
        }
    }
}

/// A certificate just issued (and registered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    pub serial: Serial,
    pub profile: Profile,
    pub subject: String,
    pub der: Vec<u8>,
    pub pem: String,
    pub not_before_ms: i64,
    pub not_after_ms: i64,
}

impl Ca {
    /// Issues a certificate for the key of a CSR (DER or PEM) under
    /// `req.profile`. The CSR's signature must verify; everything else it
    /// asks for (subject, CA flag, key usages, EKUs, SANs) is ignored.
    pub async fn issue_from_csr(&self, csr: &[u8], req: IssueRequest) -> Result<IssuedCert> {
        let csr = VerifiedCsr::parse(csr)?;
        self.issue_from_verified_csr(&csr, req).await
    }

    /// Issues a certificate for a CSR already parsed and verified (by
    /// [`VerifiedCsr::parse`]), so that a caller that checked it first does not
    /// have it checked again.
    pub async fn issue_from_verified_csr(
        &self,
        csr: &VerifiedCsr,
        req: IssueRequest,
    ) -> Result<IssuedCert> {
        self.issue(csr.key().clone(), req).await
    }

    /// Issues a certificate for a key that has no CSR: an HSM key pair (the
    /// server's TLS key, the load-permit key), by its kms public key.
    pub async fn issue_for_public_key(
        &self,
        public: &PublicKey,
        req: IssueRequest,
    ) -> Result<IssuedCert> {
        let key = SubjectKey::from_kms(public)?;
        self.issue(key, req).await
    }

    /// Signs a certificate for the key of a CSR (DER or PEM) without
    /// registering it: HSM work, done before the transaction that registers
    /// it ([`Ca::register_in`]) with its audit record opens. A signed
    /// certificate that is never registered is never handed out.
    pub async fn sign_from_csr(&self, csr: &[u8], req: IssueRequest) -> Result<SignedCert> {
        let csr = VerifiedCsr::parse(csr)?;
        self.sign_from_verified_csr(&csr, req).await
    }

    /// [`Ca::sign_from_csr`] for a CSR already parsed and verified.
    pub async fn sign_from_verified_csr(
        &self,
        csr: &VerifiedCsr,
        req: IssueRequest,
    ) -> Result<SignedCert> {
        self.sign(csr.key().clone(), req).await
    }

    /// Registers a certificate [`Ca::sign_from_csr`] signed, in the caller's
    /// transaction; from its commit on it is issued. A serial taken since it
    /// was signed (a clash of random serials: a broken RNG) is refused.
    pub async fn register_in(tx: &mut Tx, signed: &SignedCert) -> Result<()> {
        let c = &signed.cert;
        match Store::insert_certificate_in(tx, &signed.record()).await {
            Ok(()) => {
                tracing::info!(serial = %c.serial, profile = %c.profile, subject = %c.subject,
                    "certificate issued");
                Ok(())
            }
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                Err(CaError::CorruptRecord("certificates.serial"))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn issue(&self, key: SubjectKey, req: IssueRequest) -> Result<IssuedCert> {
        for _ in 0..SERIAL_ATTEMPTS {
            let signed = self.sign(key.clone(), req.clone()).await?;
            let c = &signed.cert;
            if self
                .inner
                .store
                .insert_certificate(&signed.record())
                .await?
            {
                tracing::info!(
                    serial = %c.serial,
                    profile = %c.profile,
                    subject = %c.subject,
                    "certificate issued"
                );
                return Ok(signed.cert);
            }
        }
        Err(CaError::CorruptRecord("certificates.serial"))
    }

    /// Signs a certificate under a serial not yet registered.
    async fn sign(&self, key: SubjectKey, req: IssueRequest) -> Result<SignedCert> {
        let inner = &self.inner;
        let (mut params, facts) = profile::params_for(&req, &key, &inner.cfg.organization)?;
        let now = now_s();
        let ca_end = from_ms(inner.issuing.not_after_ms)?;
        if now >= ca_end {
            return Err(CaError::CaExpired);
        }
        let days = i64::from(req.profile.validity_days(&inner.cfg));
        params.not_before = now - BACKDATE;
        params.not_after = (now + time::Duration::days(days)).min(ca_end);

        for _ in 0..SERIAL_ATTEMPTS {
            let serial = Serial::random();
            if inner.store.serial_taken(&serial).await? {
                continue;
            }
            params.serial_number = Some(SerialNumber::from_slice(&serial.to_bytes()));
            let (der, pem, subject) = self.sign_leaf(params.clone(), key).await?;
            return Ok(SignedCert {
                cert: IssuedCert {
                    serial,
                    profile: req.profile,
                    subject,
                    der,
                    pem,
                    not_before_ms: ms(params.not_before),
                    not_after_ms: ms(params.not_after),
                },
                device_id: facts.device_id.map(|d| d.to_string()),
                role: facts.role,
            });
        }
        Err(CaError::CorruptRecord("certificates.serial"))
    }

    /// Signs a leaf with the issuing CA key and checks the result before it
    /// is handed out: signature under the issuing CA key, the subject key
    /// that was asked for, and no CA flag.
    async fn sign_leaf(
        &self,
        params: CertificateParams,
        subject_key: SubjectKey,
    ) -> Result<(Vec<u8>, String, String)> {
        let ca_der = self.inner.issuing.der.clone();
        let key = self.inner.issuing.key.for_operation();
        blocking(move || {
            let issuer = Issuer::from_ca_cert_der(&ca_der.as_slice().into(), key.clone())
                .map_err(CaError::Encoding)?;
            let cert = params
                .signed_by(&subject_key, &issuer)
                .map_err(|e| key.rcgen_error(e))?;
            let der = cert.der().to_vec();
            let subject = check_leaf(&der, &key.public().spki_der(), &subject_key.spki_der())?;
            Ok((der, cert.pem(), subject))
        })
        .await
    }
}

/// A freshly signed leaf must verify under the issuing key, carry the subject
/// key asked for, and not be a CA. Returns its subject as text.
fn check_leaf(der: &[u8], issuer_spki: &[u8], subject_spki: &[u8]) -> Result<String> {
    let bad = || CaError::SelfCheck("certificate");
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| bad())?;
    let (_, spki) = SubjectPublicKeyInfo::from_der(issuer_spki).map_err(|_| bad())?;
    cert.verify_signature(Some(&spki)).map_err(|_| bad())?;
    if cert.public_key().raw != subject_spki || cert.is_ca() {
        return Err(bad());
    }
    Ok(cert.subject().to_string())
}
