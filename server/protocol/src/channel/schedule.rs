//! The key schedule's exact inputs (`docs/protocol.md` §14.3).
//!
//! The PRF is AES-256 on single blocks, keyed by the secret:
//! `PRF(K, D) = AES-256_K(D[0..16]) ‖ AES-256_K(D[16..32])` for a 32-byte
//! `D`, which is what PKCS#11's `CKM_AES_ECB_ENCRYPT_DATA` computes when it
//! derives a 32-byte AES key from a 32-byte data input, so the whole
//! schedule runs inside the HSM. Every `D` is a SHA-256 of a label and the
//! transcript, so the PRF only ever sees uniformly distributed,
//! domain-separated inputs.
//!
//! ```text
//! H       = SHA-256(ClientHello ‖ ServerHello ‖ CardKeyExchange)
//! MS      = PRF(PMS, master_input(H))
//!   or, in the ECDHE mode, with Z the x-coordinate of the ECDH secret:
//! C       = PRF(Z, master_input(H))
//! MS      = PRF(PMS, hybrid_master_input(C, H))
//! K_L     = PRF(MS, label_input(L, H))        for each Label L
//! iv_d    = iv(d, H)                          for each Direction d
//! K'      = PRF(K, rekey_input(generation))   the next key of a direction
//! Finished= AES-CMAC(K_finished, H)
//! E       = AES-CMAC(K_exporter, exporter_context(path))
//!
//! Resumption, under a ticket's K_resumption (from the channel that gave it):
//! K_binder= PRF(K_resumption, binder_input())
//! binder  = AES-CMAC(K_binder, ResumeHello up to the binder)
//! H       = SHA-256(ResumeHello ‖ ServerHello)
//! MS      = PRF(K_resumption, resumption_master_input(H))
//! then K_L, iv_d, Finished and E as above, with this H and MS
//! ```

use sha2::{Digest, Sha256};

/// Every label starts with this, then a space-free name.
const PREFIX: &[u8] = b"keyward channel v1 ";

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// `H`: SHA-256 over the three handshake messages exactly as they
/// travelled (the card key exchange with its signature).
pub fn handshake_hash(
    client_hello: &[u8],
    server_hello: &[u8],
    card_key_exchange: &[u8],
) -> [u8; 32] {
    sha256(&[client_hello, server_hello, card_key_exchange])
}

/// What the card signs (ECDSA P-256/SHA-256 or RSA PKCS#1 v1.5/SHA-256):
/// `"keyward channel v1 card signature" ‖ 0x00 ‖ SHA-256(ClientHello ‖
/// ServerHello ‖ signed part)`. The context string keeps a channel
/// signature from ever being taken for another message the device key
/// signs (challenges, confirmations, load messages).
pub fn card_signature_input(
    client_hello: &[u8],
    server_hello: &[u8],
    signed_part: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(PREFIX.len() + 15 + 32);
    out.extend_from_slice(PREFIX);
    out.extend_from_slice(b"card signature\0");
    out.extend_from_slice(&sha256(&[client_hello, server_hello, signed_part]));
    out
}

/// `D_ms = SHA-256("keyward channel v1 master" ‖ H)`: the PRF input under
/// the pre-master that gives the master secret.
pub fn master_input(h: &[u8; 32]) -> [u8; 32] {
    sha256(&[PREFIX, b"master", h])
}

/// `SHA-256("keyward channel v1 hybrid master" ‖ C ‖ H)`: the PRF input
/// under the pre-master that gives the ECDHE mode's master secret, where
/// `C = PRF(Z, master_input(H))` and `Z` is the ECDH secret's x-coordinate.
/// The pre-master (RSA-transported to the channel key) keeps the server
/// authenticated; `C` makes the master depend on the ephemerals, which are
/// destroyed after the handshake (forward secrecy). Two PRFs in a chain
/// because an HSM without a concatenating derivation (SoftHSM 2.6.1) can
/// only feed `C` back as data.
pub fn hybrid_master_input(c: &[u8; 32], h: &[u8; 32]) -> [u8; 32] {
    sha256(&[PREFIX, b"hybrid master", c, h])
}

/// `H` of a resumption: SHA-256 over the ResumeHello and the ServerHello
/// exactly as they travelled.
pub fn resumption_hash(resume_hello: &[u8], server_hello: &[u8]) -> [u8; 32] {
    sha256(&[resume_hello, server_hello])
}

/// `SHA-256("keyward channel v1 resumption master" ‖ H)`: the PRF input
/// under a ticket's resumption secret that gives the resumed master secret.
/// Its own label keeps it apart from any input a full handshake uses.
pub fn resumption_master_input(h: &[u8; 32]) -> [u8; 32] {
    sha256(&[PREFIX, b"resumption master", h])
}

/// `SHA-256("keyward channel v1 binder")`: the PRF input under a ticket's
/// resumption secret that gives the binder's AES-CMAC key.
pub fn binder_input() -> [u8; 32] {
    sha256(&[PREFIX, b"binder"])
}

/// A key the master secret yields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Label {
    /// AES-256-GCM key of the card's records.
    C2sKey,
    /// AES-256-GCM key of the server's records.
    S2cKey,
    /// AES-CMAC key of the ServerFinished.
    Finished,
    /// AES-CMAC key of the exporter values.
    Exporter,
    /// The resumption secret: a ticket's, for the next handshake.
    Resumption,
}

impl Label {
    pub const ALL: [Self; 5] = [
        Self::C2sKey,
        Self::S2cKey,
        Self::Finished,
        Self::Exporter,
        Self::Resumption,
    ];

    /// The label's text, as hashed.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::C2sKey => "c2s key",
            Self::S2cKey => "s2c key",
            Self::Finished => "finished",
            Self::Exporter => "exporter",
            Self::Resumption => "resumption",
        }
    }
}

/// `SHA-256("keyward channel v1 " ‖ label ‖ H)`: the PRF input under the
/// master secret that gives `K_label`.
pub fn label_input(label: Label, h: &[u8; 32]) -> [u8; 32] {
    sha256(&[PREFIX, label.as_str().as_bytes(), h])
}

/// `SHA-256("keyward channel v1 rekey" ‖ generation as u64 BE)`: the PRF
/// input under a direction's key of generation `g - 1` that gives its key
/// of generation `g` (the handshake's key is generation 0).
pub fn rekey_input(generation: u64) -> [u8; 32] {
    sha256(&[PREFIX, b"rekey", &generation.to_be_bytes()])
}

/// Who sends a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Card to server.
    C2s,
    /// Server to card.
    S2c,
}

impl Direction {
    /// The label of this direction's traffic key.
    pub fn key_label(self) -> Label {
        match self {
            Self::C2s => Label::C2sKey,
            Self::S2c => Label::S2cKey,
        }
    }
}

/// `SHA-256("keyward channel v1 c2s iv" ‖ H)[0..12]` (or `s2c iv`). Not
/// secret: nonces are unique because keys are per channel and direction and
/// sequence numbers never repeat under one key.
pub fn iv(direction: Direction, h: &[u8; 32]) -> [u8; 12] {
    let name: &[u8] = match direction {
        Direction::C2s => b"c2s iv",
        Direction::S2c => b"s2c iv",
    };
    let d = sha256(&[PREFIX, name, h]);
    let mut out = [0; 12];
    out.copy_from_slice(&d[..12]);
    out
}

/// The AES-GCM nonce of record `sequence`: the iv XOR the sequence number
/// as a big-endian u64 in its last 8 bytes.
pub fn nonce(iv: &[u8; 12], sequence: u64) -> [u8; 12] {
    let mut out = *iv;
    for (o, s) in out[4..].iter_mut().zip(sequence.to_be_bytes()) {
        *o ^= s;
    }
    out
}

/// The AES-CMAC input of the exporter value that binds a carried request
/// to the channel: `"keyward channel v1 exporter" ‖ path` (the route path,
/// e.g. `/v1/login/start`).
pub fn exporter_context(path: &str) -> Vec<u8> {
    [PREFIX, b"exporter", path.as_bytes()].concat()
}
