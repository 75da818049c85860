//! rcgen's view of a key pair that lives in the HSM: [`HsmKey`] implements
//! rcgen's `PublicKeyData` and `SigningKey` over a kms `SigningKey`, so rcgen
//! builds the to-be-signed bytes and the HSM signs them. The private key never
//! leaves the token. Also [`SubjectKey`], a public key to be certified (from a
//! CSR or from kms), in the same form.

use std::fmt;
use std::sync::{Arc, Mutex};

use keyward_kms::KmsError;
use keyward_kms::hsm::{PublicKey, SignMechanism};
use keyward_kms::signing::SigningKey as KmsSigningKey;
use rcgen::{PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256, PublicKeyData, SignatureAlgorithm};

use crate::error::{CaError, Result};

/// RSA moduli the CA certifies (and signs with), in bits.
const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=8192;

/// An HSM key pair as an rcgen signer. Cheap to clone; each signing
/// operation takes its own copy (`for_operation`) so that a failure's
/// kms error can be reported instead of rcgen's opaque `RemoteKeyError`.
#[derive(Clone)]
pub struct HsmKey {
    key: KmsSigningKey,
    public: SubjectKey,
    mechanism: SignMechanism,
    last_error: Arc<Mutex<Option<KmsError>>>,
}

impl HsmKey {
    /// Wraps a kms key pair: P-256 signs ECDSA-SHA-256, RSA signs
    /// PKCS#1 v1.5 SHA-256 (rcgen has no RSA-PSS certificate signatures).
    pub fn new(key: KmsSigningKey) -> Result<Self> {
        let public = SubjectKey::from_kms(key.public_key())?;
        let mechanism = match key.public_key() {
            PublicKey::P256(_) => SignMechanism::EcdsaSha256,
            PublicKey::Rsa { .. } => SignMechanism::RsaPkcs1Sha256,
        };
        Ok(Self {
            key,
            public,
            mechanism,
            last_error: Arc::default(),
        })
    }

    /// The HSM label of the key pair.
    pub fn label(&self) -> &str {
        self.key.label()
    }

    /// The public half in certificate form.
    pub fn public(&self) -> &SubjectKey {
        &self.public
    }

    /// The mechanism this key signs with (ECDSA-SHA-256 or PKCS#1 v1.5
    /// SHA-256), for callers that encode the signature algorithm themselves.
    pub(crate) fn mechanism(&self) -> SignMechanism {
        self.mechanism
    }

    /// Signs `data` in the HSM (ECDSA signatures come back DER-encoded).
    pub(crate) async fn sign(&self, data: &[u8]) -> Result<Vec<u8>> {
        self.key
            .sign(self.mechanism, data)
            .await
            .map_err(CaError::Kms)
    }

    /// A copy with its own error slot, for one signing operation.
    pub(crate) fn for_operation(&self) -> Self {
        Self {
            last_error: Arc::default(),
            ..self.clone()
        }
    }

    /// The kms error behind an rcgen `RemoteKeyError`, if this key saw one.
    pub(crate) fn take_error(&self) -> Option<KmsError> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Turns an rcgen failure into a [`CaError`], preferring the HSM's own
    /// error (busy, unavailable, …) when the failure came from signing.
    pub(crate) fn rcgen_error(&self, e: rcgen::Error) -> CaError {
        match (e, self.take_error()) {
            (rcgen::Error::RemoteKeyError, Some(kms)) => CaError::Kms(kms),
            (e, _) => CaError::Encoding(e),
        }
    }
}

impl fmt::Debug for HsmKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HsmKey")
            .field("label", &self.key.label())
            .field("mechanism", &self.mechanism)
            .finish_non_exhaustive()
    }
}

impl PublicKeyData for HsmKey {
    fn der_bytes(&self) -> &[u8] {
        self.public.der_bytes()
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.public.algorithm()
    }
}

impl rcgen::SigningKey for HsmKey {
    fn sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, rcgen::Error> {
        self.key.sign_blocking(self.mechanism, msg).map_err(|e| {
            tracing::warn!(label = %self.key.label(), code = e.code(), "HSM signing for the CA failed");
            *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            rcgen::Error::RemoteKeyError
        })
    }
}

/// A public key to certify, as rcgen writes it into `subjectPublicKeyInfo`:
/// the uncompressed EC point, or the PKCS#1 `RSAPublicKey` DER.
#[derive(Clone, PartialEq, Eq)]
pub struct SubjectKey {
    der: Vec<u8>,
    alg: &'static SignatureAlgorithm,
    rsa: bool,
}

impl SubjectKey {
    /// A kms public key (an HSM key pair: the server's TLS key, the permit
    /// key, the CA keys).
    pub fn from_kms(public: &PublicKey) -> Result<Self> {
        match public {
            PublicKey::P256(point) => Self::ec(point.clone(), &PKCS_ECDSA_P256_SHA256, 65),
            PublicKey::Rsa { modulus, exponent } => {
                Self::rsa(rsa_public_key_der(modulus, exponent), bit_len(modulus))
            }
        }
    }

    pub(crate) fn ec(point: Vec<u8>, alg: &'static SignatureAlgorithm, len: usize) -> Result<Self> {
        if point.len() != len || point.first() != Some(&0x04) {
            return Err(CaError::UnsupportedKey(
                "EC keys must be uncompressed points on their curve",
            ));
        }
        Ok(Self {
            der: point,
            alg,
            rsa: false,
        })
    }

    pub(crate) fn rsa(pkcs1_der: Vec<u8>, bits: usize) -> Result<Self> {
        if !RSA_BITS.contains(&bits) {
            return Err(CaError::UnsupportedKey(
                "RSA keys must have 2048 to 8192 bits",
            ));
        }
        Ok(Self {
            der: pkcs1_der,
            alg: &PKCS_RSA_SHA256,
            rsa: true,
        })
    }

    /// Whether this is an RSA key (server certificates then also allow key
    /// encipherment).
    pub fn is_rsa(&self) -> bool {
        self.rsa
    }

    /// The DER `SubjectPublicKeyInfo`, as it appears in a certificate.
    pub fn spki_der(&self) -> Vec<u8> {
        self.subject_public_key_info()
    }
}

impl fmt::Debug for SubjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubjectKey")
            .field("rsa", &self.rsa)
            .field("len", &self.der.len())
            .finish_non_exhaustive()
    }
}

impl PublicKeyData for SubjectKey {
    fn der_bytes(&self) -> &[u8] {
        &self.der
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

/// Bits of a big-endian unsigned integer.
pub(crate) fn bit_len(be: &[u8]) -> usize {
    let be = strip_zeros(be);
    match be.first() {
        Some(b) => be.len() * 8 - b.leading_zeros() as usize,
        None => 0,
    }
}

fn strip_zeros(be: &[u8]) -> &[u8] {
    let start = be.iter().position(|b| *b != 0).unwrap_or(be.len());
    &be[start..]
}

/// `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }`.
pub(crate) fn rsa_public_key_der(modulus: &[u8], exponent: &[u8]) -> Vec<u8> {
    let mut body = der_unsigned_integer(modulus);
    body.extend(der_unsigned_integer(exponent));
    let mut out = vec![0x30];
    out.extend(der_length(body.len()));
    out.extend(body);
    out
}

fn der_unsigned_integer(be: &[u8]) -> Vec<u8> {
    let v = strip_zeros(be);
    let v: &[u8] = if v.is_empty() { &[0] } else { v };
    let pad = v[0] & 0x80 != 0;
    let mut out = vec![0x02];
    out.extend(der_length(v.len() + usize::from(pad)));
    if pad {
        out.push(0);
    }
    out.extend_from_slice(v);
    out
}

fn der_length(len: usize) -> Vec<u8> {
    if len < 0x80 {
        return vec![len as u8];
    }
    let bytes = len.to_be_bytes();
    let significant = strip_zeros(&bytes);
    let mut out = vec![0x80 | significant.len() as u8];
    out.extend_from_slice(significant);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkcs1_der_of_small_and_large_keys() {
        // modulus with the high bit set gets a leading zero; exponent 65537.
        let der = rsa_public_key_der(&[0x00, 0x80, 0x01], &[0x01, 0x00, 0x01]);
        assert_eq!(
            der,
            [
                0x30, 0x0a, 0x02, 0x03, 0x00, 0x80, 0x01, 0x02, 0x03, 0x01, 0x00, 0x01
            ]
        );
        let modulus = vec![0xC5; 384];
        let der = rsa_public_key_der(&modulus, &[1, 0, 1]);
        // 3072-bit: 385-byte INTEGER, long-form lengths.
        assert_eq!(&der[..4], &[0x30, 0x82, 0x01, 0x8a]);
        assert_eq!(&der[4..9], &[0x02, 0x82, 0x01, 0x81, 0x00]);
        assert_eq!(der.len(), 4 + 0x18a);
        assert_eq!(bit_len(&modulus), 3072);
        assert_eq!(bit_len(&[0, 0, 1]), 1);
    }
}
