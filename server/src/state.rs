//! What every handler and background task shares.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use keyward_ca::{Ca, OcspLimits, OcspResponder};
use keyward_config::Config;
use keyward_device_provisioning::Provisioning;
use keyward_kms::Kms;

use crate::audit::AuditLog;
use crate::channel::Channels;
use crate::confirmation::Confirmations;
use crate::edge::tls::TlsState;
use crate::ledger::Ledger;
use crate::load::Loads;
use crate::metrics::Metrics;
use crate::online::{CrlReload, Online};
use crate::outbox::Outbox;

/// Cheap to clone: one `Arc`.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Inner>);

#[derive(Debug)]
pub struct Inner {
    pub config: Config,
    pub kms: Kms,
    pub ca: Ca,
    pub provisioning: Provisioning,
    /// The online service (login, sessions, rotation).
    pub online: Online,
    /// Transaction confirmation over a second channel.
    pub confirmations: Confirmations,
    /// The e-purse load.
    pub loads: Loads,
    /// The card-to-server secure channel.
    pub channels: Channels,
    /// The ledger: accounts, credits, sealing and verification.
    pub ledger: Ledger,
    /// Messages protocol steps enqueue, and their delivery.
    pub outbox: Outbox,
    pub audit: AuditLog,
    pub metrics: Metrics,
    pub tls: TlsState,
    /// The OCSP responder and its cache of signed answers.
    pub ocsp: OcspResponder,
    draining: AtomicBool,
    /// Serialises CRL refresh + TLS swap (a revocation and the schedule may
    /// race otherwise).
    pub crl_lock: tokio::sync::Mutex<()>,
}

impl AppState {
    pub fn new(
        config: Config,
        kms: Kms,
        ca: Ca,
        provisioning: Provisioning,
        audit: AuditLog,
        metrics: Metrics,
        tls: TlsState,
    ) -> anyhow::Result<Self> {
        let ocsp = OcspResponder::new(
            ca.clone(),
            OcspLimits {
                cache_entries: config.server.ocsp_cache_entries,
                signatures_per_second: config.server.ocsp_signatures_per_second,
            },
        )
        .context("bringing up the OCSP responder")?
        // Device certificates of imports that never completed are not `good`.
        .with_standing(Arc::new(provisioning.clone()));
        // The senders' secret and CA files are read now: a bad one stops
        // start-up.
        let outbox = Outbox::new(kms.db().clone(), &config.outbox, metrics.clone())
            .context("setting up the outbox's senders")?;
        let online = Online::new(
            kms.clone(),
            ca.clone(),
            provisioning.clone(),
            audit.clone(),
            metrics.clone(),
            config.online.clone(),
            CrlReload::default(),
        );
        let confirmations = Confirmations::new(
            kms.clone(),
            ca.clone(),
            provisioning.clone(),
            audit.clone(),
            metrics.clone(),
            outbox.clone(),
            config.confirmation.clone(),
        )?;
        let loads = Loads::new(
            kms.clone(),
            ca.clone(),
            provisioning.clone(),
            audit.clone(),
            metrics.clone(),
            config.load.clone(),
        );
        let channels = Channels::new(
            kms.clone(),
            ca.clone(),
            provisioning.clone(),
            audit.clone(),
            metrics.clone(),
            &config.channel,
        );
        let ledger = Ledger::new(
            kms.clone(),
            provisioning.clone(),
            audit.clone(),
            config.load.clone(),
        );
        Ok(Self(Arc::new(Inner {
            online,
            confirmations,
            loads,
            channels,
            ledger,
            outbox,
            config,
            kms,
            ca,
            provisioning,
            audit,
            metrics,
            tls,
            ocsp,
            draining: AtomicBool::new(false),
            crl_lock: tokio::sync::Mutex::new(()),
        })))
    }

    /// Marks the service as shutting down: `/ready` answers 503 from now on.
    pub fn set_draining(&self) {
        self.0.draining.store(true, Ordering::Relaxed);
    }

    pub fn draining(&self) -> bool {
        self.0.draining.load(Ordering::Relaxed)
    }
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}
