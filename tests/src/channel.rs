//! The card's side of the card-to-server secure channel (docs/protocol.md
//! §14) in software: the device's implementation, and the reference the
//! HSM side is tested against.
//!
//! The bytes come from `keyward_protocol::channel`; the cryptography here
//! is RustCrypto: AES-256 on single blocks for the PRF, AES-CMAC for the
//! Finished and the exporter, RSA-OAEP (with the hash the ServerHello
//! names) or, where the hello says so, RSAES-PKCS1-v1_5 for the pre-master,
//! P-256 ECDH for the ECDHE mode's ephemerals,
//! AES-256-GCM for records. The card's signature is the [`SimDevice`]'s.
//!
//! [`SoftServer`] is the server's side in software, for the card's tests
//! and the worked trace only: the real server does its part in the HSM.

use std::time::{Duration, Instant};

use aes::cipher::{BlockEncrypt, KeyInit, generic_array::GenericArray};
use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{Aead, Payload};
use anyhow::{Context, Result, anyhow, bail, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use cmac::{Cmac, Mac};
use hyper::StatusCode;
use keyward_kms::types::DeviceId;
use keyward_protocol::channel::{
    self, CardKeyExchange, ChannelId, ClientHello, Direction, EphemeralKey, Label, Mode, NewTicket,
    OaepHash, PROTOCOL_V1, Record, RecordType, ResumeHello, ServerFinished, ServerHello,
};
use keyward_server::wire::channel::{Carried, CarriedAnswer};
use rand::{CryptoRng, RngCore};
use rsa::pkcs8::DecodePublicKey as _;
use rsa::traits::PublicKeyParts as _;
use serde_json::Value;
use x509_parser::prelude::X509Certificate;

use crate::purse::verify_chain;
use crate::simulator::SimDevice;
use crate::terminal::{Caller, Connection, Reply};

/// The smallest channel key a card accepts.
const MIN_RSA_BITS: usize = 2048;

/// `PRF(K, D) = AES-256_K(D[0..16]) ‖ AES-256_K(D[16..32])`: what
/// `CKM_AES_ECB_ENCRYPT_DATA` derives in the HSM.
pub fn prf(key: &[u8; 32], input: &[u8; 32]) -> [u8; 32] {
    let aes = aes::Aes256::new(GenericArray::from_slice(key));
    let mut out = *input;
    for block in out.chunks_exact_mut(16) {
        aes.encrypt_block(GenericArray::from_mut_slice(block));
    }
    out
}

/// `plaintext` encrypted to `key` as the ServerHello's encryption byte
/// says: RSA-OAEP with its hash for the digest and MGF1, empty label; or
/// RSAES-PKCS1-v1_5 (byte `03`).
pub fn encrypt_pre_master(
    key: &rsa::RsaPublicKey,
    encryption: OaepHash,
    plaintext: &[u8],
    rng: &mut (impl RngCore + CryptoRng),
) -> rsa::Result<Vec<u8>> {
    match encryption {
        OaepHash::Sha1 => key.encrypt(rng, rsa::Oaep::new::<sha1::Sha1>(), plaintext),
        OaepHash::Sha256 => key.encrypt(rng, rsa::Oaep::new::<sha2::Sha256>(), plaintext),
        OaepHash::Pkcs1v15 => key.encrypt(rng, rsa::Pkcs1v15Encrypt, plaintext),
    }
}

/// The reverse of [`encrypt_pre_master`] (the software server's; no
/// implicit rejection: a reference for good ciphertexts only).
fn decrypt_pre_master(
    key: &rsa::RsaPrivateKey,
    encryption: OaepHash,
    ciphertext: &[u8],
) -> rsa::Result<Vec<u8>> {
    match encryption {
        OaepHash::Sha1 => key.decrypt(rsa::Oaep::new::<sha1::Sha1>(), ciphertext),
        OaepHash::Sha256 => key.decrypt(rsa::Oaep::new::<sha2::Sha256>(), ciphertext),
        OaepHash::Pkcs1v15 => key.decrypt(rsa::Pkcs1v15Encrypt, ciphertext),
    }
}

/// `C = PRF(Z, D_ms)`: the ECDHE mode's salt of the master secret, what
/// the HSM computes with one `C_Encrypt` under the ECDH key.
pub fn ecdhe_salt(z: &[u8; 32], h: &[u8; 32]) -> [u8; 32] {
    prf(z, &channel::master_input(h))
}

/// The ECDH secret's x-coordinate of `secret` and the peer's key, and
/// `secret`'s own public key as it travels.
pub fn ecdh(secret: &p256::SecretKey, peer: &EphemeralKey) -> Result<(EphemeralKey, [u8; 32])> {
    use p256::elliptic_curve::sec1::ToEncodedPoint as _;
    let peer =
        p256::PublicKey::from_sec1_bytes(peer.as_bytes()).map_err(|_| anyhow!("not a point"))?;
    let z = p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), peer.as_affine());
    let mut x = [0u8; 32];
    x.copy_from_slice(z.raw_secret_bytes().as_ref());
    let public = EphemeralKey::from_bytes(secret.public_key().to_encoded_point(false).as_bytes())
        .ok_or_else(|| anyhow!("own key not a point"))?;
    Ok((public, x))
}

/// AES-CMAC under an AES-256 key.
pub fn cmac(key: &[u8; 32], msg: &[u8]) -> [u8; 16] {
    let mut m = <Cmac<aes::Aes256> as KeyInit>::new(GenericArray::from_slice(key));
    m.update(msg);
    m.finalize().into_bytes().into()
}

/// Everything the schedule derives from the pre-master and `H`.
#[derive(Clone)]
pub struct Keys {
    pub h: [u8; 32],
    pub master: [u8; 32],
    pub c2s: [u8; 32],
    pub s2c: [u8; 32],
    pub finished: [u8; 32],
    pub exporter: [u8; 32],
    pub resumption: [u8; 32],
    pub iv_c2s: [u8; 12],
    pub iv_s2c: [u8; 12],
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(<secret>)")
    }
}

impl Keys {
    /// The key schedule of §14.3.
    pub fn derive(pre_master: &[u8; 32], h: &[u8; 32]) -> Self {
        Self::from_master(prf(pre_master, &channel::master_input(h)), h)
    }

    /// The ECDHE mode's schedule (§14.3): `C = PRF(Z, D_ms)` with `Z` the
    /// ECDH secret's x-coordinate, then `MS = PRF(PMS, hybrid input)`.
    pub fn derive_hybrid(pre_master: &[u8; 32], z: &[u8; 32], h: &[u8; 32]) -> Self {
        let c = ecdhe_salt(z, h);
        let master = prf(pre_master, &channel::hybrid_master_input(&c, h));
        Self::from_master(master, h)
    }

    /// The schedule of a resumption (§14.8) under a ticket's secret.
    pub fn resume(resumption: &[u8; 32], h: &[u8; 32]) -> Self {
        Self::from_master(prf(resumption, &channel::resumption_master_input(h)), h)
    }

    fn from_master(master: [u8; 32], h: &[u8; 32]) -> Self {
        let k = |l| prf(&master, &channel::label_input(l, h));
        Self {
            h: *h,
            master,
            c2s: k(Label::C2sKey),
            s2c: k(Label::S2cKey),
            finished: k(Label::Finished),
            exporter: k(Label::Exporter),
            resumption: k(Label::Resumption),
            iv_c2s: channel::iv(Direction::C2s, h),
            iv_s2c: channel::iv(Direction::S2c, h),
        }
    }

    /// The ServerFinished MAC: AES-CMAC(K_finished, H).
    pub fn finished_mac(&self) -> [u8; 16] {
        cmac(&self.finished, &self.h)
    }
}

/// One direction's cipher state.
#[derive(Clone)]
struct Half {
    key: [u8; 32],
    iv: [u8; 12],
    sequence: u64,
    generation: u64,
    since: Instant,
}

impl Half {
    fn new(key: [u8; 32], iv: [u8; 12]) -> Self {
        Self {
            key,
            iv,
            sequence: 0,
            generation: 0,
            since: Instant::now(),
        }
    }

    /// The next generation's key; the sequence restarts, the iv stays.
    fn ratchet(&mut self) {
        self.generation += 1;
        self.key = prf(&self.key, &channel::rekey_input(self.generation));
        self.sequence = 0;
        self.since = Instant::now();
    }

    fn update_due(&self, max_age: Duration) -> bool {
        self.sequence >= channel::REKEY_AFTER_RECORDS - 1 || self.since.elapsed() >= max_age
    }

    fn seal(&mut self, id: ChannelId, kind: RecordType, plaintext: &[u8]) -> Result<Vec<u8>> {
        ensure!(
            plaintext.len() <= channel::MAX_PLAINTEXT,
            "a record carries at most {} bytes",
            channel::MAX_PLAINTEXT
        );
        let aad = Record::header(id, kind, self.sequence);
        let nonce = channel::nonce(&self.iv, self.sequence);
        let ciphertext = gcm(&self.key)
            .encrypt(
                GenericArray::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| anyhow!("sealing a record"))?;
        self.sequence += 1;
        Ok(Record {
            channel: id,
            kind,
            sequence: self.sequence - 1,
            ciphertext,
        }
        .encode())
    }

    /// Opens the next record, which must be this channel's, numbered
    /// exactly the next sequence number, and authentic.
    fn open(&mut self, id: ChannelId, bytes: &[u8]) -> Option<(RecordType, Vec<u8>)> {
        let r = Record::decode(bytes).ok()?;
        if r.channel != id
            || r.sequence != self.sequence
            || r.sequence >= channel::REKEY_AFTER_RECORDS
        {
            return None;
        }
        let nonce = channel::nonce(&self.iv, r.sequence);
        let plain = gcm(&self.key)
            .decrypt(
                GenericArray::from_slice(&nonce),
                Payload {
                    msg: &r.ciphertext,
                    aad: &r.aad(),
                },
            )
            .ok()?;
        if r.kind != RecordType::Data && !plain.is_empty() {
            return None;
        }
        self.sequence += 1;
        Some((r.kind, plain))
    }
}

fn gcm(key: &[u8; 32]) -> Aes256Gcm {
    Aes256Gcm::new(GenericArray::from_slice(key))
}

/// What an opened record was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    Data(Vec<u8>),
    /// The peer moved to its next key; nothing for the application.
    KeyUpdated,
    /// The peer closed the channel.
    Closed,
}

/// An open channel, from one side.
#[derive(Clone)]
pub struct Channel {
    pub id: ChannelId,
    send: Half,
    recv: Half,
    exporter: [u8; 32],
    resumption: [u8; 32],
    closed: bool,
    /// How long a key generation may serve (one hour; tests shorten it).
    pub max_key_age: Duration,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("id", &self.id)
            .field("send_sequence", &self.send.sequence)
            .field("recv_sequence", &self.recv.sequence)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl Channel {
    /// The card's side: sends card-to-server, receives server-to-card.
    pub fn card(id: ChannelId, keys: &Keys) -> Self {
        Self::with(
            id,
            Half::new(keys.c2s, keys.iv_c2s),
            Half::new(keys.s2c, keys.iv_s2c),
            keys,
        )
    }

    /// The server's side (the software reference).
    pub fn server(id: ChannelId, keys: &Keys) -> Self {
        Self::with(
            id,
            Half::new(keys.s2c, keys.iv_s2c),
            Half::new(keys.c2s, keys.iv_c2s),
            keys,
        )
    }

    fn with(id: ChannelId, send: Half, recv: Half, keys: &Keys) -> Self {
        Self {
            id,
            send,
            recv,
            exporter: keys.exporter,
            resumption: keys.resumption,
            closed: false,
            max_key_age: Duration::from_secs(channel::REKEY_AFTER_SECONDS),
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The records that carry `data`, in order: a key update first when
    /// the sending key is due for one (2^20 records or an hour).
    pub fn seal(&mut self, data: &[u8]) -> Result<Vec<Vec<u8>>> {
        ensure!(!self.closed, "the channel is closed");
        let mut out = Vec::with_capacity(2);
        if self.send.update_due(self.max_key_age) {
            out.push(self.update_key()?);
        }
        out.push(self.send.seal(self.id, RecordType::Data, data)?);
        Ok(out)
    }

    /// A key update record; the following records are under the next key.
    pub fn update_key(&mut self) -> Result<Vec<u8>> {
        ensure!(!self.closed, "the channel is closed");
        let r = self.send.seal(self.id, RecordType::KeyUpdate, &[])?;
        self.send.ratchet();
        Ok(r)
    }

    /// The close record; the channel is closed after it.
    pub fn close(&mut self) -> Result<Vec<u8>> {
        ensure!(!self.closed, "the channel is closed");
        let r = self.send.seal(self.id, RecordType::Close, &[])?;
        self.closed = true;
        Ok(r)
    }

    /// Opens the peer's next record. Anything else than that record intact
    /// (replayed, reordered, truncated, altered, from another channel, or
    /// after close) closes the channel, with one error whatever the cause.
    pub fn open(&mut self, bytes: &[u8]) -> Result<Received> {
        if self.closed {
            bail!("the channel is closed");
        }
        let Some((kind, plain)) = self.recv.open(self.id, bytes) else {
            self.closed = true;
            bail!("the channel is closed");
        };
        Ok(match kind {
            RecordType::Data => Received::Data(plain),
            RecordType::KeyUpdate => {
                self.recv.ratchet();
                Received::KeyUpdated
            }
            RecordType::Close => {
                self.closed = true;
                Received::Closed
            }
        })
    }

    /// The exporter value binding a carried request for `path` to this
    /// channel: AES-CMAC(K_exporter, "keyward channel v1 exporter" ‖ path).
    pub fn exporter(&self, path: &str) -> [u8; 16] {
        cmac(&self.exporter, &channel::exporter_context(path))
    }

    /// The plaintext of a carried request (docs/protocol.md §14.11) bound
    /// to this channel by its exporter value: `authorization` from
    /// `session`, when given.
    pub fn carried(
        &self,
        method: &str,
        path: &str,
        session: Option<&str>,
        body: Option<&Value>,
    ) -> Vec<u8> {
        let carried = Carried {
            method: method.to_owned(),
            path: path.to_owned(),
            headers: session
                .map(|t| [("authorization".to_owned(), format!("Bearer {t}"))].into())
                .unwrap_or_default(),
            body: body.cloned(),
            exporter: B64.encode(self.exporter(path)),
        };
        serde_json::to_vec(&carried).unwrap_or_default()
    }

    /// The sending direction's key generation and next sequence number.
    pub fn send_state(&self) -> (u64, u64) {
        (self.send.generation, self.send.sequence)
    }

    /// The receiving direction's key generation and next sequence number.
    pub fn recv_state(&self) -> (u64, u64) {
        (self.recv.generation, self.recv.sequence)
    }

    /// Moves the receiving sequence number on as if `n` more records had
    /// been opened: for tests that move the server's counter in its
    /// database instead of sending a million records.
    pub fn skip_received(&mut self, n: u64) {
        self.recv.sequence += n;
    }

    /// The ticket the server gave beside this channel's Finished (`KWC6`),
    /// with this channel's resumption secret, for `device`.
    pub fn ticket(&self, new_ticket: &[u8], device: DeviceId) -> Result<Ticket> {
        let t = NewTicket::decode(new_ticket).map_err(|e| anyhow!("new ticket: {e}"))?;
        ensure!(t.channel == self.id, "a ticket of another channel");
        Ok(Ticket {
            handle: t.ticket,
            secret: self.resumption,
            device,
            expires: Instant::now() + Duration::from_secs(u64::from(t.lifetime)),
        })
    }
}

/// What the card keeps to resume: the server's handle and its own
/// `K[resumption]`.
#[derive(Clone)]
pub struct Ticket {
    pub handle: [u8; 16],
    pub secret: [u8; 32],
    pub device: DeviceId,
    pub expires: Instant,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ticket(<secret>)")
    }
}

/// The card resuming, before the server's answer.
#[derive(Debug)]
pub struct CardResume {
    hello: Vec<u8>,
    ticket: Ticket,
}

impl CardResume {
    /// The ResumeHello naming `ticket`, its binder under the ticket's
    /// secret.
    pub fn new(ticket: &Ticket, client_random: [u8; 32]) -> Self {
        let mut rh = ResumeHello {
            client_random,
            versions: vec![PROTOCOL_V1],
            device: ticket.device.bytes(),
            ticket: ticket.handle,
            binder: [0; 16],
        };
        let key = prf(&ticket.secret, &channel::binder_input());
        rh.binder = cmac(&key, &rh.binder_part());
        Self {
            hello: rh.encode(),
            ticket: ticket.clone(),
        }
    }

    pub fn resume_hello(&self) -> &[u8] {
        &self.hello
    }

    /// Checks the ServerHello (resumption, no chain) and the ServerFinished
    /// over the resumption transcript; only then is the channel open.
    pub fn finish(self, server_hello: &[u8], server_finished: &[u8]) -> Result<Channel> {
        let sh = ServerHello::decode(server_hello).map_err(|e| anyhow!("server hello: {e}"))?;
        ensure!(sh.mode == Mode::Resumption, "not a resumption");
        let h = channel::resumption_hash(&self.hello, server_hello);
        AwaitFinished {
            channel: sh.channel,
            keys: Keys::resume(&self.ticket.secret, &h),
        }
        .finish(server_finished)
    }
}

/// The card before the server's hello.
#[derive(Debug)]
pub struct CardHello {
    hello: Vec<u8>,
    modes: Vec<Mode>,
}

/// The card after its key exchange, waiting for the ServerFinished.
pub struct AwaitFinished {
    pub channel: ChannelId,
    pub keys: Keys,
}

impl std::fmt::Debug for AwaitFinished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwaitFinished")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl CardHello {
    /// Opens a handshake: RSA transport, protocol version 1.
    pub fn new(device: DeviceId, client_random: [u8; 32]) -> Self {
        Self::offering(device, client_random, &[Mode::RsaTransport])
    }

    /// Opens a handshake offering `modes` (RSA transport and/or ECDHE),
    /// its preference first.
    pub fn offering(device: DeviceId, client_random: [u8; 32], modes: &[Mode]) -> Self {
        let hello = ClientHello {
            client_random,
            versions: vec![PROTOCOL_V1],
            modes: modes.iter().map(|m| *m as u8).collect(),
            device: device.bytes(),
        }
        .encode();
        Self {
            hello,
            modes: modes.to_vec(),
        }
    }

    pub fn client_hello(&self) -> &[u8] {
        &self.hello
    }

    /// Checks the server's hello (mode offered, chain to the Keyward root,
    /// a current RSA channel key of at least 2048 bits for key
    /// encipherment), encrypts `pre_master` to it as the hello names
    /// (RSA-OAEP with its hash, or PKCS#1 v1.5), in the ECDHE mode makes
    /// its ephemeral key and the ECDH secret with the server's, and signs
    /// the transcript. Returns the key exchange to send. `rng` draws the
    /// padding, then the ephemeral key.
    pub fn key_exchange(
        &self,
        server_hello: &[u8],
        root_pem: &str,
        dev: &SimDevice,
        card_certificate: &[u8],
        pre_master: &[u8; 32],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<(AwaitFinished, Vec<u8>)> {
        let sh = ServerHello::decode(server_hello).map_err(|e| anyhow!("server hello: {e}"))?;
        ensure!(
            sh.mode != Mode::Resumption && self.modes.contains(&sh.mode),
            "a mode the card did not offer"
        );
        let key = channel_key(&sh.chain, root_pem)?;
        let encrypted_pre_master = encrypt_pre_master(&key, sh.oaep, pre_master, rng)
            .context("encrypting the pre-master")?;
        let (ephemeral, z) = match sh.ephemeral {
            Some(server) => {
                let (public, z) = ecdh(&p256::SecretKey::random(rng), &server)?;
                (Some(public), Some(z))
            }
            None => (None, None),
        };
        let mut cke = CardKeyExchange {
            certificate: card_certificate.to_vec(),
            encrypted_pre_master,
            ephemeral,
            signature: Vec::new(),
        };
        cke.signature = dev.sign_challenge(&channel::card_signature_input(
            &self.hello,
            server_hello,
            &cke.signed_part(),
        ));
        let cke = cke.encode();
        let h = channel::handshake_hash(&self.hello, server_hello, &cke);
        let keys = match z {
            Some(z) => Keys::derive_hybrid(pre_master, &z, &h),
            None => Keys::derive(pre_master, &h),
        };
        Ok((
            AwaitFinished {
                channel: sh.channel,
                keys,
            },
            cke,
        ))
    }
}

impl AwaitFinished {
    /// Checks the ServerFinished (explicit key confirmation, in constant
    /// time); only then is the channel open.
    pub fn finish(self, server_finished: &[u8]) -> Result<Channel> {
        use subtle::ConstantTimeEq as _;
        let f =
            ServerFinished::decode(server_finished).map_err(|e| anyhow!("server finished: {e}"))?;
        let good = f.channel == self.channel && bool::from(f.mac.ct_eq(&self.keys.finished_mac()));
        ensure!(good, "the server's Finished does not verify");
        Ok(Channel::card(self.channel, &self.keys))
    }
}

/// `plaintext` encrypted to the channel key of `server_hello` (chain
/// checked as the card does) as the hello names: a well-formed
/// ciphertext of any plaintext, for tests of the server's refusals.
pub fn encrypt_to_server(
    server_hello: &[u8],
    root_pem: &str,
    plaintext: &[u8],
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<Vec<u8>> {
    let sh = ServerHello::decode(server_hello).map_err(|e| anyhow!("server hello: {e}"))?;
    let key = channel_key(&sh.chain, root_pem)?;
    encrypt_pre_master(&key, sh.oaep, plaintext, rng).context("encrypting to the channel key")
}

/// The channel certificate's RSA key, once its chain verified up to the
/// root, each certificate is current, and the leaf is for key encipherment.
fn channel_key(chain: &[Vec<u8>], root_pem: &str) -> Result<rsa::RsaPublicKey> {
    verify_chain(chain, root_pem)?;
    for der in chain {
        ensure!(
            parse(der)?.validity().is_valid(),
            "a certificate is not current"
        );
    }
    let leaf = parse(&chain[0])?;
    let usage = leaf
        .key_usage()
        .map_err(|e| anyhow!("the channel certificate's key usage: {e}"))?
        .ok_or_else(|| anyhow!("the channel certificate has no key usage"))?;
    ensure!(
        usage.value.key_encipherment(),
        "the channel certificate is not for key encipherment"
    );
    let key = rsa::RsaPublicKey::from_public_key_der(leaf.public_key().raw)
        .map_err(|_| anyhow!("the channel key is not RSA"))?;
    ensure!(
        key.size() * 8 >= MIN_RSA_BITS,
        "the channel key is too short"
    );
    Ok(key)
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c)
        .map_err(|e| anyhow!("a certificate does not parse: {e}"))
}

/// The server's side in software: the reference the HSM side is checked
/// against, for tests and the worked trace.
pub struct SoftServer {
    pub key: rsa::RsaPrivateKey,
    pub chain: Vec<Vec<u8>>,
    /// The OAEP hash its hello names.
    pub oaep: OaepHash,
}

impl std::fmt::Debug for SoftServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftServer").finish_non_exhaustive()
    }
}

impl SoftServer {
    pub fn hello(&self, server_random: [u8; 32], id: ChannelId) -> Vec<u8> {
        self.hello_with(server_random, id, None)
    }

    /// The hello of the ECDHE mode with the server's ephemeral `secret`,
    /// or (`None`) of RSA transport.
    pub fn hello_with(
        &self,
        server_random: [u8; 32],
        id: ChannelId,
        ephemeral: Option<&p256::SecretKey>,
    ) -> Vec<u8> {
        use p256::elliptic_curve::sec1::ToEncodedPoint as _;
        let ephemeral = ephemeral.and_then(|e| {
            EphemeralKey::from_bytes(e.public_key().to_encoded_point(false).as_bytes())
        });
        ServerHello {
            server_random,
            channel: id,
            mode: match ephemeral {
                Some(_) => Mode::EcdheP256,
                None => Mode::RsaTransport,
            },
            oaep: self.oaep,
            chain: self.chain.clone(),
            ephemeral,
        }
        .encode()
    }

    /// Decrypts the pre-master, checks the card's signature under the
    /// certificate it sent (its chain is the server's concern, not the
    /// reference's), and returns the keys and the ServerFinished.
    pub fn finish(
        &self,
        client_hello: &[u8],
        server_hello: &[u8],
        card_key_exchange: &[u8],
    ) -> Result<(Keys, Vec<u8>)> {
        self.finish_with(client_hello, server_hello, card_key_exchange, None)
    }

    /// [`Self::finish`] of a handshake whose hello [`Self::hello_with`]
    /// made with `ephemeral`.
    pub fn finish_with(
        &self,
        client_hello: &[u8],
        server_hello: &[u8],
        card_key_exchange: &[u8],
        ephemeral: Option<&p256::SecretKey>,
    ) -> Result<(Keys, Vec<u8>)> {
        let sh = ServerHello::decode(server_hello).map_err(|e| anyhow!("{e}"))?;
        let (cke, signed) =
            CardKeyExchange::split_in(card_key_exchange, sh.mode).map_err(|e| anyhow!("{e}"))?;
        let pms = decrypt_pre_master(&self.key, sh.oaep, &cke.encrypted_pre_master)
            .context("the pre-master")?;
        let pms: [u8; 32] = pms
            .try_into()
            .map_err(|_| anyhow!("the pre-master is not 32 bytes"))?;
        let msg = channel::card_signature_input(client_hello, server_hello, signed);
        verify_card_signature(&cke.certificate, &msg, &cke.signature)?;
        let h = channel::handshake_hash(client_hello, server_hello, card_key_exchange);
        let keys = match (ephemeral, cke.ephemeral) {
            (Some(secret), Some(card)) => Keys::derive_hybrid(&pms, &ecdh(secret, &card)?.1, &h),
            (None, None) => Keys::derive(&pms, &h),
            _ => bail!("the ephemerals do not match the mode"),
        };
        let fin = ServerFinished {
            channel: sh.channel,
            mac: keys.finished_mac(),
        }
        .encode();
        Ok((keys, fin))
    }
}

impl SoftServer {
    /// A resumption under the ticket secret `resumption`: checks the
    /// binder, then returns the ServerHello, the keys and the
    /// ServerFinished.
    pub fn resume(
        &self,
        resumption: &[u8; 32],
        resume_hello: &[u8],
        server_random: [u8; 32],
        id: ChannelId,
    ) -> Result<(Vec<u8>, Keys, Vec<u8>)> {
        use subtle::ConstantTimeEq as _;
        let (rh, bound) = ResumeHello::split(resume_hello).map_err(|e| anyhow!("{e}"))?;
        let binder = cmac(&prf(resumption, &channel::binder_input()), bound);
        ensure!(bool::from(binder.ct_eq(&rh.binder)), "the binder");
        let sh = ServerHello {
            server_random,
            channel: id,
            mode: Mode::Resumption,
            oaep: OaepHash::Sha256,
            chain: Vec::new(),
            ephemeral: None,
        }
        .encode();
        let keys = Keys::resume(resumption, &channel::resumption_hash(resume_hello, &sh));
        let fin = ServerFinished {
            channel: id,
            mac: keys.finished_mac(),
        }
        .encode();
        Ok((sh, keys, fin))
    }
}

/// ECDSA P-256/SHA-256 (DER) or RSA PKCS#1 v1.5/SHA-256 under the key of
/// the certificate `cert_der`.
pub fn verify_card_signature(cert_der: &[u8], msg: &[u8], sig: &[u8]) -> Result<()> {
    use p256::ecdsa::signature::Verifier as _;
    let cert = parse(cert_der)?;
    let spki = cert.public_key();
    if let Ok(key) = p256::ecdsa::VerifyingKey::from_public_key_der(spki.raw) {
        let sig = p256::ecdsa::Signature::from_der(sig).map_err(|_| anyhow!("bad signature"))?;
        return key.verify(msg, &sig).map_err(|_| anyhow!("bad signature"));
    }
    let key = rsa::RsaPublicKey::from_public_key_der(spki.raw)
        .map_err(|_| anyhow!("the card key is neither P-256 nor RSA"))?;
    let sig = rsa::pkcs1v15::Signature::try_from(sig).map_err(|_| anyhow!("bad signature"))?;
    rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(key)
        .verify(msg, &sig)
        .map_err(|_| anyhow!("bad signature"))
}

/// A card's channel relayed by a terminal: the terminal's kept-alive
/// mutual-TLS connection to the public listener (its own device
/// certificate) and the card's open channel. Requests sent through it
/// ([`Caller`]) are carried in records the terminal cannot read.
pub struct Carrier {
    /// The relaying connection; another replica's may take its place.
    pub conn: Connection,
    pub channel: Channel,
    /// The mode the server chose.
    pub mode: Mode,
    /// The ticket the server gave with this channel: the card's next
    /// resumption.
    pub ticket: Ticket,
}

impl std::fmt::Debug for Carrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Carrier")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

/// The base64 field `name` of a channel step's answer.
fn field(r: &Reply, name: &str) -> Result<Vec<u8>> {
    let v = r.body[name]
        .as_str()
        .with_context(|| format!("no {name}"))?;
    Ok(B64.decode(v)?)
}

/// A record step's answer that is not `200` (the relay's refusal: the
/// channel is closed, or the record malformed).
fn relayed(r: &Reply) -> Result<&Value> {
    ensure!(
        r.status == StatusCode::OK,
        "the server refused the record: {} {}",
        r.status,
        r.code()
    );
    Ok(&r.body)
}

impl Carrier {
    /// The card's whole handshake relayed over `conn`: hello, key exchange
    /// (the card's certificate `card_cert`, DER, and `dev`'s signature),
    /// the ServerFinished checked. `Ok(Err(reply))` when the server
    /// refused a step.
    pub async fn open(
        conn: Connection,
        dev: &SimDevice,
        card_cert: &[u8],
        root_pem: &str,
    ) -> Result<std::result::Result<Self, Reply>> {
        Self::open_offering(conn, dev, card_cert, root_pem, &[Mode::RsaTransport]).await
    }

    /// [`Self::open`] offering `modes`, the card's preference first.
    pub async fn open_offering(
        mut conn: Connection,
        dev: &SimDevice,
        card_cert: &[u8],
        root_pem: &str,
        modes: &[Mode],
    ) -> Result<std::result::Result<Self, Reply>> {
        use rand::RngCore as _;
        // Held across the awaits: a `Send` generator.
        let mut rng = rand::rngs::OsRng;
        let mut random = [0u8; 32];
        rng.fill_bytes(&mut random);
        let hello = CardHello::offering(dev.id, random, modes);
        let a = conn
            .post(
                "/v1/channel/hello",
                &serde_json::json!({"client_hello": B64.encode(hello.client_hello())}),
            )
            .await?;
        if a.status != StatusCode::OK {
            return Ok(Err(a));
        }
        let id = a.body["channel_id"]
            .as_str()
            .context("no channel_id")?
            .to_owned();
        let sh = B64.decode(a.body["server_hello"].as_str().context("no server_hello")?)?;
        let mut pre_master = [0u8; 32];
        rng.fill_bytes(&mut pre_master);
        let (wait, cke) =
            hello.key_exchange(&sh, root_pem, dev, card_cert, &pre_master, &mut rng)?;
        let a = conn
            .post(
                "/v1/channel/key-exchange",
                &serde_json::json!({"channel_id": id, "key_exchange": B64.encode(cke)}),
            )
            .await?;
        if a.status != StatusCode::OK {
            return Ok(Err(a));
        }
        let channel = wait.finish(&field(&a, "server_finished")?)?;
        let ticket = channel.ticket(&field(&a, "ticket")?, dev.id)?;
        Ok(Ok(Self {
            conn,
            channel,
            mode: ServerHello::decode(&sh).map_err(|e| anyhow!("{e}"))?.mode,
            ticket,
        }))
    }

    /// The card's resumption under `ticket` relayed over `conn` (any
    /// replica's): one round trip, the ServerFinished checked; the new
    /// channel carries the next ticket. `Ok(Err(reply))` when the server
    /// refused it.
    pub async fn resume(
        mut conn: Connection,
        ticket: &Ticket,
    ) -> Result<std::result::Result<Self, Reply>> {
        use rand::RngCore as _;
        let mut random = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut random);
        let r = CardResume::new(ticket, random);
        let a = conn
            .post(
                "/v1/channel/resume",
                &serde_json::json!({"resume_hello": B64.encode(r.resume_hello())}),
            )
            .await?;
        if a.status != StatusCode::OK {
            return Ok(Err(a));
        }
        let channel = r.finish(&field(&a, "server_hello")?, &field(&a, "server_finished")?)?;
        ensure!(
            a.body["channel_id"] == channel.id.to_string(),
            "the answer names another channel"
        );
        let ticket = channel.ticket(&field(&a, "ticket")?, ticket.device)?;
        Ok(Ok(Self {
            conn,
            channel,
            mode: Mode::Resumption,
            ticket,
        }))
    }

    /// Relays one record as it is: the server's answer.
    pub async fn send(&mut self, record: &[u8]) -> Result<Reply> {
        self.conn
            .post(
                "/v1/channel/records",
                &serde_json::json!({"record": B64.encode(record)}),
            )
            .await
    }

    /// The card's key update; its next records are under the next key.
    pub async fn update_key(&mut self) -> Result<()> {
        let r = self.channel.update_key()?;
        let a = self.send(&r).await?;
        relayed(&a)?;
        Ok(())
    }

    /// The card's close record; whether the server says it is closed.
    pub async fn close(&mut self) -> Result<bool> {
        let r = self.channel.close()?;
        let a = self.send(&r).await?;
        Ok(relayed(&a)?["closed"] == true)
    }
}

impl Caller for Carrier {
    /// One request carried in a data record (docs/protocol.md §14.8), its
    /// answer opened from the server's record. A relay that is refused
    /// (`403 channel_closed`) is an error: the channel is closed.
    async fn request(
        &mut self,
        method: hyper::Method,
        path: &str,
        body: Option<&Value>,
        session: Option<&str>,
    ) -> Result<Reply> {
        let carried = self.channel.carried(method.as_str(), path, session, body);
        let mut answer = None;
        for record in self.channel.seal(&carried)? {
            let a = self.send(&record).await?;
            answer = relayed(&a)?["record"].as_str().map(str::to_owned);
        }
        let down = B64.decode(answer.context("no answering record")?)?;
        let Received::Data(plain) = self.channel.open(&down)? else {
            bail!("the server answered with another record than data");
        };
        let a: CarriedAnswer = serde_json::from_slice(&plain).context("the carried answer")?;
        Ok(Reply {
            status: StatusCode::from_u16(a.status)?,
            body: a.body,
        })
    }
}

#[cfg(test)]
mod tests;
