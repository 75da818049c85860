//! A broken trail's incidents, and the operator's repair of a cut one.
//!
//! A verification that fails writes nothing to the chain: a record chained
//! onto a trail cut back to an older head would move the head forward and,
//! once past the HSM checkpoint, let the checkpoint follow, so that later
//! verifications pass and the cut is forgotten. It writes an incident row
//! instead (table `audit_incidents`, outside the chain) with what it found,
//! and the checkpoint stays where it was ([`AuditLog::checkpoint`] refuses
//! to move past a cut). The break is found again by every later
//! verification until an operator repairs it on purpose
//! ([`AuditLog::repair`]): only a trail whose stored chain is whole apart
//! from the cut, and the repair's own record says what was lost.

use keyward_device_provisioning::audit::redact_free_text;
use keyward_kms::db::now_ms;
use sqlx::Row;

use super::keyed::Checkpoint;
use super::{Actor, AuditError, AuditEvent, AuditLog, Outcome, VerifyReport};

/// What a repair did, or why it did nothing.
#[derive(Debug)]
pub enum RepairOutcome {
    /// The trail verifies: nothing to repair.
    Intact(VerifyReport),
    /// The stored chain itself does not verify (a record or the head was
    /// changed, not only cut): a repair cannot re-anchor it.
    NotRepairable(VerifyReport),
    Repaired(Box<Repaired>),
}

/// A repaired cut: what was found, what was lost, and the check after.
#[derive(Debug)]
pub struct Repaired {
    pub found: VerifyReport,
    /// The HSM checkpoint the trail no longer reached.
    pub checkpoint_seq: i64,
    /// The records lost, `lost_from..=lost_to` (`lost_from` is `None` when
    /// the trail was written on after the cut and no incident saw the cut
    /// head: only the checkpoint's record is known lost).
    pub lost_from: Option<i64>,
    pub lost_to: i64,
    /// Incidents this repair settled.
    pub incidents: u64,
    /// The seq of the repair's `requested` record, the new anchor.
    pub anchor_seq: i64,
    pub after: VerifyReport,
}

impl AuditLog {
    /// Notes a failed verification outside the chain, with what it found.
    pub async fn record_incident(
        &self,
        actor: &Actor,
        request_id: &str,
        report: &VerifyReport,
    ) -> Result<(), AuditError> {
        tracing::error!(
            first_bad = report.first_bad,
            problem = report.problem.as_deref().unwrap_or(""),
            head = report.head_seq,
            checkpoint = report.checkpoint_seq,
            "audit trail verification failed; recorded as an incident (the chain and its \
             checkpoint are left as found)"
        );
        let (actor, at_ms) = (actor.to_string(), now_ms());
        let records = i64::try_from(report.records).unwrap_or(i64::MAX);
        let first_bad = report.first_bad.unwrap_or(0);
        let problem = report.problem.as_deref().unwrap_or("");
        self.db
            .write("audit.incident", |mut tx| {
                let actor = actor.as_str();
                async move {
                    sqlx::query(
                        "INSERT INTO audit_incidents (at_ms, actor, request_id, records, \
                         first_bad, problem, head_seq, checkpoint_seq) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    )
                    .bind(at_ms)
                    .bind(actor)
                    .bind(request_id)
                    .bind(records)
                    .bind(first_bad)
                    .bind(problem)
                    .bind(report.head_seq)
                    .bind(report.checkpoint_seq)
                    .execute(&mut *tx)
                    .await?;
                    Ok::<_, sqlx::Error>((tx, ()))
                }
            })
            .await?;
        Ok(())
    }

    /// Re-anchors a trail cut back to an older, once-valid head: the repair
    /// is recorded (`audit.repair`, requested, naming the checkpoint the
    /// trail no longer reaches and the records lost), the HSM checkpoint is
    /// set to that record, the open incidents are marked settled by it, and
    /// the outcome is recorded. Refused (nothing written) unless the stored
    /// chain and head verify on their own and keep the checkpoint's
    /// `keyed_from`: a changed record stays evidence for good.
    pub async fn repair(
        &self,
        actor: &Actor,
        request_id: &str,
        reason: &str,
    ) -> Result<RepairOutcome, AuditError> {
        let found = self.verify_chain().await?;
        if found.ok() {
            return Ok(RepairOutcome::Intact(found));
        }
        let chain = self.verify(false, false).await?;
        let head = self.read_head().await?;
        let mut scratch = chain.clone();
        let cp: Option<Checkpoint> = self.hsm_checkpoint(&mut scratch).await?;
        let Some(cp) = cp.filter(|cp| chain.ok() && head.keyed_from == Some(cp.keyed_from)) else {
            return Ok(RepairOutcome::NotRepairable(if chain.ok() {
                found
            } else {
                chain
            }));
        };
        let open = sqlx::query(
            "SELECT COUNT(*), MIN(head_seq) FROM audit_incidents WHERE repaired_by IS NULL",
        )
        .fetch_one(&self.pool)
        .await?;
        let incidents: i64 = open.try_get(0)?;
        let first_seen: Option<i64> = open.try_get(1)?;
        // Where the trail was cut: the head now, or the head the first
        // incident saw if the trail was written on since.
        let cut_head = if head.seq < cp.seq {
            Some(head.seq)
        } else {
            first_seen.filter(|h| *h < cp.seq)
        };
        let lost_from = cut_head.map(|h| h + 1);
        let event = AuditEvent::AuditRepaired {
            reason: redact_free_text(reason, &[]),
            problem: found.problem.clone().unwrap_or_default(),
            head_seq: head.seq,
            checkpoint_seq: cp.seq,
            checkpoint_hash: cp.hash.clone(),
            lost_from,
            lost_to: cp.seq,
            incidents: u64::try_from(incidents).unwrap_or(0),
        };
        let effect = async {
            let anchor = self.reanchor().await?;
            self.db
                .write("audit.repair", |mut tx| async move {
                    sqlx::query(
                        "UPDATE audit_incidents SET repaired_by = $1 WHERE repaired_by IS NULL",
                    )
                    .bind(anchor)
                    .execute(&mut *tx)
                    .await?;
                    Ok::<_, sqlx::Error>((tx, ()))
                })
                .await?;
            Ok::<_, AuditError>(anchor)
        };
        let done = self
            .recorded(actor, request_id, &event, effect, |r| match r {
                Ok(_) => (event.clone(), Outcome::Success),
                Err(e) => AuditEvent::failed("audit.repair", e.code()),
            })
            .await?;
        let anchor_seq = done?;
        self.checkpoint().await?;
        let after = self.verify_chain().await?;
        Ok(RepairOutcome::Repaired(Box::new(Repaired {
            found,
            checkpoint_seq: cp.seq,
            lost_from,
            lost_to: cp.seq,
            incidents: u64::try_from(incidents).unwrap_or(0),
            anchor_seq,
            after,
        })))
    }

    /// Sets the HSM checkpoint to the newest head this process wrote, even
    /// behind or beside the one on the token (a repair's re-anchoring only);
    /// returns its seq.
    async fn reanchor(&self) -> Result<i64, AuditError> {
        let head = super::lock(&self.written).clone();
        let Some(super::Head {
            seq,
            hash,
            keyed_from: Some(keyed_from),
            mac: Some(mac),
        }) = head
        else {
            return Err(AuditError::InvalidCheckpoint(
                "this process wrote no keyed head to anchor on",
            ));
        };
        let mut done = self.checkpointed.lock().await;
        let mac: [u8; 32] = hex::decode(&mac)
            .unwrap_or_default()
            .try_into()
            .map_err(|_| AuditError::InvalidCheckpoint("head MAC of the wrong length"))?;
        let cp = Checkpoint {
            seq,
            keyed_from,
            hash,
            mac,
        };
        self.kms.set_audit_checkpoint(&cp.encode()).await?;
        *done = seq;
        Ok(seq)
    }
}
