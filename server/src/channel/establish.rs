//! What a full handshake and a resumption both end in (docs/protocol.md
//! §14.3, §14.8): the schedule from the master secret, the Finished MAC,
//! the next ticket, then the channel, its ticket and the audit record
//! stored in one transaction under the step's single-use guard (the
//! handshake taken, or the ticket spent). All HSM work is done before the
//! transaction opens.

use keyward_kms::db::now_ms;
use keyward_kms::service::{ChannelSchedule, ChannelSecret};
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

/// What the HSM derives a channel bound to the handshake hash `h` from
/// (docs/protocol.md §14.3): the master's input, each key's label input,
/// and the transcript the Finished MAC covers.
pub fn schedule(h: &[u8; 32], master_input: [u8; 32]) -> ChannelSchedule {
    let label = |l| channel::label_input(l, h);
    ChannelSchedule {
        master_input,
        c2s: label(Label::C2sKey),
        s2c: label(Label::S2cKey),
        finished: label(Label::Finished),
        exporter: label(Label::Exporter),
        resumption: label(Label::Resumption),
        finished_data: h.to_vec(),
    }
}

impl Channels {
    /// The channel `e` from `base` (the pre-master, or a ticket's
    /// resumption secret) and `master_input`: its keys derived, its
    /// Finished MAC made and its kept keys wrapped in one HSM job, then
    /// stored with its next ticket under the guard with its audit record;
    /// the ServerFinished and ticket bytes.
    pub(super) async fn establish(
        &self,
        terminal: &Device,
        base: ChannelSecret,
        master_input: [u8; 32],
        e: Establish<'_>,
    ) -> Result<Opened> {
        let h = e.h;
        let schedule = schedule(&h, master_input);
        let made = self
            .timed(
                "channel_schedule",
                self.0.kms.channel_establish(base, schedule),
            )
            .await?;
        let (ticket, new_ticket) = self.new_ticket(
            e.id,
            e.device,
            e.card_serial,
            made.ticket_handle,
            made.resumption,
        );
        let now = now_ms();
        let row = ChannelRow {
            id: e.id.to_string(),
            device_id: e.device.to_owned(),
            card_serial: e.card_serial.to_owned(),
            terminal_id: terminal.device_id.to_string(),
            open: true,
            c2s_key: made.c2s,
            s2c_key: made.s2c,
            exporter_key: made.exporter,
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
            server_finished: ServerFinished {
                channel: e.id,
                mac: made.finished_mac,
            }
            .encode(),
            ticket: new_ticket,
        })
    }
}
