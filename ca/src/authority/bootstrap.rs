//! Bootstrap: the two HSM key pairs, the self-signed root, the issuing CA
//! certificate signed by the root and a first CRL, each created only when
//! missing; stored CA certificates are checked against their HSM keys.

use std::fmt;
use std::sync::Arc;

use keyward_config::{CaConfig, CaKeyAlgorithm};
use keyward_kms::Kms;
use keyward_kms::db::{Database, now_ms};
use keyward_kms::hsm::KeyPairKind;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyUsagePurpose,
    SerialNumber,
};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::{
    Authority, BACKDATE, Ca, ISSUING_KEY_LABEL, Inner, ROOT_KEY_LABEL, blocking, from_ms, now_s,
    pem_encode,
};
use crate::error::{CaError, Result};
use crate::hsm_key::HsmKey;
use crate::registry::Serial;
use crate::store::Store;

/// What [`Ca::bootstrap`] did: `*_created` is false for what it found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapReport {
    pub root_key_created: bool,
    pub issuing_key_created: bool,
    pub root_cert_created: bool,
    pub issuing_cert_created: bool,
    pub crl_created: bool,
    pub root_serial: Serial,
    pub issuing_serial: Serial,
}

impl BootstrapReport {
    /// Whether this run created any key, certificate or CRL.
    pub fn created_anything(&self) -> bool {
        self.root_key_created
            || self.issuing_key_created
            || self.root_cert_created
            || self.issuing_cert_created
            || self.crl_created
    }
}

impl fmt::Display for BootstrapReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = |created: bool| if created { "created" } else { "found" };
        write!(
            f,
            "root key {}, root certificate {} (serial {}), issuing key {}, \
             issuing certificate {} (serial {}), CRL {}",
            what(self.root_key_created),
            what(self.root_cert_created),
            self.root_serial,
            what(self.issuing_key_created),
            what(self.issuing_cert_created),
            self.issuing_serial,
            what(self.crl_created),
        )
    }
}

impl Ca {
    /// Brings the CA up, creating only what is missing: the schema, the two
    /// HSM key pairs, the self-signed root, the issuing CA certificate signed
    /// by the root, and a first CRL. A second run (or another replica) finds
    /// and reuses them. A stored certificate whose public key is not the HSM
    /// key of its name, or that does not chain, stops the start
    /// ([`CaError::CaKeyMismatch`]).
    pub async fn bootstrap(
        kms: &Kms,
        db: &Database,
        cfg: &CaConfig,
    ) -> Result<(Ca, BootstrapReport)> {
        let kind = validate_config(cfg)?;
        let store = Store::new(db);
        store.migrate().await?;

        let (root_key, root_key_created) = kms.ensure_signing_key(ROOT_KEY_LABEL, kind).await?;
        let (issuing_key, issuing_key_created) =
            kms.ensure_signing_key(ISSUING_KEY_LABEL, kind).await?;
        for key in [&root_key, &issuing_key] {
            if key.kind() != kind {
                return Err(CaError::Config {
                    field: "ca.key_algorithm",
                    reason: "differs from the algorithm of the CA keys already in the HSM",
                });
            }
        }
        let root_key = HsmKey::new(root_key)?;
        let issuing_key = HsmKey::new(issuing_key)?;

        let root_cert_created = match store.authority("root").await? {
            Some(_) => false,
            None => {
                let (serial, der, pem) = make_root(&root_key, cfg).await?;
                let (nb, na) = validity_ms(&der)?;
                store
                    .insert_authority("root", &serial, &pem, nb, na)
                    .await?
            }
        };
        let row = store
            .authority("root")
            .await?
            .ok_or(CaError::CorruptRecord("ca_authorities"))?;
        let root = Authority::load("root", &row.serial, &row.pem, root_key, None)?;

        let issuing_cert_created = match store.authority("issuing").await? {
            Some(_) => false,
            None => {
                let (serial, der, pem) = make_issuing(&issuing_key, &root, cfg).await?;
                let (nb, na) = validity_ms(&der)?;
                store
                    .insert_authority("issuing", &serial, &pem, nb, na)
                    .await?
            }
        };
        let row = store
            .authority("issuing")
            .await?
            .ok_or(CaError::CorruptRecord("ca_authorities"))?;
        let issuing = Authority::load("issuing", &row.serial, &row.pem, issuing_key, Some(&root))?;
        if issuing.not_after_ms <= now_ms() {
            tracing::warn!(serial = %issuing.serial, "the issuing CA certificate has expired");
        }

        let ca = Ca {
            inner: Arc::new(Inner {
                store,
                cfg: cfg.clone(),
                root,
                issuing,
            }),
        };
        let state = ca.inner.store.crl_state().await?;
        let crl_created = match state.latest {
            Some(_) => {
                ca.refresh_crl_if_due().await?;
                false
            }
            None => {
                ca.generate_crl().await?;
                true
            }
        };
        let report = BootstrapReport {
            root_key_created,
            issuing_key_created,
            root_cert_created,
            issuing_cert_created,
            crl_created,
            root_serial: ca.inner.root.serial.clone(),
            issuing_serial: ca.inner.issuing.serial.clone(),
        };
        tracing::info!(report = %report, "CA bootstrap");
        Ok((ca, report))
    }
}

impl Authority {
    /// Parses a stored CA certificate and checks that it is a CA certificate
    /// for `key`, self-signed (`issuer == None`) or signed by `issuer`.
    fn load(
        which: &'static str,
        serial: &str,
        pem: &str,
        key: HsmKey,
        issuer: Option<&Authority>,
    ) -> Result<Self> {
        let mismatch = |reason| CaError::CaKeyMismatch { which, reason };
        let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .map_err(|_| CaError::CorruptRecord("ca_authorities.pem"))?;
        let der = parsed.contents;
        let (_, cert) = X509Certificate::from_der(&der)
            .map_err(|_| CaError::CorruptRecord("ca_authorities.pem"))?;
        if cert.public_key().raw != key.public().spki_der().as_slice() {
            return Err(mismatch("its public key is not the HSM key's"));
        }
        if !matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca) {
            return Err(mismatch("not a CA certificate"));
        }
        let signer_spki = match issuer {
            None => key.public().spki_der(),
            Some(i) => i.key.public().spki_der(),
        };
        let (_, signer_spki) = SubjectPublicKeyInfo::from_der(&signer_spki)
            .map_err(|_| mismatch("issuer key does not parse"))?;
        cert.verify_signature(Some(&signer_spki))
            .map_err(|_| mismatch("signature does not verify under its issuer's key"))?;
        if let Some(i) = issuer {
            let (_, issuer_cert) = X509Certificate::from_der(&i.der)
                .map_err(|_| CaError::CorruptRecord("ca_authorities.pem"))?;
            if cert.issuer().as_raw() != issuer_cert.subject().as_raw() {
                return Err(mismatch("issuer name is not the root's subject"));
            }
        }
        let ski = cert
            .iter_extensions()
            .find_map(|ext| match ext.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(kid) => Some(kid.0.to_vec()),
                _ => None,
            })
            .ok_or_else(|| mismatch("no subject key identifier"))?;
        let cert_serial = Serial::from_bytes(cert.raw_serial())?;
        if cert_serial.as_str() != serial {
            return Err(CaError::CorruptRecord("ca_authorities.serial"));
        }
        let not_after_ms = cert.validity().not_after.timestamp().saturating_mul(1000);
        let pem = pem_encode("CERTIFICATE", &der);
        Ok(Self {
            der,
            pem,
            serial: cert_serial,
            not_after_ms,
            ski,
            key,
        })
    }
}

/// Checks the CA section and maps `key_algorithm` to a key pair kind.
fn validate_config(cfg: &CaConfig) -> Result<KeyPairKind> {
    // The config crate parsed the algorithm: a bad name never gets here.
    let kind = match cfg.key_algorithm {
        CaKeyAlgorithm::P256 => KeyPairKind::P256,
        CaKeyAlgorithm::Rsa3072 => KeyPairKind::Rsa(3072),
    };
    let org = cfg.organization.as_str();
    if org.is_empty() || org.chars().count() > 64 || org.chars().any(char::is_control) {
        return Err(CaError::Config {
            field: "ca.organization",
            reason: "must be 1 to 64 printable characters",
        });
    }
    for (field, v) in [
        ("ca.root_validity_days", cfg.root_validity_days),
        ("ca.issuing_validity_days", cfg.issuing_validity_days),
        ("ca.device_validity_days", cfg.device_validity_days),
        ("ca.server_validity_days", cfg.server_validity_days),
        ("ca.operator_validity_days", cfg.operator_validity_days),
        ("ca.crl_validity_hours", cfg.crl_validity_hours),
    ] {
        if v == 0 {
            return Err(CaError::Config {
                field,
                reason: "must be greater than zero",
            });
        }
    }
    Ok(kind)
}

fn ca_name(org: &str, cn: String) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, org);
    dn.push(DnType::CommonName, cn);
    dn
}

fn ca_params(
    org: &str,
    cn: String,
    path_len: u8,
    days: u32,
    not_after_cap: Option<OffsetDateTime>,
) -> (Serial, CertificateParams) {
    let now = now_s();
    let serial = Serial::random();
    let mut params = CertificateParams::default();
    params.distinguished_name = ca_name(org, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(SerialNumber::from_slice(&serial.to_bytes()));
    params.not_before = now - BACKDATE;
    let end = now + time::Duration::days(i64::from(days));
    params.not_after = match not_after_cap {
        Some(cap) => end.min(cap),
        None => end,
    };
    (serial, params)
}

async fn make_root(key: &HsmKey, cfg: &CaConfig) -> Result<(Serial, Vec<u8>, String)> {
    let org = &cfg.organization;
    let (serial, params) = ca_params(
        org,
        format!("{org} Root CA"),
        1,
        cfg.root_validity_days,
        None,
    );
    let key = key.for_operation();
    let (der, pem) = blocking(move || {
        let cert = params.self_signed(&key).map_err(|e| key.rcgen_error(e))?;
        Ok((cert.der().to_vec(), cert.pem()))
    })
    .await?;
    tracing::info!(serial = %serial, "root CA certificate created");
    Ok((serial, der, pem))
}

async fn make_issuing(
    key: &HsmKey,
    root: &Authority,
    cfg: &CaConfig,
) -> Result<(Serial, Vec<u8>, String)> {
    let org = &cfg.organization;
    let (serial, mut params) = ca_params(
        org,
        format!("{org} Device Issuing CA"),
        0,
        cfg.issuing_validity_days,
        Some(from_ms(root.not_after_ms)?),
    );
    params.use_authority_key_identifier_extension = true;
    let root_der = root.der.clone();
    let root_key = root.key.for_operation();
    let subject = key.public().clone();
    let (der, pem) = blocking(move || {
        let issuer = Issuer::from_ca_cert_der(&root_der.as_slice().into(), root_key.clone())
            .map_err(CaError::Encoding)?;
        let cert = params
            .signed_by(&subject, &issuer)
            .map_err(|e| root_key.rcgen_error(e))?;
        Ok((cert.der().to_vec(), cert.pem()))
    })
    .await?;
    tracing::info!(serial = %serial, "issuing CA certificate created");
    Ok((serial, der, pem))
}

/// notBefore and notAfter of a certificate, in unix milliseconds.
fn validity_ms(der: &[u8]) -> Result<(i64, i64)> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|_| CaError::SelfCheck("CA certificate"))?;
    let v = cert.validity();
    Ok((
        v.not_before.timestamp().saturating_mul(1000),
        v.not_after.timestamp().saturating_mul(1000),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_checks() {
        let cfg = CaConfig::default();
        assert_eq!(validate_config(&cfg).unwrap(), KeyPairKind::P256);
        let rsa = CaConfig {
            key_algorithm: CaKeyAlgorithm::Rsa3072,
            ..CaConfig::default()
        };
        assert_eq!(validate_config(&rsa).unwrap(), KeyPairKind::Rsa(3072));
        let cfg = CaConfig {
            crl_validity_hours: 0,
            ..CaConfig::default()
        };
        assert_eq!(validate_config(&cfg).unwrap_err().code(), "ca_config");
    }
}
