//! An e-purse as a device holds it (docs/protocol.md §13): its balance, the
//! device's message sequence number and the last load it applied, kept on
//! disk beside the device (`<dir>/<device_id>.purse.json`) so `kwsim` can
//! carry on across processes. It builds the signed messages with
//! `keyward_protocol::load`, signs them with the device key, and applies a
//! permit only after checking it: the signature under the `load-permit`
//! certificate, that certificate's chain up to the Keyward root, and that
//! it answers the purse's latest request.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail, ensure};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use keyward_kms::types::DeviceId;
use keyward_protocol::confirmation::{Amount, Currency};
use keyward_protocol::load::{
    Algorithm, LoadPermit, LoadReport, LoadRequest, Outcome, PurseStatus, RequestId,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::simulator::SimDevice;

/// What the purse keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purse {
    pub device: String,
    pub customer: String,
    pub account: String,
    pub currency: String,
    /// Minor units on the purse.
    pub balance: u64,
    /// The last sequence number this device used (requests and statuses).
    pub sequence: u64,
    /// The sequence number of the last load the purse applied.
    pub last_applied: u64,
    /// The latest request's bytes, base64: the only one a permit may answer.
    #[serde(default)]
    pub latest_request: Option<String>,
}

/// A request on its way: its bytes and the JSON body to send.
#[derive(Debug, Clone)]
pub struct Signed {
    pub bytes: Vec<u8>,
    pub body: Value,
}

impl Purse {
    pub fn new(device: DeviceId, customer: &str, account: &str, currency: &str) -> Self {
        Self {
            device: device.to_string(),
            customer: customer.to_owned(),
            account: account.to_owned(),
            currency: currency.to_owned(),
            balance: 0,
            sequence: 0,
            last_applied: 0,
            latest_request: None,
        }
    }

    pub fn path(dir: &Path, device: DeviceId) -> PathBuf {
        dir.join(format!("{device}.purse.json"))
    }

    /// The purse of `device` in `dir`, if it has one.
    pub fn open(dir: &Path, device: DeviceId) -> Result<Option<Self>> {
        match std::fs::read(Self::path(dir, device)) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b).context("the purse file")?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).context("reading the purse"),
        }
    }

    /// Writes the purse (a temp file renamed over the old one).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let device: DeviceId = self.device.parse().map_err(|_| anyhow!("device id"))?;
        let path = Self::path(dir, device);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    fn currency(&self) -> Result<Currency> {
        Currency::from_code(&self.currency).ok_or_else(|| anyhow!("unknown currency"))
    }

    fn device_bytes(&self) -> Result<[u8; 8]> {
        let id: DeviceId = self.device.parse().map_err(|_| anyhow!("device id"))?;
        Ok(id.bytes())
    }

    fn envelope(dev: &SimDevice, bytes: Vec<u8>) -> Signed {
        let body = json!({
            "payload": B64.encode(&bytes),
            "signature": B64.encode(dev.sign_challenge(&bytes)),
        });
        Signed { bytes, body }
    }

    /// A signed load request for `amount` minor units, with the next
    /// sequence number; it becomes the purse's latest request.
    pub fn request(&mut self, dev: &SimDevice, amount: u64) -> Result<Signed> {
        self.sequence += 1;
        let req = LoadRequest {
            device: self.device_bytes()?,
            sequence: self.sequence,
            last_applied: self.last_applied,
            wallet_balance: self.balance,
            amount: Amount::new(amount).ok_or_else(|| anyhow!("a load is more than 0"))?,
            currency: self.currency()?,
            key_version: 1,
            algorithm: if dev.is_rsa() {
                Algorithm::RsaPkcs1Sha256
            } else {
                Algorithm::EcdsaP256Sha256
            },
            nonce: rand::random(),
            customer: self.customer.clone(),
            account: self.account.clone(),
        };
        let bytes = req.encode();
        self.latest_request = Some(B64.encode(&bytes));
        Ok(Self::envelope(dev, bytes))
    }

    /// The purse's signed status, with the next sequence number.
    pub fn status(&mut self, dev: &SimDevice) -> Result<Signed> {
        self.sequence += 1;
        let s = PurseStatus {
            device: self.device_bytes()?,
            sequence: self.sequence,
            last_applied: self.last_applied,
            wallet_balance: self.balance,
            currency: self.currency()?,
            nonce: rand::random(),
        };
        Ok(Self::envelope(dev, s.encode()))
    }

    /// Checks a permit answer (`POST /v1/loads` → 201) against the latest
    /// request and the Keyward root (`root_pem`), and returns the permit.
    pub fn check_permit(&self, answer: &Value, root_pem: &str) -> Result<LoadPermit> {
        let b64 = |k: &str| -> Result<Vec<u8>> {
            let v = answer[k]
                .as_str()
                .ok_or_else(|| anyhow!("the answer has no {k}"))?;
            Ok(B64.decode(v)?)
        };
        let bytes = b64("permit")?;
        let sig = b64("signature")?;
        let chain = answer["certificate_chain"]
            .as_str()
            .ok_or_else(|| anyhow!("the answer has no certificate chain"))?;
        verify_chain_signature(chain, root_pem, &bytes, &sig)?;
        let permit = LoadPermit::decode(&bytes).map_err(|e| anyhow!("permit: {e}"))?;
        let latest = self
            .latest_request
            .as_deref()
            .ok_or_else(|| anyhow!("no request awaits a permit"))?;
        let req_bytes = B64.decode(latest)?;
        let req = LoadRequest::decode(&req_bytes).map_err(|e| anyhow!("request: {e}"))?;
        ensure!(
            permit.answers(&req_bytes, &req),
            "the permit does not answer the latest request"
        );
        Ok(permit)
    }

    /// Applies a checked permit: the balance grows, `last_applied` moves.
    /// Returns the signed report of it.
    pub fn apply(&mut self, dev: &SimDevice, permit: &LoadPermit) -> Result<Signed> {
        let req_bytes = B64.decode(self.latest_request.take().unwrap_or_default())?;
        ensure!(
            RequestId::of(&req_bytes) == permit.request,
            "the permit is not for the latest request"
        );
        self.balance = self
            .balance
            .checked_add(permit.amount.minor_units())
            .ok_or_else(|| anyhow!("the purse would overflow"))?;
        self.last_applied = permit.sequence;
        Ok(self.report(dev, permit, Outcome::Applied))
    }

    /// Refuses a permit (the purse could not load it, `reason` 1..=255):
    /// the signed failure report.
    pub fn fail(&mut self, dev: &SimDevice, permit: &LoadPermit, reason: u8) -> Result<Signed> {
        ensure!(reason > 0, "a failure has a reason");
        self.latest_request = None;
        Ok(self.report(dev, permit, Outcome::Failed { reason }))
    }

    fn report(&self, dev: &SimDevice, permit: &LoadPermit, outcome: Outcome) -> Signed {
        let r = LoadReport {
            load: permit.load,
            request: permit.request,
            sequence: permit.sequence,
            outcome,
            wallet_balance: self.balance,
        };
        Self::envelope(dev, r.encode())
    }
}

/// Verifies `sig` over `msg` under the leaf of `chain_pem` (ECDSA P-256),
/// and each certificate of the chain under the next, the last under the
/// root.
pub fn verify_chain_signature(
    chain_pem: &str,
    root_pem: &str,
    msg: &[u8],
    sig: &[u8],
) -> Result<()> {
    use p256::ecdsa::signature::Verifier;
    let ders: Vec<Vec<u8>> = pems(chain_pem)?;
    verify_chain(&ders, root_pem)?;
    let (_, leaf) = x509_parser::parse_x509_certificate(&ders[0])
        .map_err(|e| anyhow!("a certificate does not parse: {e}"))?;
    let point = leaf.public_key().subject_public_key.data.as_ref();
    let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(point)
        .map_err(|_| anyhow!("the permit key is not P-256"))?;
    let sig =
        p256::ecdsa::Signature::from_der(sig).map_err(|_| anyhow!("the signature is not DER"))?;
    if key.verify(msg, &sig).is_err() {
        bail!("the permit's signature does not verify");
    }
    Ok(())
}

/// Verifies each certificate of `chain` (DER, leaf first) under the next,
/// the last under the root (`root_pem`).
pub fn verify_chain(chain: &[Vec<u8>], root_pem: &str) -> Result<()> {
    let root = pems(root_pem)?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("no root certificate"))?;
    ensure!(!chain.is_empty(), "an empty certificate chain");
    let parsed: Vec<_> = chain
        .iter()
        .chain(std::iter::once(&root))
        .map(|d| {
            x509_parser::parse_x509_certificate(d)
                .map(|(_, c)| c)
                .map_err(|e| anyhow!("a certificate does not parse: {e}"))
        })
        .collect::<Result<_>>()?;
    for pair in parsed.windows(2) {
        pair[0]
            .verify_signature(Some(pair[1].public_key()))
            .map_err(|e| anyhow!("the chain does not verify: {e}"))?;
    }
    Ok(())
}

/// The DER of each `CERTIFICATE` block of a PEM text, in order.
pub fn pems(text: &str) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for block in text.split("-----BEGIN CERTIFICATE-----").skip(1) {
        let body = block
            .split("-----END CERTIFICATE-----")
            .next()
            .ok_or_else(|| anyhow!("an unterminated PEM block"))?;
        let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
        out.push(B64.decode(b64)?);
    }
    Ok(out)
}
