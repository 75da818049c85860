//! Start-up shared by the commands, and `keyward init`.
//!
//! [`open`] brings up what every command needs: the HSM and the key catalog
//! (kms migrations, mechanism probe), the server's own migrations (audit
//! trail), the CA (idempotent bootstrap) and the provisioning registry (its
//! migrations). [`init`] then makes sure the
//! server can serve: the TLS key in the HSM and its certificate on disk, and
//! a first `admin` operator certificate and key for whoever runs it. A second
//! run finds everything and changes nothing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use keyward_ca::{
    BootstrapReport, Ca, CertFilter, CertRecord, CertStatus, IssueRequest, IssuedCert, Profile,
    Role, SubjectKey,
};
use keyward_config::{Config, DatabaseKind};
use keyward_device_provisioning::Provisioning;
use keyward_kms::Kms;
use keyward_kms::db::Database;
use keyward_kms::hsm::{KeyPairKind, PublicKey};
use keyward_kms::pool::PoolExit;
use keyward_kms::signing::SigningKey;

use crate::audit::{AUDIT_SIGNING_LABEL, Actor, AuditEvent, AuditLog, Outcome};
use crate::edge::pki::{self, TlsPaths};
use crate::edge::tls::{TLS_KEY_LABEL, p256_spki};
use crate::metrics::Metrics;

/// Name (CN) of the operator `init` creates.
pub const FIRST_ADMIN_NAME: &str = "admin";

/// Everything opened.
#[derive(Debug)]
pub struct Opened {
    pub kms: Kms,
    pub ca: Ca,
    pub ca_report: BootstrapReport,
    pub provisioning: Provisioning,
    pub audit: AuditLog,
    /// Server migrations applied by this start.
    pub migrated: Vec<i64>,
}

/// The key services this process opened, whose HSM workers [`close_hsm`]
/// joins as the process ends. Weak: a service whose last clone is gone has
/// joined its workers already, and one kept here would keep its workers (and
/// the jobs queued behind a test's last request) running into the exit
/// handlers.
static OPENED_HSMS: Mutex<Vec<PoolExit>> = Mutex::new(Vec::new());

/// Opens the database and, on it, the HSM and the key catalog, for a
/// command.
pub async fn open_kms(config: &Config) -> anyhow::Result<Kms> {
    // The data dir holds the SQLite catalog (national ids, contacts), the
    // TLS certificate and the first operator's key: the owner's only.
    if config.database.kind() == DatabaseKind::Sqlite {
        keyward_kms::db::create_private_dir(&config.data_dir)
            .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    }
    keyward_kms::db::refuse_shared(&config.data_dir, true)?;
    // The process owns the database: opened once here, handed to every
    // store (kms, CA, provisioning, online, audit).
    let db = Database::connect(&config.database)
        .await
        .context("opening the database")?;
    let kms = Kms::open(config, db)
        .await
        .context("opening the HSM and the key catalog")?;
    OPENED_HSMS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(kms.exit_handle());
    Ok(kms)
}

/// Finishes the HSM jobs and joins the pool's workers. `main` calls it after
/// the runtime is gone and before returning: a worker still inside the
/// PKCS#11 module while the process runs its exit handlers can crash it
/// (SoftHSM 2.6.1, `C_CloseSession`).
pub fn close_hsm() {
    let opened = std::mem::take(&mut *OPENED_HSMS.lock().unwrap_or_else(|p| p.into_inner()));
    for hsm in opened {
        hsm.shutdown();
    }
}

/// Opens the HSM, the database (all migrations), the CA and provisioning.
pub async fn open(config: &Config, metrics: Option<Metrics>) -> anyhow::Result<Opened> {
    let kms = open_kms(config).await?;
    kms.ready().await.context("HSM or database not ready")?;
    let pool = kms.db().pool().clone();
    let kind = kms.db().kind();
    let migrated = crate::migrate::run(&pool, kind)
        .await
        .context("applying the server's migrations (audit trail)")?;
    let (ca, ca_report) = Ca::bootstrap(&kms, kms.db(), &config.ca)
        .await
        .context("bringing up the CA")?;
    let provisioning = Provisioning::new(kms.clone(), Arc::new(ca.clone()))
        .await
        .context("bringing up the provisioning registry")?
        .with_check_attempt_limit(config.provisioning.check_attempt_limit)
        .with_import_lease(std::time::Duration::from_millis(
            config.provisioning.import_lease_ms,
        ));
    let audit = AuditLog::new(&kms, metrics);
    Ok(Opened {
        kms,
        ca,
        ca_report,
        provisioning,
        audit,
        migrated,
    })
}

/// What `init` did.
#[derive(Debug, Default)]
pub struct InitReport {
    /// One line per thing created or replaced.
    pub created: Vec<String>,
    pub tls_dir: PathBuf,
    pub operator_dir: PathBuf,
    pub server_serial: Option<String>,
    pub admin_serial: Option<String>,
}

impl InitReport {
    pub fn changed(&self) -> bool {
        !self.created.is_empty()
    }
}

/// `keyward init`: idempotent bootstrap.
pub async fn init(config: &Config) -> anyhow::Result<InitReport> {
    init_opened(config, &open(config, None).await?).await
}

/// [`init`] on an installation already opened.
pub async fn init_opened(config: &Config, o: &Opened) -> anyhow::Result<InitReport> {
    let mut report = InitReport {
        tls_dir: TlsPaths::new(config).dir,
        operator_dir: config.data_dir.join("operators"),
        ..Default::default()
    };
    for v in &o.migrated {
        report
            .created
            .push(format!("server schema migration {v} (audit trail)"));
    }
    // The audit keys come first: every record from here on is MACed.
    let mut audit_keys = Vec::new();
    if o.kms
        .ensure_audit_key()
        .await
        .context("the audit MAC key")?
    {
        audit_keys.push(format!(
            "audit MAC key {} (HSM, HMAC-SHA256)",
            keyward_kms::AUDIT_MAC_LABEL
        ));
    }
    let (_, created) = o
        .kms
        .ensure_signing_key(AUDIT_SIGNING_LABEL, KeyPairKind::P256)
        .await
        .context("the audit signing key")?;
    if created {
        audit_keys.push(format!(
            "audit checkpoint signing key {AUDIT_SIGNING_LABEL} (HSM, P-256)"
        ));
    }
    for what in audit_keys {
        record(&o.audit, "audit", &what).await?;
        report.created.push(what);
    }
    if o.kms
        .ensure_challenge_seal_key()
        .await
        .context("the login challenge seal key")?
    {
        let what = format!(
            "login challenge seal key {} (HSM, HMAC-SHA256)",
            keyward_kms::service::CHALLENGE_SEAL_LABEL
        );
        record(&o.audit, "online", &what).await?;
        report.created.push(what);
    }
    if o.kms
        .ensure_confirmation_code_key()
        .await
        .context("the confirmation code key")?
    {
        let what = format!(
            "confirmation code key {} (HSM, HMAC-SHA256)",
            keyward_kms::service::CONFIRMATION_CODE_LABEL
        );
        record(&o.audit, "confirmation", &what).await?;
        report.created.push(what);
    }
    let (_, created) = o
        .kms
        .ensure_signing_key(crate::ledger::CHECKPOINT_KEY_LABEL, KeyPairKind::P256)
        .await
        .context("the ledger checkpoint signing key")?;
    if created {
        let what = format!(
            "ledger checkpoint signing key {} (HSM, P-256)",
            crate::ledger::CHECKPOINT_KEY_LABEL
        );
        record(&o.audit, "ledger", &what).await?;
        report.created.push(what);
    }
    let r = &o.ca_report;
    for (done, what) in [
        (r.root_key_created, "CA root key keyward/ca/root (HSM)"),
        (r.root_cert_created, "CA root certificate"),
        (
            r.issuing_key_created,
            "CA issuing key keyward/ca/issuing (HSM)",
        ),
        (r.issuing_cert_created, "CA issuing certificate"),
        (r.crl_created, "first CRL"),
    ] {
        if done {
            report.created.push(what.to_owned());
            record(&o.audit, "ca", what).await?;
        }
    }
    ensure_server_tls(config, o, &mut report).await?;
    ensure_certified_key(
        &o.kms,
        &o.ca,
        &o.audit,
        crate::confirmation::EVIDENCE_KEY_LABEL,
        KeyPairKind::P256,
        IssueRequest::evidence(None),
        &mut report,
    )
    .await?;
    ensure_certified_key(
        &o.kms,
        &o.ca,
        &o.audit,
        crate::load::PERMIT_KEY_LABEL,
        KeyPairKind::P256,
        IssueRequest::load_permit(None),
        &mut report,
    )
    .await?;
    ensure_channel_key(&o.kms, &o.ca, &o.audit, &mut report).await?;
    ensure_first_admin(config, o, &mut report).await?;
    o.audit
        .checkpoint()
        .await
        .context("writing the audit checkpoint to the HSM")?;
    Ok(report)
}

fn bootstrap_event(component: &str, detail: String) -> AuditEvent {
    AuditEvent::Bootstrap {
        component: component.to_owned(),
        detail,
    }
}

/// Records something `init` found created (by the CA's own bootstrap).
async fn record(audit: &AuditLog, component: &str, detail: &str) -> anyhow::Result<()> {
    audit
        .append(
            &Actor::Cli,
            &bootstrap_event(component, detail.to_owned()),
            Outcome::Success,
            "init",
        )
        .await
        .context("writing the audit trail")?;
    Ok(())
}

/// Issues a certificate `init` needs between its audit records (the
/// `requested → effect → outcome` sequence of [`AuditLog::recorded`]).
async fn recorded(
    audit: &AuditLog,
    component: &str,
    what: &str,
    issue: impl std::future::Future<Output = anyhow::Result<IssuedCert>>,
) -> anyhow::Result<IssuedCert> {
    audit
        .recorded(
            &Actor::Cli,
            "init",
            &bootstrap_event(component, what.to_owned()),
            issue,
            |r| match r {
                Ok(cert) => (
                    bootstrap_event(component, format!("{what}: serial {}", cert.serial)),
                    Outcome::Success,
                ),
                Err(_) => AuditEvent::failed("bootstrap", "bootstrap_failed"),
            },
        )
        .await
        .context("writing the audit trail")?
}

/// The HSM TLS key and a current certificate for it in `data_dir/tls/`.
async fn ensure_server_tls(
    config: &Config,
    o: &Opened,
    report: &mut InitReport,
) -> anyhow::Result<()> {
    let (key, created) = o
        .kms
        .ensure_signing_key(TLS_KEY_LABEL, KeyPairKind::P256)
        .await
        .context("the server TLS key")?;
    let PublicKey::P256(point) = key.public_key() else {
        bail!("HSM key {TLS_KEY_LABEL} exists but is not an ECDSA P-256 key");
    };
    if created {
        let what = format!("server TLS key {TLS_KEY_LABEL} (HSM, P-256)");
        record(&o.audit, "tls", &what).await?;
        report.created.push(what);
    }
    let paths = TlsPaths::new(config);
    let chain = pki::read_pem_chain(&paths.server_pem).unwrap_or_default();
    let spki = p256_spki(point);
    let problem = pki::server_cert_problem(
        &o.ca,
        &chain,
        &spki,
        &config.server.public_names,
        pki::RENEW_BEFORE_DAYS,
    )
    .await?;
    if let Some(problem) = problem {
        let what = format!(
            "server TLS certificate for {} ({problem})",
            config.server.public_names.join(", ")
        );
        let issue = async {
            let cert =
                o.ca.issue_for_public_key(
                    key.public_key(),
                    IssueRequest::server_tls(config.server.public_names.iter().cloned()),
                )
                .await
                .context("issuing the server TLS certificate")?;
            private_dir(&paths.dir)?;
            write_file(
                &paths.server_pem,
                format!("{}{}", cert.pem, o.ca.issuing_pem()).as_bytes(),
                0o644,
            )?;
            Ok(cert)
        };
        let cert = recorded(&o.audit, "tls", &what, issue).await?;
        report.server_serial = Some(cert.serial.to_string());
        report.created.push(format!(
            "{what} -> {} (serial {})",
            paths.server_pem.display(),
            cert.serial
        ));
    }
    if std::fs::read_to_string(&paths.ca_pem).ok().as_deref() != Some(o.ca.root_pem()) {
        private_dir(&paths.dir)?;
        write_file(&paths.ca_pem, o.ca.root_pem().as_bytes(), 0o644)?;
        report
            .created
            .push(format!("root certificate -> {}", paths.ca_pem.display()));
    }
    Ok(())
}

/// An HSM signing key and the Keyward CA's current certificate for it.
#[derive(Debug, Clone)]
pub struct CertifiedKey {
    pub key: SigningKey,
    /// The certificate's registry record (serial, PEM, validity).
    pub cert: CertRecord,
}

/// `init`'s step for a server key that signs statements others verify (the
/// confirmation evidence key, the e-purse load-permit key): the HSM key
/// pair `label` (generated sign-only and non-extractable when absent) and a
/// current, unrevoked certificate of `request`'s profile for its public
/// key, found in the CA registry or issued (again when it is revoked or
/// within [`pki::RENEW_BEFORE_DAYS`] of its end). Each creation is audited
/// (component: the profile's name) and reported; a second run changes
/// nothing.
pub async fn ensure_certified_key(
    kms: &Kms,
    ca: &Ca,
    audit: &AuditLog,
    label: &str,
    kind: KeyPairKind,
    request: IssueRequest,
    report: &mut InitReport,
) -> anyhow::Result<CertifiedKey> {
    let profile = request.profile;
    let (key, created) = kms
        .ensure_signing_key(label, kind)
        .await
        .with_context(|| format!("the {profile} key {label}"))?;
    let what = format!("{profile} key {label} (HSM, {})", kind_name(key.kind()));
    let cert = certify(
        ca,
        audit,
        label,
        key.public_key(),
        created.then_some(what),
        request,
        report,
    )
    .await?;
    Ok(CertifiedKey { key, cert })
}

/// `init`'s step for the secure channel: the RSA key cards encrypt their
/// pre-master to ([`keyward_kms::service::CHANNEL_KEY_LABEL`]; generated
/// unwrap-only and non-extractable when absent), a current `channel`
/// certificate for it (as [`ensure_certified_key`]), the KEK that wraps
/// channel state for the database, and the key PKCS#1 v1.5's substitute
/// pre-masters are derived under (made whatever `channel.padding` says, so
/// switching it needs no second init). Each creation is audited and
/// reported.
pub async fn ensure_channel_key(
    kms: &Kms,
    ca: &Ca,
    audit: &AuditLog,
    report: &mut InitReport,
) -> anyhow::Result<CertRecord> {
    let label = keyward_kms::service::CHANNEL_KEY_LABEL;
    let (public, created) = kms
        .ensure_channel_key(label)
        .await
        .with_context(|| format!("the channel key {label}"))?;
    let what = format!(
        "channel key {label} (HSM, {}, unwrap only)",
        kind_name(KeyPairKind::Rsa(keyward_kms::service::CHANNEL_KEY_BITS))
    );
    let cert = certify(
        ca,
        audit,
        label,
        &public,
        created.then_some(what),
        IssueRequest::channel(None),
        report,
    )
    .await?;
    if kms
        .ensure_channel_state_kek()
        .await
        .context("the channel state KEK")?
    {
        let what = format!(
            "channel state KEK {} (HSM, AES-256, wrap/unwrap only)",
            keyward_kms::service::CHANNEL_STATE_KEK_LABEL
        );
        record(audit, Profile::Channel.as_str(), &what).await?;
        report.created.push(what);
    }
    if kms
        .ensure_channel_implicit_rejection_key()
        .await
        .context("the channel implicit-rejection key")?
    {
        let what = format!(
            "channel implicit-rejection key {} (HSM, AES-256, derive only)",
            keyward_kms::service::CHANNEL_IMPLICIT_REJECTION_LABEL
        );
        record(audit, Profile::Channel.as_str(), &what).await?;
        report.created.push(what);
    }
    Ok(cert)
}

/// The certificate half of [`ensure_certified_key`] and
/// [`ensure_channel_key`]: records the key's creation (`created`, when it
/// was made now), then finds or issues a current certificate of
/// `request`'s profile for `public`.
async fn certify(
    ca: &Ca,
    audit: &AuditLog,
    label: &str,
    public: &PublicKey,
    created: Option<String>,
    request: IssueRequest,
    report: &mut InitReport,
) -> anyhow::Result<CertRecord> {
    let profile = request.profile;
    let component = profile.as_str();
    if let Some(what) = created {
        record(audit, component, &what).await?;
        report.created.push(what);
    }
    let renew_ms = pki::RENEW_BEFORE_DAYS * 86_400_000;
    if let Some(cert) = current_certificate(ca, profile, public, renew_ms).await? {
        return Ok(cert);
    }
    let what = format!("{profile} certificate for {label}");
    let issue = async {
        ca.issue_for_public_key(public, request)
            .await
            .with_context(|| format!("issuing the {profile} certificate"))
    };
    let issued = recorded(audit, component, &what, issue).await?;
    report
        .created
        .push(format!("{what} (serial {})", issued.serial));
    ca.get(&issued.serial)
        .await?
        .context("the certificate just issued is not in the registry")
}

/// The existing HSM key `label` and its current certificate of `profile`,
/// as a serving replica loads them; an error naming `keyward init` when
/// either is missing.
pub async fn certified_key(
    kms: &Kms,
    ca: &Ca,
    label: &str,
    profile: Profile,
) -> anyhow::Result<CertifiedKey> {
    let key = match kms.signing_key(label).await {
        Ok(k) => k,
        Err(keyward_kms::KmsError::KeyMissing(_)) => {
            bail!("no {profile} key {label} in the HSM: run `keyward init` first")
        }
        Err(e) => return Err(e).with_context(|| format!("loading the {profile} key {label}")),
    };
    match current_certificate(ca, profile, key.public_key(), 0).await? {
        Some(cert) => Ok(CertifiedKey { key, cert }),
        None => bail!("no current {profile} certificate for HSM key {label}: run `keyward init`"),
    }
}

/// The newest valid certificate of `profile` for `public` that has more
/// than `renew_before_ms` left, from the CA registry.
pub async fn current_certificate(
    ca: &Ca,
    profile: Profile,
    public: &PublicKey,
    renew_before_ms: i64,
) -> anyhow::Result<Option<CertRecord>> {
    let spki = SubjectKey::from_kms(public)?.spki_der();
    let now_ms = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    let mut best: Option<CertRecord> = None;
    let mut offset = 0;
    loop {
        let page = ca
            .list(&CertFilter {
                profile: Some(profile),
                status: Some(CertStatus::Valid),
                limit: Some(1000),
                offset: Some(offset),
                ..Default::default()
            })
            .await?;
        for c in &page {
            let current = c.not_before_ms <= now_ms && c.not_after_ms - renew_before_ms > now_ms;
            if current
                && best
                    .as_ref()
                    .is_none_or(|b| c.not_after_ms > b.not_after_ms)
                && pem_spki(&c.pem).as_deref() == Some(spki.as_slice())
            {
                best = Some(c.clone());
            }
        }
        if page.len() < 1000 {
            return Ok(best);
        }
        offset += 1000;
    }
}

/// The `SubjectPublicKeyInfo` of a PEM certificate.
fn pem_spki(pem: &str) -> Option<Vec<u8>> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    Some(cert.public_key().raw.to_vec())
}

fn kind_name(kind: KeyPairKind) -> String {
    match kind {
        KeyPairKind::P256 => "P-256".to_owned(),
        KeyPairKind::Rsa(bits) => format!("RSA-{bits}"),
    }
}

/// Whether a valid, unexpired operator certificate with the admin role exists.
async fn admin_exists(ca: &Ca) -> anyhow::Result<bool> {
    let now_ms = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    let mut offset = 0;
    loop {
        let page = ca
            .list(&CertFilter {
                profile: Some(Profile::Operator),
                status: Some(CertStatus::Valid),
                limit: Some(1000),
                offset: Some(offset),
                ..Default::default()
            })
            .await?;
        if page
            .iter()
            .any(|c| c.operator_role == Some(Role::Admin) && c.not_after_ms > now_ms)
        {
            return Ok(true);
        }
        if page.len() < 1000 {
            return Ok(false);
        }
        offset += 1000;
    }
}

/// The first admin operator: a software key (the admin takes it away; it is
/// not an HSM key) and its certificate, unless an admin certificate exists.
async fn ensure_first_admin(
    config: &Config,
    o: &Opened,
    report: &mut InitReport,
) -> anyhow::Result<()> {
    if admin_exists(&o.ca).await? {
        return Ok(());
    }
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let point = secret
        .public_key()
        .to_encoded_point(false)
        .as_bytes()
        .to_vec();
    let key_pem = secret
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|_| anyhow::anyhow!("encoding the operator key"))?;

    let what = format!("operator certificate {FIRST_ADMIN_NAME} (role admin)");
    let issue = async {
        let cert =
            o.ca.issue_for_public_key(
                &PublicKey::P256(point),
                IssueRequest::operator(FIRST_ADMIN_NAME, Role::Admin),
            )
            .await
            .context("issuing the first operator certificate")?;
        let dir = config.data_dir.join("operators");
        private_dir(&dir)?;
        write_file(&dir.join("admin.key"), key_pem.as_bytes(), 0o600)?;
        write_file(
            &dir.join("admin.pem"),
            format!("{}{}", cert.pem, o.ca.issuing_pem()).as_bytes(),
            0o644,
        )?;
        write_file(&dir.join("ca.pem"), o.ca.root_pem().as_bytes(), 0o644)?;
        Ok(cert)
    };
    let cert = recorded(&o.audit, "operator", &what, issue).await?;
    let dir = config.data_dir.join("operators");
    report.admin_serial = Some(cert.serial.to_string());
    report.created.push(format!(
        "{what}, serial {} -> {}/admin.key (0600), admin.pem, ca.pem",
        cert.serial,
        dir.display()
    ));
    Ok(())
}

/// Creates `dir` (mode 0700 when new).
fn private_dir(dir: &Path) -> anyhow::Result<()> {
    keyward_kms::db::create_private_dir(dir).with_context(|| format!("creating {}", dir.display()))
}

/// Writes `path` atomically (temp file + rename) with `mode`.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(contents)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(f);
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data dir other users can read is refused at start-up,
    /// with the path and the fix; a new one is made 0700.
    #[cfg(unix)]
    #[tokio::test]
    async fn shared_data_dir_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let text = format!(
            "data_dir = {:?}\n[hsm]\nmodule = \"/nonexistent.so\"\ntoken_label = \"t\"\npin_env = \"KW_TEST_NO_PIN\"\n",
            tmp.path().join("var").display().to_string()
        );
        let config = Config::from_parts(
            &text,
            &tmp.path().join("k.toml"),
            &Default::default(),
            tmp.path(),
        )
        .unwrap();
        // A fresh data dir is created 0700 (opening the HSM then fails).
        let _ = open_kms(&config).await;
        let mode = std::fs::metadata(&config.data_dir)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = open_kms(&config).await.unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains(&config.data_dir.display().to_string()),
            "{msg}"
        );
        assert!(msg.contains("chmod 700"), "{msg}");
    }
}
