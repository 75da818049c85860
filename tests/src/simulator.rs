//! A software security device for provisioning tests: what a terminal with a
//! PSAM/ESAM does from the factory to its first MAC.
//!
//! It makes its key pair (P-256, or RSA-2048) and a CSR (rcgen over the
//! software key), signs genuine-device challenges, opens an init package
//! (ECDH with the ephemeral point + RFC 3394 unwrap, or RSA-OAEP), checks the
//! announced KCVs and answers with its own, derives working keys, answers
//! login challenges and computes MACs. All of its cryptography comes from
//! [`crate::device`] and RustCrypto; it shares no code path with the server
//! (kms types are used only as containers for what travels).

use std::collections::HashMap;

use anyhow::{Context, Result, bail, ensure};
use base64::Engine;
use keyward_kms::types::{DeviceId, Kcv, KcvMethod, KeyFamily, WorkingKeyRole};
use keyward_kms::wrap::InitPackage;
use keyward_kms::{OfferedKey, WorkingKeyOffer};
use p256::ecdsa::signature::Signer as _;
use p256::pkcs8::EncodePrivateKey as _;
use rcgen::{CertificateParams, DistinguishedName, DnType, DnValue, KeyPair};

use crate::device::{self, Family};

/// The device's own key pair, which never leaves it.
enum DeviceKey {
    P256(p256::ecdsa::SigningKey),
    Rsa(Box<rsa::RsaPrivateKey>),
}

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::P256(_) => "P256(<private>)",
            Self::Rsa(_) => "Rsa(<private>)",
        })
    }
}

/// Keys a device holds for one issuer.
#[derive(Debug, Clone)]
struct IssuerKeys {
    family: Family,
    tmk: [u8; 16],
    auth: [u8; 16],
    /// Working keys by role, of the last confirmed offer.
    working: HashMap<&'static str, [u8; 16]>,
}

/// What the device answers to an init package.
#[derive(Debug, Clone)]
pub struct InitAnswer {
    /// The KCVs the device computed from the keys it unwrapped, by key name.
    pub kcvs: Vec<(String, Kcv)>,
    /// Whether every computed KCV matched the announced one; the device keeps
    /// the keys only then.
    pub accepted: bool,
}

/// A simulated security device.
#[derive(Debug)]
pub struct SimDevice {
    pub id: DeviceId,
    pub psam: Option<String>,
    pub esam: Option<String>,
    pub model: String,
    pub firmware: String,
    key: DeviceKey,
    csr_der: Vec<u8>,
    issuers: HashMap<String, IssuerKeys>,
}

fn family_of(f: KeyFamily) -> Family {
    match f {
        KeyFamily::Tdes => Family::Tdes,
        KeyFamily::Aes => Family::Aes,
    }
}

fn kcv_method(f: Family) -> KcvMethod {
    match f {
        Family::Tdes => KcvMethod::Tdes,
        Family::Aes => KcvMethod::Cmac,
    }
}

fn subject(id: DeviceId) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, DnValue::Utf8String(id.to_string()));
    params.distinguished_name = dn;
    Ok(params)
}

impl SimDevice {
    /// A device with a fresh P-256 key and a PSAM whose serial is its id.
    pub fn p256(id: DeviceId) -> Result<Self> {
        let sk = p256::ecdsa::SigningKey::random(&mut rand::thread_rng());
        let pkcs8 = sk.to_pkcs8_der().context("encoding the device key")?;
        let kp = KeyPair::from_pkcs8_der_and_sign_algo(
            &pkcs8.as_bytes().into(),
            &rcgen::PKCS_ECDSA_P256_SHA256,
        )?;
        let csr = subject(id)?.serialize_request(&kp)?;
        Ok(Self::with(id, DeviceKey::P256(sk), csr.der().to_vec()))
    }

    /// A device with a fresh RSA-2048 key.
    pub fn rsa(id: DeviceId) -> Result<Self> {
        let sk = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048)?;
        let pkcs8 = rsa::pkcs8::EncodePrivateKey::to_pkcs8_der(&sk)?;
        let kp = KeyPair::from_pkcs8_der_and_sign_algo(
            &pkcs8.as_bytes().into(),
            &rcgen::PKCS_RSA_SHA256,
        )?;
        let csr = subject(id)?.serialize_request(&kp)?;
        Ok(Self::with(
            id,
            DeviceKey::Rsa(Box::new(sk)),
            csr.der().to_vec(),
        ))
    }

    fn with(id: DeviceId, key: DeviceKey, csr_der: Vec<u8>) -> Self {
        Self {
            id,
            psam: Some(format!("P{id}")),
            esam: None,
            model: "KW-PINPAD-2".into(),
            firmware: "1.4.0".into(),
            key,
            csr_der,
            issuers: HashMap::new(),
        }
    }

    /// The device's certificate signing request, DER.
    pub fn csr_der(&self) -> &[u8] {
        &self.csr_der
    }

    /// Its line in a manufacturing manifest (`intake` module of
    /// keyward-device-provisioning), CSR as base64 of the DER.
    pub fn manifest_row(&self) -> String {
        self.manifest_row_with_csr(&self.csr_der)
    }

    /// Its manifest line with another CSR in it (forgery tests).
    pub fn manifest_row_with_csr(&self, csr: &[u8]) -> String {
        format!(
            "{},{},{},{},{},{}",
            self.id,
            self.psam.as_deref().unwrap_or(""),
            self.esam.as_deref().unwrap_or(""),
            self.model,
            self.firmware,
            base64::engine::general_purpose::STANDARD.encode(csr)
        )
    }

    /// Signs a genuine-device challenge: ECDSA P-256/SHA-256 (DER) or RSA
    /// PKCS#1 v1.5/SHA-256, over exactly the challenge bytes.
    pub fn sign_challenge(&self, challenge: &[u8]) -> Vec<u8> {
        match &self.key {
            DeviceKey::P256(sk) => {
                let sig: p256::ecdsa::Signature = sk.sign(challenge);
                sig.to_der().as_bytes().to_vec()
            }
            DeviceKey::Rsa(sk) => {
                use rsa::signature::SignatureEncoding;
                let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new((**sk).clone());
                rsa::signature::Signer::sign(&signer, challenge).to_vec()
            }
        }
    }

    /// Opens an init package: unwraps `TMK` and `AUTH`, computes their KCVs
    /// and keeps the keys only if every KCV matches the announced one.
    pub fn load_init_package(&mut self, pkg: &InitPackage) -> Result<InitAnswer> {
        ensure!(pkg.device == self.id, "package for another device");
        let family = family_of(pkg.family);
        let unwrap = |wrapped: &[u8]| -> Result<[u8; 16]> {
            let clear = match &self.key {
                DeviceKey::P256(sk) => {
                    let point = pkg
                        .ephemeral_point
                        .as_ref()
                        .context("ECDH package without an ephemeral point")?;
                    let eph = p256::PublicKey::from_sec1_bytes(point)?;
                    let secret = p256::SecretKey::from(sk);
                    let shared =
                        p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), eph.as_affine());
                    let kek: [u8; 32] = shared.raw_secret_bytes().as_slice().try_into()?;
                    device::aes_kw_unwrap(&kek, wrapped)?
                }
                DeviceKey::Rsa(sk) => sk.decrypt(rsa::Oaep::new::<sha1::Sha1>(), wrapped)?,
            };
            clear
                .try_into()
                .map_err(|_| anyhow::anyhow!("unwrapped key is not 16 bytes"))
        };
        let mut keys = HashMap::new();
        let mut kcvs = Vec::new();
        let mut accepted = true;
        for wk in &pkg.keys {
            let key = unwrap(&wk.wrapped)?;
            let kcv = Kcv {
                method: kcv_method(family),
                value: device::kcv(family, &key),
            };
            accepted &= kcv.matches(&wk.kcv);
            kcvs.push((wk.name.to_owned(), kcv));
            keys.insert(wk.name, key);
        }
        let (Some(tmk), Some(auth)) = (keys.get("TMK"), keys.get("AUTH")) else {
            bail!("package lacks TMK or AUTH");
        };
        if accepted {
            self.issuers.insert(
                pkg.issuer.to_string(),
                IssuerKeys {
                    family,
                    tmk: *tmk,
                    auth: *auth,
                    working: HashMap::new(),
                },
            );
        }
        Ok(InitAnswer { kcvs, accepted })
    }

    /// Whether the device holds original keys for `issuer`.
    pub fn has_keys_for(&self, issuer: &str) -> bool {
        self.issuers.contains_key(issuer)
    }

    /// Derives the offered working keys from `TMK_d` and answers with their
    /// KCVs; keeps them only if every KCV matches the offer.
    pub fn accept_working_keys(
        &mut self,
        issuer: &str,
        offer: &WorkingKeyOffer,
    ) -> Result<Vec<(WorkingKeyRole, Kcv)>> {
        let keys = self.issuers.get_mut(issuer).context("no keys for issuer")?;
        let mut out = Vec::new();
        let mut derived = HashMap::new();
        for OfferedKey { role, r, kcv } in &offer.keys {
            let key = device::diversify(keys.family, &keys.tmk, r);
            let mine = Kcv {
                method: kcv_method(keys.family),
                value: device::kcv(keys.family, &key),
            };
            ensure!(
                mine.matches(kcv),
                "working key {} KCV mismatch",
                role.as_str()
            );
            derived.insert(role.as_str(), key);
            out.push((*role, mine));
        }
        keys.working = derived;
        Ok(out)
    }

    /// `E_AUTH_d(challenge)`: the login challenge response.
    pub fn auth_response(&self, issuer: &str, challenge: &[u8]) -> Result<Vec<u8>> {
        let keys = self.issuers.get(issuer).context("no keys for issuer")?;
        Ok(match keys.family {
            Family::Tdes => device::tdes_encrypt_block(&keys.auth, challenge.try_into()?).to_vec(),
            Family::Aes => device::aes_encrypt_block(&keys.auth, challenge.try_into()?).to_vec(),
        })
    }

    /// A CMAC (CMAC-TDES or CMAC-AES, by the issuer's family) over `msg` with
    /// the current `TAK`.
    pub fn cmac(&self, issuer: &str, msg: &[u8]) -> Result<Vec<u8>> {
        let keys = self.issuers.get(issuer).context("no keys for issuer")?;
        let tak = keys.working.get("TAK").context("no working keys")?;
        Ok(match keys.family {
            Family::Tdes => device::cmac_tdes(tak, msg).to_vec(),
            Family::Aes => device::cmac_aes(tak, msg).to_vec(),
        })
    }
}

/// A CSR whose subject public key was swapped for another device's after
/// signing: well-formed, but its signature does not verify (a forged request
/// for a key the requester does not hold). Both must be P-256 devices.
pub fn forged_csr(signer: &SimDevice, victim: &SimDevice) -> Result<Vec<u8>> {
    let point = |d: &SimDevice| -> Result<Vec<u8>> {
        match &d.key {
            DeviceKey::P256(sk) => Ok(sk
                .verifying_key()
                .to_encoded_point(false)
                .as_bytes()
                .to_vec()),
            DeviceKey::Rsa(_) => bail!("forged_csr needs P-256 devices"),
        }
    };
    let (mine, theirs) = (point(signer)?, point(victim)?);
    let mut csr = signer.csr_der.clone();
    let at = csr
        .windows(mine.len())
        .position(|w| w == mine.as_slice())
        .context("public key not found in the CSR")?;
    csr[at..at + theirs.len()].copy_from_slice(&theirs);
    Ok(csr)
}
