//! The e-purse load (seed CN101211451A, docs/protocol.md §13): permit =
//! pending transfer, completion = post, reversal = void, and the lost
//! report settled by what the purse proves at its next contact.
//!
//! - [`Loads::request`]: the device's signed request is verified, then
//!   decoded; the permit is signed in the HSM **first**, then the sequence
//!   number, the debit (a pending transfer), the load row with the permit
//!   bytes and the audit record commit in one transaction; the permit is
//!   answered only after the commit. A retry (same sequence, same bytes)
//!   gets the stored permit byte for byte and moves nothing.
//! - [`Loads::report`]: the device's signed report posts the load (applied,
//!   and the wallet adds up) or voids it (failed). A report that does not
//!   verify or does not add up voids it as **doubtful** and raises a
//!   security event.
//! - [`Loads::sweep`]: a pending load past its timeout is voided as
//!   doubtful (job `load.sweeper`, once across replicas).
//! - Every later request or [`PurseStatus`] carries `last_applied`, the
//!   sequence of the last load the purse applied (a purse applies a permit
//!   only for its latest request). Each unsettled load before it is then
//!   settled: applied → posted, or for a doubtful one re-debited
//!   (`late_applied`); not applied → voided, or the reversal stands
//!   (`not_applied`). Reversing on timeout never creates money.

mod error;
pub mod store;

use std::str::FromStr;
use std::sync::Arc;

use keyward_config::LoadConfig;
use keyward_device_provisioning::Provisioning;
use keyward_kms::Kms;
use keyward_kms::db::{Database, now_ms};
use keyward_kms::hsm::SignMechanism;
use keyward_ledger::{Amount, Currency, Refusal, TransferId, VoidReason};
use keyward_protocol::load::{
    LoadPermit, LoadReport, LoadRequest, Outcome, PurseStatus, RequestId,
};
use serde_json::json;

pub use error::{LoadError, ledger_kind};
pub use store::{LoadRow, State};

use crate::audit::{AuditEvent, AuditLog, Outcome as AuditOutcome};
use crate::jobs::{Job, JobError};
use crate::metrics::Metrics;
use crate::online::{Device, Session};
use crate::security::kind::SecurityKind;
use crate::state::AppState;

pub type Result<T> = std::result::Result<T, LoadError>;

/// The HSM key that signs load permits (P-256, certified `load-permit`).
pub const PERMIT_KEY_LABEL: &str = "keyward/load/permit";

/// The outcomes `keyward_loads_total` counts.
pub const OUTCOMES: [&str; 8] = [
    "permitted",
    "refused",
    "posted",
    "voided",
    "doubtful",
    "late_applied",
    "not_applied",
    "report_refused",
];

/// Why a load was reversed, as `keyward_load_reversals_total` counts it:
/// the purse's failure report, a report that could not be trusted, no
/// report in time, or the purse's next message proving it never applied it.
pub const REVERSAL_REASONS: [&str; 4] = ["failure", "bad_report", "timeout", "proven_not_applied"];

/// A signed message as the device sends it: the exact bytes and the
/// signature over them.
pub struct Signed {
    pub payload: Vec<u8>,
    pub signature: Vec<u8>,
}

impl std::fmt::Debug for Signed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signed")
            .field("payload_len", &self.payload.len())
            .finish_non_exhaustive()
    }
}

/// A permit as answered: the stored bytes and the HSM's signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permitted {
    pub load_id: String,
    pub permit: Vec<u8>,
    pub signature: Vec<u8>,
    /// The customer account's balance after the debit (on a retry: as
    /// stored then, `None`).
    pub balance_after_minor: Option<i64>,
    /// The permit key's certificate chain (PEM), up to the Keyward root.
    pub chain_pem: String,
}

/// What a report or a settlement left the load as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub load_id: String,
    pub state: State,
}

/// The load service; cheap to clone.
#[derive(Clone)]
pub struct Loads(Arc<Parts>);

struct Parts {
    kms: Kms,
    provisioning: Provisioning,
    audit: AuditLog,
    metrics: Metrics,
    ca: keyward_ca::Ca,
    config: LoadConfig,
    /// The permit key and its `load-permit` certificate, loaded at first use.
    permit_key: tokio::sync::OnceCell<crate::bootstrap::CertifiedKey>,
}

impl std::fmt::Debug for Loads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loads").finish_non_exhaustive()
    }
}

impl Loads {
    pub fn new(
        kms: Kms,
        ca: keyward_ca::Ca,
        provisioning: Provisioning,
        audit: AuditLog,
        metrics: Metrics,
        config: LoadConfig,
    ) -> Self {
        Self(Arc::new(Parts {
            kms,
            provisioning,
            audit,
            metrics,
            ca,
            config,
            permit_key: tokio::sync::OnceCell::new(),
        }))
    }

    fn db(&self) -> &Database {
        self.0.kms.db()
    }

    pub fn config(&self) -> &LoadConfig {
        &self.0.config
    }

    /// The permit key and its current certificate (`keyward init` makes
    /// both).
    async fn permit_key(&self) -> Result<&crate::bootstrap::CertifiedKey> {
        let p = &self.0;
        p.permit_key
            .get_or_try_init(|| async {
                crate::bootstrap::certified_key(
                    &p.kms,
                    &p.ca,
                    PERMIT_KEY_LABEL,
                    keyward_ca::Profile::LoadPermit,
                )
                .await
                .map_err(|e| {
                    tracing::error!(error = %format!("{e:#}"), "the load permit key");
                    LoadError::Kms(keyward_kms::KmsError::KeyMissing(PERMIT_KEY_LABEL.into()))
                })
            })
            .await
    }

    /// Signs a permit with the HSM load-permit key (DER ECDSA P-256).
    async fn sign_permit(&self, permit: &[u8]) -> Result<Vec<u8>> {
        let key = &self.permit_key().await?.key;
        Ok(key.sign(SignMechanism::EcdsaSha256, permit).await?)
    }

    /// The load-permit certificate (PEM), then the issuing CA's: what a
    /// purse checks a permit's signature with, up to the Keyward root.
    pub async fn permit_chain_pem(&self) -> Result<String> {
        let cert = &self.permit_key().await?.cert;
        Ok(format!("{}{}", cert.pem, self.0.ca.issuing_pem()))
    }

    /// Verifies a device's signed message under the session device's key.
    async fn verified(&self, device: &Device, m: &Signed) -> Result<()> {
        let ok = self
            .0
            .provisioning
            .verify_device_signature(device.device_id, &device.serial, &m.payload, &m.signature)
            .await?;
        if ok {
            Ok(())
        } else {
            Err(LoadError::SignatureInvalid)
        }
    }

    /// A device's signed load request: a permit, or a typed refusal that
    /// moved nothing.
    pub async fn request(
        &self,
        device: &Device,
        session: &Session,
        m: Signed,
    ) -> Result<Permitted> {
        match self.requested(device, session, &m).await {
            Err(e) if e.kind().is_client() => {
                self.refused(device, "load.request", None, &e).await;
                self.count("refused");
                Err(e)
            }
            other => other,
        }
    }

    async fn requested(&self, device: &Device, session: &Session, m: &Signed) -> Result<Permitted> {
        let p = &self.0;
        self.verified(device, m).await?;
        let req = LoadRequest::decode(&m.payload)?;
        crate::fault_point!("load.request.verified");
        if req.device != device.device_id.bytes() {
            return Err(LoadError::DeviceMismatch);
        }
        let binding = p
            .provisioning
            .bindings(device.device_id)
            .await?
            .into_iter()
            .find(|b| b.issuer == session.issuer)
            .ok_or(LoadError::AccountNotHeld)?;
        if binding.customer.to_string() != req.customer
            || !binding.accounts.iter().any(|a| a.as_str() == req.account)
        {
            return Err(LoadError::AccountNotHeld);
        }
        if req.amount.minor_units() > p.config.max_amount_minor {
            return Err(LoadError::AmountOverLimit {
                max: p.config.max_amount_minor,
            });
        }
        let amount = Amount::new(i64::try_from(req.amount.minor_units()).unwrap_or(i64::MAX))?;
        let currency = Currency::from_str(req.currency.code())?;
        let sequence = i64::try_from(req.sequence).map_err(|_| LoadError::SequenceStale)?;
        let device_key = device.device_id.to_string();
        if let Some(done) = self.retried(&device_key, sequence, &m.payload).await? {
            return Ok(done);
        }
        // A replayed or out-of-order request settles nothing: only a fresh
        // one speaks for the purse now.
        if store::last_sequence(self.db(), &device_key).await? >= sequence {
            return Err(LoadError::SequenceStale);
        }
        // What the signed request proves about earlier loads holds whether
        // or not this one is permitted.
        self.settle(device, req.sequence, req.last_applied).await?;

        let id = TransferId::from_bytes(p.kms.random::<16>().await?);
        let now = now_ms();
        let permit = LoadPermit {
            request: RequestId::of(&m.payload),
            load: *id.as_bytes(),
            sequence: req.sequence,
            nonce: req.nonce,
            amount: req.amount,
            currency: req.currency,
            host_time_ms: u64::try_from(now).unwrap_or_default(),
        }
        .encode();
        // Signed before the transaction opens: a refusal only wastes it.
        let permit_sig = self.sign_permit(&permit).await?;
        crate::fault_point!("load.permit.signed");
        let ttl =
            i64::try_from(p.config.report_timeout_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        let row = LoadRow {
            id: id.to_string(),
            device_id: device_key.clone(),
            issuer_id: session.issuer.to_string(),
            sequence,
            customer_id: req.customer.clone(),
            account_id: req.account.clone(),
            amount_minor: amount.minor_units(),
            currency: currency.to_string(),
            wallet_before: i64::try_from(req.wallet_balance).map_err(|_| {
                LoadError::Message(keyward_protocol::ProtocolError::FieldInvalid(
                    "wallet_balance",
                ))
            })?,
            request: m.payload.clone(),
            request_sig: m.signature.clone(),
            permit: permit.clone(),
            permit_sig: permit_sig.clone(),
            state: State::Pending,
            reason: None,
            device_reason: None,
            report: None,
            report_sig: None,
            wallet_after: None,
            flagged: false,
            created_at_ms: now,
            expires_at_ms: now.saturating_add(ttl),
            decided_at_ms: None,
            settled_at_ms: None,
        };
        let event = event(
            "load.permit",
            device,
            json!({ "load": row.id, "sequence": sequence, "amount_minor": row.amount_minor,
                    "currency": row.currency }),
        );
        let audit = &p.audit;
        let (row, event) = (&row, &event);
        let written = self
            .db()
            .write_in_turn("load.permit", crate::ledger::TURN, |mut tx| async move {
                if !store::take_sequence_in(&mut tx, &row.device_id, row.sequence).await? {
                    return Err(LoadError::SequenceStale);
                }
                let after = crate::ledger::open_load_in::<LoadError>(
                    &mut tx,
                    &row.customer_id,
                    &row.account_id,
                    currency,
                    id,
                    amount,
                    row.created_at_ms,
                )
                .await?;
                store::insert_in(&mut tx, row).await?;
                audit
                    .stage_in(
                        &mut tx,
                        &device.actor,
                        event,
                        AuditOutcome::Success,
                        &device.request_id,
                    )
                    .await?;
                Ok::<_, LoadError>((tx, after))
            })
            .await;
        let after = match written {
            Ok(after) => after,
            // A concurrent retry of the same request committed first.
            Err(LoadError::SequenceStale) => {
                return match self.retried(&device_key, sequence, &m.payload).await? {
                    Some(done) => Ok(done),
                    None => Err(LoadError::SequenceStale),
                };
            }
            Err(e) => return Err(e),
        };
        crate::fault_point!("load.debit.committed");
        p.audit.chain_staged().await;
        self.count("permitted");
        crate::fault_point!("load.permit.answered");
        Ok(Permitted {
            load_id: row.id.clone(),
            permit,
            signature: permit_sig,
            balance_after_minor: Some(after.minor_units()),
            chain_pem: self.permit_chain_pem().await?,
        })
    }

    /// The stored permit when this exact request was answered before; a
    /// conflict when its sequence number was used by other bytes.
    async fn retried(
        &self,
        device: &str,
        sequence: i64,
        payload: &[u8],
    ) -> Result<Option<Permitted>> {
        let Some(existing) = store::by_sequence(self.db(), device, sequence).await? else {
            return Ok(None);
        };
        if existing.request != payload {
            return Err(LoadError::SequenceConflict);
        }
        Ok(Some(Permitted {
            load_id: existing.id,
            permit: existing.permit,
            signature: existing.permit_sig,
            balance_after_minor: None,
            chain_pem: self.permit_chain_pem().await?,
        }))
    }

    /// The device's report on a load.
    pub async fn report(&self, device: &Device, load_id: &str, m: Signed) -> Result<Settled> {
        match self.reported(device, load_id, &m).await {
            Err(e) if e.kind().is_client() => {
                self.refused(device, "load.report", Some(load_id), &e).await;
                self.count("report_refused");
                Err(e)
            }
            other => other,
        }
    }

    async fn reported(&self, device: &Device, load_id: &str, m: &Signed) -> Result<Settled> {
        let load = store::get(self.db(), load_id)
            .await?
            .filter(|l| l.device_id == device.device_id.to_string())
            .ok_or(LoadError::Unknown)?;
        let id = TransferId::from_str(&load.id).map_err(|_| LoadError::Unknown)?;
        if let Err(e) = self.verified(device, m).await {
            self.bad_report(device, &load, id, "signature").await?;
            return Err(e);
        }
        crate::fault_point!("load.report.verified");
        let report = match LoadReport::decode(&m.payload) {
            Ok(r)
                if r.load == *id.as_bytes()
                    && r.request == RequestId::of(&load.request)
                    && i64::try_from(r.sequence).ok() == Some(load.sequence) =>
            {
                r
            }
            _ => {
                self.bad_report(device, &load, id, "mismatch").await?;
                return Err(LoadError::ReportMismatch);
            }
        };
        if load.report.as_deref() == Some(&m.payload[..]) {
            // The same report again: answered as the first time.
            return Ok(Settled {
                load_id: load.id,
                state: load.state,
            });
        }
        let wallet_after = i64::try_from(report.wallet_balance).ok();
        let adds_up = wallet_after == load.wallet_before.checked_add(load.amount_minor);
        let decision = |reason, device_reason, flagged| store::Decision {
            reason,
            device_reason,
            report: Some((&m.payload[..], &m.signature[..])),
            wallet_after,
            flagged,
        };
        match (load.state, report.outcome) {
            (State::Pending, Outcome::Applied) if adds_up => {
                self.decide(
                    device,
                    &load,
                    id,
                    State::Posted,
                    &decision(None, None, false),
                )
                .await
            }
            (State::Pending, Outcome::Applied) => {
                self.bad_report(device, &load, id, "balance").await?;
                Err(LoadError::ReportMismatch)
            }
            (State::Pending, Outcome::Failed { reason }) => {
                let d = decision(Some("failure"), Some(i64::from(reason)), false);
                self.decide(device, &load, id, State::Voided, &d).await
            }
            (State::Doubtful, Outcome::Applied) => {
                let d = decision(None, None, !adds_up);
                self.decide(device, &load, id, State::LateApplied, &d).await
            }
            (State::Doubtful, Outcome::Failed { reason }) => {
                let d = decision(None, Some(i64::from(reason)), false);
                self.decide(device, &load, id, State::NotApplied, &d).await
            }
            (other, _) => Err(LoadError::Finished(other.as_str())),
        }
    }

    /// A report that did not verify, named another load or did not add up:
    /// a pending load is voided as doubtful, recorded as a security event.
    async fn bad_report(
        &self,
        device: &Device,
        load: &LoadRow,
        id: TransferId,
        why: &str,
    ) -> Result<()> {
        let p = &self.0;
        let event = AuditEvent::Security {
            kind: SecurityKind::LoadReportInvalid,
            target: format!("device:{}", device.device_id),
            detail: json!({ "load": load.id, "why": why }),
        };
        if load.state == State::Pending {
            let d = store::Decision {
                reason: Some("bad_report"),
                flagged: true,
                ..Default::default()
            };
            self.write_decision(device, load, id, State::Doubtful, &d, &event)
                .await?;
        } else {
            let _ = p
                .audit
                .append(
                    &device.actor,
                    &event,
                    AuditOutcome::Refused {
                        code: "load_report_mismatch",
                    },
                    &device.request_id,
                )
                .await;
        }
        p.metrics
            .security_events
            .with_label_values(&[SecurityKind::LoadReportInvalid.as_str()])
            .inc();
        Ok(())
    }

    /// Moves a load to `to` with its ledger step, audited, in one
    /// transaction.
    async fn decide(
        &self,
        device: &Device,
        load: &LoadRow,
        id: TransferId,
        to: State,
        d: &store::Decision<'_>,
    ) -> Result<Settled> {
        let event = event(
            "load.settle",
            device,
            json!({ "load": load.id, "from": load.state.as_str(), "to": to.as_str(),
                    "reason": d.reason, "amount_minor": load.amount_minor }),
        );
        self.write_decision(device, load, id, to, d, &event).await?;
        Ok(Settled {
            load_id: load.id.clone(),
            state: to,
        })
    }

    async fn write_decision(
        &self,
        device: &Device,
        load: &LoadRow,
        id: TransferId,
        to: State,
        d: &store::Decision<'_>,
        event: &AuditEvent,
    ) -> Result<()> {
        let p = &self.0;
        let audit = &p.audit;
        let from = load.state;
        let outcome = if matches!(event, AuditEvent::Security { .. }) {
            AuditOutcome::Refused {
                code: "load_report_mismatch",
            }
        } else {
            AuditOutcome::Success
        };
        let d = &d;
        self.db()
            .write_in_turn("load.decide", crate::ledger::TURN, |mut tx| async move {
                let now = now_ms();
                // The load's own state first: a step that lost a race answers
                // `load_finished`, not the ledger's refusal.
                if !store::decide_in(&mut tx, &load.id, from, to, d, now).await? {
                    return Err(LoadError::Finished(from.as_str()));
                }
                ledger_step(&mut tx, id, from, to, d.reason, now).await?;
                audit
                    .stage_in(&mut tx, &device.actor, event, outcome, &device.request_id)
                    .await?;
                Ok::<_, LoadError>((tx, ()))
            })
            .await?;
        crate::fault_point!("load.settle.committed");
        p.audit.chain_staged().await;
        self.count(to.as_str());
        if matches!(to, State::Voided | State::Doubtful) {
            self.reversed(d.reason.unwrap_or("failure"));
        }
        Ok(())
    }

    /// Settles each of the device's unsettled loads before `sequence` by
    /// what the purse proves: applied iff it is `last_applied`.
    async fn settle(
        &self,
        device: &Device,
        sequence: u64,
        last_applied: u64,
    ) -> Result<Vec<Settled>> {
        let mut settled = Vec::new();
        let unsettled = store::unsettled(self.db(), &device.device_id.to_string()).await?;
        for load in unsettled {
            let Ok(seq) = u64::try_from(load.sequence) else {
                continue;
            };
            if seq >= sequence {
                continue;
            }
            let applied = seq == last_applied;
            let Ok(id) = TransferId::from_str(&load.id) else {
                continue;
            };
            let to = match (load.state, applied) {
                (State::Pending, true) => State::Posted,
                (State::Pending, false) => State::Voided,
                (State::Doubtful, true) => State::LateApplied,
                _ => State::NotApplied,
            };
            let d = store::Decision {
                reason: Some(if applied {
                    "proven_applied"
                } else {
                    "proven_not_applied"
                }),
                ..Default::default()
            };
            match self.decide(device, &load, id, to, &d).await {
                Ok(s) => settled.push(s),
                // Settled meanwhile by another replica or the sweeper (the
                // load's own state is decided first, so a lost race is
                // `Finished`): the next contact sees it as it is now. A
                // ledger refusal after that is an inconsistency, not a race.
                Err(LoadError::Finished(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(settled)
    }

    /// The purse's status at the device's next contact: its sequence
    /// number is taken (no replay), then earlier loads are settled.
    pub async fn status(&self, device: &Device, m: Signed) -> Result<Vec<Settled>> {
        match self.statused(device, &m).await {
            Err(e) if e.kind().is_client() => {
                self.refused(device, "load.status", None, &e).await;
                self.count("refused");
                Err(e)
            }
            other => other,
        }
    }

    async fn statused(&self, device: &Device, m: &Signed) -> Result<Vec<Settled>> {
        self.verified(device, m).await?;
        let status = PurseStatus::decode(&m.payload)?;
        if status.device != device.device_id.bytes() {
            return Err(LoadError::DeviceMismatch);
        }
        let sequence = i64::try_from(status.sequence).map_err(|_| LoadError::SequenceStale)?;
        let key = device.device_id.to_string();
        let key = &key;
        self.db()
            .write("load.status", |mut tx| async move {
                if !store::take_sequence_in(&mut tx, key, sequence).await? {
                    return Err(LoadError::SequenceStale);
                }
                Ok::<_, LoadError>((tx, ()))
            })
            .await?;
        self.settle(device, status.sequence, status.last_applied)
            .await
    }

    /// Voids, as doubtful, each pending load past its timeout. Returns how
    /// many it voided.
    pub async fn sweep(&self) -> Result<usize> {
        let p = &self.0;
        let overdue = store::overdue(self.db(), now_ms(), 200).await?;
        let mut voided = 0;
        for load in overdue {
            let Ok(id) = TransferId::from_str(&load.id) else {
                continue;
            };
            let event = AuditEvent::Online {
                action: "load.timeout",
                target: format!("device:{}", load.device_id),
                detail: json!({ "load": load.id, "amount_minor": load.amount_minor }),
            };
            let audit = &p.audit;
            let (load, event) = (&load, &event);
            let done = self
                .db()
                .write_in_turn("load.sweep", crate::ledger::TURN, |mut tx| async move {
                    let now = now_ms();
                    let d = store::Decision {
                        reason: Some("timeout"),
                        ..Default::default()
                    };
                    if !store::decide_in(
                        &mut tx,
                        &load.id,
                        State::Pending,
                        State::Doubtful,
                        &d,
                        now,
                    )
                    .await?
                    {
                        return Ok::<_, LoadError>((tx, false));
                    }
                    crate::ledger::void_load_in::<LoadError>(&mut tx, id, VoidReason::Timeout, now)
                        .await?;
                    audit
                        .stage_in(
                            &mut tx,
                            &crate::audit::Actor::System,
                            event,
                            AuditOutcome::Success,
                            "load.sweeper",
                        )
                        .await?;
                    Ok((tx, true))
                })
                .await?;
            if done {
                crate::fault_point!("load.sweep.voided");
                self.reversed("timeout");
                voided += 1;
                self.count("doubtful");
            }
        }
        if voided > 0 {
            p.audit.chain_staged().await;
        }
        Ok(voided)
    }

    /// Unsettled loads and their amounts by state, and the sweeper's lag,
    /// into the gauges.
    pub async fn refresh_gauges(&self) -> Result<()> {
        let m = &self.0.metrics;
        let counts = store::unsettled_counts(self.db()).await?;
        for state in State::UNSETTLED {
            let (n, amount) = counts
                .iter()
                .find(|(s, _, _)| s == state.as_str())
                .map_or((0, 0), |(_, n, a)| (*n, *a));
            m.loads_in_state.with_label_values(&[state.as_str()]).set(n);
            m.loads_amount_in_state
                .with_label_values(&[state.as_str()])
                .set(amount);
        }
        let oldest = store::overdue(self.db(), now_ms(), 1).await?;
        let lag = oldest
            .first()
            .map_or(0, |l| now_ms().saturating_sub(l.expires_at_ms) / 1000);
        m.load_sweeper_lag_seconds.set(lag);
        Ok(())
    }

    /// A load as an operator sees it.
    pub async fn show(&self, id: &str) -> Result<(LoadRow, Vec<crate::ledger::store::EntryRow>)> {
        let load = store::get(self.db(), id).await?.ok_or(LoadError::Unknown)?;
        let entries = crate::ledger::store::transfer_entries(self.db(), id).await?;
        Ok((load, entries))
    }

    /// Loads in a state (or all), newest first.
    pub async fn list(&self, state: Option<State>, limit: i64) -> Result<Vec<LoadRow>> {
        Ok(store::list(self.db(), state, limit).await?)
    }

    /// Records a refused step (best effort: the refusal stands either way).
    async fn refused(
        &self,
        device: &Device,
        action: &'static str,
        id: Option<&str>,
        e: &LoadError,
    ) {
        let code = e.code();
        let event = event(action, device, json!({ "load": id, "code": code }));
        let _ = self
            .0
            .audit
            .append(
                &device.actor,
                &event,
                AuditOutcome::Refused { code },
                &device.request_id,
            )
            .await;
    }

    /// A reversal (a void) by its reason, one of [`REVERSAL_REASONS`].
    fn reversed(&self, reason: &str) {
        let reason = REVERSAL_REASONS
            .into_iter()
            .find(|r| *r == reason)
            .unwrap_or("failure");
        self.0
            .metrics
            .load_reversals
            .with_label_values(&[reason])
            .inc();
    }

    fn count(&self, outcome: &'static str) {
        self.0.metrics.loads.with_label_values(&[outcome]).inc();
    }
}

/// The ledger step that takes a load from `from` to `to`.
async fn ledger_step(
    tx: &mut keyward_kms::db::Tx,
    id: TransferId,
    from: State,
    to: State,
    reason: Option<&str>,
    now: i64,
) -> Result<()> {
    use crate::ledger::{post_load_in, settle_doubtful_in, void_load_in};
    match (from, to) {
        (State::Pending, State::Posted) => post_load_in::<LoadError>(tx, id, now).await,
        (State::Pending, State::Voided) => {
            void_load_in::<LoadError>(tx, id, VoidReason::Failure, now).await
        }
        (State::Pending, State::Doubtful) => {
            let r = if reason == Some("timeout") {
                VoidReason::Timeout
            } else {
                VoidReason::BadReport
            };
            void_load_in::<LoadError>(tx, id, r, now).await
        }
        (State::Doubtful, State::LateApplied) => settle_doubtful_in::<LoadError>(tx, id, true, now)
            .await
            .map(drop),
        (State::Doubtful, State::NotApplied) => settle_doubtful_in::<LoadError>(tx, id, false, now)
            .await
            .map(drop),
        _ => Err(LoadError::Ledger(Refusal::NotPending)),
    }
}

/// [`Loads::sweep`], once across replicas, every `load.sweep_interval_ms`.
pub fn sweeper_job(state: &AppState) -> Job<AppState> {
    Job::new(
        "load.sweeper",
        interval(state),
        |state: AppState| async move {
            state
                .loads
                .sweep()
                .await
                .map(drop)
                .map_err(|e| JobError::failed(e.code(), e))
        },
    )
    .once_across_replicas()
}

/// [`Loads::refresh_gauges`] on every replica (the table is shared).
pub fn gauges_job(state: &AppState) -> Job<AppState> {
    Job::new(
        "load.gauges",
        interval(state).max(std::time::Duration::from_secs(1)),
        |state: AppState| async move {
            state
                .loads
                .refresh_gauges()
                .await
                .map_err(|e| JobError::failed(e.code(), e))
        },
    )
}

fn interval(state: &AppState) -> std::time::Duration {
    std::time::Duration::from_millis(state.config.load.sweep_interval_ms)
}

fn event(action: &'static str, device: &Device, detail: serde_json::Value) -> AuditEvent {
    AuditEvent::Online {
        action,
        target: format!("device:{}", device.device_id),
        detail,
    }
}
