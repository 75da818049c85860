//! The card-to-server secure channel, the server's side (docs/protocol.md
//! §14): a card talks to the server end to end through a terminal that
//! only relays bytes. The formats and schedule inputs are
//! `keyward_protocol::channel`'s; every secret lives in the HSM
//! (`keyward_kms::service::channel`) and only wrapped under the state KEK
//! in the database, so any replica takes any step.
//!
//! - [`Channels::hello`]: a ClientHello → a ServerHello (random and channel
//!   id from the HSM, the `channel` certificate chain, the OAEP hash the
//!   module unwraps with, or PKCS#1 v1.5 where `channel.padding` says so;
//!   in the ECDHE mode an ephemeral key: `ecdhe`);
//!   both hellos stored for [`HANDSHAKE_TTL_MS`].
//! - [`Channels::key_exchange`]: the card's certificate (the Keyward CA's
//!   registered, current, unrevoked certificate of an issued device), its
//!   signature over the transcript and the pre-master (unwrapped in the
//!   HSM; in the ECDHE mode, then the ECDH step) are all checked whichever
//!   fails, so the refusal's work does not say which; any failure is the
//!   one `channel_refused`, audited. With PKCS#1 v1.5 a pre-master that
//!   does not unwrap is no refusal: implicit rejection goes on with a
//!   substitute, and the card cannot verify the ServerFinished. The
//!   schedule runs in the HSM; the handshake is taken, the channel stored
//!   and the opening audited in one transaction; the ServerFinished is
//!   answered after the commit.
//! - [`Channels::record`]: the card's next record, opened in the HSM. A
//!   replayed, reordered, altered or foreign record closes the channel
//!   (audited, one `channel_closed`); one that is no record or names no
//!   open channel closes every channel its terminal relays. A data record
//!   carries one request (`crate::wire::channel::Carried`), bound to the
//!   channel by its exporter value (a wrong one closes it), which the
//!   caller runs as the card; the record is claimed (both sequences moved
//!   in one compare-and-set transaction) **before** the request runs, so a
//!   record raced or replayed to two replicas runs once, and the answer is
//!   sealed in the HSM under the server sequence claimed.

mod cache;
mod ecdhe;
mod error;
mod establish;
mod rekey;
mod resume;
mod rotate;
pub mod store;
mod sweep;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use keyward_ca::Serial;
use keyward_config::ChannelPadding;
use keyward_device_provisioning::{DeviceState, Provisioning};
use keyward_kms::Kms;
use keyward_kms::KmsError;
use keyward_kms::db::{Database, now_ms};
use keyward_kms::service::{ChannelKeyUse, ChannelSecret};
use keyward_kms::types::DeviceId;
use keyward_protocol::channel::{
    self, CardKeyExchange, ChannelId, ClientHello, Direction, Mode, OaepHash, Record, RecordType,
    ServerHello,
};
use serde_json::json;
use subtle::ConstantTimeEq as _;

pub use ecdhe::MODE_LABELS;
pub use error::ChannelError;
pub use establish::schedule;
use establish::{Establish, Guard};
pub use resume::{Opened, Resumed, TICKET_TTL_MS};
pub use rotate::RotatedKey;
use store::{ChannelRow, HandshakeRow};
pub use sweep::{SWEEP_INTERVAL, SWEPT_KINDS, Swept, sweep_job};

use crate::audit::{AuditEvent, AuditLog, Outcome};
use crate::edge::identity::PeerCertificate;
use crate::metrics::Metrics;
use crate::online::Device;

pub type Result<T> = std::result::Result<T, ChannelError>;

/// A channel key's certificate chain (DER) and OAEP hash.
type ServerKey = (Vec<Vec<u8>>, OaepHash);

/// How long a ServerHello waits for the card's key exchange.
pub const HANDSHAKE_TTL_MS: i64 = 30_000;
/// How long a channel lives. No key generation of either direction can
/// outlive its channel, so the one-hour rekey rule holds by expiry (a
/// record after it is refused as for a closed channel).
pub const CHANNEL_TTL_MS: i64 = 3_600_000;
const _: () = assert!(CHANNEL_TTL_MS as u64 <= channel::REKEY_AFTER_SECONDS * 1000);
/// The outcomes `keyward_channel_handshakes_total` counts.
pub const HANDSHAKE_OUTCOMES: [&str; 5] = ["hello", "opened", "resumed", "refused", "expired"];
/// The outcomes `keyward_channel_records_total` counts.
pub const RECORD_OUTCOMES: [&str; 5] = [
    "data",
    "close",
    "key_update",
    "server_key_update",
    "refused",
];

/// A record's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The server's record answering a data record.
    Record(Vec<u8>),
    /// The server's key update record, then its record answering a data
    /// record under its next key (its direction was due, §14.4).
    Rekeyed {
        key_update: Vec<u8>,
        record: Vec<u8>,
    },
    /// The card's key moved on; nothing to answer.
    KeyUpdated,
    /// The card closed the channel.
    Closed,
}

/// The channel service; cheap to clone.
#[derive(Clone)]
pub struct Channels(Arc<Parts>);

struct Parts {
    kms: Kms,
    ca: keyward_ca::Ca,
    provisioning: Provisioning,
    audit: AuditLog,
    metrics: Metrics,
    /// The modes this server runs, its preference first (`channel.modes`).
    modes: Vec<Mode>,
    /// Per channel key label, its certificate chain (DER) and OAEP hash,
    /// loaded at first use; which label is current is the database's.
    server: std::sync::Mutex<HashMap<String, ServerKey>>,
    /// How cards encrypt the pre-master (`channel.padding`).
    padding: ChannelPadding,
    /// The recent channels' unwrapped traffic keys, card certificates and
    /// exporter values.
    cache: cache::Cache,
}

impl std::fmt::Debug for Channels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channels").finish_non_exhaustive()
    }
}

impl Channels {
    pub fn new(
        kms: Kms,
        ca: keyward_ca::Ca,
        provisioning: Provisioning,
        audit: AuditLog,
        metrics: Metrics,
        config: &keyward_config::ChannelConfig,
    ) -> Self {
        Self(Arc::new(Parts {
            kms,
            ca,
            provisioning,
            audit,
            metrics,
            modes: ecdhe::modes(&config.modes),
            server: std::sync::Mutex::new(HashMap::new()),
            padding: config.padding,
            cache: cache::Cache::default(),
        }))
    }

    fn db(&self) -> &Database {
        self.0.kms.db()
    }

    /// The certificate of the channel key `label` (`keyward init` or
    /// `kwctl channel rotate-key` makes it) then the issuing CA, as DER,
    /// and the OAEP hash the key unwraps with here; cached per label.
    async fn server(&self, label: &str) -> Result<ServerKey> {
        let p = &self.0;
        if let Some(k) = p
            .server
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(label)
        {
            return Ok(k.clone());
        }
        let loaded: Result<ServerKey> = async {
            let public = p.kms.channel_public_key(label).await?;
            let cert = crate::bootstrap::current_certificate(
                &p.ca,
                keyward_ca::Profile::Channel,
                &public,
                0,
            )
            .await
            .ok()
            .flatten()
            .and_then(|c| der_of_pem(&c.pem))
            .ok_or_else(|| {
                tracing::error!(label, "no current channel certificate: run `keyward init`");
                keyward_kms::KmsError::KeyMissing(label.into())
            })?;
            let oaep = match p.kms.channel_oaep_hash(label).await? {
                keyward_kms::hsm::OaepHash::Sha1 => OaepHash::Sha1,
                keyward_kms::hsm::OaepHash::Sha256 => OaepHash::Sha256,
            };
            Ok((vec![cert, p.ca.issuing_der().to_vec()], oaep))
        }
        .await;
        let k = loaded?;
        p.server
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(label.to_owned(), k.clone());
        Ok(k)
    }

    /// A ServerHello's random and a new channel id, from one HSM call.
    async fn server_random_and_id(&self) -> Result<([u8; 32], ChannelId)> {
        let r = self.0.kms.random::<48>().await?;
        let (mut random, mut id) = ([0u8; 32], [0u8; 16]);
        random.copy_from_slice(&r[..32]);
        id.copy_from_slice(&r[32..]);
        Ok((random, ChannelId(id)))
    }

    /// The card's ClientHello, relayed by `terminal`: the ServerHello.
    pub async fn hello(&self, terminal: &Device, client_hello: Vec<u8>) -> Result<ServerHello> {
        let ch = ClientHello::decode(&client_hello)?;
        let mode = ch
            .negotiate(&self.0.modes)
            .ok_or(ChannelError::Unsupported)?;
        // Read at every hello, so a rotation on any replica applies here.
        let key_label = store::current_key(self.db()).await?;
        let (chain, oaep) = self.server(&key_label).await?;
        let oaep = match self.0.padding {
            ChannelPadding::Oaep => oaep,
            ChannelPadding::Pkcs1v15 => OaepHash::Pkcs1v15,
        };
        let (ephemeral, server_ephemeral) = ecdhe::ephemeral(&self.0.kms, mode).await?;
        let (server_random, channel) = self.server_random_and_id().await?;
        let sh = ServerHello {
            server_random,
            channel,
            mode,
            oaep,
            chain,
            ephemeral,
        };
        let now = now_ms();
        store::insert_handshake(
            self.db(),
            &HandshakeRow {
                id: sh.channel.to_string(),
                terminal_id: terminal.device_id.to_string(),
                client_hello,
                server_hello: sh.encode(),
                key_label,
                created_at_ms: now,
                expires_at_ms: now.saturating_add(HANDSHAKE_TTL_MS),
                server_ephemeral,
            },
        )
        .await?;
        self.count_handshake("hello");
        Ok(sh)
    }

    /// The card's key exchange for the handshake `id`: the ServerFinished
    /// (`KWC4`) and a resumption ticket (`KWC6`) once the channel is stored.
    pub async fn key_exchange(
        &self,
        terminal: &Device,
        id: ChannelId,
        bytes: Vec<u8>,
    ) -> Result<Opened> {
        let key = id.to_string();
        // The terminal that relayed the hello relays the key exchange.
        let terminal_id = terminal.device_id.to_string();
        let Some(hs) = store::handshake(self.db(), &key)
            .await?
            .filter(|h| h.expires_at_ms > now_ms() && h.terminal_id == terminal_id)
        else {
            self.count_handshake("expired");
            return Err(ChannelError::Closed);
        };
        // The layout follows the mode this server's hello chose.
        let mode = ServerHello::decode(&hs.server_hello)?.mode;
        let (cke, signed) = CardKeyExchange::split_in(&bytes, mode)?;
        let checked = self.opened(terminal, id, &hs, &cke, signed, &bytes).await;
        match checked {
            Ok(fin) => {
                self.0
                    .metrics
                    .channel_handshake_modes
                    .with_label_values(&[ecdhe::mode_label(mode)])
                    .inc();
                Ok(fin)
            }
            Err(ChannelError::Refused) => {
                self.refuse_handshake(terminal, &key).await?;
                Err(ChannelError::Refused)
            }
            Err(e) => Err(e),
        }
    }

    async fn opened(
        &self,
        terminal: &Device,
        id: ChannelId,
        hs: &HandshakeRow,
        cke: &CardKeyExchange,
        signed: &[u8],
        bytes: &[u8],
    ) -> Result<Opened> {
        let p = &self.0;
        let ch = ClientHello::decode(&hs.client_hello)?;
        // The refusal costs the same work whichever check fails: the card
        // is checked in full and the pre-master unwrapped (one RSA
        // operation) side by side, then in the ECDHE mode the ECDH step
        // runs, before any outcome is looked at; every failure is the one
        // refusal.
        let (card, pms) = tokio::join!(
            self.card(&ch, &hs.client_hello, &hs.server_hello, cke, signed),
            self.timed(
                "channel_unwrap_premaster",
                self.unwrap_premaster(&hs.key_label, &hs.server_hello, cke),
            ),
        );
        let h = channel::handshake_hash(&hs.client_hello, &hs.server_hello, bytes);
        let master_input = ecdhe::master_input(&p.kms, hs, cke, &h).await;
        let ((card, serial), pms, master_input) = match (
            card.map_err(refusal),
            pms.map_err(|e| refusal(e.into())),
            master_input.map_err(refusal),
        ) {
            (Ok(card), Ok(pms), Ok(input)) => (card, pms, input),
            // A failure of the HSM, CA or database shows as itself.
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e))
                if !matches!(e, ChannelError::Refused) =>
            {
                return Err(e);
            }
            _ => return Err(ChannelError::Refused),
        };
        let (device, serial) = (card.to_string(), serial.to_string());
        let event = event("channel.open", &id.to_string(), json!({ "card": device }));
        self.establish(
            terminal,
            pms,
            master_input,
            Establish {
                id,
                h,
                device: &device,
                card_serial: &serial,
                guard: Guard::Handshake,
                event,
            },
        )
        .await
    }

    /// The pre-master, unwrapped as the handshake's ServerHello told the
    /// card to encrypt it (so a change of `channel.padding` never mixes
    /// the two within a handshake). PKCS#1 v1.5 goes through implicit
    /// rejection: a ciphertext that does not unwrap gives the substitute,
    /// never a refusal, and the channel opens with keys the card does not
    /// share (its check of the ServerFinished fails).
    async fn unwrap_premaster(
        &self,
        key_label: &str,
        server_hello: &[u8],
        cke: &CardKeyExchange,
    ) -> std::result::Result<keyward_kms::service::ChannelSecret, keyward_kms::KmsError> {
        let kms = &self.0.kms;
        let epms = cke.encrypted_pre_master.clone();
        match ServerHello::decode(server_hello).map(|sh| sh.oaep) {
            Ok(OaepHash::Pkcs1v15) => kms.unwrap_premaster_pkcs1(key_label, epms).await,
            _ => kms.unwrap_premaster(key_label, epms).await,
        }
    }

    /// The card the key exchange proves: the device the ClientHello names
    /// is issued, the certificate sent is byte for byte the Keyward CA's
    /// registered, current, unrevoked certificate of that device (a
    /// look-alike from another CA differs even under the same serial), and
    /// the signature over the transcript verifies under that registered
    /// certificate. Every check runs whichever fails, so a bad certificate
    /// and a bad signature cost the same work.
    async fn card(
        &self,
        ch: &ClientHello,
        client_hello: &[u8],
        server_hello: &[u8],
        cke: &CardKeyExchange,
        signed: &[u8],
    ) -> Result<(DeviceId, Serial)> {
        let p = &self.0;
        let device = DeviceId::from_bytes(ch.device);
        let rec = p.provisioning.device(device).await?;
        let Some(serial) = rec.cert_serial.as_deref() else {
            return Err(ChannelError::Refused);
        };
        let parsed = serial.parse::<Serial>().ok();
        let msg = channel::card_signature_input(client_hello, server_hello, signed);
        let (issued, signature_ok) = tokio::join!(
            async {
                match &parsed {
                    Some(s) => {
                        p.ca.get(s)
                            .await
                            .map(|c| c.and_then(|c| der_of_pem(&c.pem)))
                    }
                    None => Ok(None),
                }
            },
            p.provisioning
                .verify_device_signature(device, serial, &msg, &cke.signature),
        );
        let (issued, signature_ok) = (issued?, signature_ok?);
        let presented = issued.as_deref() == Some(cke.certificate.as_slice());
        match parsed {
            Some(serial) if signature_ok & presented & (rec.state == DeviceState::Issued) => {
                Ok((device, serial))
            }
            _ => Err(ChannelError::Refused),
        }
    }

    /// A refused key exchange: the handshake is taken and the refusal
    /// audited in one transaction, before it is answered.
    async fn refuse_handshake(&self, terminal: &Device, id: &str) -> Result<()> {
        let event = event("channel.open", id, json!({ "code": "channel_refused" }));
        let (audit, event) = (&self.0.audit, &event);
        self.db()
            .write("channel.refuse", |mut tx| async move {
                store::take_handshake_in(&mut tx, id).await?;
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

    /// The card's next record, relayed by `terminal`. A data record's
    /// plaintext goes to `carry` with the card's certificate (as the CA
    /// issued it; `None` if it has none), once the record is claimed;
    /// `carry`'s answer (at most [`channel::MAX_PLAINTEXT`] bytes) is
    /// sealed back. A failure after the claim loses the answer, never runs
    /// the request twice.
    pub async fn record<F, Fut>(
        &self,
        terminal: &Device,
        bytes: Vec<u8>,
        carry: F,
    ) -> Result<Answer>
    where
        F: FnOnce(Option<PeerCertificate>, Vec<u8>) -> Fut,
        Fut: Future<Output = Vec<u8>>,
    {
        let r = match Record::decode(&bytes) {
            Ok(r) => r,
            Err(e) => {
                self.close_relayed(terminal).await?;
                return Err(e.into());
            }
        };
        let id = r.channel.to_string();
        let mut carry = Some(carry);
        // A data record is first tried on the row as this replica last
        // claimed it, which saves the read when no other replica has taken
        // a record since: the claim's compare-and-set on every sequence and
        // generation still decides. Anything short of a claim on it (another
        // replica moved on, a replay) is decided again on the row read now.
        if r.kind == RecordType::Data
            && let Some(row) = self.0.cache.row(&id).filter(|c| c.expires_at_ms > now_ms())
        {
            match self.accepted(terminal, &row, &r, &mut carry).await {
                Ok(Some(answer)) => return Ok(answer),
                Err(e) if carry.is_none() => return Err(e),
                _ => self.0.cache.forget_row(&id),
            }
        }
        let Some(row) = store::get(self.db(), &id)
            .await?
            .filter(|c| c.open && c.expires_at_ms > now_ms())
        else {
            self.close_relayed(terminal).await?;
            return Err(ChannelError::Closed);
        };
        match self.accepted(terminal, &row, &r, &mut carry).await {
            Ok(Some(answer)) => Ok(answer),
            Ok(None) => {
                self.close(terminal, &row, "refused").await?;
                Err(ChannelError::Closed)
            }
            Err(e) => Err(e),
        }
    }

    /// What the record does, or `None` when it is anything but the card's
    /// next intact record (which closes the channel).
    /// `carry` is taken once the record is claimed, so a caller that finds
    /// it still there knows the record ran nothing.
    async fn accepted<F, Fut>(
        &self,
        terminal: &Device,
        row: &ChannelRow,
        r: &Record,
        carry: &mut Option<F>,
    ) -> Result<Option<Answer>>
    where
        F: FnOnce(Option<PeerCertificate>, Vec<u8>) -> Fut,
        Fut: Future<Output = Vec<u8>>,
    {
        let kms = &self.0.kms;
        let expected = u64::try_from(row.c2s_sequence).unwrap_or(u64::MAX);
        if r.sequence != expected || r.sequence >= channel::REKEY_AFTER_RECORDS {
            return Ok(None);
        }
        let (Ok(iv_c2s), Ok(iv_s2c)) = (
            <[u8; 12]>::try_from(row.iv_c2s.as_slice()),
            <[u8; 12]>::try_from(row.iv_s2c.as_slice()),
        ) else {
            return Err(keyward_kms::KmsError::CorruptRecord("channel iv").into());
        };
        let nonce = channel::nonce(&iv_c2s, r.sequence);
        let opened = self
            .with_key(row, Direction::C2s, |c2s| {
                let (aad, ciphertext) = (r.aad().to_vec(), r.ciphertext.clone());
                async move { kms.channel_open(&c2s, nonce, aad, ciphertext).await }
            })
            .await;
        let plain = match opened {
            Ok(p) => p,
            Err(KmsError::ChannelRefused) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if r.kind != RecordType::Data && !plain.is_empty() {
            return Ok(None);
        }
        match r.kind {
            RecordType::Data => {
                let s2c_seq = u64::try_from(row.s2c_sequence).unwrap_or(u64::MAX);
                // Everything that can fail before the request runs does
                // so before the claim: the card may then resend the record.
                // A carried request runs only bound to this channel by its
                // exporter value; a plaintext that is no carried request
                // runs nothing (`carry` answers it as such).
                if let Ok(c) = serde_json::from_slice::<crate::wire::channel::Carried>(&plain)
                    && !self.bound(row, &c.path, &c.exporter).await?
                {
                    return Ok(None);
                }
                let card = self.card_certificate(row).await?;
                let keys = self.s2c_keys(row, s2c_seq).await?;
                let (now, next_key) = (now_ms(), keys.next.as_ref().map(|n| n.1.as_slice()));
                let claimed = self
                    .db()
                    .write("channel.record", |mut tx| async move {
                        let claimed = store::claim_in(&mut tx, row, now, next_key).await?;
                        Ok::<_, ChannelError>((tx, claimed))
                    })
                    .await?;
                if !claimed {
                    // Another replica took this sequence number (or the
                    // channel closed or expired meanwhile): a replay.
                    return Ok(None);
                }
                self.0.cache.put_row(claimed_row(row, next_key));
                crate::fault_point!("channel.record.claimed");
                let carry = carry.take().ok_or(ChannelError::Closed)?;
                let answer = carry(card, plain).await;
                let first = self
                    .seal_answer(&keys, r.channel, &iv_s2c, s2c_seq, answer.clone())
                    .await;
                let (sealed, keys) = match first {
                    // The HSM reopened its sessions since the keys were
                    // kept: the same keys again, from the row.
                    Err(ChannelError::Kms(KmsError::Stale)) => {
                        self.0.cache.clear();
                        let keys = self.s2c_keys(row, s2c_seq).await?;
                        let sealed = self
                            .seal_answer(&keys, r.channel, &iv_s2c, s2c_seq, answer)
                            .await?;
                        (sealed, keys)
                    }
                    sealed => (sealed?, keys),
                };
                if let Some((next, wrapped)) = keys.next {
                    let generation = row.s2c_generation.saturating_add(1);
                    self.0
                        .cache
                        .put_key(row, Direction::S2c, generation, &wrapped, next);
                }
                self.count_record("data");
                Ok(Some(match sealed.key_update {
                    None => Answer::Record(sealed.record),
                    Some(key_update) => {
                        self.count_record("server_key_update");
                        Answer::Rekeyed {
                            key_update,
                            record: sealed.record,
                        }
                    }
                }))
            }
            RecordType::KeyUpdate => {
                let (seq, generation) = (row.c2s_sequence, row.c2s_generation);
                let next_gen = u64::try_from(generation)
                    .unwrap_or(u64::MAX)
                    .saturating_add(1);
                let next = self
                    .with_key(row, Direction::C2s, |c2s| async move {
                        kms.channel_derive(
                            &c2s,
                            channel::rekey_input(next_gen),
                            ChannelKeyUse::Traffic,
                        )
                        .await
                    })
                    .await?;
                let wrapped = kms.channel_wrap_state(&next).await?;
                let (id, wrapped) = (&row.id, &wrapped);
                let moved = self
                    .db()
                    .write("channel.rekey", |mut tx| async move {
                        let moved =
                            store::rekey_c2s_in(&mut tx, id, seq, generation, wrapped).await?;
                        Ok::<_, ChannelError>((tx, moved))
                    })
                    .await?;
                if !moved {
                    return Ok(None);
                }
                crate::fault_point!("channel.rekey.committed");
                self.0.cache.forget_row(id);
                let generation = generation.saturating_add(1);
                self.0
                    .cache
                    .put_key(row, Direction::C2s, generation, wrapped, Arc::new(next));
                self.count_record("key_update");
                Ok(Some(Answer::KeyUpdated))
            }
            RecordType::Close => {
                let (id, now) = (&row.id, now_ms());
                let event = event("channel.close", id, json!({ "by": "card" }));
                let (audit, event) = (&self.0.audit, &event);
                let closed = self
                    .db()
                    .write("channel.close", |mut tx| async move {
                        if !store::close_in(&mut tx, id, now).await? {
                            return Ok((tx, false));
                        }
                        stage(&mut tx, audit, terminal, event, Outcome::Success).await?;
                        Ok::<_, ChannelError>((tx, true))
                    })
                    .await?;
                self.0.audit.chain_staged().await;
                self.0.cache.forget(id);
                if !closed {
                    return Err(ChannelError::Closed);
                }
                self.count_record("close");
                Ok(Some(Answer::Closed))
            }
        }
    }

    /// Closes the channel on a record that was not its next intact one;
    /// the closing and its audit record commit together.
    async fn close(
        &self,
        terminal: &Device,
        row: &ChannelRow,
        outcome: &'static str,
    ) -> Result<()> {
        let (id, now) = (&row.id, now_ms());
        let event = event("channel.close", id, json!({ "by": "server" }));
        let (audit, event) = (&self.0.audit, &event);
        self.db()
            .write("channel.close", |mut tx| async move {
                if store::close_in(&mut tx, id, now).await? {
                    stage(
                        &mut tx,
                        audit,
                        terminal,
                        event,
                        Outcome::Refused {
                            code: "channel_closed",
                        },
                    )
                    .await?;
                }
                Ok::<_, ChannelError>((tx, ()))
            })
            .await?;
        self.0.audit.chain_staged().await;
        self.0.cache.forget(id);
        self.count_record(outcome);
        Ok(())
    }

    /// A record that is no record, or names no open channel, cannot be
    /// told apart from one of this terminal's records with its header
    /// altered or cut: every channel the terminal relays closes (each
    /// audited), as an altered record of a known channel closes that one.
    async fn close_relayed(&self, terminal: &Device) -> Result<()> {
        let (terminal_id, now) = (terminal.device_id.to_string(), now_ms());
        let (audit, terminal_id) = (&self.0.audit, &terminal_id);
        let closed = self
            .db()
            .write("channel.close", |mut tx| async move {
                let closed = store::close_relayed_in(&mut tx, terminal_id, now).await?;
                for id in &closed {
                    let event = event("channel.close", id, json!({ "by": "server" }));
                    stage(
                        &mut tx,
                        audit,
                        terminal,
                        &event,
                        Outcome::Refused {
                            code: "channel_closed",
                        },
                    )
                    .await?;
                }
                Ok::<_, ChannelError>((tx, closed))
            })
            .await?;
        self.0.audit.chain_staged().await;
        for id in &closed {
            self.0.cache.forget(id);
        }
        self.count_record("refused");
        Ok(())
    }

    /// The card certificate the channel's key exchange proved, as the CA
    /// stores it: a carried request runs as this certificate.
    /// Kept per channel: a serial's certificate never changes (whether it
    /// is still current and unrevoked is the route's check, every time).
    async fn card_certificate(&self, row: &ChannelRow) -> Result<Option<PeerCertificate>> {
        if let Some(card) = self.0.cache.card(&row.id) {
            return Ok(card);
        }
        let Ok(serial) = row.card_serial.parse::<Serial>() else {
            return Ok(None);
        };
        let card = self
            .0
            .ca
            .get(&serial)
            .await?
            .and_then(|c| der_of_pem(&c.pem))
            .and_then(|der| PeerCertificate::from_der(&der));
        self.0.cache.put_card(row, card.clone());
        Ok(card)
    }

    /// Whether `exporter` (base64) is the exporter value of `path` in the
    /// channel `row` (docs/protocol.md §14.3), compared in constant time.
    /// The value is deterministic, so it is kept per channel and path.
    async fn bound(&self, row: &ChannelRow, path: &str, exporter: &str) -> Result<bool> {
        let expected = match self.0.cache.exporter(&row.id, path) {
            Some(v) => v,
            None => {
                let kms = &self.0.kms;
                let key = kms
                    .channel_unwrap_state(row.exporter_key.clone(), ChannelKeyUse::Mac)
                    .await?;
                let v = kms
                    .channel_cmac(&key, channel::exporter_context(path))
                    .await?;
                self.0.cache.put_exporter(row, path, v);
                v
            }
        };
        let given = B64.decode(exporter).unwrap_or_default();
        Ok(expected.ct_eq(given.as_slice()).into())
    }

    /// The traffic key of `direction` that `row` names, unwrapped from the
    /// row and kept.
    async fn unwrapped_key(
        &self,
        row: &ChannelRow,
        direction: Direction,
    ) -> keyward_kms::Result<Arc<ChannelSecret>> {
        let wrapped = match direction {
            Direction::C2s => &row.c2s_key,
            Direction::S2c => &row.s2c_key,
        };
        let key = self
            .0
            .kms
            .channel_unwrap_state(wrapped.clone(), ChannelKeyUse::Traffic)
            .await?;
        let key = Arc::new(key);
        self.0.cache.put_named(row, direction, key.clone());
        Ok(key)
    }

    /// `op` under the traffic key of `direction` that `row` names: the kept
    /// one, or unwrapped from the row. A kept key of an older HSM epoch
    /// (the module reopened its sessions) is unwrapped again and `op` run
    /// once more.
    async fn with_key<T, F, Fut>(
        &self,
        row: &ChannelRow,
        direction: Direction,
        op: F,
    ) -> keyward_kms::Result<T>
    where
        F: Fn(Arc<ChannelSecret>) -> Fut,
        Fut: Future<Output = keyward_kms::Result<T>>,
    {
        let key = match self.0.cache.key(row, direction) {
            Some(k) => k,
            None => self.unwrapped_key(row, direction).await?,
        };
        match op(key).await {
            Err(KmsError::Stale) => {
                self.0.cache.clear();
                op(self.unwrapped_key(row, direction).await?).await
            }
            done => done,
        }
    }

    /// Runs one HSM step of a handshake, its latency in
    /// `keyward_hsm_operation_duration_seconds` under `operation`: where a
    /// handshake's time goes, and how many RSA operations a replica ran.
    async fn timed<T>(
        &self,
        operation: &'static str,
        step: impl Future<Output = keyward_kms::Result<T>>,
    ) -> keyward_kms::Result<T> {
        let start = std::time::Instant::now();
        let r = step.await;
        let outcome = match &r {
            Ok(_) => "ok",
            Err(keyward_kms::KmsError::ChannelRefused) => "refused",
            Err(_) => "error",
        };
        self.0
            .metrics
            .observe_hsm(operation, outcome, start.elapsed());
        r
    }

    fn count_handshake(&self, outcome: &'static str) {
        self.0
            .metrics
            .channel_handshakes
            .with_label_values(&[outcome])
            .inc();
    }

    fn count_record(&self, outcome: &'static str) {
        self.0
            .metrics
            .channel_records
            .with_label_values(&[outcome])
            .inc();
    }
}

/// A client-caused failure of a key-exchange check (an unknown device, a
/// certificate the CA does not vouch for, a ciphertext that does not
/// unwrap) is the one refusal; the HSM, CA or database failing is not.
fn refusal(e: ChannelError) -> ChannelError {
    match e {
        ChannelError::Kms(keyward_kms::KmsError::ChannelRefused) => ChannelError::Refused,
        e if e.kind().is_client() => ChannelError::Refused,
        e => e,
    }
}

/// The row as [`store::claim_in`] leaves it after claiming `row`'s next
/// record (with `next_key`, the server's direction moved on).
fn claimed_row(row: &ChannelRow, next_key: Option<&[u8]>) -> ChannelRow {
    let mut next = row.clone();
    next.c2s_sequence = next.c2s_sequence.saturating_add(1);
    match next_key {
        None => next.s2c_sequence = next.s2c_sequence.saturating_add(1),
        Some(key) => {
            next.s2c_sequence = 1;
            next.s2c_generation = next.s2c_generation.saturating_add(1);
            next.s2c_key = key.to_vec();
        }
    }
    next
}

fn der_of_pem(pem: &str) -> Option<Vec<u8>> {
    x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .ok()
        .map(|(_, p)| p.contents)
}

/// Stages `event` by the terminal's call in the step's transaction `tx`.
async fn stage(
    tx: &mut keyward_kms::db::Tx,
    audit: &AuditLog,
    terminal: &Device,
    event: &AuditEvent,
    outcome: Outcome,
) -> std::result::Result<(), crate::audit::AuditError> {
    audit
        .stage_in(tx, &terminal.actor, event, outcome, &terminal.request_id)
        .await
}

fn event(action: &'static str, id: &str, detail: serde_json::Value) -> AuditEvent {
    AuditEvent::Online {
        action,
        target: format!("channel:{id}"),
        detail,
    }
}
