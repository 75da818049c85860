//! What a full handshake and a resumption both end in (docs/protocol.md
//! §14.3, §14.8): the schedule from the master secret, the Finished MAC,
//! the next ticket, then the channel, its ticket and the audit record
//! stored in one transaction under the step's single-use guard (the
//! handshake taken, or the ticket spent). All HSM work is done before the
//! transaction opens.

use keyward_kms::KmsError;
use keyward_kms::db::now_ms;
use keyward_kms::service::{ChannelKeyUse, ChannelSecret};
use keyward_protocol::channel::{self, ChannelId, Direction, Label, ServerFinished};

use super::store::{self, ChannelRow};
use super::{CHANNEL_TTL_MS, ChannelError, Channels, Opened, Result, stage};
use crate::audit::{AuditEvent, Outcome};
use crate::online::Device;

/// The single-use thing a new channel consumes, in its own transaction.
pub(super) enum Guard<'a> {
    /// A full handshake takes its handshake row: gone (taken by another
    /// replica, or expired and swept) is [`ChannelError::Closed`].
    Handshake,
    /// A resumption spends the ticket `id`: spent already (a replay, or
    /// another replica first) is [`ChannelError::Refused`].
    Ticket(&'a str),
}

/// A channel about to be stored.
pub(super) struct Establish<'a> {
    pub id: ChannelId,
    /// The handshake hash the schedule is bound to.
    pub h: [u8; 32],
    pub device: &'a str,
    pub card_serial: &'a str,
    pub guard: Guard<'a>,
    pub event: AuditEvent,
}

impl Channels {
    /// The channel `e` from `base` (the pre-master, or a ticket's
    /// resumption secret) and `master_input`: its keys derived, its
    /// Finished MAC made and its kept keys wrapped (the independent HSM
    /// jobs side by side on the pool's sessions), then stored with its next
    /// ticket under the guard with its audit record; the ServerFinished and
    /// ticket bytes.
    pub(super) async fn establish(
        &self,
        terminal: &Device,
        base: ChannelSecret,
        master_input: [u8; 32],
        e: Establish<'_>,
    ) -> Result<Opened> {
        let kms = &self.0.kms;
        let h = e.h;
        let labels = [
            (Label::C2sKey, ChannelKeyUse::Traffic),
            (Label::S2cKey, ChannelKeyUse::Traffic),
            (Label::Finished, ChannelKeyUse::Mac),
            (Label::Exporter, ChannelKeyUse::Mac),
            (Label::Resumption, ChannelKeyUse::Resumption),
        ];
        // Few HSM jobs, the independent ones side by side: under load each
        // job waits its turn in the pool's queue.
        let hsm = async {
            let keys = kms
                .channel_schedule(
                    &base,
                    master_input,
                    labels
                        .iter()
                        .map(|(l, u)| (channel::label_input(*l, &h), *u))
                        .collect(),
                )
                .await?;
            kms.channel_forget_all(vec![base]);
            let [c2s, s2c, finished, exporter, resumption]: [ChannelSecret; 5] =
                keys.try_into().map_err(|_| KmsError::Hsm {
                    function: "C_DeriveKey",
                    problem: "fewer keys derived than asked",
                })?;
            let kept = [&c2s, &s2c, &exporter, &resumption];
            let (mac, handle, wrapped) = tokio::try_join!(
                kms.channel_cmac(&finished, h.to_vec()),
                kms.random::<16>(),
                kms.channel_wrap_state_all(&kept),
            )?;
            kms.channel_forget_all(vec![c2s, s2c, finished, exporter, resumption]);
            let [c2s, s2c, exporter, resumption]: [Vec<u8>; 4] =
                wrapped.try_into().map_err(|_| KmsError::Hsm {
                    function: "C_WrapKey",
                    problem: "fewer keys wrapped than asked",
                })?;
            Ok::<_, KmsError>((mac, handle, c2s, s2c, exporter, resumption))
        };
        let (mac, handle, c2s_key, s2c_key, exporter_key, resumption) =
            self.timed("channel_schedule", hsm).await?;
        let (ticket, new_ticket) =
            self.new_ticket(e.id, e.device, e.card_serial, handle, resumption);
        let now = now_ms();
        let row = ChannelRow {
            id: e.id.to_string(),
            device_id: e.device.to_owned(),
            card_serial: e.card_serial.to_owned(),
            terminal_id: terminal.device_id.to_string(),
            open: true,
            c2s_key,
            s2c_key,
            exporter_key,
            iv_c2s: channel::iv(Direction::C2s, &h).to_vec(),
            iv_s2c: channel::iv(Direction::S2c, &h).to_vec(),
            c2s_sequence: 0,
            s2c_sequence: 0,
            c2s_generation: 0,
            s2c_generation: 0,
            created_at_ms: now,
            expires_at_ms: now.saturating_add(CHANNEL_TTL_MS),
        };
        let (what, outcome) = match e.guard {
            Guard::Handshake => ("channel.open", "opened"),
            Guard::Ticket(_) => ("channel.resume", "resumed"),
        };
        let (audit, row, event, ticket, guard) = (&self.0.audit, &row, &e.event, &ticket, &e.guard);
        self.db()
            .write(what, |mut tx| async move {
                match guard {
                    Guard::Handshake => {
                        if !store::take_handshake_in(&mut tx, &row.id).await? {
                            return Err(ChannelError::Closed);
                        }
                    }
                    Guard::Ticket(id) => {
                        if !store::use_ticket_in(&mut tx, id, now).await? {
                            return Err(ChannelError::Refused);
                        }
                    }
                }
                store::insert_in(&mut tx, row).await?;
                store::insert_ticket_in(&mut tx, ticket).await?;
                stage(&mut tx, audit, terminal, event, Outcome::Success).await?;
                Ok((tx, ()))
            })
            .await?;
        crate::fault_point!("channel.open.committed");
        self.0.audit.chain_staged().await;
        self.count_handshake(outcome);
        Ok(Opened {
            server_finished: ServerFinished { channel: e.id, mac }.encode(),
            ticket: new_ticket,
        })
    }
}
