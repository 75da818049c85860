//! The CA's bodies (docs/admin-api.md "Certificates", "Operators").

use keyward_ca::{CertRecord, IssuedCert};
use serde::{Deserialize, Serialize};

/// `POST /admin/v1/ca/certificates`: certify the key of a CSR.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueRequest {
    /// PKCS#10 request, PEM.
    pub csr_pem: String,
    /// `device`, `server-tls` or `load-permit` (operators: [`OperatorRequest`]).
    pub profile: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_name: Option<String>,
}

/// `POST /admin/v1/operators`: certify a new operator's key with a role.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorRequest {
    /// PKCS#10 request, PEM, made by the new operator (the key stays with them).
    pub csr_pem: String,
    /// The operator's name: the certificate's CN.
    pub name: String,
    /// `admin`, `operator` or `auditor`: the certificate's OU.
    pub role: String,
}

/// `POST /admin/v1/services`: certify a back-end system's key (the
/// transaction switch that verifies MACs in bulk).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRequest {
    /// PKCS#10 request, PEM, made by the service (the key stays with it).
    pub csr_pem: String,
    /// The service's name (`switch-1`): the certificate's CN.
    pub name: String,
}

/// The `201` answer of the issuing routes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Issued {
    pub serial: String,
    pub profile: String,
    pub subject: String,
    pub not_before_ms: i64,
    pub not_after_ms: i64,
    pub certificate_pem: String,
    /// The issuing and root CA certificates, PEM.
    pub chain_pem: String,
}

impl Issued {
    /// The answer for `cert`, with the CA's chain.
    pub fn new(cert: &IssuedCert, chain_pem: &str) -> Self {
        Self {
            serial: cert.serial.as_str().to_owned(),
            profile: cert.profile.as_str().to_owned(),
            subject: cert.subject.clone(),
            not_before_ms: cert.not_before_ms,
            not_after_ms: cert.not_after_ms,
            certificate_pem: cert.pem.clone(),
            chain_pem: chain_pem.to_owned(),
        }
    }
}

/// A registry record (`certificate_pem` only in the single-record answer).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Certificate {
    pub serial: String,
    pub profile: String,
    pub subject: String,
    pub device_id: Option<String>,
    pub role: Option<String>,
    /// `valid`, `revoked` or `expired`.
    pub status: String,
    pub not_before_ms: i64,
    pub not_after_ms: i64,
    pub issued_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_pem: Option<String>,
    /// The chain above it (issuing CA, then root), on the single lookup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain_pem: Option<String>,
}

impl Certificate {
    /// `r` as it travels; its PEM only `with_pem`.
    pub fn new(r: &CertRecord, with_pem: bool) -> Self {
        Self {
            serial: r.serial.as_str().to_owned(),
            profile: r.profile.as_str().to_owned(),
            subject: r.subject.clone(),
            device_id: r.device_id.map(|d| d.to_string()),
            role: r.operator_role.map(|x| x.as_str().to_owned()),
            status: r.status.as_str().to_owned(),
            not_before_ms: r.not_before_ms,
            not_after_ms: r.not_after_ms,
            issued_at_ms: r.issued_at_ms,
            revoked_at_ms: r.revoked_at_ms,
            reason: r.reason.map(|x| x.as_str().to_owned()),
            certificate_pem: with_pem.then(|| r.pem.clone()),
            chain_pem: None,
        }
    }
}

/// `GET /admin/v1/ca/certificates`: newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertificateList {
    pub certificates: Vec<Certificate>,
}

/// `POST /admin/v1/ca/certificates/{serial}/revoke`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// RFC 5280 reason name; default `unspecified`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The answer of a revocation: the CRL both listeners now use.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Revoked {
    pub serial: String,
    pub status: String,
    pub reason: String,
    pub crl_number: i64,
}
