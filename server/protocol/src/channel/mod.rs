//! The card-to-server secure channel (`docs/protocol.md` §14): the four
//! handshake messages, the record, and the exact inputs of the key schedule.
//!
//! | message               | magic  | from   |
//! |-----------------------|--------|--------|
//! | [`ClientHello`]       | `KWC1` | card   |
//! | [`ServerHello`]       | `KWC2` | server |
//! | [`CardKeyExchange`]   | `KWC3` | card   |
//! | [`ServerFinished`]    | `KWC4` | server |
//! | [`ResumeHello`]       | `KWC5` | card   |
//! | [`NewTicket`]         | `KWC6` | server |
//! | [`Record`]            | `KWCR` | either |
//!
//! Layouts follow the load messages (`crate::wire`): a magic, version byte
//! 1, big-endian integers, u16-length-prefixed byte strings, nothing
//! trailing. Every layout is canonical (one encoding per value), so a
//! decoded message re-encodes to the bytes received; the transcript is
//! nevertheless always hashed over the bytes as they travelled.
//!
//! This module holds no key and does no cryptography beyond SHA-256 and the
//! check that an ephemeral key is a P-256 point ([`EphemeralKey`]): the
//! PRF (AES-256 on single blocks), RSA-OAEP, ECDH, AES-CMAC and AES-GCM are
//! the caller's (the HSM on the server, software on the card). [`schedule`]
//! says exactly which bytes go into each of them.

pub mod schedule;
#[cfg(test)]
mod tests;

use std::fmt;

use crate::ProtocolError;
use crate::wire::{Format, Reader, Writer};

pub use schedule::{
    Direction, Label, binder_input, card_signature_input, exporter_context, handshake_hash,
    hybrid_master_input, iv, label_input, master_input, nonce, rekey_input, resumption_hash,
    resumption_master_input,
};

/// The version byte after every channel message's magic. It names the
/// layout, not the negotiated protocol version: a later card still sends a
/// `KWC1` with version byte 1 and lists the versions it speaks inside.
pub const VERSION: u8 = 1;

/// The protocol version this crate implements, as offered in a
/// [`ClientHello`] and chosen in a [`ServerHello`].
pub const PROTOCOL_V1: u8 = 1;

/// No handshake message is longer (a chain of four 2 KiB certificates fits).
pub const MAX_HANDSHAKE: usize = 10 * 1024;

/// The most plaintext one record carries.
pub const MAX_PLAINTEXT: usize = 16 * 1024;

/// The AES-GCM tag every record's ciphertext ends with.
pub const TAG_LEN: usize = 16;

/// A record's header (its AAD): magic, version, channel id, type, sequence.
pub const HEADER_LEN: usize = 4 + 1 + 16 + 1 + 8;

/// No record is longer.
pub const MAX_RECORD: usize = HEADER_LEN + 4 + MAX_PLAINTEXT + TAG_LEN;

/// A direction's keys carry at most this many records (sequence numbers
/// `0..REKEY_AFTER_RECORDS`); the sender updates its key by then, and a
/// receiver refuses a record numbered beyond.
pub const REKEY_AFTER_RECORDS: u64 = 1 << 20;

/// A direction's keys are updated at the latest after this many seconds.
pub const REKEY_AFTER_SECONDS: u64 = 3600;

/// Most certificates in a server's channel chain.
const MAX_CHAIN: usize = 4;
/// Longest certificate, RSA ciphertext and signature (RSA-4096 fits).
const MAX_CERTIFICATE: usize = 4096;
const MAX_CIPHERTEXT: usize = 512;
const MAX_SIGNATURE: usize = 512;
/// Most versions or modes a hello may list.
const MAX_LIST: usize = 8;

const HANDSHAKE: Format = Format {
    version: VERSION,
    max: MAX_HANDSHAKE,
    malformed: ProtocolError::ChannelMalformed,
    wrong_version: ProtocolError::ChannelMalformed("handshake"),
};

const RECORD_FORMAT: Format = Format {
    version: VERSION,
    max: MAX_RECORD,
    malformed: ProtocolError::ChannelMalformed,
    wrong_version: ProtocolError::ChannelMalformed("record"),
};

const CLIENT_HELLO: &[u8; 4] = b"KWC1";
const SERVER_HELLO: &[u8; 4] = b"KWC2";
const CARD_KEY_EXCHANGE: &[u8; 4] = b"KWC3";
const SERVER_FINISHED: &[u8; 4] = b"KWC4";
const RECORD: &[u8; 4] = b"KWCR";
const RESUME_HELLO: &[u8; 4] = b"KWC5";
const NEW_TICKET: &[u8; 4] = b"KWC6";

/// How the pre-master reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// The card encrypts a random pre-master to the channel key (RSA-OAEP).
    RsaTransport = 1,
    /// RSA transport as above, and both sides' ephemeral P-256 keys, whose
    /// ECDH secret salts the master secret (forward secrecy, §14.1).
    EcdheP256 = 2,
    /// A [`ResumeHello`] names a ticket; no certificate, no RSA.
    Resumption = 3,
}

impl Mode {
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::RsaTransport),
            2 => Some(Self::EcdheP256),
            3 => Some(Self::Resumption),
            _ => None,
        }
    }
}

/// The ServerHello's encryption byte: how the card encrypts its
/// pre-master. RSA-OAEP with the hash (and MGF1 hash) the server's module
/// unwraps with, probed at start (SoftHSM 2.6.1 unwraps OAEP with SHA-1
/// only); or, where the server is configured for it, RSAES-PKCS1-v1_5
/// (which the server takes only with implicit rejection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OaepHash {
    Sha1 = 1,
    Sha256 = 2,
    /// RSAES-PKCS1-v1_5 (no OAEP): `channel.padding = "pkcs1v15"`.
    Pkcs1v15 = 3,
}

impl OaepHash {
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Sha1),
            2 => Some(Self::Sha256),
            3 => Some(Self::Pkcs1v15),
            _ => None,
        }
    }
}

/// An ephemeral P-256 public key of the ECDHE mode: an uncompressed SEC1
/// point (`04 ‖ X ‖ Y`, 65 bytes) on the curve. It cannot be the identity
/// (which has no uncompressed encoding), and a point off the curve does
/// not decode; the compressed form is not taken, so the encoding is
/// canonical.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct EphemeralKey([u8; EphemeralKey::LEN]);

impl EphemeralKey {
    pub const LEN: usize = 65;

    /// `None` unless `bytes` is an uncompressed point on P-256.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let point: [u8; Self::LEN] = bytes.try_into().ok()?;
        (point[0] == 4 && p256::PublicKey::from_sec1_bytes(&point).is_ok()).then_some(Self(point))
    }

    pub fn as_bytes(&self) -> &[u8; Self::LEN] {
        &self.0
    }
}

impl fmt::Debug for EphemeralKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EphemeralKey(")?;
        self.0[..8].iter().try_for_each(|b| write!(f, "{b:02x}"))?;
        f.write_str("…)")
    }
}

/// The ephemeral key after the other fields, in the ECDHE mode only.
fn read_ephemeral(r: &mut Reader<'_>, mode: Mode) -> Result<Option<EphemeralKey>, ProtocolError> {
    if mode != Mode::EcdheP256 {
        return Ok(None);
    }
    let bytes = r.bytes16(EphemeralKey::LEN, EphemeralKey::LEN)?;
    EphemeralKey::from_bytes(bytes)
        .map(Some)
        .ok_or_else(|| r.malformed())
}

/// A 16-byte channel id, drawn by the server's HSM.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChannelId(pub [u8; 16]);

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChannelId({self})")
    }
}

/// A list of versions or modes: 1 to [`MAX_LIST`] distinct non-zero bytes.
/// Unknown values are kept (a later card may offer more than this server
/// speaks); the server picks among those it knows.
fn read_list(r: &mut Reader<'_>) -> Result<Vec<u8>, ProtocolError> {
    let n = usize::from(r.u8()?);
    if n == 0 || n > MAX_LIST {
        return Err(r.malformed());
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let v = r.u8()?;
        if v == 0 || out.contains(&v) {
            return Err(r.malformed());
        }
        out.push(v);
    }
    Ok(out)
}

fn valid_list(l: &[u8]) -> bool {
    !l.is_empty()
        && l.len() <= MAX_LIST
        && l.iter()
            .enumerate()
            .all(|(i, v)| *v != 0 && !l[..i].contains(v))
}

/// The card opens (magic `KWC1`).
///
/// ```text
/// offset size field
///      0    4 "KWC1"
///      4    1 version (1)
///      5   32 client random
///     37    1 number of versions n (1..=8), then n distinct non-zero bytes
///      …    1 number of modes m (1..=8), then m distinct non-zero bytes
///      …    8 device id
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    pub client_random: [u8; 32],
    /// Protocol versions the card speaks, its preference first.
    pub versions: Vec<u8>,
    /// Modes the card accepts, its preference first ([`Mode`] values, or
    /// values this crate does not know).
    pub modes: Vec<u8>,
    pub device: [u8; 8],
}

impl ClientHello {
    /// Panics only on lists [`decode`](Self::decode) could never return
    /// (empty, over 8, zero or repeated values): a caller's bug.
    pub fn encode(&self) -> Vec<u8> {
        assert!(valid_list(&self.versions) && valid_list(&self.modes));
        Writer::new(&HANDSHAKE, CLIENT_HELLO)
            .bytes(&self.client_random)
            .u8(self.versions.len() as u8)
            .bytes(&self.versions)
            .u8(self.modes.len() as u8)
            .bytes(&self.modes)
            .bytes(&self.device)
            .finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(&HANDSHAKE, bytes, CLIENT_HELLO, "client hello")?;
        let client_random = r.array()?;
        let versions = read_list(&mut r)?;
        let modes = read_list(&mut r)?;
        let device = r.array()?;
        r.end()?;
        Ok(Self {
            client_random,
            versions,
            modes,
            device,
        })
    }

    /// The mode the server runs: the first of `supported` (the server's
    /// preference order) that the card offers, provided it offers
    /// [`PROTOCOL_V1`]; `None` when they share nothing.
    pub fn negotiate(&self, supported: &[Mode]) -> Option<Mode> {
        if !self.versions.contains(&PROTOCOL_V1) {
            return None;
        }
        supported
            .iter()
            .copied()
            .find(|m| self.modes.contains(&(*m as u8)))
    }
}

/// The server answers (magic `KWC2`).
///
/// ```text
/// offset size field
///      0    4 "KWC2"
///      4    1 version (1)
///      5   32 server random
///     37   16 channel id
///     53    1 chosen version (1)
///     54    1 chosen mode (1 rsa-transport, 2 ecdhe-p256, 3 resumption)
///     55    1 encryption of the pre-master (1 OAEP-SHA-1, 2 OAEP-SHA-256,
///             3 PKCS#1 v1.5)
///     56    2 number of certificates (1..=4; 0 in resumption), then each:
///           2+n a DER certificate: the channel certificate first, then
///               its issuing CA (up to, not necessarily including, the root)
///      …  2+65 the server's ephemeral P-256 key (ECDHE mode only)
/// ```
///
/// A resumption hello has no chain (the card knows the server by the
/// ticket's secret) and OAEP hash 2, which means nothing there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHello {
    pub server_random: [u8; 32],
    pub channel: ChannelId,
    pub mode: Mode,
    /// What the card encrypts the pre-master with: the module's capability.
    pub oaep: OaepHash,
    pub chain: Vec<Vec<u8>>,
    /// The server's ephemeral key: present exactly in [`Mode::EcdheP256`].
    pub ephemeral: Option<EphemeralKey>,
}

impl ServerHello {
    /// Panics only on a chain [`decode`](Self::decode) could never return
    /// (empty, over 4, or an empty or over-long certificate; not empty in
    /// resumption), or an ephemeral key in a mode without one (or none in
    /// the ECDHE mode).
    pub fn encode(&self) -> Vec<u8> {
        assert!(
            valid_chain_len(self.mode, self.chain.len())
                && self
                    .chain
                    .iter()
                    .all(|c| !c.is_empty() && c.len() <= MAX_CERTIFICATE)
                && self.ephemeral.is_some() == (self.mode == Mode::EcdheP256)
        );
        let w = Writer::new(&HANDSHAKE, SERVER_HELLO)
            .bytes(&self.server_random)
            .bytes(&self.channel.0)
            .u8(PROTOCOL_V1)
            .u8(self.mode as u8)
            .u8(self.oaep as u8)
            .u16(self.chain.len() as u16);
        let w = self.chain.iter().fold(w, |w, c| w.bytes16(c));
        match &self.ephemeral {
            Some(e) => w.bytes16(e.as_bytes()).finish(),
            None => w.finish(),
        }
    }

    /// Refuses a version other than [`PROTOCOL_V1`], an unknown mode or
    /// OAEP hash;
    /// whether the card offered the mode is the card's check.
    pub fn decode(bytes: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(&HANDSHAKE, bytes, SERVER_HELLO, "server hello")?;
        let server_random = r.array()?;
        let channel = ChannelId(r.array()?);
        if r.u8()? != PROTOCOL_V1 {
            return Err(r.malformed());
        }
        let mode = Mode::from_byte(r.u8()?).ok_or_else(|| r.malformed())?;
        let oaep = OaepHash::from_byte(r.u8()?).ok_or_else(|| r.malformed())?;
        let n = usize::from(r.u16()?);
        if !valid_chain_len(mode, n) {
            return Err(r.malformed());
        }
        let chain = (0..n)
            .map(|_| r.bytes16(1, MAX_CERTIFICATE).map(<[u8]>::to_vec))
            .collect::<Result<_, _>>()?;
        let ephemeral = read_ephemeral(&mut r, mode)?;
        r.end()?;
        Ok(Self {
            server_random,
            channel,
            mode,
            oaep,
            chain,
            ephemeral,
        })
    }
}

/// A resumption hello carries no chain; every other mode one of 1 to 4.
fn valid_chain_len(mode: Mode, n: usize) -> bool {
    match mode {
        Mode::Resumption => n == 0,
        _ => n > 0 && n <= MAX_CHAIN,
    }
}

/// The card proves itself and sends the pre-master (magic `KWC3`).
///
/// ```text
/// offset size field
///      0    4 "KWC3"
///      4    1 version (1)
///      5  2+n card certificate, DER (1..=4096 bytes)
///      …  2+n encrypted pre-master (1..=512 bytes; RSA-OAEP with the
///             server hello's hash)
///      … 2+65 the card's ephemeral P-256 key (ECDHE mode only)
///      …  2+n card signature (1..=512 bytes) over
///             card_signature_input(ClientHello, ServerHello, signed part)
/// ```
///
/// The signed part is every byte before the signature's length field (so
/// it covers the card's ephemeral key, and the ServerHello before it the
/// server's). Which layout a message has follows from the mode the
/// ServerHello chose ([`CardKeyExchange::split_in`]).
#[derive(Clone, PartialEq, Eq)]
pub struct CardKeyExchange {
    pub certificate: Vec<u8>,
    pub encrypted_pre_master: Vec<u8>,
    /// The card's ephemeral key: present exactly in [`Mode::EcdheP256`].
    pub ephemeral: Option<EphemeralKey>,
    pub signature: Vec<u8>,
}

impl fmt::Debug for CardKeyExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CardKeyExchange")
            .field("certificate_len", &self.certificate.len())
            .field("encrypted_pre_master_len", &self.encrypted_pre_master.len())
            .field("ephemeral", &self.ephemeral)
            .field("signature_len", &self.signature.len())
            .finish()
    }
}

impl CardKeyExchange {
    /// The bytes the card's signature covers (with both hellos before them,
    /// see [`card_signature_input`]): the message up to and including the
    /// encrypted pre-master. Panics only on fields
    /// [`decode`](Self::decode) could never return.
    pub fn signed_part(&self) -> Vec<u8> {
        self.writer().finish()
    }

    /// Panics only on fields [`decode`](Self::decode) could never return
    /// (empty or over-long).
    pub fn encode(&self) -> Vec<u8> {
        assert!(!self.signature.is_empty() && self.signature.len() <= MAX_SIGNATURE);
        self.writer().bytes16(&self.signature).finish()
    }

    fn writer(&self) -> Writer {
        assert!(
            !self.certificate.is_empty()
                && self.certificate.len() <= MAX_CERTIFICATE
                && !self.encrypted_pre_master.is_empty()
                && self.encrypted_pre_master.len() <= MAX_CIPHERTEXT
        );
        let w = Writer::new(&HANDSHAKE, CARD_KEY_EXCHANGE)
            .bytes16(&self.certificate)
            .bytes16(&self.encrypted_pre_master);
        match &self.ephemeral {
            Some(e) => w.bytes16(e.as_bytes()),
            None => w,
        }
    }

    /// The ciphertext's length is not checked against the channel key here:
    /// a wrong length must fail the same way as bad padding, in the
    /// decryption step. RSA-transport layout; see [`Self::split_in`].
    pub fn decode(bytes: &[u8]) -> Result<Self, ProtocolError> {
        Self::split(bytes).map(|(m, _)| m)
    }

    /// [`Self::split_in`] of the RSA-transport layout.
    pub fn split(bytes: &[u8]) -> Result<(Self, &[u8]), ProtocolError> {
        Self::split_in(bytes, Mode::RsaTransport)
    }

    /// Decodes the layout of `mode` (the ServerHello's) and returns the
    /// signed part as a slice of `bytes`, so the server verifies the
    /// signature over the bytes that travelled. A resumption has no key
    /// exchange.
    pub fn split_in(bytes: &[u8], mode: Mode) -> Result<(Self, &[u8]), ProtocolError> {
        let mut r = Reader::new(&HANDSHAKE, bytes, CARD_KEY_EXCHANGE, "card key exchange")?;
        if mode == Mode::Resumption {
            return Err(r.malformed());
        }
        let certificate = r.bytes16(1, MAX_CERTIFICATE)?.to_vec();
        let encrypted_pre_master = r.bytes16(1, MAX_CIPHERTEXT)?.to_vec();
        let ephemeral = read_ephemeral(&mut r, mode)?;
        let signed_len = bytes.len() - r.remaining();
        let signature = r.bytes16(1, MAX_SIGNATURE)?.to_vec();
        r.end()?;
        Ok((
            Self {
                certificate,
                encrypted_pre_master,
                ephemeral,
                signature,
            },
            &bytes[..signed_len],
        ))
    }
}

/// The server confirms the keys (magic `KWC4`).
///
/// ```text
/// offset size field
///      0    4 "KWC4"
///      4    1 version (1)
///      5   16 channel id
///     21   16 AES-CMAC(K_finished, H)
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFinished {
    pub channel: ChannelId,
    pub mac: [u8; 16],
}

impl ServerFinished {
    pub fn encode(&self) -> Vec<u8> {
        Writer::new(&HANDSHAKE, SERVER_FINISHED)
            .bytes(&self.channel.0)
            .bytes(&self.mac)
            .finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(&HANDSHAKE, bytes, SERVER_FINISHED, "server finished")?;
        let channel = ChannelId(r.array()?);
        let mac = r.array()?;
        r.end()?;
        Ok(Self { channel, mac })
    }
}

/// What a record carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordType {
    /// Application data: a carried request or its answer.
    Data = 1,
    /// The sender closes the channel; the plaintext is empty.
    Close = 2,
    /// The sender's next record is under its next key generation, sequence
    /// 0; the plaintext is empty.
    KeyUpdate = 3,
}

impl RecordType {
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Data),
            2 => Some(Self::Close),
            3 => Some(Self::KeyUpdate),
            _ => None,
        }
    }
}

/// A protected record (magic `KWCR`).
///
/// ```text
/// offset size field
///      0    4 "KWCR"          ┐
///      4    1 version (1)     │ header = the AEAD's
///      5   16 channel id      │ associated data
///     21    1 record type     │
///     22    8 sequence number ┘
///     30  4+n AES-256-GCM ciphertext with its 16-byte tag
///             (16..=16400 bytes)
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Record {
    pub channel: ChannelId,
    pub kind: RecordType,
    pub sequence: u64,
    /// Ciphertext ‖ tag.
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("channel", &self.channel)
            .field("kind", &self.kind)
            .field("sequence", &self.sequence)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish()
    }
}

impl Record {
    /// The header of a record, which is its AEAD associated data.
    pub fn header(channel: ChannelId, kind: RecordType, sequence: u64) -> [u8; HEADER_LEN] {
        let mut h = [0; HEADER_LEN];
        let w = Writer::new(&RECORD_FORMAT, RECORD)
            .bytes(&channel.0)
            .u8(kind as u8)
            .u64(sequence)
            .finish();
        h.copy_from_slice(&w);
        h
    }

    /// This record's associated data.
    pub fn aad(&self) -> [u8; HEADER_LEN] {
        Self::header(self.channel, self.kind, self.sequence)
    }

    /// Panics only on a ciphertext [`decode`](Self::decode) could never
    /// return (shorter than the tag, or over [`MAX_PLAINTEXT`] + tag).
    pub fn encode(&self) -> Vec<u8> {
        assert!(
            self.ciphertext.len() >= TAG_LEN && self.ciphertext.len() <= MAX_PLAINTEXT + TAG_LEN
        );
        Writer::new(&RECORD_FORMAT, RECORD)
            .bytes(&self.channel.0)
            .u8(self.kind as u8)
            .u64(self.sequence)
            .bytes32(&self.ciphertext)
            .finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(&RECORD_FORMAT, bytes, RECORD, "record")?;
        let channel = ChannelId(r.array()?);
        let kind = RecordType::from_byte(r.u8()?).ok_or_else(|| r.malformed())?;
        let sequence = r.u64()?;
        let ciphertext = r.bytes32(TAG_LEN, MAX_PLAINTEXT + TAG_LEN)?.to_vec();
        r.end()?;
        Ok(Self {
            channel,
            kind,
            sequence,
            ciphertext,
        })
    }
}

/// The card resumes with a ticket (magic `KWC5`): a whole handshake in one
/// round trip, no certificate and no RSA.
///
/// ```text
/// offset size field
///      0    4 "KWC5"
///      4    1 version (1)
///      5   32 client random
///     37    1 number of versions n (1..=8), then n distinct non-zero bytes
///      …    8 device id
///      …   16 ticket (a [`NewTicket`]'s handle)
///      …   16 binder = AES-CMAC(K_binder, every byte before it)
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ResumeHello {
    pub client_random: [u8; 32],
    pub versions: Vec<u8>,
    pub device: [u8; 8],
    pub ticket: [u8; 16],
    pub binder: [u8; 16],
}

impl fmt::Debug for ResumeHello {
    /// The ticket names a secret; it is not printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResumeHello")
            .field("versions", &self.versions)
            .finish_non_exhaustive()
    }
}

impl ResumeHello {
    /// The bytes the binder covers: the message up to the binder. Panics
    /// only on versions [`decode`](Self::decode) could never return.
    pub fn binder_part(&self) -> Vec<u8> {
        assert!(valid_list(&self.versions));
        Writer::new(&HANDSHAKE, RESUME_HELLO)
            .bytes(&self.client_random)
            .u8(self.versions.len() as u8)
            .bytes(&self.versions)
            .bytes(&self.device)
            .bytes(&self.ticket)
            .finish()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.binder_part();
        out.extend_from_slice(&self.binder);
        out
    }

    /// Decodes and returns the binder's part as a slice of `bytes`.
    pub fn split(bytes: &[u8]) -> Result<(Self, &[u8]), ProtocolError> {
        let mut r = Reader::new(&HANDSHAKE, bytes, RESUME_HELLO, "resume hello")?;
        let client_random = r.array()?;
        let versions = read_list(&mut r)?;
        let device = r.array()?;
        let ticket = r.array()?;
        let bound = bytes.len() - r.remaining();
        let binder = r.array()?;
        r.end()?;
        Ok((
            Self {
                client_random,
                versions,
                device,
                ticket,
                binder,
            },
            &bytes[..bound],
        ))
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ProtocolError> {
        Self::split(bytes).map(|(m, _)| m)
    }
}

/// The server gives the card a resumption ticket (magic `KWC6`), beside
/// every ServerFinished. The handle names a secret the card derived
/// itself (`K[resumption]`); the server keeps it wrapped, bound to the
/// card's certificate, for `lifetime` seconds and one use.
///
/// ```text
/// offset size field
///      0    4 "KWC6"
///      4    1 version (1)
///      5   16 channel id (whose schedule gave the secret)
///     21   16 ticket
///     37    4 lifetime in seconds (1..=86400)
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct NewTicket {
    pub channel: ChannelId,
    pub ticket: [u8; 16],
    pub lifetime: u32,
}

impl fmt::Debug for NewTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewTicket")
            .field("channel", &self.channel)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

/// The longest a ticket lives, in seconds: a day.
pub const MAX_TICKET_LIFETIME: u32 = 86_400;

impl NewTicket {
    /// Panics only on a lifetime [`decode`](Self::decode) could never return.
    pub fn encode(&self) -> Vec<u8> {
        assert!(self.lifetime > 0 && self.lifetime <= MAX_TICKET_LIFETIME);
        Writer::new(&HANDSHAKE, NEW_TICKET)
            .bytes(&self.channel.0)
            .bytes(&self.ticket)
            .u32(self.lifetime)
            .finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(&HANDSHAKE, bytes, NEW_TICKET, "new ticket")?;
        let channel = ChannelId(r.array()?);
        let ticket = r.array()?;
        let lifetime = r.u32()?;
        if lifetime == 0 || lifetime > MAX_TICKET_LIFETIME {
            return Err(r.malformed());
        }
        r.end()?;
        Ok(Self {
            channel,
            ticket,
            lifetime,
        })
    }
}
