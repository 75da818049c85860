//! Channel key rotation (`kwctl channel rotate-key`, docs/protocol.md
//! §14.9): a new RSA key generated in the HSM (unwrap only, never
//! extractable), certified under the `channel` profile, then made current
//! in one transaction with its audit record. New handshakes use it from
//! then on, on every replica (each ServerHello reads the current key); a
//! handshake begun under the old key finishes under it (its row names the
//! key), and the old key stays in the HSM. Open channels do not use the
//! RSA key at all.

use keyward_ca::IssueRequest;
use keyward_kms::db::now_ms;
use keyward_kms::service::CHANNEL_KEY_LABEL;

use super::{ChannelError, Channels, Result, store};
use crate::audit::{Actor, AuditEvent, Outcome};

/// What a rotation made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotatedKey {
    /// The new key's HSM label.
    pub label: String,
    /// Its `channel` certificate's serial.
    pub serial: String,
    /// The key it replaces for new handshakes.
    pub previous: String,
}

fn rotation(target: &str) -> AuditEvent {
    AuditEvent::OperatorAction {
        action: "channel.rotate_key",
        target: format!("channel_key:{target}"),
    }
}

impl Channels {
    /// Makes a new current channel key; `actor` and `request_id` are the
    /// operator's. The request is audited before any key exists, the
    /// switch with it in one transaction.
    pub async fn rotate_key(&self, actor: &Actor, request_id: &str) -> Result<RotatedKey> {
        let p = &self.0;
        let previous = store::current_key(self.db()).await?;
        let label = format!("{CHANNEL_KEY_LABEL}/{}", now_ms());
        p.audit
            .append(actor, &rotation(&label), Outcome::Requested, request_id)
            .await?;
        let made = self.make_current(actor, request_id, &label).await;
        if let Err(e) = &made {
            // The switch did not commit: the failure is recorded too.
            let failed = Outcome::Failed { code: e.code() };
            if let Err(a) = p
                .audit
                .append(actor, &rotation(&label), failed, request_id)
                .await
            {
                tracing::error!(error = %a, "channel key rotation failed, unrecorded");
            }
        }
        let serial = made?;
        tracing::info!(label, serial, previous, "channel key rotated");
        Ok(RotatedKey {
            label,
            serial,
            previous,
        })
    }

    /// A key `label` made, certified, loaded and current: its serial.
    async fn make_current(&self, actor: &Actor, request_id: &str, label: &str) -> Result<String> {
        let p = &self.0;
        // Two rotations in one millisecond share the key; the second's
        // insert below then fails on the label.
        let (public, _) = p.kms.ensure_channel_key(label).await?;
        let cert =
            p.ca.issue_for_public_key(&public, IssueRequest::channel(None))
                .await?;
        // Loads the chain and probes the OAEP hash before the key is
        // current: a key that cannot serve never becomes current.
        self.server(label).await?;
        let serial = cert.serial.to_string();
        let event = rotation(label);
        let (audit, serial_ref, event) = (&p.audit, &serial, &event);
        self.db()
            .write("channel.rotate_key", |mut tx| async move {
                store::insert_key_in(&mut tx, label, serial_ref, now_ms()).await?;
                audit
                    .stage_in(&mut tx, actor, event, Outcome::Success, request_id)
                    .await?;
                Ok::<_, ChannelError>((tx, ()))
            })
            .await?;
        p.audit.chain_staged().await;
        Ok(serial)
    }
}
