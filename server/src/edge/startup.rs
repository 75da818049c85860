//! What a replica does before it listens, and keeps doing beside the
//! listeners: open the state it serves from (HSM, database, CA, the server
//! TLS key, certificate and CRL, each checked), and undo imports whose
//! process died.
//!
//! Imports whose batch lease ran out are undone before the listeners open
//! and then once a lease period (`provisioning.import_lease_ms`) by
//! [`recover_imports`]: safe on every replica at once, since each batch is
//! claimed by one.

use anyhow::{Context, bail};
use keyward_config::Config;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};

use crate::audit::{Actor, AuditEvent};
use crate::bootstrap;
use crate::edge::pki::{self, TlsPaths};
use crate::edge::tls::{HsmTlsKey, TLS_KEY_LABEL, TlsMaterial, TlsState};
use crate::jobs::{Job, JobError};
use crate::metrics::Metrics;
use crate::state::AppState;

/// Opens everything a serving replica needs — HSM, database, CA, the server
/// TLS key and certificate, the CRL — and checks it, as `keyward serve` does
/// before it binds. Route tests build their router on the same state.
pub async fn open_state(config: Config) -> anyhow::Result<AppState> {
    let metrics = Metrics::new().context("creating the metrics registry")?;
    let opened = bootstrap::open(&config, Some(metrics.clone())).await?;
    state_from(config, opened, metrics).await
}

/// [`open_state`] on an installation already opened (with `metrics`), for a
/// process that also ran `init` on it (tests: one HSM open per process).
pub async fn state_from(
    config: Config,
    opened: bootstrap::Opened,
    metrics: Metrics,
) -> anyhow::Result<AppState> {
    if opened.ca_report.created_anything() || !opened.migrated.is_empty() {
        tracing::warn!("serve created CA or schema objects: run `keyward init` before `serve`");
    }
    if !opened.kms.has_audit_key().await? {
        bail!(
            "no audit MAC key {} in the HSM: run `keyward init` first",
            keyward_kms::AUDIT_MAC_LABEL
        );
    }
    // A token made before login challenges were sealed gets its key here.
    if opened.kms.ensure_challenge_seal_key().await? {
        tracing::warn!(
            label = keyward_kms::service::CHALLENGE_SEAL_LABEL,
            "created the login challenge seal key missing from the HSM"
        );
    }
    if opened.kms.ensure_confirmation_code_key().await? {
        tracing::warn!(
            label = keyward_kms::service::CONFIRMATION_CODE_LABEL,
            "created the confirmation code key missing from the HSM"
        );
    }
    if config.channel.padding == keyward_config::ChannelPadding::Pkcs1v15 {
        channel_pkcs1_at_start(&opened.kms).await?;
    }
    // Executions sign evidence receipts: a replica that could not is
    // stopped here, not at a customer's confirmation.
    let evidence = bootstrap::certified_key(
        &opened.kms,
        &opened.ca,
        crate::confirmation::EVIDENCE_KEY_LABEL,
        keyward_ca::Profile::Evidence,
    )
    .await?;
    let key = match opened.kms.signing_key(TLS_KEY_LABEL).await {
        Ok(k) => k,
        Err(keyward_kms::KmsError::KeyMissing(_)) => {
            bail!("no server TLS key {TLS_KEY_LABEL} in the HSM: run `keyward init` first")
        }
        Err(e) => return Err(e).context("loading the server TLS key"),
    };
    let key = HsmTlsKey::new(key, Some(metrics.clone()))?;
    let paths = TlsPaths::new(&config);
    let chain = pki::read_pem_chain(&paths.server_pem).unwrap_or_default();
    if let Some(problem) = pki::server_cert_problem(
        &opened.ca,
        &chain,
        key.spki(),
        &config.server.public_names,
        0,
    )
    .await?
    {
        bail!(
            "server TLS certificate {}: {problem}; run `keyward init`",
            paths.server_pem.display()
        );
    }
    let server_not_after = chain.first().and_then(|c| pki::not_after(c.as_ref()));
    let crl = opened.ca.crl().await.context("loading the CRL")?;
    let crl_info = pki::crl_in_use(&crl)?;
    let material = TlsMaterial {
        chain,
        key,
        client_root: CertificateDer::from(opened.ca.root_der().to_vec()),
    };
    let tls = TlsState::new(
        material,
        CertificateRevocationListDer::from(crl.der.clone()),
        crl_info.clone(),
        config.server.tls_session_cache_entries,
    )?;
    pki::update_crl_metrics(&metrics, &crl_info);
    let expiry = &metrics.certificate_expiry;
    expiry
        .with_label_values(&["evidence"])
        .set(evidence.cert.not_after_ms / 1000);
    for (name, not_after) in [
        ("server", server_not_after),
        ("issuing_ca", pki::not_after(opened.ca.issuing_der())),
        ("root_ca", pki::not_after(opened.ca.root_der())),
    ] {
        if let Some(not_after) = not_after {
            expiry.with_label_values(&[name]).set(not_after);
        }
    }
    AppState::new(
        config,
        opened.kms,
        opened.ca,
        opened.provisioning,
        opened.audit,
        metrics,
        tls,
    )
}

/// `channel.padding = "pkcs1v15"`: the implicit-rejection key (made here
/// on a token initialised before it existed, as the challenge seal key),
/// then the probe of `CKM_RSA_PKCS` and of what the module does with bad
/// padding (logged), so a replica that could not take v1.5 key exchanges
/// stops here.
async fn channel_pkcs1_at_start(kms: &keyward_kms::Kms) -> anyhow::Result<()> {
    if kms.ensure_channel_implicit_rejection_key().await? {
        tracing::warn!(
            label = keyward_kms::service::CHANNEL_IMPLICIT_REJECTION_LABEL,
            "created the channel implicit-rejection key missing from the HSM"
        );
    }
    let label = crate::channel::store::current_key(kms.db())
        .await
        .context("reading the current channel key")?;
    kms.probe_channel_pkcs1(&label)
        .await
        .with_context(|| format!("channel.padding = \"pkcs1v15\" with the channel key {label}"))?;
    Ok(())
}

/// Takes over and undoes every import whose lease ran out
/// ([`keyward_device_provisioning::Provisioning::recover_stale_imports`]),
/// writes one audit record per batch (actor `system`) and counts them in
/// `keyward_import_recoveries_total`; reloads the CRL if anything was revoked.
/// Fails if the stale batches cannot be listed or a record not written.
pub async fn recover_imports(state: &AppState) -> anyhow::Result<usize> {
    let notes = state.provisioning.recover_stale_imports().await?;
    let mut revoked = false;
    for note in &notes {
        state
            .metrics
            .import_recoveries
            .with_label_values(&[note.outcome.as_str()])
            .inc();
        revoked |= note.get("revoked").is_some_and(|n| n != "0");
        state
            .audit
            .append(
                &Actor::System,
                &AuditEvent::Provisioning(note.clone()),
                note.outcome,
                "-",
            )
            .await
            .context("writing the audit trail")?;
    }
    if revoked && let Err(e) = pki::refresh_crl(state).await {
        tracing::error!(
            error = format!("{e:#}"),
            "import recovery revoked certificates, but the TLS listeners could not load the new CRL yet; the schedule retries"
        );
    }
    Ok(notes.len())
}

/// Job `imports.recover`: [`recover_imports`] once a lease period, for
/// imports killed on this or another replica, on every replica (each batch
/// is claimed by one). Its first run is a period after start: `serve` runs
/// it before listening.
pub fn import_recovery_job(state: &AppState) -> Job<AppState> {
    Job::new(
        "imports.recover",
        state.provisioning.import_lease(),
        |state: AppState| async move {
            recover_imports(&state)
                .await
                .map(drop)
                .map_err(|e| JobError::failed("import_recovery_failed", e))
        },
    )
    .after_first_interval()
}
