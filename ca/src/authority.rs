//! [`Ca`]: bootstrap of the root and issuing CAs, issuance under profiles,
//! the registry, revocation and CRLs. Every signature is made by an HSM key
//! through kms, from a blocking task (rcgen's signer is synchronous).

use std::fmt;
use std::sync::Arc;

use base64::Engine;
use keyward_config::CaConfig;
use keyward_kms::Kms;
use keyward_kms::catalog::Catalog;
use keyward_kms::hsm::{KeyPairKind, PublicKey};
use keyward_kms::types::DeviceId;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, IsCa, Issuer, KeyIdMethod, KeyUsagePurpose, RevokedCertParams, SerialNumber,
};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::csr;
use crate::error::{CaError, Result};
use crate::hsm_key::{HsmKey, SubjectKey};
use crate::profile::{self, IssueRequest, Profile};
use crate::registry::{CertFilter, CertRecord, CertStatus, RevocationReason, Serial};
use crate::store::{NewCert, Store, StoredCrl, now_ms};

/// HSM label of the root CA key pair.
pub const ROOT_KEY_LABEL: &str = "keyward/ca/root";
/// HSM label of the issuing CA key pair.
pub const ISSUING_KEY_LABEL: &str = "keyward/ca/issuing";

/// How far `notBefore` is backdated, for verifiers whose clocks lag.
const BACKDATE: time::Duration = time::Duration::minutes(5);
/// Attempts to find an unused serial (a clash of 127-bit random serials
/// means a broken RNG, not bad luck).
const SERIAL_ATTEMPTS: usize = 4;

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

/// A CRL signed by the issuing CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crl {
    pub der: Vec<u8>,
    pub pem: String,
    /// The cRLNumber: increases with every CRL, across restarts and replicas.
    pub number: u64,
    pub this_update_ms: i64,
    pub next_update_ms: i64,
}

impl Crl {
    fn from_stored(s: StoredCrl) -> Result<Self> {
        Ok(Self {
            pem: pem_encode("X509 CRL", &s.der),
            number: u64::try_from(s.number).map_err(|_| CaError::CorruptRecord("ca_crl.number"))?,
            this_update_ms: s.this_update_ms,
            next_update_ms: s.next_update_ms,
            der: s.der,
        })
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
        catalog: &Catalog,
        cfg: &CaConfig,
    ) -> Result<(Ca, BootstrapReport)> {
        let kind = validate_config(cfg)?;
        let store = Store::new(catalog);
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

    /// The root CA certificate, PEM: the trust anchor clients install.
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

    // ---- issuance --------------------------------------------------------------

    /// Issues a certificate for the key of a CSR (DER or PEM) under
    /// `req.profile`. The CSR's signature must verify; everything else it
    /// asks for (subject, CA flag, key usages, EKUs, SANs) is ignored.
    pub async fn issue_from_csr(&self, csr: &[u8], req: IssueRequest) -> Result<IssuedCert> {
        let key = csr::verified_csr_key(csr)?;
        self.issue(key, req).await
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

    async fn issue(&self, key: SubjectKey, req: IssueRequest) -> Result<IssuedCert> {
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
            let (der, pem, subject) = self.sign_leaf(params.clone(), key.clone()).await?;
            let (not_before_ms, not_after_ms) = (ms(params.not_before), ms(params.not_after));
            let record = NewCert {
                serial: &serial,
                profile: req.profile,
                subject: &subject,
                device_id: facts.device_id.map(|d| d.to_string()),
                role: facts.role,
                not_before_ms,
                not_after_ms,
                pem: &pem,
            };
            if inner.store.insert_certificate(&record).await? {
                tracing::info!(
                    serial = %serial,
                    profile = %req.profile,
                    subject = %subject,
                    "certificate issued"
                );
                return Ok(IssuedCert {
                    serial,
                    profile: req.profile,
                    subject,
                    der,
                    pem,
                    not_before_ms,
                    not_after_ms,
                });
            }
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

    // ---- registry --------------------------------------------------------------

    /// Registered certificates matching `filter`, newest first.
    pub async fn list(&self, filter: &CertFilter) -> Result<Vec<CertRecord>> {
        self.inner.store.list(filter).await
    }

    /// One registered certificate; `None` if the serial was never issued here.
    pub async fn get(&self, serial: &Serial) -> Result<Option<CertRecord>> {
        self.inner.store.certificate(serial).await
    }

    /// Changes with every revocation and every CRL: what cached OCSP
    /// answers are keyed under (`ocsp::OcspResponder`).
    pub(crate) async fn crl_generation(&self) -> Result<(i64, Option<i64>)> {
        self.inner.store.crl_generation().await
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

    /// Revokes a certificate for good, then re-signs the CRL.
    /// [`CaError::UnknownSerial`] or [`CaError::AlreadyRevoked`] otherwise.
    ///
    /// The revocation is committed before the CRL is signed; if signing then
    /// fails (HSM busy or down) the revocation still stands, the error is
    /// logged, and the next [`Ca::crl`] or [`Ca::refresh_crl_if_due`] signs a
    /// CRL that includes it (the stored CRL is known to be stale).
    pub async fn revoke(&self, serial: &Serial, reason: RevocationReason) -> Result<()> {
        self.inner.store.revoke(serial, reason, ms(now_s())).await?;
        tracing::info!(serial = %serial, reason = %reason, "certificate revoked");
        if let Err(e) = self.generate_crl().await {
            tracing::error!(
                serial = %serial,
                code = e.code(),
                error = %e,
                "CRL not re-signed after a revocation; it will be on the next refresh"
            );
        }
        Ok(())
    }

    // ---- CRLs -------------------------------------------------------------------

    /// The current CRL: the latest stored one while it covers every
    /// revocation and has not passed its nextUpdate, else a freshly signed one.
    pub async fn crl(&self) -> Result<Crl> {
        let state = self.inner.store.crl_state().await?;
        match state.latest {
            Some(latest)
                if latest.covers_revision >= state.revision && now_ms() < latest.next_update_ms =>
            {
                Crl::from_stored(latest)
            }
            _ => self.generate_crl().await,
        }
    }

    /// For a schedule: re-signs the CRL when half its validity has passed or a
    /// revocation is not in it yet. Returns the new CRL, or `None` if the
    /// stored one is still good.
    pub async fn refresh_crl_if_due(&self) -> Result<Option<Crl>> {
        let state = self.inner.store.crl_state().await?;
        let due = match &state.latest {
            None => true,
            Some(l) => {
                let half = l.this_update_ms + (l.next_update_ms - l.this_update_ms) / 2;
                l.covers_revision < state.revision || now_ms() >= half
            }
        };
        if due {
            self.generate_crl().await.map(Some)
        } else {
            Ok(None)
        }
    }

    /// Takes the next CRL number and the revoked list, signs, self-checks and
    /// stores. If another replica stored a higher number meanwhile, that one
    /// is returned instead (it lists at least as much).
    async fn generate_crl(&self) -> Result<Crl> {
        let inner = &self.inner;
        let now = now_s();
        let snapshot = inner.store.allocate_crl(ms(now)).await?;
        let next_update = now + time::Duration::hours(i64::from(inner.cfg.crl_validity_hours));
        let revoked_certs = snapshot
            .revoked
            .iter()
            .map(|r| {
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&r.serial.to_bytes()),
                    revocation_time: from_ms(r.revoked_at_ms)?,
                    reason_code: r.reason.crl_reason(),
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let number = u64::try_from(snapshot.number)
            .map_err(|_| CaError::CorruptRecord("ca_crl.last_number"))?;
        let params = CertificateRevocationListParams {
            this_update: now,
            next_update,
            crl_number: SerialNumber::from_slice(&minimal_be(number)),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::PreSpecified(inner.issuing.ski.clone()),
        };
        let ca_der = inner.issuing.der.clone();
        let key = inner.issuing.key.for_operation();
        let der = blocking(move || {
            let issuer = Issuer::from_ca_cert_der(&ca_der.as_slice().into(), key.clone())
                .map_err(CaError::Encoding)?;
            let crl = params.signed_by(&issuer).map_err(|e| key.rcgen_error(e))?;
            let der = crl.der().to_vec();
            check_crl(&der, &key.public().spki_der())?;
            Ok(der)
        })
        .await?;
        let stored = StoredCrl {
            number: snapshot.number,
            covers_revision: snapshot.revision,
            this_update_ms: ms(now),
            next_update_ms: ms(next_update),
            der,
        };
        if inner.store.publish_crl(&stored).await? {
            tracing::info!(number, revoked = snapshot.revoked.len(), "CRL signed");
            return Crl::from_stored(stored);
        }
        // A replica published a higher number while this one was signing.
        match inner.store.crl_state().await?.latest {
            Some(latest) => Crl::from_stored(latest),
            None => Err(CaError::CorruptRecord("ca_crl")),
        }
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
    let kind = match cfg.key_algorithm.as_str() {
        "p256" => KeyPairKind::P256,
        "rsa3072" => KeyPairKind::Rsa(3072),
        _ => {
            return Err(CaError::Config {
                field: "ca.key_algorithm",
                reason: "must be p256 or rsa3072",
            });
        }
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

fn check_crl(der: &[u8], issuer_spki: &[u8]) -> Result<()> {
    let bad = || CaError::SelfCheck("CRL");
    let (_, crl) = CertificateRevocationList::from_der(der).map_err(|_| bad())?;
    let (_, spki) = SubjectPublicKeyInfo::from_der(issuer_spki).map_err(|_| bad())?;
    crl.verify_signature(&spki).map_err(|_| bad())
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

fn minimal_be(n: u64) -> Vec<u8> {
    let b = n.to_be_bytes();
    let start = b.iter().position(|x| *x != 0).unwrap_or(b.len() - 1);
    b[start..].to_vec()
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
        assert_eq!(minimal_be(0), vec![0]);
        assert_eq!(minimal_be(1), vec![1]);
        assert_eq!(minimal_be(0x1_0000), vec![1, 0, 0]);
        let pem = pem_encode("X509 CRL", &[0u8; 100]);
        assert!(pem.starts_with("-----BEGIN X509 CRL-----\n"));
        assert!(pem.ends_with("-----END X509 CRL-----\n"));
        assert!(pem.lines().all(|l| l.len() <= 64));
        let t = now_s();
        assert_eq!(from_ms(ms(t)).unwrap(), t);
    }

    #[test]
    fn config_checks() {
        let mut cfg = CaConfig::default();
        assert!(validate_config(&cfg).is_ok());
        cfg.key_algorithm = "ed25519".into();
        assert_eq!(validate_config(&cfg).unwrap_err().code(), "ca_config");
        let cfg = CaConfig {
            crl_validity_hours: 0,
            ..CaConfig::default()
        };
        assert_eq!(validate_config(&cfg).unwrap_err().code(), "ca_config");
    }
}
