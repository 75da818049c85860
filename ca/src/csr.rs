//! Reading a certificate signing request: DER or PEM, its self-signature
//! verified, and only its subject public key kept. Everything else the CSR
//! asks for (subject, CA flag, key usages, EKUs, SANs, validity) is ignored:
//! the profile decides (docs/stack-notes.md §11.8).
//!
//! The check is x509-parser's `verify_signature`, the same call rcgen's
//! `CertificateSigningRequestParams::from_der` makes; rcgen's parser is not
//! used because it refuses any requested extension beyond SAN/KU/EKU/BC
//! (e.g. the subjectKeyIdentifier OpenSSL adds), and what it would copy out of
//! the request is exactly what the CA must not trust.

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey as ParsedKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::error::{CaError, Result};
use crate::hsm_key::{SubjectKey, bit_len};

/// Largest CSR accepted, DER or PEM (an RSA-8192 CSR is about 2.2 KiB DER).
const MAX_CSR_LEN: usize = 16 * 1024;

/// A certificate signing request whose self-signature verified, reduced to
/// the key to certify. Only [`VerifiedCsr::parse`] makes one, so holding it
/// means the check was done: callers pass it along (to
/// [`crate::Ca::issue_from_verified_csr`]) instead of the bytes, and no CSR is
/// parsed or verified twice.
#[derive(Debug, Clone)]
pub struct VerifiedCsr {
    key: SubjectKey,
}

impl VerifiedCsr {
    /// Parses a CSR (DER, or PEM `CERTIFICATE REQUEST`) and verifies its
    /// signature.
    pub fn parse(input: &[u8]) -> Result<Self> {
        verified_csr_key(input).map(|key| Self { key })
    }

    /// The key to certify.
    pub fn key(&self) -> &SubjectKey {
        &self.key
    }
}

/// Parses a CSR (DER, or PEM `CERTIFICATE REQUEST`), verifies its signature
/// and returns the key to certify.
fn verified_csr_key(input: &[u8]) -> Result<SubjectKey> {
    if input.len() > MAX_CSR_LEN {
        return Err(CaError::CsrInvalid("larger than 16 KiB"));
    }
    let pem_der;
    let der = if looks_like_pem(input) {
        let (_, pem) =
            x509_parser::pem::parse_x509_pem(input).map_err(|_| CaError::CsrInvalid("bad PEM"))?;
        if pem.label != "CERTIFICATE REQUEST" && pem.label != "NEW CERTIFICATE REQUEST" {
            return Err(CaError::CsrInvalid("PEM label is not CERTIFICATE REQUEST"));
        }
        pem_der = pem.contents;
        &pem_der[..]
    } else {
        input
    };
    let (rest, csr) = X509CertificationRequest::from_der(der)
        .map_err(|_| CaError::CsrInvalid("not a PKCS#10 request"))?;
    if !rest.is_empty() {
        return Err(CaError::CsrInvalid("trailing bytes after the request"));
    }
    // Refuse unsupported key types first: x509-parser cannot verify them
    // either, and "unsupported key" is the more useful answer.
    let key = subject_key(&csr.certification_request_info.subject_pki)?;
    csr.verify_signature().map_err(|_| CaError::CsrSignature)?;
    Ok(key)
}

fn looks_like_pem(input: &[u8]) -> bool {
    let start = input
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(input.len());
    input[start..].starts_with(b"-----BEGIN ")
}

/// The key of a `SubjectPublicKeyInfo`, if it is one the CA certifies:
/// P-256 or P-384 (uncompressed), or RSA with 2048 to 8192 bits.
pub(crate) fn subject_key(spki: &SubjectPublicKeyInfo<'_>) -> Result<SubjectKey> {
    let raw = spki.subject_public_key.data.to_vec();
    if spki.algorithm.algorithm == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(ParsedKey::RSA(rsa)) => bit_len(rsa.modulus),
            _ => return Err(CaError::CsrInvalid("malformed RSA public key")),
        };
        SubjectKey::rsa(raw, bits)
    } else if spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        match curve {
            Some(c) if c == OID_EC_P256 => SubjectKey::ec(raw, &rcgen::PKCS_ECDSA_P256_SHA256, 65),
            Some(c) if c == OID_NIST_EC_P384 => {
                SubjectKey::ec(raw, &rcgen::PKCS_ECDSA_P384_SHA384, 97)
            }
            _ => Err(CaError::UnsupportedKey("EC keys must be on P-256 or P-384")),
        }
    } else {
        Err(CaError::UnsupportedKey(
            "only RSA and EC (P-256, P-384) keys are certified",
        ))
    }
}
