//! The certificate authority as provisioning sees it: a small, object-safe
//! trait ([`DeviceCertifier`]) so the pipeline does not care how the CA is
//! reached, and its implementation for the Keyward CA ([`keyward_ca::Ca`]).
//!
//! A CSR is parsed and its signature verified once, by
//! [`DeviceCertifier::check_csr`], which returns a [`DeviceCsr`]; certifying
//! takes that value back, so neither provisioning nor the CA parses the CSR
//! again. A freshly issued certificate is verified once, by the CA's own
//! self-check before it hands it out.
//!
//! The implementation for [`keyward_ca::Ca`] does more than forward: a
//! certificate handed back by [`DeviceCertifier::certificate`] has been
//! re-parsed from the CA registry and checked to be a device certificate for
//! that device, signed by the issuing CA, inside its validity period and not
//! revoked; only then is its public key returned.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;

use keyward_ca::{
    CaError, CertFilter, CertStatus, IssueRequest, Profile, RevocationReason, Serial, SignedCert,
    VerifiedCsr,
};
use keyward_kms::db::Tx;
use keyward_kms::hsm::PublicKey;
use keyward_kms::types::DeviceId;
use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey as ParsedKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::error::{CertifierError, ErrorKind};

/// A boxed future, so the trait stays object safe (`Arc<dyn DeviceCertifier>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The kinds of device key provisioning accepts: what the init package can
/// wrap to (docs/protocol.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceKeyKind {
    /// ECDSA P-256.
    P256,
    /// RSA, 2048 bits or more.
    Rsa,
}

impl DeviceKeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::P256 => "p256",
            Self::Rsa => "rsa",
        }
    }
}

impl FromStr for DeviceKeyKind {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "p256" => Ok(Self::P256),
            "rsa" => Ok(Self::Rsa),
            _ => Err(()),
        }
    }
}

/// A device's CSR, checked once: its self-signature verified and its key one
/// a device may hold. Only [`DeviceCsr::new`] (from a [`VerifiedCsr`]) makes
/// one, so holding it means both checks were done.
#[derive(Debug, Clone)]
pub struct DeviceCsr {
    csr: VerifiedCsr,
    kind: DeviceKeyKind,
    public_key: PublicKey,
    spki_sha256: String,
    subject_serial_numbers: Vec<Option<String>>,
}

impl DeviceCsr {
    /// Accepts a verified CSR whose key a device may hold (P-256, or RSA of
    /// 2048 bits or more: what the init package can wrap to).
    pub fn new(csr: VerifiedCsr) -> Result<Self, CertifierError> {
        let spki = csr.key().spki_der();
        let (_, parsed) = SubjectPublicKeyInfo::from_der(&spki)
            .map_err(|_| refuse("csr_invalid", "subject public key does not parse"))?;
        let (kind, public_key) = public_key(&parsed)?;
        let spki_sha256 = hex::encode_upper(<sha2::Sha256 as sha2::Digest>::digest(&spki));
        Ok(Self {
            csr,
            kind,
            public_key,
            spki_sha256,
            subject_serial_numbers: Vec::new(),
        })
    }

    /// Records the serialNumber attributes of the CSR's subject (`None` for
    /// one that is not a string), for [`Self::names_only`].
    pub fn with_subject_serial_numbers(mut self, values: Vec<Option<String>>) -> Self {
        self.subject_serial_numbers = values;
        self
    }

    /// Whether every serialNumber in the CSR's subject, if there is any, is
    /// `device` (a CSR without one names no device and is fine).
    pub fn names_only(&self, device: DeviceId) -> bool {
        let want = device.to_string();
        self.subject_serial_numbers
            .iter()
            .all(|v| v.as_deref().is_some_and(|s| s.eq_ignore_ascii_case(&want)))
    }

    /// SHA-256 of the key's SubjectPublicKeyInfo DER, upper-case hex: what
    /// makes "one key, one device, ever" checkable.
    pub fn spki_sha256(&self) -> &str {
        &self.spki_sha256
    }

    /// The verified request, for the CA.
    pub fn verified(&self) -> &VerifiedCsr {
        &self.csr
    }

    pub fn key_kind(&self) -> DeviceKeyKind {
        self.kind
    }

    /// The device's public key in kms form (what the certificate will carry).
    pub fn public_key(&self) -> &PublicKey {
        &self.public_key
    }
}

/// A device certificate, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCertificate {
    /// Upper-case hex.
    pub serial: String,
    pub public_key: PublicKey,
    pub not_after_ms: i64,
}

impl DeviceCertificate {
    /// The certificate the CA made for a checked CSR's key.
    fn issued(cert: &keyward_ca::IssuedCert, csr: &DeviceCsr) -> Self {
        Self {
            serial: cert.serial.to_string(),
            public_key: csr.public_key().clone(),
            not_after_ms: cert.not_after_ms,
        }
    }
}

/// What the CA says about a device's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateStatus {
    /// Issued by the CA for this device, chains to it, in validity, not revoked.
    Good(DeviceCertificate),
    Revoked,
    /// The CA never issued this serial.
    Unknown,
    /// Issued, but not acceptable (expired, another device's, does not chain).
    Invalid(&'static str),
}

/// Why provisioning revokes a device certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevokeReason {
    /// The device was retired.
    Retired,
    /// The certificate was issued by an import that did not complete; the
    /// device was never registered.
    ImportAborted,
    /// The device was re-certified: a newer certificate replaces this one.
    Superseded,
}

/// A device certificate signed, not yet registered
/// ([`DeviceCertifier::sign`]).
#[derive(Debug, Clone)]
pub struct SignedDeviceCertificate {
    pub certificate: DeviceCertificate,
    signed: SignedCert,
}

/// The certificate authority behind provisioning.
pub trait DeviceCertifier: Send + Sync + fmt::Debug {
    /// Verifies a CSR (DER or PEM) — its self-signature and that its key is
    /// one a device may hold — without issuing anything.
    fn check_csr(&self, csr: &[u8]) -> Result<DeviceCsr, CertifierError>;

    /// Issues the device certificate for a checked CSR's key (subject serial
    /// number = the device id).
    fn certify<'a>(
        &'a self,
        csr: &'a DeviceCsr,
        device: DeviceId,
    ) -> BoxFuture<'a, Result<DeviceCertificate, CertifierError>>;

    /// Signs the device certificate for a checked CSR's key without
    /// recording it: HSM work, before the transaction in which
    /// [`DeviceCertifier::register_in`] makes it issued. A signed
    /// certificate never registered is never handed out.
    fn sign<'a>(
        &'a self,
        csr: &'a DeviceCsr,
        device: DeviceId,
    ) -> BoxFuture<'a, Result<SignedDeviceCertificate, CertifierError>>;

    /// Records a certificate [`DeviceCertifier::sign`] made, in the caller's
    /// transaction: from its commit on it is issued.
    fn register_in<'a>(
        &'a self,
        tx: &'a mut Tx,
        signed: &'a SignedDeviceCertificate,
    ) -> BoxFuture<'a, Result<(), CertifierError>>;

    /// The certificate `serial`, checked for `device`.
    fn certificate<'a>(
        &'a self,
        serial: &'a str,
        device: DeviceId,
    ) -> BoxFuture<'a, Result<CertificateStatus, CertifierError>>;

    /// Revokes `serial` for good. Revoking an already revoked certificate
    /// succeeds (retries are safe).
    fn revoke<'a>(
        &'a self,
        serial: &'a str,
        reason: RevokeReason,
    ) -> BoxFuture<'a, Result<(), CertifierError>>;

    /// [`DeviceCertifier::revoke`] in the caller's transaction, for a step
    /// that commits the revocation with rows of its own: no HSM work (the
    /// CRL is re-signed after the commit, or by the next refresh). Whether
    /// this call revoked it (false: it was already revoked).
    fn revoke_in<'a>(
        &'a self,
        tx: &'a mut Tx,
        serial: &'a str,
        reason: RevokeReason,
    ) -> BoxFuture<'a, Result<bool, CertifierError>>;

    /// Revokes every one of `serials` for good (already revoked ones are
    /// skipped) and returns how many this call revoked. The CA behind it
    /// re-signs its CRL once, not once per certificate: undoing an import
    /// revokes hundreds.
    fn revoke_all<'a>(
        &'a self,
        serials: &'a [String],
        reason: RevokeReason,
    ) -> BoxFuture<'a, Result<usize, CertifierError>> {
        Box::pin(async move {
            for serial in serials {
                self.revoke(serial, reason).await?;
            }
            Ok(serials.len())
        })
    }

    /// Serials of every device certificate of `device` that is not revoked
    /// (retiring, locking and re-certifying revoke them all).
    fn valid_certificates<'a>(
        &'a self,
        device: DeviceId,
    ) -> BoxFuture<'a, Result<Vec<String>, CertifierError>>;
}

fn refuse(code: &'static str, reason: &'static str) -> CertifierError {
    CertifierError::new(code, ErrorKind::Invalid, reason)
}

impl DeviceCertifier for keyward_ca::Ca {
    fn check_csr(&self, csr: &[u8]) -> Result<DeviceCsr, CertifierError> {
        let checked = DeviceCsr::new(VerifiedCsr::parse(csr)?)?;
        Ok(checked.with_subject_serial_numbers(subject_serial_numbers(csr)?))
    }

    fn certify<'a>(
        &'a self,
        csr: &'a DeviceCsr,
        device: DeviceId,
    ) -> BoxFuture<'a, Result<DeviceCertificate, CertifierError>> {
        Box::pin(async move {
            // The CA self-checks the certificate before handing it out (its
            // signature under the issuing key, the CSR's key, no CA flag), and
            // its device profile puts the device id in the subject: the key
            // it certifies is the one the CSR check returned.
            let cert = self
                .issue_from_verified_csr(csr.verified(), IssueRequest::device(device))
                .await?;
            Ok(DeviceCertificate::issued(&cert, csr))
        })
    }

    fn sign<'a>(
        &'a self,
        csr: &'a DeviceCsr,
        device: DeviceId,
    ) -> BoxFuture<'a, Result<SignedDeviceCertificate, CertifierError>> {
        Box::pin(async move {
            let signed = self
                .sign_from_verified_csr(csr.verified(), IssueRequest::device(device))
                .await?;
            Ok(SignedDeviceCertificate {
                certificate: DeviceCertificate::issued(&signed.cert, csr),
                signed,
            })
        })
    }

    fn register_in<'a>(
        &'a self,
        tx: &'a mut Tx,
        signed: &'a SignedDeviceCertificate,
    ) -> BoxFuture<'a, Result<(), CertifierError>> {
        Box::pin(async move { Ok(keyward_ca::Ca::register_in(tx, &signed.signed).await?) })
    }

    fn certificate<'a>(
        &'a self,
        serial: &'a str,
        device: DeviceId,
    ) -> BoxFuture<'a, Result<CertificateStatus, CertifierError>> {
        Box::pin(async move {
            let Ok(serial) = Serial::from_str(serial) else {
                return Ok(CertificateStatus::Unknown);
            };
            let Some(rec) = self.get(&serial).await? else {
                return Ok(CertificateStatus::Unknown);
            };
            if rec.status == CertStatus::Revoked {
                return Ok(CertificateStatus::Revoked);
            }
            if rec.profile != Profile::Device || rec.device_id != Some(device) {
                return Ok(CertificateStatus::Invalid("not this device's certificate"));
            }
            let der = match x509_parser::pem::parse_x509_pem(rec.pem.as_bytes()) {
                Ok((_, pem)) => pem.contents,
                Err(_) => {
                    return Ok(CertificateStatus::Invalid(
                        "stored certificate does not parse",
                    ));
                }
            };
            match parse_checked(self, &der, device) {
                Ok((not_after_ms, public_key)) => Ok(CertificateStatus::Good(DeviceCertificate {
                    serial: rec.serial.to_string(),
                    public_key,
                    not_after_ms,
                })),
                Err(e) if e.is_client_error() => Ok(CertificateStatus::Invalid(reason_of(&e))),
                Err(e) => Err(e),
            }
        })
    }

    fn revoke<'a>(
        &'a self,
        serial: &'a str,
        reason: RevokeReason,
    ) -> BoxFuture<'a, Result<(), CertifierError>> {
        Box::pin(async move {
            let serial = Serial::from_str(serial)?;
            match keyward_ca::Ca::revoke(self, &serial, ca_reason(reason)).await {
                Ok(()) | Err(CaError::AlreadyRevoked(_)) => Ok(()),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn revoke_in<'a>(
        &'a self,
        tx: &'a mut Tx,
        serial: &'a str,
        reason: RevokeReason,
    ) -> BoxFuture<'a, Result<bool, CertifierError>> {
        Box::pin(async move {
            let serial = Serial::from_str(serial)?;
            let at = keyward_ca::Ca::revocation_time_ms();
            match keyward_ca::Ca::revoke_in(tx, &serial, ca_reason(reason), at).await {
                Ok(()) => Ok(true),
                Err(CaError::AlreadyRevoked(_)) => Ok(false),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn revoke_all<'a>(
        &'a self,
        serials: &'a [String],
        reason: RevokeReason,
    ) -> BoxFuture<'a, Result<usize, CertifierError>> {
        Box::pin(async move {
            let serials = serials
                .iter()
                .map(|s| Serial::from_str(s))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(keyward_ca::Ca::revoke_all(self, &serials, ca_reason(reason)).await?)
        })
    }

    fn valid_certificates<'a>(
        &'a self,
        device: DeviceId,
    ) -> BoxFuture<'a, Result<Vec<String>, CertifierError>> {
        Box::pin(valid_device_serials(self, device))
    }
}

/// The CRL reason provisioning's reasons are published under.
fn ca_reason(reason: RevokeReason) -> RevocationReason {
    match reason {
        RevokeReason::Retired => RevocationReason::CessationOfOperation,
        RevokeReason::ImportAborted | RevokeReason::Superseded => RevocationReason::Superseded,
    }
}

/// Every valid device certificate of `device`, newest first, by pages.
async fn valid_device_serials(
    ca: &keyward_ca::Ca,
    device: DeviceId,
) -> Result<Vec<String>, CertifierError> {
    const PAGE: u32 = 1000;
    let mut out = Vec::new();
    for page in 0u32.. {
        let filter = CertFilter {
            profile: Some(Profile::Device),
            status: Some(CertStatus::Valid),
            device_id: Some(device),
            limit: Some(PAGE),
            offset: Some(page.saturating_mul(PAGE)),
        };
        let records = ca.list(&filter).await?;
        let n = records.len();
        out.extend(records.into_iter().map(|r| r.serial.to_string()));
        if n < PAGE as usize {
            break;
        }
    }
    Ok(out)
}

/// The serialNumber attributes of a CSR's subject (`None` for one that is
/// not a string). The CSR's signature was verified by the caller.
fn subject_serial_numbers(input: &[u8]) -> Result<Vec<Option<String>>, CertifierError> {
    let bad = || refuse("csr_invalid", "not a PKCS#10 request");
    let pem_der;
    let der = if input.trim_ascii_start().starts_with(b"-----BEGIN ") {
        let (_, pem) = x509_parser::pem::parse_x509_pem(input).map_err(|_| bad())?;
        pem_der = pem.contents;
        &pem_der[..]
    } else {
        input
    };
    let (_, csr) = X509CertificationRequest::from_der(der).map_err(|_| bad())?;
    Ok(csr
        .certification_request_info
        .subject
        .iter_by_oid(&x509_parser::oid_registry::OID_X509_SERIALNUMBER)
        .map(|a| a.as_str().ok().map(str::to_owned))
        .collect())
}

/// Reasons [`parse_checked`] gives, recovered for [`CertificateStatus::Invalid`].
fn reason_of(e: &CertifierError) -> &'static str {
    match e.code() {
        "certificate_expired" => "outside its validity period",
        "certificate_chain" => "does not chain to the issuing CA",
        "certificate_subject" => "subject is not the device id",
        _ => "does not parse",
    }
}

/// Parses a device certificate and checks it against the issuing CA: its
/// signature, issuer name, validity now, and the device id in the subject's
/// serialNumber. Returns notAfter (ms) and the subject key.
fn parse_checked(
    ca: &keyward_ca::Ca,
    der: &[u8],
    device: DeviceId,
) -> Result<(i64, PublicKey), CertifierError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|_| refuse("certificate_parse", "device certificate does not parse"))?;
    let (_, issuing) = X509Certificate::from_der(ca.issuing_der()).map_err(|_| {
        CertifierError::new(
            "ca_key_mismatch",
            ErrorKind::Internal,
            "issuing CA certificate does not parse",
        )
    })?;
    if cert.issuer() != issuing.subject()
        || cert.verify_signature(Some(issuing.public_key())).is_err()
    {
        return Err(refuse("certificate_chain", "not signed by the issuing CA"));
    }
    if !cert.validity().is_valid() {
        return Err(refuse("certificate_expired", "outside its validity period"));
    }
    let want = device.to_string();
    let subject_ok = cert
        .subject()
        .iter_by_oid(&x509_parser::oid_registry::OID_X509_SERIALNUMBER)
        .any(|a| a.as_str().is_ok_and(|s| s.eq_ignore_ascii_case(&want)));
    if !subject_ok {
        return Err(refuse(
            "certificate_subject",
            "subject serialNumber is not the device id",
        ));
    }
    let not_after_ms = cert.validity().not_after.timestamp().saturating_mul(1000);
    let (_, key) = public_key(cert.public_key())?;
    Ok((not_after_ms, key))
}

/// The kms form of a device's public key: a P-256 point or an RSA key of at
/// least 2048 bits; anything else is refused.
fn public_key(
    spki: &SubjectPublicKeyInfo<'_>,
) -> Result<(DeviceKeyKind, PublicKey), CertifierError> {
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        let point = spki.subject_public_key.data.to_vec();
        if curve.as_ref() != Some(&OID_EC_P256) || point.len() != 65 || point[0] != 0x04 {
            return Err(refuse(
                "unsupported_key",
                "device EC keys must be uncompressed P-256 points",
            ));
        }
        Ok((DeviceKeyKind::P256, PublicKey::P256(point)))
    } else if *alg == OID_PKCS1_RSAENCRYPTION {
        let Ok(ParsedKey::RSA(rsa)) = spki.parsed() else {
            return Err(refuse("unsupported_key", "malformed RSA public key"));
        };
        let strip = |b: &[u8]| {
            let start = b.iter().position(|x| *x != 0).unwrap_or(b.len());
            b[start..].to_vec()
        };
        let modulus = strip(rsa.modulus);
        if modulus.len() * 8 < keyward_kms::wrap::MIN_RSA_BITS {
            return Err(refuse(
                "unsupported_key",
                "device RSA keys need 2048 bits or more",
            ));
        }
        Ok((
            DeviceKeyKind::Rsa,
            PublicKey::Rsa {
                modulus,
                exponent: strip(rsa.exponent),
            },
        ))
    } else {
        Err(refuse("unsupported_key", "device keys are P-256 or RSA"))
    }
}
