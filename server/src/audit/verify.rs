//! Verifying the trail, the HSM checkpoint writer, and signed checkpoints
//! for external storage.
//!
//! A record is good when it follows the previous one (seq, `prev_hash`),
//! matches its hash, and — at or after the head's `keyed_from` — carries a
//! valid MAC under the HSM audit key. The head is good when it names the
//! last record and its MAC is valid. The HSM checkpoint (written only from
//! heads this process appended) must not be ahead of the head, and the
//! record at its seq must have its hash: that is what shows a tail cut back
//! to an older head that once was valid. [`AuditLog::verify_chain`] checks
//! everything; [`AuditLog::verify_from_checkpoint`] (start-up) checks the
//! checkpoint and the records after it.

use base64::Engine;
use keyward_kms::KmsError;
use keyward_kms::db::now_ms;
use keyward_kms::hsm::{PublicKey, SignMechanism};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::keyed::{self, Checkpoint};
use super::{AUDIT_SIGNING_LABEL, AuditError, AuditLog, GENESIS, Head, record_of};

/// Records read per query.
const VERIFY_PAGE: i64 = 1000;

/// A MAC to check: its input and the MAC stored.
type MacCheck = (Vec<u8>, Vec<u8>);

/// The result of a verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Records read.
    pub records: u64,
    /// The first record that is wrong (or the seq where records are
    /// missing); `None` when everything checked holds.
    pub first_bad: Option<i64>,
    /// What was wrong with `first_bad`.
    pub problem: Option<String>,
    /// The head row's seq (the last record written).
    pub head_seq: i64,
    /// The head row's hash, which a signed checkpoint names.
    #[serde(skip)]
    pub head_hash: String,
    /// The first record with a MAC (`None`: the trail is not keyed yet).
    pub keyed_from: Option<i64>,
    /// The seq of the HSM checkpoint compared against, if there is one.
    pub checkpoint_seq: Option<i64>,
}

impl VerifyReport {
    fn new(head: &Head) -> Self {
        Self {
            records: 0,
            first_bad: None,
            problem: None,
            head_seq: head.seq,
            head_hash: head.hash.clone(),
            keyed_from: head.keyed_from,
            checkpoint_seq: None,
        }
    }

    pub fn ok(&self) -> bool {
        self.first_bad.is_none()
    }

    /// Notes that the trail ends before record `named` of a checkpoint
    /// (`which`: `HSM` or `stored`): records after the head were removed.
    fn cut(&mut self, which: &str, named: i64) {
        let head = self.head_seq;
        self.flag(
            head + 1,
            format!(
                "the trail ends at record {head} but the {which} checkpoint names record \
                 {named}: records were removed"
            ),
        );
    }

    /// Notes a problem at `seq`; the report keeps the lowest.
    fn flag(&mut self, seq: i64, problem: impl Into<String>) {
        if self.first_bad.is_none_or(|b| seq < b) {
            self.first_bad = Some(seq);
            self.problem = Some(problem.into());
        }
    }
}

/// A head signed by the HSM audit signing key, for an operator to store
/// outside the installation (`kwctl audit checkpoint`) and check later
/// (`verify --against`): it proves the trail once reached `seq` with `hash`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedCheckpoint {
    pub seq: i64,
    /// The record's hash (lower-case hex).
    pub hash: String,
    /// When it was signed (unix ms).
    pub at_ms: i64,
    /// ECDSA P-256 / SHA-256 over [`SignedCheckpoint::message`], DER, base64.
    pub signature: String,
    /// The signing key's label on the token.
    pub key: String,
    /// SHA-256 of the signing key's uncompressed public point (hex), to pin.
    pub key_sha256: String,
}

impl SignedCheckpoint {
    /// The signed bytes.
    pub fn message(&self) -> Vec<u8> {
        format!(
            "keyward-audit-checkpoint-v1\n{}\n{}\n{}\n",
            self.seq, self.hash, self.at_ms
        )
        .into_bytes()
    }
}

fn point_sha256(point: &[u8]) -> String {
    hex::encode(Sha256::digest(point))
}

fn signature_valid(key: &PublicKey, msg: &[u8], sig_b64: &str) -> bool {
    base64::engine::general_purpose::STANDARD
        .decode(sig_b64)
        .is_ok_and(|der| keyward_kms::signing::verify(key, msg, &der))
}

fn mac_bytes(hex_mac: &str) -> Vec<u8> {
    hex::decode(hex_mac).unwrap_or_default()
}

impl AuditLog {
    pub(crate) async fn read_head(&self) -> Result<Head, AuditError> {
        let row = sqlx::query("SELECT seq, hash, keyed_from, mac FROM audit_head WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?
            .ok_or(AuditError::NoHead)?;
        Ok(Head {
            seq: row.try_get(0)?,
            hash: row.try_get(1)?,
            keyed_from: row.try_get(2)?,
            mac: row.try_get(3)?,
        })
    }

    /// Recomputes the whole chain, every MAC and the head, and compares
    /// with the HSM checkpoint.
    pub async fn verify_chain(&self) -> Result<VerifyReport, AuditError> {
        self.verify(false, true).await
    }

    /// The start-up check: the HSM checkpoint, the records from its seq on
    /// and the head (the whole chain when there is no checkpoint yet).
    pub async fn verify_from_checkpoint(&self) -> Result<VerifyReport, AuditError> {
        self.verify(true, true).await
    }

    /// The newest HSM checkpoint whose MAC holds, if one was written.
    pub(super) async fn hsm_checkpoint(
        &self,
        report: &mut VerifyReport,
    ) -> Result<Option<Checkpoint>, AuditError> {
        let stored = self.kms.audit_checkpoint().await?;
        let mut best: Option<Checkpoint> = None;
        for bytes in &stored {
            match Checkpoint::decode(bytes) {
                Some(cp) if self.kms.audit_mac_verify(&cp.mac_input(), &cp.mac).await? => {
                    if best.as_ref().is_none_or(|b| b.seq < cp.seq) {
                        best = Some(cp);
                    }
                }
                _ => report.flag(1, "an HSM checkpoint does not verify under the audit key"),
            }
        }
        report.checkpoint_seq = best.as_ref().map(|cp| cp.seq);
        Ok(best)
    }

    /// `with_checkpoint: false` checks the stored chain and head alone (a
    /// repair's question: is the trail whole apart from what was cut?).
    pub(super) async fn verify(
        &self,
        from_checkpoint: bool,
        with_checkpoint: bool,
    ) -> Result<VerifyReport, AuditError> {
        let mut head = self.read_head().await?;
        let mut report = VerifyReport::new(&head);
        let cp = if with_checkpoint {
            self.hsm_checkpoint(&mut report).await?
        } else {
            None
        };
        // Another replica may have appended and checkpointed since the head
        // was read: a head read after the checkpoint is never behind a
        // checkpoint of the same trail.
        if cp.as_ref().is_some_and(|cp| cp.seq > head.seq) {
            head = self.read_head().await?;
            report.head_seq = head.seq;
            report.head_hash.clone_from(&head.hash);
            report.keyed_from = head.keyed_from;
        }
        let keyed = |seq: i64| head.keyed_from.is_some_and(|k| seq >= k);
        // Where to start, and the hash the first record must link to (`None`:
        // the checkpoint's record, whose own hash is what is compared).
        let (mut expected_seq, mut running) = match (&cp, from_checkpoint) {
            (Some(cp), true) => (cp.seq, None),
            _ => (1, Some(GENESIS.to_owned())),
        };
        loop {
            let rows = sqlx::query(concat!(
                "SELECT ",
                record_columns!(),
                " FROM audit_log WHERE seq >= $1 AND seq <= $2 ORDER BY seq LIMIT $3"
            ))
            .bind(expected_seq)
            .bind(head.seq)
            .bind(VERIFY_PAGE)
            .fetch_all(&self.pool)
            .await?;
            if rows.is_empty() {
                break;
            }
            let mut macs: Vec<(i64, MacCheck)> = Vec::new();
            for row in &rows {
                let rec = record_of(row)?;
                report.records += 1;
                if rec.seq != expected_seq {
                    // For a gap, the first missing seq is the first bad one.
                    report.flag(
                        expected_seq,
                        format!("records {expected_seq}..{} are missing", rec.seq - 1),
                    );
                } else if running.as_ref().is_some_and(|r| *r != rec.prev_hash) {
                    report.flag(rec.seq, "prev_hash does not match the previous record");
                } else if rec.compute_hash() != rec.hash {
                    report.flag(rec.seq, "record does not match its hash");
                }
                if let Some(cp) = &cp
                    && rec.seq == cp.seq
                    && rec.hash != cp.hash
                {
                    report.flag(rec.seq, "record differs from the HSM checkpoint");
                }
                match (&rec.mac, keyed(rec.seq), head.keyed_from) {
                    (None, true, _) => report.flag(rec.seq, "record has no MAC"),
                    (Some(m), true, _) => {
                        macs.push((rec.seq, (keyed::record_input(&rec.hash), mac_bytes(m))));
                    }
                    (Some(_), false, None) => report.flag(
                        rec.seq,
                        "record carries a MAC but the head says the trail is not keyed",
                    ),
                    _ => {}
                }
                // Follow the stored chain so one bad record is reported once.
                running = Some(rec.hash.clone());
                expected_seq = rec.seq + 1;
            }
            let (seqs, items): (Vec<i64>, Vec<_>) = macs.into_iter().unzip();
            let valid = self.kms.audit_macs_verify(items).await?;
            if let Some((seq, _)) = seqs.iter().zip(valid).find(|(_, ok)| !ok) {
                report.flag(
                    *seq,
                    "record's MAC is not valid (not written with this installation's HSM key)",
                );
            }
        }

        // First, so that its reason is the one given when several agree.
        if let Some(cp) = &cp {
            if head.seq < cp.seq {
                report.cut("HSM", cp.seq);
            }
            if head.keyed_from != Some(cp.keyed_from) {
                report.flag(cp.keyed_from, "keyed_from differs from the HSM checkpoint");
            }
        }
        // The chain is checked up to the head read first (the head moves
        // in the transaction of its records). Records after it were either
        // appended since by another replica, and a head read now covers
        // them, or written without moving the head.
        let mut log_end = expected_seq - 1;
        let last: Option<i64> = sqlx::query("SELECT MAX(seq) FROM audit_log")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        if let Some(last) = last.filter(|l| *l > head.seq)
            && last > self.read_head().await?.seq
        {
            log_end = last;
        }
        if log_end != head.seq || running.as_deref() != Some(head.hash.as_str()) {
            report.flag(
                log_end.min(head.seq) + 1,
                format!(
                    "the head names record {} but the log ends at {log_end}",
                    head.seq
                ),
            );
        }
        match (head.keyed_from, head.mac.as_deref()) {
            (Some(k), Some(m)) => {
                let input = keyed::head_input(head.seq, k, &head.hash);
                if !self.kms.audit_mac_verify(&input, &mac_bytes(m)).await? {
                    report.flag(
                        head.seq + 1,
                        "the head's MAC is not valid: the head row was rewritten",
                    );
                }
            }
            (Some(_), None) => report.flag(head.seq + 1, "the head has no MAC"),
            (None, Some(_)) => report.flag(head.seq + 1, "the head has a MAC but no keyed_from"),
            (None, None) => {}
        }
        Ok(report)
    }

    /// Writes the newest head this process appended to the HSM checkpoint,
    /// unless it is there already or the token holds a newer one (another
    /// replica's). Returns whether it wrote.
    pub async fn checkpoint(&self) -> Result<bool, AuditError> {
        let head = self
            .written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(Head {
            seq,
            hash,
            keyed_from: Some(keyed_from),
            mac: Some(mac),
        }) = head
        else {
            return Ok(false);
        };
        let mut done = self.checkpointed.lock().await;
        if seq <= *done {
            return Ok(false);
        }
        let mac: [u8; 32] = mac_bytes(&mac)
            .try_into()
            .map_err(|_| AuditError::InvalidCheckpoint("head MAC of the wrong length"))?;
        // Never move the checkpoint back (replicas on one database).
        let newest = self
            .kms
            .audit_checkpoint()
            .await?
            .iter()
            .filter_map(|b| Checkpoint::decode(b))
            .max_by_key(|cp| cp.seq);
        if let Some(newest) = &newest {
            if newest.seq >= seq {
                *done = seq;
                return Ok(false);
            }
            // Never forward past a cut: a head written onto a trail that no
            // longer holds the checkpoint's record would bury the break.
            let hash: Option<String> =
                sqlx::query_scalar("SELECT hash FROM audit_log WHERE seq = $1")
                    .bind(newest.seq)
                    .fetch_optional(&self.pool)
                    .await?;
            if hash.as_deref() != Some(newest.hash.as_str()) {
                return Err(AuditError::Broken {
                    seq: newest.seq,
                    problem: "the trail no longer holds the HSM checkpoint's record; the \
                              checkpoint stays until `keyward audit repair`"
                        .into(),
                });
            }
        }
        let cp = Checkpoint {
            seq,
            keyed_from,
            hash,
            mac,
        };
        self.kms.set_audit_checkpoint(&cp.encode()).await?;
        crate::fault_point!("audit.checkpoint.written");
        *done = seq;
        Ok(true)
    }

    /// Writes the checkpoint every `interval` while the trail grows (serve's
    /// background task; serve writes it once more on shutdown).
    pub async fn checkpoint_loop(self, interval: std::time::Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // A run that panics loses its tick, not the loop.
            let log = self.clone();
            let failed = match tokio::spawn(async move { log.checkpoint().await }).await {
                Ok(Ok(_)) => false,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "audit checkpoint not written; retrying");
                    true
                }
                Err(_) => {
                    tracing::error!("audit checkpoint run failed; retrying");
                    true
                }
            };
            if failed && let Some(m) = &self.metrics {
                m.audit_checkpoint_failures.inc();
            }
        }
    }

    /// The head, verified from the HSM checkpoint, signed with the audit
    /// signing key. Refused while the trail is broken: a signature must not
    /// vouch for a forged head.
    pub async fn signed_checkpoint(&self) -> Result<SignedCheckpoint, AuditError> {
        let report = self.verify_from_checkpoint().await?;
        if let Some(seq) = report.first_bad {
            return Err(AuditError::Broken {
                seq,
                problem: report.problem.unwrap_or_default(),
            });
        }
        let key = self.kms.signing_key(AUDIT_SIGNING_LABEL).await?;
        let PublicKey::P256(point) = key.public_key() else {
            return Err(KmsError::KeyMissing(AUDIT_SIGNING_LABEL.to_owned()).into());
        };
        let mut cp = SignedCheckpoint {
            seq: report.head_seq,
            hash: report.head_hash.clone(),
            at_ms: now_ms(),
            signature: String::new(),
            key: AUDIT_SIGNING_LABEL.to_owned(),
            key_sha256: point_sha256(point),
        };
        let sig = key.sign(SignMechanism::EcdsaSha256, &cp.message()).await?;
        cp.signature = base64::engine::general_purpose::STANDARD.encode(sig);
        Ok(cp)
    }

    /// The whole chain, and a checkpoint stored elsewhere: its signature
    /// must hold under this installation's audit signing key, the trail must
    /// reach its seq, and the record there must have its hash.
    pub async fn verify_against(
        &self,
        stored: &SignedCheckpoint,
    ) -> Result<VerifyReport, AuditError> {
        if stored.seq < 1 {
            return Err(AuditError::InvalidCheckpoint("seq must be at least 1"));
        }
        let mut report = self.verify_chain().await?;
        let key = self.kms.signing_key(AUDIT_SIGNING_LABEL).await?;
        let valid = match key.public_key() {
            PublicKey::P256(point) => {
                point_sha256(point) == stored.key_sha256
                    && signature_valid(key.public_key(), &stored.message(), &stored.signature)
            }
            PublicKey::Rsa { .. } => false,
        };
        if !valid {
            report.flag(
                stored.seq,
                "the stored checkpoint's signature does not verify under this installation's \
                 audit signing key",
            );
        }
        if report.head_seq < stored.seq {
            report.cut("stored", stored.seq);
        } else {
            let hash: Option<String> =
                sqlx::query_scalar("SELECT hash FROM audit_log WHERE seq = $1")
                    .bind(stored.seq)
                    .fetch_optional(&self.pool)
                    .await?;
            if hash.as_deref() != Some(stored.hash.as_str()) {
                report.flag(stored.seq, "record differs from the stored checkpoint");
            }
        }
        Ok(report)
    }
}

/// `keyward serve`'s start-up check ([`AuditLog::verify_from_checkpoint`]):
/// an error naming the first bad record unless `allow_broken`, in which case
/// the break is logged and recorded as an incident (outside the chain) and
/// serving goes on; the HSM checkpoint stays where it was until a repair.
pub async fn check_at_start(audit: &AuditLog, allow_broken: bool) -> anyhow::Result<()> {
    use super::Actor;
    let report = audit.verify_from_checkpoint().await?;
    let Some(seq) = report.first_bad else {
        tracing::info!(
            records = report.records,
            head = report.head_seq,
            "audit trail verified from its HSM checkpoint"
        );
        return Ok(());
    };
    let problem = report.problem.clone().unwrap_or_default();
    if !allow_broken {
        anyhow::bail!(
            "the audit trail is broken at record {seq}: {problem}. Refusing to serve; \
             run `keyward audit verify` for the full check, and start with \
             --allow-broken-audit only once the break is understood"
        );
    }
    tracing::error!(
        first_bad = seq,
        problem,
        "audit trail broken; serving anyway (--allow-broken-audit)"
    );
    audit.record_incident(&Actor::System, "-", &report).await?;
    Ok(())
}
