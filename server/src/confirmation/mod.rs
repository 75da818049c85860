//! Transaction confirmation over a second channel (seed CN101184107A,
//! docs/protocol.md §11): what the customer sees is what the device signs.
//!
//! - [`Confirmations::submit`]: a session's device hands in a transaction;
//!   the bytes are kept exactly as received beside their parsed copy
//!   (`keyward_protocol`), an 8-digit code is drawn from the HSM RNG and
//!   kept only as its HMAC under an HSM key, and the message rendered from
//!   the parsed fields goes to the customer's contact through the outbox —
//!   row, outbox message and audit record in one transaction.
//! - [`Confirmations::confirm`]: the device signs `tx ‖ code` with its
//!   certificate's key. The signature, then the bytes (byte for byte: a
//!   difference closes it as **tampered**), then the code are checked
//!   (HSM and signature work before the write transaction opens); only then
//!   is it **executed** and handed to the executor through the outbox, at
//!   most once however many confirm at the same time. A wrong, expired or
//!   used code and a bad signature all answer `confirmation_refused`.
//! - Evidence (docs/protocol.md §11.6): before that write transaction opens,
//!   the receipt of what was received, shown and signed is signed by the
//!   HSM evidence key; receipt, signature and message commit with the
//!   execution. [`Confirmations::evidence`] reads it back for export.

mod error;
pub mod export;
pub mod presend;
pub mod store;

use std::sync::Arc;

use keyward_ca::{Ca, Profile, Serial};
use keyward_config::ConfirmationConfig;
use keyward_device_provisioning::{ContactKind, Provisioning};
use keyward_kms::Kms;
use keyward_kms::db::{Database, now_ms};
use keyward_kms::hsm::SignMechanism;
use keyward_protocol::confirmation::{
    Code, Currency, Evidence, Origin, PayeeCheck, PayeePolicy, Rules, Transaction, evidence,
    render, signed_message,
};
use serde_json::json;

pub use error::ConfirmError;
pub use store::{State, StoredEvidence};

use crate::audit::{AuditEvent, AuditLog, Outcome};
use crate::bootstrap::{self, CertifiedKey};
use crate::metrics::Metrics;
use crate::online::{Device, Session};
use crate::outbox::{self, Channel, NewMessage, Outbox};

pub type Result<T> = std::result::Result<T, ConfirmError>;

/// Label of the HSM key that signs evidence receipts (P-256, sign only,
/// never extractable; certified under the CA's `evidence` profile).
pub const EVIDENCE_KEY_LABEL: &str = "keyward/confirmation/evidence";

/// Outbox topic of a code for the customer.
pub const TOPIC_CODE: &str = "confirmation.code";
/// Outbox topic of an executed transaction for the executor.
pub const TOPIC_EXECUTE: &str = "confirmation.execute";

/// The outcomes `keyward_confirmations_total` counts.
pub const OUTCOMES: [&str; 8] = [
    "submitted",
    "submit_refused",
    "refused_pre_send",
    "stepped_up",
    "executed",
    "refused",
    "failed",
    "tampered",
];

/// The confirmation service; cheap to clone.
#[derive(Clone)]
pub struct Confirmations(Arc<Parts>);

struct Parts {
    kms: Kms,
    ca: Ca,
    /// The evidence key and its certificate, loaded at the first execution
    /// (`serve` checks at start that `init` made them).
    evidence_key: tokio::sync::OnceCell<CertifiedKey>,
    provisioning: Provisioning,
    audit: AuditLog,
    metrics: Metrics,
    /// Woken after each commit that queued a message, so it goes at once.
    outbox: Outbox,
    config: ConfirmationConfig,
    presend: presend::PreSend,
    rules: Rules,
    origin: Origin,
    /// The outbox channel of each contact kind.
    channels: Vec<(ContactKind, Channel)>,
    executor_channel: Channel,
}

impl std::fmt::Debug for Confirmations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Confirmations").finish_non_exhaustive()
    }
}

/// A submitted transaction, waiting for its confirmation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    pub id: String,
    pub expires_at_ms: i64,
    pub max_attempts: u32,
    /// The payee name looks like another (mixed scripts, or a known
    /// payee's look-alike): the message says so.
    pub payee_flagged: bool,
}

/// What a device sends to confirm.
pub struct ConfirmRequest {
    pub id: String,
    /// The transaction bytes the device signed.
    pub transaction: Vec<u8>,
    /// The code as typed on the device.
    pub code: String,
    /// DER signature over `transaction ‖ code`.
    pub signature: Vec<u8>,
}

impl std::fmt::Debug for ConfirmRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfirmRequest")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// An executed confirmation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executed {
    pub id: String,
    /// The outbox message that hands it to the executor.
    pub execution_id: String,
    pub executed_at_ms: i64,
}

/// What the configuration's rules could not be made from.
#[derive(Debug, thiserror::Error)]
#[error("confirmation configuration: {0}")]
pub struct ConfigProblem(String);

impl Confirmations {
    pub fn new(
        kms: Kms,
        ca: Ca,
        provisioning: Provisioning,
        audit: AuditLog,
        metrics: Metrics,
        outbox: Outbox,
        config: ConfirmationConfig,
    ) -> std::result::Result<Self, ConfigProblem> {
        let currencies = config
            .currencies
            .iter()
            .map(|c| Currency::from_code(c).ok_or_else(|| ConfigProblem(format!("currency {c}"))))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let rules = Rules {
            currencies,
            max_amount: config.max_amount_minor,
            confusable_payee: if config.confusable_payee == "refuse" {
                PayeePolicy::Refuse
            } else {
                PayeePolicy::Flag
            },
            known_payees: config.known_payees.clone(),
            ..Rules::default()
        };
        let origin = Origin::new(&config.origin).map_err(|e| ConfigProblem(e.to_string()))?;
        let channel = |key: &str, name: &str| {
            name.parse::<Channel>()
                .map_err(|_| ConfigProblem(format!("{key}: unknown channel")))
        };
        let channels = ContactKind::ALL
            .into_iter()
            .map(|kind| {
                let name = config
                    .channels
                    .get(kind.as_str())
                    .map_or("file", String::as_str);
                Ok((kind, channel(&format!("channels.{}", kind.as_str()), name)?))
            })
            .collect::<std::result::Result<Vec<_>, ConfigProblem>>()?;
        let executor_channel = channel("executor_channel", &config.executor_channel)?;
        let presend = presend::PreSend::from_config(&config.presend)?;
        // A channel without a sender ends its messages `gave_up`: say so at
        // start, not at the first customer's missing code.
        let unsent = channels
            .iter()
            .map(|(kind, c)| (kind.as_str(), *c, config.gateway.as_str()))
            .chain([("executor", executor_channel, config.executor.as_str())])
            .filter(|(_, c, to)| !outbox.can_send(*c, to));
        for (what, c, _) in unsent {
            tracing::warn!(
                what,
                channel = c.as_str(),
                "confirmation messages have no configured outbox sender: they will be given up"
            );
        }
        Ok(Self(Arc::new(Parts {
            kms,
            ca,
            evidence_key: tokio::sync::OnceCell::new(),
            provisioning,
            audit,
            metrics,
            outbox,
            config,
            presend,
            rules,
            origin,
            channels,
            executor_channel,
        })))
    }

    fn db(&self) -> &Database {
        self.0.kms.db()
    }

    /// A device's transaction, as its session's customer: stored, its code
    /// made and the message queued for the customer's contact.
    pub async fn submit(
        &self,
        device: &Device,
        session: &Session,
        raw: &[u8],
    ) -> Result<Submitted> {
        match self.submitted(device, session, raw).await {
            // A pre-send check that fails closed is a refusal too.
            Err(e) if e.kind().is_client() || matches!(e, ConfirmError::PresendUnavailable(_)) => {
                self.refused(device, "confirmation.submit", None, &e).await;
                self.count(match e {
                    ConfirmError::RefusedPreSend(_) => "refused_pre_send",
                    _ => "submit_refused",
                });
                Err(e)
            }
            other => other,
        }
    }

    async fn submitted(&self, device: &Device, session: &Session, raw: &[u8]) -> Result<Submitted> {
        let p = &self.0;
        let received = Transaction::parse(raw, &p.rules)?;
        let tx = received.transaction();
        let binding = p
            .provisioning
            .bindings(device.device_id)
            .await?
            .into_iter()
            .find(|b| b.issuer == session.issuer)
            .ok_or(ConfirmError::NotBound)?;
        if !binding
            .accounts
            .iter()
            .any(|a| a.as_str() == tx.payer_account)
        {
            return Err(ConfirmError::AccountNotHeld);
        }
        let customer = p.provisioning.customer(&binding.customer).await?;
        // The contact is set when the customer's application is approved
        // and changes only with a new approved application: that is when.
        let step_up = p
            .presend
            .check(&customer.contact, customer.approved_at_ms, now_ms())
            .await?;
        let step_up: Vec<&str> = step_up.iter().map(|r| r.as_str()).collect();
        let id = uuid::Uuid::new_v4().to_string();
        let code = self.new_code().await?;
        let code_mac = p
            .kms
            .confirmation_code_mac(code_context(&id, &code))
            .await?;
        crate::fault_point!("confirmation.submit.code_made");
        let rendered = render(&received, &code, &p.origin);
        let flagged = received.payee_check() != PayeeCheck::Plain;
        let created = now_ms();
        let ttl_ms = i64::try_from(p.config.code_ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        let expires = created.saturating_add(ttl_ms);
        let contact = &customer.contact;
        let channel = p
            .channels
            .iter()
            .find(|(kind, _)| *kind == contact.kind)
            .map_or(Channel::File, |(_, c)| *c);
        // A webhook goes to the configured gateway endpoint (the contact is
        // in the payload); a mail or a file line to the contact.
        let recipient = match channel {
            Channel::Webhook => p.config.gateway.clone(),
            Channel::Smtp | Channel::File => contact.address().to_owned(),
        };
        let message = NewMessage {
            topic: TOPIC_CODE.to_owned(),
            channel,
            recipient,
            subject_id: id.clone(),
            // A mail's body is what the customer reads; a gateway or the
            // file gets the text with where it goes.
            payload: match channel {
                Channel::Smtp => rendered.text().as_bytes().to_vec(),
                Channel::Webhook | Channel::File => serde_json::to_vec(&json!({
                    "kind": contact.kind.as_str(),
                    "to": contact.address(),
                    "text": rendered.text(),
                }))
                .unwrap_or_default(),
            },
        };
        let amount_minor = i64::try_from(tx.amount.minor_units()).map_err(|_| {
            ConfirmError::Transaction(keyward_protocol::ProtocolError::AmountInvalid)
        })?;
        let row = store::NewConfirmation {
            id: id.clone(),
            device: device.device_id,
            issuer: session.issuer.clone(),
            customer: binding.customer.to_string(),
            received: received.raw().to_vec(),
            payer_account: tx.payer_account.clone(),
            payee_account: tx.payee_account.clone(),
            payee_name: tx.payee_name.clone(),
            amount_minor,
            currency: tx.currency.code().to_owned(),
            reference: tx.reference.clone(),
            payee_flagged: flagged,
            rendered_sha256: hex::encode(rendered.sha256()),
            code_mac: code_mac.to_vec(),
            max_attempts: p.config.max_attempts,
            created_at_ms: created,
            expires_at_ms: expires,
            delivery_id: String::new(),
            step_up: step_up.join(","),
        };
        let event = event(
            "confirmation.submit",
            device,
            json!({ "confirmation": id, "issuer": session.issuer.as_str(),
                    "amount_minor": amount_minor, "currency": tx.currency.code(),
                    "payee_flagged": flagged, "expires_at_ms": expires,
                    "step_up": step_up }),
        );
        let audit = &p.audit;
        let (row, event, message) = (&row, &event, &message);
        self.db()
            .write("confirmation.submit", |mut dbtx| async move {
                let delivery = outbox::enqueue_in(&mut dbtx, message).await?;
                let mut row = row.clone();
                row.delivery_id = delivery.to_string();
                store::insert_in(&mut dbtx, &row).await?;
                audit
                    .stage_in(
                        &mut dbtx,
                        &device.actor,
                        event,
                        Outcome::Success,
                        &device.request_id,
                    )
                    .await?;
                Ok::<_, ConfirmError>((dbtx, ()))
            })
            .await?;
        crate::fault_point!("confirmation.submit.committed");
        p.outbox.wake();
        p.audit.chain_staged().await;
        self.count("submitted");
        if !step_up.is_empty() {
            self.count("stepped_up");
        }
        crate::fault_point!("confirmation.submit.answered");
        Ok(Submitted {
            id,
            expires_at_ms: expires,
            max_attempts: p.config.max_attempts,
            payee_flagged: flagged,
        })
    }

    /// An 8-digit code from the HSM RNG, uniform (rejection sampling).
    async fn new_code(&self) -> Result<Code> {
        loop {
            let bytes = self.0.kms.random::<{ Code::RANDOM_BYTES }>().await?;
            if let Some(code) = Code::from_random(&bytes) {
                return Ok(code);
            }
        }
    }

    /// The device's signed confirmation: executed once, or refused.
    pub async fn confirm(
        &self,
        device: &Device,
        session: &Session,
        req: ConfirmRequest,
    ) -> Result<Executed> {
        let id = req.id.clone();
        match self.confirmed(device, session, req).await {
            Err(e) if e.kind().is_client() => {
                self.refused(device, "confirmation.confirm", Some(&id), &e)
                    .await;
                Err(e)
            }
            other => other,
        }
    }

    async fn confirmed(
        &self,
        device: &Device,
        session: &Session,
        req: ConfirmRequest,
    ) -> Result<Executed> {
        let p = &self.0;
        let stored = store::get(self.db(), &req.id)
            .await?
            .filter(|s| {
                s.device == device.device_id.to_string() && s.issuer == session.issuer.as_str()
            })
            .ok_or(ConfirmError::Unknown)?;
        if stored.state != State::Pending {
            return Err(ConfirmError::Refused);
        }
        let Ok(code) = Code::parse(&req.code) else {
            return self.wrong(device, &stored).await;
        };
        let signed = signed_message(&req.transaction, &code);
        let signature_ok = p
            .provisioning
            .verify_device_signature(device.device_id, &device.serial, &signed, &req.signature)
            .await?;
        if !signature_ok {
            return self.wrong(device, &stored).await;
        }
        // Signed by the device, yet not what was received: the PC changed it.
        if req.transaction != stored.received {
            return self.tampered(device, &stored, &req.signature).await;
        }
        let code_ok = p
            .kms
            .confirmation_code_matches(code_context(&stored.id, &code), &stored.code_mac)
            .await?;
        let now = now_ms();
        if !code_ok || now >= stored.expires_at_ms {
            return self.wrong(device, &stored).await;
        }
        crate::fault_point!("confirmation.confirm.verified");
        let evidence = self
            .signed_evidence(device, &stored, &code, &req.signature, now)
            .await?;
        self.execute(device, &stored, &req.signature, now, &evidence)
            .await
    }

    /// The evidence receipt of an execution about to be written, signed in
    /// the HSM (no transaction is open).
    async fn signed_evidence(
        &self,
        device: &Device,
        stored: &store::Stored,
        code: &Code,
        device_signature: &[u8],
        now: i64,
    ) -> Result<StoredEvidence> {
        let p = &self.0;
        let signer = p
            .evidence_key
            .get_or_try_init(|| async {
                bootstrap::certified_key(&p.kms, &p.ca, EVIDENCE_KEY_LABEL, Profile::Evidence)
                    .await
                    .map_err(|e| {
                        tracing::error!(error = format!("{e:#}"), "no evidence key");
                        ConfirmError::Evidence("no evidence key or certificate")
                    })
            })
            .await?;
        // The message again, from the bytes received and the code just
        // checked: what the customer read, unless the rules changed since.
        let message = Transaction::parse(&stored.received, &p.rules)
            .map(|r| render(&r, code, &p.origin))
            .ok()
            .filter(|m| hex::encode(m.sha256()) == stored.rendered_sha256)
            .map(|m| m.text().as_bytes().to_vec());
        if message.is_none() {
            tracing::warn!(confirmation = %stored.id, "the message no longer renders the same; evidence keeps its hash only");
        }
        let serial: Serial = device.serial.parse()?;
        let device_cert = p.ca.get(&serial).await?.ok_or(ConfirmError::Evidence(
            "device certificate not in the registry",
        ))?;
        let delivery = outbox::store::delivery(self.db(), &stored.delivery_id)
            .await?
            .unwrap_or_default();
        let rendered_sha256 = hex::decode(&stored.rendered_sha256)
            .ok()
            .and_then(|h| h.try_into().ok())
            .ok_or(ConfirmError::Evidence("stored message hash unreadable"))?;
        let receipt = Evidence {
            confirmation_id: stored.id.clone(),
            device_id: stored.device.clone(),
            transaction_sha256: evidence::sha256(&stored.received),
            message_sha256: rendered_sha256,
            device_signature: device_signature.to_vec(),
            device_certificate_serial: serial.as_str().to_owned(),
            device_certificate_sha256: evidence::sha256(&pem_der(&device_cert.pem)?),
            code_mac_key: keyward_kms::service::CONFIRMATION_CODE_LABEL.to_owned(),
            code_mac_id: evidence::sha256(&stored.code_mac),
            delivery_message_id: stored.delivery_id.clone(),
            delivery_receipt_id: delivery.receipt_id,
            submitted_at_ms: stored.created_at_ms,
            sent_at_ms: delivery.sent_at_ms,
            delivered_at_ms: delivery
                .receipt_at_ms
                .filter(|_| delivery.receipt_status == Some(outbox::ReceiptStatus::Delivered)),
            confirmed_at_ms: now,
            signer_certificate_serial: signer.cert.serial.as_str().to_owned(),
        }
        .encode()
        .map_err(|_| ConfirmError::Evidence("a field cannot be encoded"))?;
        let signature = signer
            .key
            .sign(SignMechanism::EcdsaSha256, &receipt)
            .await?;
        Ok(StoredEvidence {
            receipt,
            signature,
            message: message.unwrap_or_default(),
            signer_serial: signer.cert.serial.as_str().to_owned(),
        })
    }

    async fn execute(
        &self,
        device: &Device,
        stored: &store::Stored,
        signature: &[u8],
        now: i64,
        evidence: &StoredEvidence,
    ) -> Result<Executed> {
        let p = &self.0;
        let message = NewMessage {
            topic: TOPIC_EXECUTE.to_owned(),
            channel: p.executor_channel,
            recipient: p.config.executor.clone(),
            subject_id: stored.id.clone(),
            payload: serde_json::to_vec(&json!({
                "confirmation_id": stored.id,
                "device_id": stored.device,
                "customer_id": stored.customer,
                "transaction": base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD, &stored.received),
                "executed_at_ms": now,
                // Risks the pre-send check found: the executor applies its
                // stronger check before it acts.
                "step_up": stored.step_up(),
            }))
            .unwrap_or_default(),
        };
        let event = event(
            "confirmation.execute",
            device,
            json!({ "confirmation": stored.id, "amount_minor": stored.amount_minor,
                    "currency": stored.currency,
                    "evidence_sha256": hex::encode(evidence::sha256(&evidence.receipt)) }),
        );
        let audit = &p.audit;
        let (message, event) = (&message, &event);
        let done = self
            .db()
            .write("confirmation.execute", |mut dbtx| async move {
                let execution = outbox::enqueue_in(&mut dbtx, message).await?.to_string();
                if !store::decide_in(
                    &mut dbtx,
                    &stored.id,
                    State::Executed,
                    Some(signature),
                    Some(&execution),
                    now,
                )
                .await?
                {
                    // Decided or expired meanwhile: the transaction rolls back.
                    return Err(ConfirmError::Refused);
                }
                store::insert_evidence_in(&mut dbtx, &stored.id, evidence, now).await?;
                audit
                    .stage_in(
                        &mut dbtx,
                        &device.actor,
                        event,
                        Outcome::Success,
                        &device.request_id,
                    )
                    .await?;
                Ok::<_, ConfirmError>((dbtx, execution))
            })
            .await?;
        crate::fault_point!("confirmation.confirm.committed");
        p.outbox.wake();
        p.audit.chain_staged().await;
        self.count("executed");
        crate::fault_point!("confirmation.confirm.answered");
        Ok(Executed {
            id: stored.id.clone(),
            execution_id: done,
            executed_at_ms: now,
        })
    }

    /// A wrong answer: counted, always the one refusal. The attempt that
    /// closes the confirmation as failed is a decision: its audit record
    /// commits with it (each refusal is recorded by [`Self::confirm`] too).
    async fn wrong(&self, device: &Device, stored: &store::Stored) -> Result<Executed> {
        let now = now_ms();
        let audit = &self.0.audit;
        let closed = event(
            "confirmation.failed",
            device,
            json!({ "confirmation": stored.id, "attempts": stored.max_attempts }),
        );
        let closed = &closed;
        let counted = self
            .db()
            .write("confirmation.attempt", |mut dbtx| async move {
                let c = store::count_attempt_in(&mut dbtx, &stored.id, now).await?;
                if c == store::Counted::Closed {
                    let outcome = Outcome::Refused {
                        code: "confirmation_refused",
                    };
                    audit
                        .stage_in(
                            &mut dbtx,
                            &device.actor,
                            closed,
                            outcome,
                            &device.request_id,
                        )
                        .await?;
                }
                Ok::<_, ConfirmError>((dbtx, c))
            })
            .await?;
        tracing::debug!(confirmation = %stored.id, ?counted, "confirmation attempt refused");
        if counted == store::Counted::Closed {
            audit.chain_staged().await;
            self.count("failed");
        } else {
            self.count("refused");
        }
        Err(ConfirmError::Refused)
    }

    /// A signed transaction other than the received one: closed for good,
    /// recorded as a security event.
    async fn tampered(
        &self,
        device: &Device,
        stored: &store::Stored,
        signature: &[u8],
    ) -> Result<Executed> {
        let p = &self.0;
        let now = now_ms();
        let event = AuditEvent::Security {
            kind: crate::security::kind::SecurityKind::TransactionTampered,
            target: format!("device:{}", device.device_id),
            detail: json!({ "confirmation": stored.id }),
        };
        let audit = &p.audit;
        let event = &event;
        self.db()
            .write("confirmation.tampered", |mut dbtx| async move {
                store::decide_in(
                    &mut dbtx,
                    &stored.id,
                    State::Tampered,
                    Some(signature),
                    None,
                    now,
                )
                .await?;
                audit
                    .stage_in(
                        &mut dbtx,
                        &device.actor,
                        event,
                        Outcome::Refused {
                            code: "confirmation_tampered",
                        },
                        &device.request_id,
                    )
                    .await?;
                Ok::<_, ConfirmError>((dbtx, ()))
            })
            .await?;
        p.audit.chain_staged().await;
        self.count("tampered");
        p.metrics
            .security_events
            .with_label_values(&[crate::security::kind::SecurityKind::TransactionTampered.as_str()])
            .inc();
        Err(ConfirmError::Tampered)
    }

    /// Records a refused step (best effort: the refusal stands either way).
    async fn refused(
        &self,
        device: &Device,
        action: &'static str,
        id: Option<&str>,
        e: &ConfirmError,
    ) {
        let code = e.code();
        let mut detail = json!({ "confirmation": id, "code": code });
        if let ConfirmError::RefusedPreSend(risk) = e {
            detail["risk"] = risk.as_str().into();
        }
        let event = event(action, device, detail);
        let _ = self
            .0
            .audit
            .append(
                &device.actor,
                &event,
                Outcome::Refused { code },
                &device.request_id,
            )
            .await;
    }

    fn count(&self, outcome: &'static str) {
        self.0
            .metrics
            .confirmations
            .with_label_values(&[outcome])
            .inc();
    }

    /// The evidence of an executed confirmation, and the transaction bytes
    /// it hashes.
    pub async fn evidence(&self, id: &str) -> Result<(store::Stored, StoredEvidence)> {
        let stored = self.show(id).await?;
        let evidence = store::evidence(self.db(), id)
            .await?
            .ok_or(ConfirmError::NoEvidence)?;
        Ok((stored, evidence))
    }

    /// A confirmation as an operator sees it (no code, no bytes).
    pub async fn show(&self, id: &str) -> Result<store::Stored> {
        store::get(self.db(), id)
            .await?
            .ok_or(ConfirmError::Unknown)
    }
}

/// The DER of a PEM certificate.
fn pem_der(pem: &str) -> Result<Vec<u8>> {
    x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map(|(_, p)| p.contents)
        .map_err(|_| ConfirmError::Evidence("certificate PEM unreadable"))
}

/// What the code's MAC covers: the confirmation it belongs to and the code.
fn code_context(id: &str, code: &Code) -> Vec<u8> {
    let mut data = b"keyward/confirmation/code/v1\0".to_vec();
    data.extend_from_slice(id.as_bytes());
    data.push(0);
    data.extend_from_slice(code.as_bytes());
    data
}

fn event(action: &'static str, device: &Device, detail: serde_json::Value) -> AuditEvent {
    AuditEvent::Online {
        action,
        target: format!("device:{}", device.device_id),
        detail,
    }
}
