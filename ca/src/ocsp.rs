//! An OCSP responder (RFC 6960) for certificates issued by the issuing CA,
//! reachable by anyone: every answer is bounded and most cost no signature.
//!
//! [`OcspResponder::respond`] takes a DER `OCSPRequest` and returns a DER
//! `OCSPResponse`:
//! - a request that does not parse (a serial longer than 20 octets, RFC 5280
//!   §4.1.2.2, does not parse), lists no certificate or more than
//!   [`MAX_CERT_IDS`], carries a `CertID` whose hashes are not the length of
//!   its hash algorithm, or a nonce that is not an OCTET STRING of 1 to
//!   [`MAX_NONCE_LEN`] octets (RFC 8954 §2.1) is answered `malformedRequest`
//!   (unsigned), never with an error;
//! - each `CertID` whose `issuerNameHash`/`issuerKeyHash` (SHA-1 or SHA-256)
//!   match the issuing CA is answered `good` (issued here, not revoked),
//!   `revoked` (revocation time, and the reason unless `unspecified`, as on
//!   the CRL) or `unknown` (serial never issued here, or zero or negative);
//! - a device certificate the registry holds as valid is answered `good` only
//!   if the [`CertStanding`] given with [`OcspResponder::with_standing`]
//!   agrees (the server passes provisioning's: the registered certificate of
//!   a device in a completed batch), else `unknown`: a certificate issued by
//!   an import that never completed is no credential. Such answers are not
//!   cached (the batch may complete a moment later);
//! - a request with a `CertID` under another hash algorithm (or with hash
//!   parameters other than NULL), or with no `CertID` of ours, is answered
//!   `unauthorized` (RFC 6960 §2.3: not authoritative for it); in a request
//!   that mixes ours with another issuer's (SHA-1/SHA-256, hashes of the
//!   right length, so at most a few hundred bytes are echoed) the foreign
//!   ones are answered `unknown` (§2.2);
//! - **nonces are not echoed.** The nonce is optional for a responder (RFC
//!   6960 §4.4.1; the lightweight profile, RFC 5019 §2.2.1, leaves it out so
//!   that responses can be produced ahead): answers are signed once per set
//!   of `CertID`s and served from a cache until the registry changes (a
//!   revocation or a new CRL) or half their validity has passed, so an
//!   anonymous request does not cost an HSM signature. A nonce'd request is
//!   answered from the same cache, without the nonce; a client that insists
//!   on one gets a fresh `thisUpdate` no older than [`VALIDITY`]` / 2`.
//! - cache misses are signed at most [`OcspLimits::signatures_per_second`]
//!   times a second; past that the answer is `tryLater` (unsigned, §2.3).
//! - `thisUpdate` = `producedAt` = signing time, `nextUpdate` = that + 1 hour;
//!   `responderID` is `byKey` (SHA-1 of the issuing CA's public key bits);
//!   the issuing CA signs directly (ecdsa-with-SHA256 or
//!   sha256WithRSAEncryption, matching its HSM key), so no certificates are
//!   included. Request signatures are ignored.
//!
//! Server-side failures (database, HSM) are errors ([`CaError`]); the caller
//! decides how to report them.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use der::asn1::{BitString, GeneralizedTime, Null, ObjectIdentifier, OctetString};
use der::{Any, Decode, Encode};
use keyward_kms::hsm::SignMechanism;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use x509_cert::Certificate;
use x509_cert::ext::pkix::CrlReason;
use x509_cert::spki::AlgorithmIdentifierOwned;
use x509_ocsp::{
    BasicOcspResponse, CertId, CertStatus, OcspGeneralizedTime, OcspRequest, OcspResponse,
    ResponderId, ResponseData, RevokedInfo, SingleResponse, Version,
};

use crate::authority::Ca;
use crate::error::{CaError, Result};
use crate::profile::Profile;
use crate::registry::{CertRecord, CertStatus as RegistryStatus, RevocationReason, Serial};
use keyward_kms::types::DeviceId;

/// What [`CertStanding::device_certificate_stands`] returns.
pub type StandingFuture<'a> = Pin<Box<dyn Future<Output = Result<bool>> + Send + 'a>>;

/// Whether a device certificate the registry holds as valid stands as a
/// credential, asked by the responder before it answers `good`. The CA
/// knows certificates, not devices: whoever registers devices answers
/// (provisioning, wired in by the server), so this crate does not depend
/// on it.
pub trait CertStanding: Send + Sync + fmt::Debug {
    /// `true` when `serial` is `device`'s certificate in good standing.
    fn device_certificate_stands<'a>(
        &'a self,
        device: DeviceId,
        serial: &'a Serial,
    ) -> StandingFuture<'a>;
}

/// Media type of an OCSP request body (RFC 6960 A.1).
pub const OCSP_REQUEST_CONTENT_TYPE: &str = "application/ocsp-request";
/// Media type of an OCSP response body (RFC 6960 A.1).
pub const OCSP_RESPONSE_CONTENT_TYPE: &str = "application/ocsp-response";

/// How long an answer may be cached: `nextUpdate - thisUpdate`.
pub const VALIDITY: Duration = Duration::from_secs(3600);
/// Most `CertID`s answered in one request (more is `malformedRequest`): a
/// relying party asks about one certificate, a browser-style client about
/// its chain.
pub const MAX_CERT_IDS: usize = 8;
/// Longest nonce accepted, in octets (RFC 8954 §2.1; longer is
/// `malformedRequest`).
pub const MAX_NONCE_LEN: usize = 32;

const ID_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const ID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const ID_PKIX_OCSP_NONCE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.2");
const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const SHA256_WITH_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");

/// The DER `OCSPResponse` with status `malformedRequest` (for transports
/// that cannot even extract a request, e.g. bad base64 in a GET URL).
pub fn malformed_request_der() -> Vec<u8> {
    unsigned(OcspResponse::malformed_request())
}

fn unsigned(resp: OcspResponse) -> Vec<u8> {
    // Two fixed small fields: encoding cannot fail. Fall back to the
    // hand-written bytes of the same structure all the same.
    resp.to_der().unwrap_or_else(|_| {
        let status = resp.response_status as u8;
        vec![0x30, 0x03, 0x0a, 0x01, status]
    })
}

/// What identifies the issuing CA in a `CertID`, under each hash accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IssuerHashes {
    sha1_name: Vec<u8>,
    sha1_key: Vec<u8>,
    sha256_name: Vec<u8>,
    sha256_key: Vec<u8>,
}

impl IssuerHashes {
    /// From the issuing CA certificate (DER): hashes of the DER subject name
    /// and of the subjectPublicKey BIT STRING contents.
    pub(crate) fn from_cert_der(der: &[u8]) -> Result<Self> {
        let cert =
            Certificate::from_der(der).map_err(|_| CaError::CorruptRecord("ca_authorities.pem"))?;
        let name = cert
            .tbs_certificate
            .subject
            .to_der()
            .map_err(CaError::OcspEncoding)?;
        let key = cert
            .tbs_certificate
            .subject_public_key_info
            .subject_public_key
            .raw_bytes();
        Ok(Self {
            sha1_name: Sha1::digest(&name).to_vec(),
            sha1_key: Sha1::digest(key).to_vec(),
            sha256_name: Sha256::digest(&name).to_vec(),
            sha256_key: Sha256::digest(key).to_vec(),
        })
    }

    /// `KeyHash` of the responder (always SHA-1, RFC 6960 §4.2.1).
    fn key_hash(&self) -> &[u8] {
        &self.sha1_key
    }

    /// Whether `id` names a certificate of this issuer (its hashes were
    /// checked by [`hash_len`] first).
    fn matches(&self, id: &CertId) -> bool {
        let (name, key) = if id.hash_algorithm.oid == ID_SHA1 {
            (&self.sha1_name, &self.sha1_key)
        } else if id.hash_algorithm.oid == ID_SHA256 {
            (&self.sha256_name, &self.sha256_key)
        } else {
            return false;
        };
        id.issuer_name_hash.as_bytes() == name.as_slice()
            && id.issuer_key_hash.as_bytes() == key.as_slice()
    }
}

/// One `CertID` of a request, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Query {
    /// Ours; `None` when the serial cannot be one this CA assigns (zero,
    /// negative or too long), which is answered `unknown`.
    Ours(CertId, Option<Serial>),
    /// Another issuer's (or an unsupported hash): answered `unknown`.
    Foreign(CertId),
}

/// A parsed request, or the response status that refuses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Parsed {
    Queries(Vec<Query>),
    Refused(x509_ocsp::OcspResponseStatus),
}

/// The digest length of a `CertID`'s hash algorithm, `None` for an algorithm
/// this responder does not use (or one with parameters other than NULL,
/// which could carry anything).
fn hash_len(id: &CertId) -> Option<usize> {
    let params_ok = id
        .hash_algorithm
        .parameters
        .as_ref()
        .is_none_or(|p| der::Tagged::tag(p) == der::Tag::Null && p.value().is_empty());
    if !params_ok {
        return None;
    }
    if id.hash_algorithm.oid == ID_SHA1 {
        Some(20)
    } else if id.hash_algorithm.oid == ID_SHA256 {
        Some(32)
    } else {
        None
    }
}

/// Parses and classifies a DER `OCSPRequest` (the module documentation says
/// what is refused and how).
pub(crate) fn parse_request(der: &[u8], issuer: &IssuerHashes) -> Parsed {
    use x509_ocsp::OcspResponseStatus as S;
    let Ok(req) = OcspRequest::from_der(der) else {
        return Parsed::Refused(S::MalformedRequest);
    };
    let list = req.tbs_request.request_list;
    if list.is_empty() || list.len() > MAX_CERT_IDS {
        return Parsed::Refused(S::MalformedRequest);
    }
    let mut unsupported = false;
    let mut queries = Vec::with_capacity(list.len());
    for r in list {
        let id = r.req_cert;
        // The DER decoder takes 21 octets (a 20-octet value with its sign
        // octet); RFC 5280 §4.1.2.2 allows 20 in all.
        if id.serial_number.as_bytes().len() > 20 {
            return Parsed::Refused(S::MalformedRequest);
        }
        match hash_len(&id) {
            None => unsupported = true,
            Some(n)
                if id.issuer_name_hash.as_bytes().len() != n
                    || id.issuer_key_hash.as_bytes().len() != n =>
            {
                return Parsed::Refused(S::MalformedRequest);
            }
            Some(_) if issuer.matches(&id) => {
                let serial = serial_of(&id);
                queries.push(Query::Ours(id, serial));
            }
            Some(_) => queries.push(Query::Foreign(id)),
        }
    }
    let nonce_ok = req
        .tbs_request
        .request_extensions
        .unwrap_or_default()
        .iter()
        .filter(|e| e.extn_id == ID_PKIX_OCSP_NONCE)
        .all(|e| {
            OctetString::from_der(e.extn_value.as_bytes())
                .is_ok_and(|n| (1..=MAX_NONCE_LEN).contains(&n.as_bytes().len()))
        });
    if !nonce_ok {
        return Parsed::Refused(S::MalformedRequest);
    }
    if unsupported || !queries.iter().any(|q| matches!(q, Query::Ours(..))) {
        return Parsed::Refused(S::Unauthorized);
    }
    Parsed::Queries(queries)
}

/// How [`OcspResponder::respond`] classifies `request_der` for the issuer
/// whose certificate is `issuer_der`, without the registry or the HSM: the
/// serials asked about (`None` for one this CA cannot have assigned, or
/// another issuer's), or the status that refuses the request. The parser's
/// fuzz target calls this.
pub fn classify_request(
    request_der: &[u8],
    issuer_der: &[u8],
) -> Result<std::result::Result<Vec<Option<Serial>>, x509_ocsp::OcspResponseStatus>> {
    let issuer = IssuerHashes::from_cert_der(issuer_der)?;
    Ok(match parse_request(request_der, &issuer) {
        Parsed::Queries(q) => Ok(q
            .into_iter()
            .map(|q| match q {
                Query::Ours(_, serial) => serial,
                Query::Foreign(_) => None,
            })
            .collect()),
        Parsed::Refused(status) => Err(status),
    })
}

/// The registry serial of a `CertID`, if it can be one (positive, ≤ 20 bytes).
fn serial_of(id: &CertId) -> Option<Serial> {
    let bytes = id.serial_number.as_bytes();
    if bytes.first().is_some_and(|b| b & 0x80 != 0) {
        return None; // negative
    }
    Serial::from_bytes(bytes).ok()
}

/// The status of one certificate: `None` for a serial never issued here.
pub(crate) fn cert_status(record: Option<&CertRecord>) -> Result<CertStatus> {
    let Some(rec) = record else {
        return Ok(CertStatus::unknown());
    };
    if rec.status != RegistryStatus::Revoked {
        return Ok(CertStatus::good());
    }
    let at = rec
        .revoked_at_ms
        .ok_or(CaError::CorruptRecord("certificates.revoked_at"))?;
    let at = u64::try_from(at).map_err(|_| CaError::CorruptRecord("certificates.revoked_at"))?;
    Ok(CertStatus::revoked(RevokedInfo {
        revocation_time: gtime(at / 1000)?,
        revocation_reason: rec.reason.and_then(crl_reason),
    }))
}

/// The `CRLReason`, absent for `unspecified` (as on the CRL, RFC 5280 §5.3.1).
fn crl_reason(reason: RevocationReason) -> Option<CrlReason> {
    match reason {
        RevocationReason::Unspecified => None,
        RevocationReason::KeyCompromise => Some(CrlReason::KeyCompromise),
        RevocationReason::AffiliationChanged => Some(CrlReason::AffiliationChanged),
        RevocationReason::Superseded => Some(CrlReason::Superseded),
        RevocationReason::CessationOfOperation => Some(CrlReason::CessationOfOperation),
        RevocationReason::PrivilegeWithdrawn => Some(CrlReason::PrivilegeWithdrawn),
    }
}

fn gtime(unix_s: u64) -> Result<OcspGeneralizedTime> {
    GeneralizedTime::from_unix_duration(Duration::from_secs(unix_s))
        .map(OcspGeneralizedTime)
        .map_err(CaError::OcspEncoding)
}

/// The to-be-signed `ResponseData` for answered queries.
pub(crate) fn response_data(
    issuer: &IssuerHashes,
    answers: Vec<(CertId, CertStatus)>,
    now_s: u64,
) -> Result<ResponseData> {
    let this_update = gtime(now_s)?;
    let next_update = gtime(now_s + VALIDITY.as_secs())?;
    let responses = answers
        .into_iter()
        .map(|(cert_id, cert_status)| SingleResponse {
            cert_id,
            cert_status,
            this_update,
            next_update: Some(next_update),
            single_extensions: None,
        })
        .collect();
    Ok(ResponseData {
        version: Version::V1,
        responder_id: ResponderId::ByKey(
            OctetString::new(issuer.key_hash()).map_err(CaError::OcspEncoding)?,
        ),
        produced_at: this_update,
        responses,
        response_extensions: None,
    })
}

/// The `AlgorithmIdentifier` of signatures made with `mechanism`.
fn signature_algorithm(mechanism: SignMechanism) -> AlgorithmIdentifierOwned {
    match mechanism {
        SignMechanism::RsaPkcs1Sha256 => AlgorithmIdentifierOwned {
            oid: SHA256_WITH_RSA,
            parameters: Some(Any::from(Null)),
        },
        // The CA signs only with P-256 (ECDSA-SHA-256) or RSA keys.
        _ => AlgorithmIdentifierOwned {
            oid: ECDSA_WITH_SHA256,
            parameters: None,
        },
    }
}

/// A successful `OCSPResponse` around signed `tbs`.
pub(crate) fn successful(
    tbs: ResponseData,
    mechanism: SignMechanism,
    signature: &[u8],
) -> Result<Vec<u8>> {
    let basic = BasicOcspResponse {
        tbs_response_data: tbs,
        signature_algorithm: signature_algorithm(mechanism),
        signature: BitString::from_bytes(signature).map_err(CaError::OcspEncoding)?,
        certs: None,
    };
    OcspResponse::successful(basic)
        .and_then(|r| r.to_der())
        .map_err(CaError::OcspEncoding)
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Limits of an [`OcspResponder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OcspLimits {
    /// Signed answers kept (one per distinct set of `CertID`s); when full the
    /// cache starts over.
    pub cache_entries: usize,
    /// Cache misses signed per second (also the burst); past it `tryLater`.
    pub signatures_per_second: u32,
}

/// Where an answer came from, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OcspSource {
    /// Refused (`malformedRequest`, `unauthorized`): nothing to sign.
    Refused,
    /// Served from the cache: no signature.
    Cached,
    /// Signed in the HSM now.
    Signed,
    /// `tryLater`: the signing budget was spent.
    Throttled,
}

impl OcspSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Refused => "refused",
            Self::Cached => "cached",
            Self::Signed => "signed",
            Self::Throttled => "throttled",
        }
    }
}

/// One answer.
#[derive(Debug, Clone)]
pub struct OcspAnswer {
    /// The DER `OCSPResponse`.
    pub der: Vec<u8>,
    pub source: OcspSource,
}

/// The issuing CA's OCSP responder: parsing, a cache of signed answers keyed
/// by the request's `CertID`s and invalidated by the registry's revision and
/// CRL number, and a signing budget. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct OcspResponder {
    ca: Ca,
    issuer: IssuerHashes,
    limits: OcspLimits,
    state: Mutex<CacheState>,
    standing: Option<Arc<dyn CertStanding>>,
}

#[derive(Debug, Default)]
struct CacheState {
    /// The registry generation the entries were signed under.
    generation: Option<crate::RevocationMarker>,
    entries: HashMap<Vec<u8>, Cached>,
    tokens: f64,
    refilled: Option<Instant>,
}

#[derive(Debug)]
struct Cached {
    der: Vec<u8>,
    produced_s: u64,
}

impl CacheState {
    /// Takes one signature from the budget (token bucket, burst = rate).
    fn take_token(&mut self, rate: u32, now: Instant) -> bool {
        let rate = f64::from(rate.max(1));
        let elapsed = self
            .refilled
            .map_or(rate, |t| now.duration_since(t).as_secs_f64() * rate);
        self.tokens = (self.tokens + elapsed).min(rate);
        self.refilled = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl OcspResponder {
    pub fn new(ca: Ca, limits: OcspLimits) -> Result<Self> {
        let issuer = IssuerHashes::from_cert_der(ca.issuing_der())?;
        Ok(Self {
            ca,
            issuer,
            limits,
            state: Mutex::new(CacheState::default()),
            standing: None,
        })
    }

    /// Asks `standing` before answering `good` for a device certificate.
    pub fn with_standing(mut self, standing: Arc<dyn CertStanding>) -> Self {
        self.standing = Some(standing);
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Answers a DER `OCSPRequest` with a DER `OCSPResponse` (see the module
    /// documentation). `Err` only for the registry or the HSM failing.
    pub async fn respond(&self, request_der: &[u8]) -> Result<OcspAnswer> {
        use x509_ocsp::OcspResponseStatus as S;
        let queries = match parse_request(request_der, &self.issuer) {
            Parsed::Queries(q) => q,
            Parsed::Refused(status) => return Ok(refusal(status, OcspSource::Refused)),
        };
        let mut key = Vec::new();
        for q in &queries {
            let (Query::Ours(id, _) | Query::Foreign(id)) = q;
            id.encode_to_vec(&mut key).map_err(CaError::OcspEncoding)?;
        }
        // Read before the records: an answer is never filed under a newer
        // generation than the registry it was built from.
        let generation = self.ca.revocation_marker().await?;
        let now = now_s();
        {
            let mut st = self.lock();
            if st.generation != Some(generation) {
                st.entries.clear();
                st.generation = Some(generation);
            }
            if let Some(c) = st.entries.get(&key)
                && now < c.produced_s + VALIDITY.as_secs() / 2
            {
                return Ok(OcspAnswer {
                    der: c.der.clone(),
                    source: OcspSource::Cached,
                });
            }
            if !st.take_token(self.limits.signatures_per_second, Instant::now()) {
                return Ok(refusal(S::TryLater, OcspSource::Throttled));
            }
        }
        let (der, cacheable) = self.sign(queries, now).await?;
        let mut st = self.lock();
        if cacheable && st.generation == Some(generation) {
            if st.entries.len() >= self.limits.cache_entries.max(1) {
                st.entries.clear();
            }
            st.entries.insert(
                key,
                Cached {
                    der: der.clone(),
                    produced_s: now,
                },
            );
        }
        Ok(OcspAnswer {
            der,
            source: OcspSource::Signed,
        })
    }

    /// Signs the answers; `false` with them when one was held back by
    /// [`CertStanding`] (not to be cached: it may stand a moment later).
    async fn sign(&self, queries: Vec<Query>, now: u64) -> Result<(Vec<u8>, bool)> {
        let mut answers = Vec::with_capacity(queries.len());
        let mut cacheable = true;
        for q in queries {
            match q {
                Query::Ours(id, Some(serial)) => {
                    let record = self.ca.get(&serial).await?;
                    let mut status = cert_status(record.as_ref())?;
                    if let Some(rec) = &record
                        && rec.status != RegistryStatus::Revoked
                        && !self.stands(rec).await?
                    {
                        status = CertStatus::unknown();
                        cacheable = false;
                    }
                    answers.push((id, status));
                }
                Query::Ours(id, None) | Query::Foreign(id) => {
                    answers.push((id, CertStatus::unknown()))
                }
            }
        }
        let tbs = response_data(&self.issuer, answers, now)?;
        let tbs_der = tbs.to_der().map_err(CaError::OcspEncoding)?;
        let key = self.ca.issuing_key();
        let signature = key.sign(&tbs_der).await?;
        Ok((successful(tbs, key.mechanism(), &signature)?, cacheable))
    }

    /// Whether a valid certificate may be answered `good`: always, but for a
    /// device certificate when a [`CertStanding`] is set.
    async fn stands(&self, rec: &CertRecord) -> Result<bool> {
        match (&self.standing, rec.profile) {
            (Some(standing), Profile::Device) => match rec.device_id {
                Some(device) => {
                    standing
                        .device_certificate_stands(device, &rec.serial)
                        .await
                }
                None => Ok(false),
            },
            _ => Ok(true),
        }
    }
}

fn refusal(status: x509_ocsp::OcspResponseStatus, source: OcspSource) -> OcspAnswer {
    OcspAnswer {
        der: unsigned(OcspResponse {
            response_status: status,
            response_bytes: None,
        }),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Profile;
    use x509_cert::ext::Extension;
    use x509_cert::serial_number::SerialNumber;
    use x509_ocsp::{OcspResponseStatus, Request, TbsRequest};

    fn issuer() -> IssuerHashes {
        IssuerHashes {
            sha1_name: vec![1; 20],
            sha1_key: vec![2; 20],
            sha256_name: vec![3; 32],
            sha256_key: vec![4; 32],
        }
    }

    fn cert_id(alg: ObjectIdentifier, name: &[u8], key: &[u8], serial: &[u8]) -> CertId {
        CertId {
            hash_algorithm: AlgorithmIdentifierOwned {
                oid: alg,
                parameters: Some(Any::from(Null)),
            },
            issuer_name_hash: OctetString::new(name).unwrap(),
            issuer_key_hash: OctetString::new(key).unwrap(),
            serial_number: SerialNumber::new(serial).unwrap(),
        }
    }

    fn request(ids: Vec<CertId>, nonce: Option<&[u8]>) -> Vec<u8> {
        let request_extensions = nonce.map(|n| {
            vec![Extension {
                extn_id: ID_PKIX_OCSP_NONCE,
                critical: false,
                extn_value: OctetString::new(OctetString::new(n).unwrap().to_der().unwrap())
                    .unwrap(),
            }]
        });
        OcspRequest {
            tbs_request: TbsRequest {
                version: Version::V1,
                requestor_name: None,
                request_list: ids
                    .into_iter()
                    .map(|req_cert| Request {
                        req_cert,
                        single_request_extensions: None,
                    })
                    .collect(),
                request_extensions,
            },
            optional_signature: None,
        }
        .to_der()
        .unwrap()
    }

    fn record(status: RegistryStatus, reason: Option<RevocationReason>) -> CertRecord {
        CertRecord {
            serial: "0A0B".parse().unwrap(),
            profile: Profile::Device,
            subject: "CN=x".into(),
            device_id: None,
            operator_role: None,
            not_before_ms: 0,
            not_after_ms: 1,
            issued_at_ms: 0,
            status,
            revoked_at_ms: reason.map(|_| 1_700_000_000_123),
            reason,
            pem: String::new(),
        }
    }

    #[test]
    fn malformed_requests() {
        let i = issuer();
        for der in [&b""[..], b"\x30\x00", b"not der at all"] {
            assert_eq!(
                parse_request(der, &i),
                Parsed::Refused(OcspResponseStatus::MalformedRequest)
            );
        }
        assert_eq!(
            parse_request(&request(vec![], None), &i),
            Parsed::Refused(OcspResponseStatus::MalformedRequest)
        );
        let resp = OcspResponse::from_der(&malformed_request_der()).unwrap();
        assert_eq!(resp.response_status, OcspResponseStatus::MalformedRequest);
        assert!(resp.response_bytes.is_none());
        // Over 20 octets, even with only a sign octet before 20.
        let mut long = vec![0x02, 21, 0x00];
        long.extend([0x80; 20]);
        let mut id = cert_id(ID_SHA1, &[1; 20], &[2; 20], &[0x0a]);
        id.serial_number = SerialNumber::from_der(&long).unwrap();
        assert_eq!(
            parse_request(&request(vec![id.clone()], None), &i),
            Parsed::Refused(OcspResponseStatus::MalformedRequest)
        );
        // Twenty octets are a serial (not ours: unknown, not malformed).
        id.serial_number = SerialNumber::new(&[0x7f; 20]).unwrap();
        assert!(matches!(
            parse_request(&request(vec![id], None), &i),
            Parsed::Queries(_)
        ));
    }

    #[test]
    fn classifies_cert_ids() {
        let i = issuer();
        let sha1 = cert_id(ID_SHA1, &[1; 20], &[2; 20], &[0x0a, 0x0b]);
        let sha256 = cert_id(ID_SHA256, &[3; 32], &[4; 32], &[0x00, 0x8f]);
        let foreign = cert_id(ID_SHA1, &[1; 20], &[9; 20], &[0x0a, 0x0b]);
        // Zero can never be a serial of this CA.
        let zero = cert_id(ID_SHA1, &[1; 20], &[2; 20], &[0x00]);
        let der = request(
            vec![sha1.clone(), sha256.clone(), foreign.clone(), zero.clone()],
            Some(b"0123456789abcdef"),
        );
        let Parsed::Queries(queries) = parse_request(&der, &i) else {
            panic!("not parsed");
        };
        assert_eq!(
            queries,
            vec![
                Query::Ours(sha1.clone(), Some("0A0B".parse().unwrap())),
                Query::Ours(sha256, Some("8F".parse().unwrap())),
                Query::Foreign(foreign.clone()),
                Query::Ours(zero, None),
            ]
        );

        // Only foreign CertIDs (another key, or an unsupported hash): unauthorized.
        let md5 = cert_id(
            ObjectIdentifier::new_unwrap("1.2.840.113549.2.5"),
            &[1; 16],
            &[2; 16],
            &[1],
        );
        assert_eq!(
            parse_request(&request(vec![foreign, md5.clone()], None), &i),
            Parsed::Refused(OcspResponseStatus::Unauthorized)
        );
        // An unsupported hash next to ours: not echoed, unauthorized.
        assert_eq!(
            parse_request(&request(vec![sha1, md5], None), &i),
            Parsed::Refused(OcspResponseStatus::Unauthorized)
        );
    }

    /// Attacker-sized data is refused before anything is signed.
    #[test]
    fn oversized_parts_are_refused() {
        let i = issuer();
        let ours = cert_id(ID_SHA1, &[1; 20], &[2; 20], &[0x0a]);
        // Nonce: 1 to 32 octets (RFC 8954), an OCTET STRING.
        for ok in [&[7u8; 1][..], &[7; 32]] {
            assert!(matches!(
                parse_request(&request(vec![ours.clone()], Some(ok)), &i),
                Parsed::Queries(_)
            ));
        }
        for bad in [&[7u8; 33][..], &[7; 1 << 20], &[]] {
            assert_eq!(
                parse_request(&request(vec![ours.clone()], Some(bad)), &i),
                Parsed::Refused(OcspResponseStatus::MalformedRequest),
                "nonce of {} bytes",
                bad.len()
            );
        }
        // A foreign CertID with a 60 kB "hash".
        let huge = cert_id(ID_SHA1, &vec![5; 60_000], &[2; 20], &[0x0a]);
        assert_eq!(
            parse_request(&request(vec![ours.clone(), huge], None), &i),
            Parsed::Refused(OcspResponseStatus::MalformedRequest)
        );
        let short = cert_id(ID_SHA256, &[3; 20], &[4; 32], &[0x0a]);
        assert_eq!(
            parse_request(&request(vec![ours.clone(), short], None), &i),
            Parsed::Refused(OcspResponseStatus::MalformedRequest)
        );
        // Hash parameters other than NULL: not ours to interpret.
        let mut odd = ours.clone();
        odd.hash_algorithm.parameters =
            Some(Any::encode_from(&OctetString::new(vec![0; 64]).unwrap()).unwrap());
        assert_eq!(
            parse_request(&request(vec![ours.clone(), odd], None), &i),
            Parsed::Refused(OcspResponseStatus::Unauthorized)
        );
        // At most MAX_CERT_IDS CertIDs.
        let ids = |n: usize| vec![ours.clone(); n];
        assert!(matches!(
            parse_request(&request(ids(MAX_CERT_IDS), None), &i),
            Parsed::Queries(_)
        ));
        assert_eq!(
            parse_request(&request(ids(MAX_CERT_IDS + 1), None), &i),
            Parsed::Refused(OcspResponseStatus::MalformedRequest)
        );
    }

    /// A serial longer than 20 octets (RFC 5280) does not parse:
    /// `malformedRequest`, as docs/admin-api.md says.
    #[test]
    fn a_40_byte_serial_is_a_malformed_request() {
        fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
            let mut out = vec![tag];
            let n = content.len();
            if n < 0x80 {
                out.push(n as u8);
            } else {
                out.extend([0x82, (n >> 8) as u8, n as u8]);
            }
            out.extend(content);
            out
        }
        let der_of = |serial: &[u8]| {
            let alg = tlv(
                0x30,
                &[ID_SHA1.to_der().unwrap(), vec![0x05, 0x00]].concat(),
            );
            let cert_id = tlv(
                0x30,
                &[
                    alg,
                    tlv(0x04, &[1; 20]),
                    tlv(0x04, &[2; 20]),
                    tlv(0x02, serial),
                ]
                .concat(),
            );
            let list = tlv(0x30, &tlv(0x30, &cert_id));
            tlv(0x30, &tlv(0x30, &list))
        };
        let i = issuer();
        assert!(matches!(
            parse_request(&der_of(&[0x0a]), &i),
            Parsed::Queries(_)
        ));
        let mut long = vec![0x01];
        long.extend([0x22; 39]);
        assert_eq!(
            parse_request(&der_of(&long), &i),
            Parsed::Refused(OcspResponseStatus::MalformedRequest)
        );
    }

    #[test]
    fn statuses() {
        assert_eq!(cert_status(None).unwrap(), CertStatus::unknown());
        let good = record(RegistryStatus::Valid, None);
        assert_eq!(cert_status(Some(&good)).unwrap(), CertStatus::good());
        let revoked = record(
            RegistryStatus::Revoked,
            Some(RevocationReason::KeyCompromise),
        );
        let CertStatus::Revoked(info) = cert_status(Some(&revoked)).unwrap() else {
            panic!("not revoked");
        };
        assert_eq!(info.revocation_reason, Some(CrlReason::KeyCompromise));
        assert_eq!(
            info.revocation_time.0.to_unix_duration(),
            Duration::from_secs(1_700_000_000)
        );
        let unspecified = record(RegistryStatus::Revoked, Some(RevocationReason::Unspecified));
        let CertStatus::Revoked(info) = cert_status(Some(&unspecified)).unwrap() else {
            panic!("not revoked");
        };
        assert_eq!(info.revocation_reason, None);
        let mut corrupt = revoked;
        corrupt.revoked_at_ms = None;
        assert!(cert_status(Some(&corrupt)).is_err());
    }

    #[test]
    fn response_round_trip() {
        let i = issuer();
        let id = cert_id(ID_SHA1, &[1; 20], &[2; 20], &[0x0a]);
        let tbs = response_data(&i, vec![(id.clone(), CertStatus::good())], 1_700_000_000).unwrap();
        let der = successful(tbs, SignMechanism::EcdsaSha256, &[0x30, 0x00]).unwrap();
        let resp = OcspResponse::from_der(&der).unwrap();
        assert_eq!(resp.response_status, OcspResponseStatus::Successful);
        let bytes = resp.response_bytes.unwrap();
        let basic = BasicOcspResponse::from_der(bytes.response.as_bytes()).unwrap();
        assert_eq!(basic.signature_algorithm.oid, ECDSA_WITH_SHA256);
        assert!(basic.certs.is_none());
        let data = basic.tbs_response_data;
        assert_eq!(
            data.responder_id,
            ResponderId::ByKey(OctetString::new(vec![2; 20]).unwrap())
        );
        // Nonces are not echoed (answers are cached).
        assert_eq!(data.response_extensions, None);
        let single = &data.responses[0];
        assert_eq!(single.cert_id, id);
        assert_eq!(single.cert_status, CertStatus::good());
        assert_eq!(
            single.next_update.unwrap().0.to_unix_duration()
                - single.this_update.0.to_unix_duration(),
            VALIDITY
        );
        assert_eq!(
            signature_algorithm(SignMechanism::RsaPkcs1Sha256).oid,
            SHA256_WITH_RSA
        );
    }
}
