//! Resumption (docs/protocol.md §14.8): every channel opening gives the
//! card a ticket naming the channel's `K[resumption]`, kept wrapped under
//! the state KEK and bound to the card's device and certificate serial,
//! for [`TICKET_TTL_MS`] and one use. A [`ResumeHello`] naming it opens a
//! new channel in one round trip on any replica, with no RSA operation and
//! no certificate: the card's binder proves it holds the secret, and the
//! new keys come from the secret and both randoms.
//!
//! A ticket that is unknown, spent, expired, of another card, of a card
//! that is no longer issued or whose certificate was revoked or replaced,
//! or a binder that does not verify, is the one `channel_refused`: the
//! ticket is spent and the refusal audited in one transaction, before it
//! is answered.

use keyward_ca::{CertStatus, Serial};
use keyward_device_provisioning::DeviceState;
use keyward_kms::db::now_ms;
use keyward_kms::types::DeviceId;
use keyward_protocol::channel::{
    self, ChannelId, Mode, NewTicket, OaepHash, PROTOCOL_V1, ResumeHello, ServerHello,
};
use serde_json::json;

use super::establish::{Establish, Guard};
use super::store::{self, TicketRow};
use super::{ChannelError, Channels, Result, event, stage};
use crate::audit::Outcome;
use crate::online::Device;

/// How long a ticket may be used: a day at most (the card's certificate
/// is checked again at every resumption, so revocation still bites).
pub const TICKET_TTL_MS: i64 = channel::MAX_TICKET_LIFETIME as i64 * 1000;

/// A full handshake's answer: the ServerFinished (`KWC4`) and the card's
/// ticket (`KWC6`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub server_finished: Vec<u8>,
    pub ticket: Vec<u8>,
}

/// A resumption's answer: the ServerHello (`KWC2`, mode resumption), the
/// ServerFinished (`KWC4`) and the next ticket (`KWC6`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resumed {
    pub channel: ChannelId,
    pub server_hello: Vec<u8>,
    pub server_finished: Vec<u8>,
    pub ticket: Vec<u8>,
}

fn hex16(b: &[u8; 16]) -> String {
    ChannelId(*b).to_string()
}

impl Channels {
    /// A ticket for the channel `channel` of the card `device` (certificate
    /// `serial`) under the handle `handle` (random) naming the resumption
    /// secret `secret` (wrapped under the state KEK): the row to store with
    /// the channel and the `KWC6` bytes.
    pub(super) fn new_ticket(
        &self,
        channel: ChannelId,
        device: &str,
        serial: &str,
        handle: [u8; 16],
        secret: Vec<u8>,
    ) -> (TicketRow, Vec<u8>) {
        let now = now_ms();
        let row = TicketRow {
            id: hex16(&handle),
            device_id: device.to_owned(),
            cert_serial: serial.to_owned(),
            secret,
            channel_id: channel.to_string(),
            created_at_ms: now,
            expires_at_ms: now.saturating_add(TICKET_TTL_MS),
            used_at_ms: None,
        };
        let bytes = NewTicket {
            channel,
            ticket: handle,
            lifetime: channel::MAX_TICKET_LIFETIME,
        }
        .encode();
        (row, bytes)
    }

    /// The card's ResumeHello, relayed by `terminal`: a new open channel.
    pub async fn resume(&self, terminal: &Device, bytes: Vec<u8>) -> Result<Resumed> {
        let (rh, bound) = ResumeHello::split(&bytes)?;
        if !rh.versions.contains(&PROTOCOL_V1) {
            return Err(ChannelError::Unsupported);
        }
        let ticket = hex16(&rh.ticket);
        match self.resumed(terminal, &rh, bound, &bytes, &ticket).await {
            Err(ChannelError::Refused) => {
                self.refuse_resumption(terminal, &ticket).await?;
                Err(ChannelError::Refused)
            }
            other => other,
        }
    }

    /// The card `rh` names, its ticket still good and its binder right.
    async fn resumed(
        &self,
        terminal: &Device,
        rh: &ResumeHello,
        bound: &[u8],
        bytes: &[u8],
        ticket_id: &str,
    ) -> Result<Resumed> {
        let p = &self.0;
        let now = now_ms();
        let device = DeviceId::from_bytes(rh.device);
        let t = store::ticket(self.db(), ticket_id)
            .await?
            .filter(|t| {
                t.used_at_ms.is_none() && t.expires_at_ms > now && t.device_id == device.to_string()
            })
            .ok_or(ChannelError::Refused)?;
        // The card's standing (database) and the binder (HSM) side by side.
        let (good, secret, fresh) = tokio::join!(
            self.still_good(device, &t.cert_serial),
            p.kms.channel_resumption_secret(
                t.secret.clone(),
                channel::binder_input(),
                bound.to_vec(),
                rh.binder,
            ),
            self.server_random_and_id(),
        );
        good?;
        let secret = secret?.ok_or(ChannelError::Refused)?;
        let (server_random, id) = fresh?;
        let sh = ServerHello {
            server_random,
            channel: id,
            mode: Mode::Resumption,
            oaep: OaepHash::Sha256,
            chain: Vec::new(),
            ephemeral: None,
        }
        .encode();
        let h = channel::resumption_hash(bytes, &sh);
        let event = event(
            "channel.resume",
            &id.to_string(),
            json!({ "card": t.device_id, "from": t.channel_id }),
        );
        let opened = self
            .establish(
                terminal,
                secret,
                channel::resumption_master_input(&h),
                Establish {
                    id,
                    h,
                    device: &t.device_id,
                    card_serial: &t.cert_serial,
                    guard: Guard::Ticket(ticket_id),
                    event,
                },
            )
            .await?;
        Ok(Resumed {
            channel: id,
            server_hello: sh,
            server_finished: opened.server_finished,
            ticket: opened.ticket,
        })
    }

    /// The card is still the one the ticket was given to: issued, its
    /// registered certificate the ticket's, that certificate valid and
    /// current.
    async fn still_good(&self, device: DeviceId, serial: &str) -> Result<()> {
        let p = &self.0;
        let serial: Serial = serial.parse().map_err(|_| ChannelError::Refused)?;
        let rec = match p.provisioning.device(device).await {
            Ok(r) => r,
            Err(e) if e.kind().is_client() => return Err(ChannelError::Refused),
            Err(e) => return Err(e.into()),
        };
        let registered = rec
            .cert_serial
            .as_deref()
            .and_then(|s| s.parse::<Serial>().ok())
            .is_some_and(|s| s == serial);
        if !registered || rec.state != DeviceState::Issued {
            return Err(ChannelError::Refused);
        }
        let now = now_ms();
        let current = p.ca.get(&serial).await?.is_some_and(|c| {
            c.status == CertStatus::Valid && c.not_before_ms <= now && c.not_after_ms > now
        });
        if current {
            Ok(())
        } else {
            Err(ChannelError::Refused)
        }
    }

    /// A refused resumption: the ticket is spent and the refusal audited in
    /// one transaction, before it is answered.
    async fn refuse_resumption(&self, terminal: &Device, ticket_id: &str) -> Result<()> {
        let event = event("channel.resume", "-", json!({ "code": "channel_refused" }));
        let (audit, event, now) = (&self.0.audit, &event, now_ms());
        self.db()
            .write("channel.resume.refuse", |mut tx| async move {
                store::use_ticket_in(&mut tx, ticket_id, now).await?;
                stage(
                    &mut tx,
                    audit,
                    terminal,
                    event,
                    Outcome::Refused {
                        code: "channel_refused",
                    },
                )
                .await?;
                Ok::<_, ChannelError>((tx, ()))
            })
            .await?;
        self.0.audit.chain_staged().await;
        self.count_handshake("refused");
        Ok(())
    }
}
