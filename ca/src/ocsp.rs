//! An OCSP responder (RFC 6960) for certificates issued by the issuing CA.
//!
//! [`Ca::ocsp_response`] takes a DER `OCSPRequest` and returns a DER
//! `OCSPResponse`:
//! - a request that does not parse, or lists no certificate, is answered
//!   with `malformedRequest` (unsigned), never with an error;
//! - each `CertID` whose `issuerNameHash`/`issuerKeyHash` (SHA-1 or SHA-256)
//!   match the issuing CA is answered `good` (issued here, not revoked),
//!   `revoked` (revocation time, and the reason unless `unspecified`, as on
//!   the CRL) or `unknown` (serial never issued here);
//! - foreign `CertID`s (another issuer, or a hash algorithm other than SHA-1
//!   and SHA-256): if *no* `CertID` of the request is ours the whole request
//!   is answered `unauthorized` (RFC 6960 §2.3: this responder cannot answer
//!   authoritatively for it); in a request that mixes ours and foreign ones
//!   the foreign ones are answered `unknown` (§2.2: "an unrecognized issuer
//!   that is not served by this responder");
//! - `thisUpdate` = `producedAt` = now, `nextUpdate` = now + 1 hour; the
//!   request's nonce extension is echoed; `responderID` is `byKey` (SHA-1 of
//!   the issuing CA's public key bits); the issuing CA signs directly
//!   (ecdsa-with-SHA256 or sha256WithRSAEncryption, matching its HSM key),
//!   so no certificates are included. Request signatures are ignored.
//!
//! Server-side failures (database, HSM) are errors ([`CaError`]); the caller
//! decides how to report them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use der::asn1::{BitString, GeneralizedTime, Null, ObjectIdentifier, OctetString};
use der::{Any, Decode, Encode};
use keyward_kms::hsm::SignMechanism;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use x509_cert::Certificate;
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::CrlReason;
use x509_cert::spki::AlgorithmIdentifierOwned;
use x509_ocsp::{
    BasicOcspResponse, CertId, CertStatus, OcspGeneralizedTime, OcspRequest, OcspResponse,
    ResponderId, ResponseData, RevokedInfo, SingleResponse, Version,
};

use crate::authority::Ca;
use crate::error::{CaError, Result};
use crate::registry::{CertRecord, CertStatus as RegistryStatus, RevocationReason, Serial};

/// Media type of an OCSP request body (RFC 6960 A.1).
pub const OCSP_REQUEST_CONTENT_TYPE: &str = "application/ocsp-request";
/// Media type of an OCSP response body (RFC 6960 A.1).
pub const OCSP_RESPONSE_CONTENT_TYPE: &str = "application/ocsp-response";

/// How long an answer may be cached: `nextUpdate - thisUpdate`.
pub const VALIDITY: Duration = Duration::from_secs(3600);
/// Most `CertID`s answered in one request (more is `malformedRequest`).
pub const MAX_CERT_IDS: usize = 64;

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

    /// Whether `id` names a certificate of this issuer.
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
    Queries {
        queries: Vec<Query>,
        nonce: Option<Extension>,
    },
    Refused(x509_ocsp::OcspResponseStatus),
}

/// Parses and classifies a DER `OCSPRequest`.
pub(crate) fn parse_request(der: &[u8], issuer: &IssuerHashes) -> Parsed {
    use x509_ocsp::OcspResponseStatus as S;
    let Ok(req) = OcspRequest::from_der(der) else {
        return Parsed::Refused(S::MalformedRequest);
    };
    let list = req.tbs_request.request_list;
    if list.is_empty() || list.len() > MAX_CERT_IDS {
        return Parsed::Refused(S::MalformedRequest);
    }
    let queries: Vec<Query> = list
        .into_iter()
        .map(|r| {
            let id = r.req_cert;
            if issuer.matches(&id) {
                let serial = serial_of(&id);
                Query::Ours(id, serial)
            } else {
                Query::Foreign(id)
            }
        })
        .collect();
    if !queries.iter().any(|q| matches!(q, Query::Ours(..))) {
        return Parsed::Refused(S::Unauthorized);
    }
    let nonce = req
        .tbs_request
        .request_extensions
        .unwrap_or_default()
        .into_iter()
        .find(|e| e.extn_id == ID_PKIX_OCSP_NONCE)
        .map(|e| Extension {
            critical: false,
            ..e
        });
    Parsed::Queries { queries, nonce }
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
    nonce: Option<Extension>,
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
        response_extensions: nonce.map(|n| vec![n]),
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

impl Ca {
    /// Answers a DER `OCSPRequest` with a DER `OCSPResponse` (see the module
    /// documentation). A malformed request gets `malformedRequest`, a request
    /// about no certificate of this CA gets `unauthorized`; `Err` only for
    /// the registry or the HSM failing.
    pub async fn ocsp_response(&self, request_der: &[u8]) -> Result<Vec<u8>> {
        let issuer = IssuerHashes::from_cert_der(self.issuing_der())?;
        let (queries, nonce) = match parse_request(request_der, &issuer) {
            Parsed::Queries { queries, nonce } => (queries, nonce),
            Parsed::Refused(status) => {
                return Ok(unsigned(OcspResponse {
                    response_status: status,
                    response_bytes: None,
                }));
            }
        };
        let mut answers = Vec::with_capacity(queries.len());
        for q in queries {
            match q {
                Query::Ours(id, Some(serial)) => {
                    let record = self.get(&serial).await?;
                    answers.push((id, cert_status(record.as_ref())?));
                }
                Query::Ours(id, None) | Query::Foreign(id) => {
                    answers.push((id, CertStatus::unknown()))
                }
            }
        }
        let tbs = response_data(&issuer, answers, nonce, now_s())?;
        let tbs_der = tbs.to_der().map_err(CaError::OcspEncoding)?;
        let key = self.issuing_key();
        let signature = key.sign(&tbs_der).await?;
        successful(tbs, key.mechanism(), &signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Profile;
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
    }

    #[test]
    fn classifies_cert_ids_and_echoes_the_nonce() {
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
        let Parsed::Queries { queries, nonce } = parse_request(&der, &i) else {
            panic!("not parsed");
        };
        assert_eq!(
            queries,
            vec![
                Query::Ours(sha1, Some("0A0B".parse().unwrap())),
                Query::Ours(sha256, Some("8F".parse().unwrap())),
                Query::Foreign(foreign.clone()),
                Query::Ours(zero, None),
            ]
        );
        let nonce = nonce.unwrap();
        assert_eq!(nonce.extn_id, ID_PKIX_OCSP_NONCE);
        assert!(!nonce.critical);

        // Only foreign CertIDs (another key, or an unsupported hash): unauthorized.
        let md5 = cert_id(
            ObjectIdentifier::new_unwrap("1.2.840.113549.2.5"),
            &[1; 20],
            &[2; 20],
            &[1],
        );
        assert_eq!(
            parse_request(&request(vec![foreign, md5], None), &i),
            Parsed::Refused(OcspResponseStatus::Unauthorized)
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
        let nonce = Extension {
            extn_id: ID_PKIX_OCSP_NONCE,
            critical: false,
            extn_value: OctetString::new(vec![4, 2, 0xaa, 0xbb]).unwrap(),
        };
        let tbs = response_data(
            &i,
            vec![(id.clone(), CertStatus::good())],
            Some(nonce.clone()),
            1_700_000_000,
        )
        .unwrap();
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
        assert_eq!(data.response_extensions, Some(vec![nonce]));
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
