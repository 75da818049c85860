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
//!
//! [`SimDevice::save`] and [`SimDevice::load`] keep a device in a JSON file
//! (`<dir>/<device_id>.json`, mode 0600) so a process can pick it up again
//! (the `kwsim` device agent). That file is the emulated secure element's
//! storage: it holds the private key and the issuer keys.

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};

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
    /// The working-key version those keys are (login reports it).
    version: Option<u32>,
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

/// The keys a device holds for one issuer, as KCVs only ([`SimDevice::held_keys`]).
#[derive(Debug, Clone)]
pub struct HeldKeys {
    pub issuer: String,
    pub family: KeyFamily,
    /// `TMK`, `AUTH`, then the working keys (`TPK`, `TAK`, `TDK`) it holds.
    pub kcvs: Vec<(String, Kcv)>,
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

fn key_family(f: Family) -> KeyFamily {
    match f {
        Family::Tdes => KeyFamily::Tdes,
        Family::Aes => KeyFamily::Aes,
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
        Self::p256_with_key(id, p256::ecdsa::SigningKey::random(&mut rand::thread_rng()))
    }

    /// A device with the given P-256 key (fixed keys of worked examples).
    pub fn p256_with_key(id: DeviceId, sk: p256::ecdsa::SigningKey) -> Result<Self> {
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

    /// A CSR for this device's key whose subject also carries an X.520
    /// serialNumber of `serial_number` (the device id, or another device's
    /// for the mismatch tests).
    pub fn csr_with_serial_number(&self, serial_number: &str) -> Result<Vec<u8>> {
        let (pkcs8, alg) = match &self.key {
            DeviceKey::P256(sk) => (
                sk.to_pkcs8_der()?.as_bytes().to_vec(),
                &rcgen::PKCS_ECDSA_P256_SHA256,
            ),
            DeviceKey::Rsa(sk) => (
                rsa::pkcs8::EncodePrivateKey::to_pkcs8_der(&**sk)?
                    .as_bytes()
                    .to_vec(),
                &rcgen::PKCS_RSA_SHA256,
            ),
        };
        let kp = KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8.as_slice().into(), alg)?;
        let mut params = subject(self.id)?;
        params.distinguished_name.push(
            DnType::CustomDnType(vec![2, 5, 4, 5]),
            DnValue::PrintableString(serial_number.try_into()?),
        );
        Ok(params.serialize_request(&kp)?.der().to_vec())
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

    /// Whether the device key is RSA (else ECDSA P-256).
    pub fn is_rsa(&self) -> bool {
        matches!(self.key, DeviceKey::Rsa(_))
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

    /// Signs a transaction confirmation: `tx ‖ code` (docs/protocol.md §11),
    /// with the key of the device's certificate.
    pub fn sign_confirmation(
        &self,
        tx: &[u8],
        code: &keyward_protocol::confirmation::Code,
    ) -> Vec<u8> {
        self.sign_challenge(&keyward_protocol::confirmation::signed_message(tx, code))
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
                    version: None,
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
        keys.version = Some(offer.version.0);
        Ok(out)
    }

    /// A login's key update: derives
    /// each offered key from `TMK_d` and its `R`, and answers with the KCVs
    /// it computed. Only if every one matches the announced KCV does the
    /// device switch to the new keys and `version`; otherwise it keeps its
    /// old keys (the server sees the mismatch in the KCVs). Returns the
    /// computed KCVs and whether they all matched.
    pub fn take_key_update(
        &mut self,
        issuer: &str,
        version: u32,
        offered: &[(WorkingKeyRole, [u8; 16], Kcv)],
    ) -> Result<(Vec<(WorkingKeyRole, Kcv)>, bool)> {
        let keys = self.issuers.get_mut(issuer).context("no keys for issuer")?;
        let mut kcvs = Vec::new();
        let mut derived = HashMap::new();
        let mut all = true;
        for (role, r, announced) in offered {
            let key = device::diversify(keys.family, &keys.tmk, r);
            let mine = Kcv {
                method: kcv_method(keys.family),
                value: device::kcv(keys.family, &key),
            };
            all &= mine.matches(announced);
            derived.insert(role.as_str(), key);
            kcvs.push((*role, mine));
        }
        if all {
            keys.working = derived;
            keys.version = Some(version);
        }
        Ok((kcvs, all))
    }

    /// The working-key version the device holds for `issuer`.
    pub fn key_version(&self, issuer: &str) -> Option<u32> {
        self.issuers.get(issuer).and_then(|k| k.version)
    }

    /// Corrupts the device's `TMK_d` for `issuer` (a tampered or swapped
    /// secure element): its next key update will not match.
    pub fn tamper_tmk(&mut self, issuer: &str) -> Result<()> {
        let keys = self.issuers.get_mut(issuer).context("no keys for issuer")?;
        keys.tmk[0] ^= 0x10;
        Ok(())
    }

    /// The device's private key, PKCS#8 DER: what its TLS client presents
    /// with its certificate (it never leaves the emulated secure element).
    pub fn private_key_pkcs8(&self) -> Result<Vec<u8>> {
        Ok(match &self.key {
            DeviceKey::P256(sk) => sk.to_pkcs8_der()?.as_bytes().to_vec(),
            DeviceKey::Rsa(sk) => rsa::pkcs8::EncodePrivateKey::to_pkcs8_der(&**sk)?
                .as_bytes()
                .to_vec(),
        })
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

    /// The full transaction MAC (8 bytes; CMAC-AES 16) over `msg` with the
    /// current `TAK`, computed in software ([`device`]); `padding` 1 or 2
    /// for the ISO 9797-1 algorithms, 0 for none. The caller truncates.
    pub fn transaction_mac(
        &self,
        issuer: &str,
        algorithm: &str,
        padding: u8,
        msg: &[u8],
    ) -> Result<Vec<u8>> {
        let len = if algorithm == "CMAC-AES" { 16 } else { 8 };
        self.mac(
            issuer,
            algorithm,
            (padding != 0).then_some(padding),
            msg,
            len,
        )
    }

    /// The transaction MAC under the current `TAK`: `algorithm` by its name, `padding` 1 or 2 where it takes one,
    /// truncated to `len` bytes (`CUP-ECB`: its 8 ASCII characters).
    pub fn mac(
        &self,
        issuer: &str,
        algorithm: &str,
        padding: Option<u8>,
        msg: &[u8],
        len: usize,
    ) -> Result<Vec<u8>> {
        let keys = self.issuers.get(issuer).context("no keys for issuer")?;
        let tak = keys.working.get("TAK").context("no working keys")?;
        let full = match algorithm {
            "ISO9797-1-M1-TDES" => {
                device::mac_m1_tdes(tak, msg, padding.context("padding")?).to_vec()
            }
            "ISO9797-1-M3" => device::mac_x919(tak, msg, padding.context("padding")?).to_vec(),
            "CMAC-TDES" => device::cmac_tdes(tak, msg).to_vec(),
            "CMAC-AES" => device::cmac_aes(tak, msg).to_vec(),
            "CUP-ECB" => device::mac_cup_ecb(tak, msg).to_vec(),
            other => bail!("unknown MAC algorithm {other}"),
        };
        ensure!(len <= full.len(), "MAC longer than the algorithm's");
        Ok(full[..len].to_vec())
    }

    /// An account field as the device sends it: CBC under the current `TDK`
    /// with `iv`, over the field padded with ISO/IEC 9797-1 method 2.
    pub fn encrypt_field(&self, issuer: &str, iv: &[u8], field: &[u8]) -> Result<Vec<u8>> {
        let keys = self.issuers.get(issuer).context("no keys for issuer")?;
        let tdk = keys.working.get("TDK").context("no working keys")?;
        let block = match keys.family {
            Family::Tdes => 8,
            Family::Aes => 16,
        };
        ensure!(iv.len() == block, "the IV is one block");
        let mut data = field.to_vec();
        data.push(0x80);
        while !data.len().is_multiple_of(block) {
            data.push(0);
        }
        let mut chain = iv.to_vec();
        let mut out = Vec::with_capacity(data.len());
        for chunk in data.chunks(block) {
            let x: Vec<u8> = chunk.iter().zip(&chain).map(|(a, b)| a ^ b).collect();
            let c = match keys.family {
                Family::Tdes => device::tdes_encrypt_block(tdk, x.as_slice().try_into()?).to_vec(),
                Family::Aes => device::aes_encrypt_block(tdk, x.as_slice().try_into()?).to_vec(),
            };
            out.extend_from_slice(&c);
            chain = c;
        }
        Ok(out)
    }
}

/// Version of the saved-device file format.
const STATE_FORMAT: u32 = 1;

/// Largest saved-device file [`SimDevice::load`] reads.
const STATE_MAX_BYTES: u64 = 1 << 20;

/// A saved device: the emulated secure element's storage.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredDevice {
    format: u32,
    device_id: String,
    /// `p256` or `rsa`.
    key_kind: String,
    /// The PKCS#8 DER of the private key, base64.
    private_key_pkcs8: String,
    psam: Option<String>,
    esam: Option<String>,
    model: String,
    firmware: String,
    /// The CSR, base64 of the DER.
    csr: String,
    /// By issuer id.
    issuers: BTreeMap<String, StoredIssuer>,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredIssuer {
    /// `tdes` or `aes`.
    family: String,
    /// Hex of the 16 key bytes, like the working keys.
    tmk: String,
    auth: String,
    /// By role (`TPK`, `TAK`, `TDK`).
    working: BTreeMap<String, String>,
    /// The working-key version of `working`.
    #[serde(default)]
    version: Option<u32>,
}

fn key16(hex_text: &str, what: &str) -> Result<[u8; 16]> {
    let mut k = [0u8; 16];
    hex::decode_to_slice(hex_text, &mut k)
        .map_err(|_| anyhow::anyhow!("{what} is not 32 hex digits"))?;
    Ok(k)
}

/// Makes `dir` (and its parents) if needed, private to the user on unix.
fn make_private_dir(dir: &Path) -> Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

impl SimDevice {
    /// `p256` or `rsa`, as the admin API names the device's key kind.
    pub fn key_kind(&self) -> &'static str {
        match self.key {
            DeviceKey::P256(_) => "p256",
            DeviceKey::Rsa(_) => "rsa",
        }
    }

    /// The issuers it holds keys for (by issuer id), with the KCVs of those
    /// keys; never the keys.
    pub fn held_keys(&self) -> Vec<HeldKeys> {
        let mut out: Vec<HeldKeys> = self
            .issuers
            .iter()
            .map(|(issuer, k)| {
                let kcv = |key: &[u8; 16]| Kcv {
                    method: kcv_method(k.family),
                    value: device::kcv(k.family, key),
                };
                let mut kcvs = vec![
                    ("TMK".to_owned(), kcv(&k.tmk)),
                    ("AUTH".to_owned(), kcv(&k.auth)),
                ];
                for role in WorkingKeyRole::ALL {
                    if let Some(key) = k.working.get(role.as_str()) {
                        kcvs.push((role.as_str().to_owned(), kcv(key)));
                    }
                }
                HeldKeys {
                    issuer: issuer.clone(),
                    family: key_family(k.family),
                    kcvs,
                }
            })
            .collect();
        out.sort_by(|a, b| a.issuer.cmp(&b.issuer));
        out
    }

    /// The file [`save`](Self::save) writes for device `id` under `dir`.
    pub fn state_path(dir: &Path, id: DeviceId) -> PathBuf {
        dir.join(format!("{id}.json"))
    }

    /// The public key as it appears in the CSR: the uncompressed P-256 point,
    /// or the RSA modulus.
    fn public_bytes(&self) -> Vec<u8> {
        match &self.key {
            DeviceKey::P256(sk) => sk
                .verifying_key()
                .to_encoded_point(false)
                .as_bytes()
                .to_vec(),
            DeviceKey::Rsa(sk) => rsa::traits::PublicKeyParts::n(&**sk).to_bytes_be(),
        }
    }

    /// Writes the whole device (private key, CSR, serials and every issuer
    /// key) to `<dir>/<device_id>.json`, mode 0600 on unix, replacing an
    /// earlier save atomically. Makes `dir` (0700) if needed.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let pkcs8 = match &self.key {
            DeviceKey::P256(sk) => sk.to_pkcs8_der().context("encoding the device key")?,
            DeviceKey::Rsa(sk) => rsa::pkcs8::EncodePrivateKey::to_pkcs8_der(&**sk)
                .context("encoding the device key")?,
        };
        let issuers = self
            .issuers
            .iter()
            .map(|(issuer, k)| {
                let working = k
                    .working
                    .iter()
                    .map(|(role, key)| ((*role).to_owned(), hex::encode_upper(key)))
                    .collect();
                let stored = StoredIssuer {
                    family: key_family(k.family).as_str().to_owned(),
                    tmk: hex::encode_upper(k.tmk),
                    auth: hex::encode_upper(k.auth),
                    working,
                    version: k.version,
                };
                (issuer.clone(), stored)
            })
            .collect();
        let stored = StoredDevice {
            format: STATE_FORMAT,
            device_id: self.id.to_string(),
            key_kind: self.key_kind().to_owned(),
            private_key_pkcs8: b64.encode(pkcs8.as_bytes()),
            psam: self.psam.clone(),
            esam: self.esam.clone(),
            model: self.model.clone(),
            firmware: self.firmware.clone(),
            csr: b64.encode(&self.csr_der),
            issuers,
        };
        let mut text = serde_json::to_vec_pretty(&stored)?;
        text.push(b'\n');
        make_private_dir(dir)?;
        let path = Self::state_path(dir, self.id);
        let mut tmp = tempfile::Builder::new()
            .prefix(".kwsim-")
            .suffix(".tmp")
            .tempfile_in(dir)
            .with_context(|| format!("creating a file in {}", dir.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            tmp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        tmp.write_all(&text)?;
        tmp.as_file().sync_all()?;
        tmp.persist(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// Reads back the device `id` that [`save`](Self::save) wrote under `dir`.
    pub fn load(dir: &Path, id: DeviceId) -> Result<Self> {
        use p256::pkcs8::DecodePrivateKey as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let path = Self::state_path(dir, id);
        let file = std::fs::File::open(&path)
            .with_context(|| format!("device {id} not found: cannot open {}", path.display()))?;
        let mut text = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(file, STATE_MAX_BYTES + 1),
            &mut text,
        )
        .with_context(|| format!("reading {}", path.display()))?;
        ensure!(
            text.len() as u64 <= STATE_MAX_BYTES,
            "{} is too large for a saved device",
            path.display()
        );
        let bad = || format!("{} is not a saved device", path.display());
        let st: StoredDevice = serde_json::from_slice(&text).with_context(bad)?;
        ensure!(
            st.format == STATE_FORMAT,
            "{}: unknown format {}",
            path.display(),
            st.format
        );
        let stored_id: DeviceId = st.device_id.parse().with_context(bad)?;
        ensure!(
            stored_id == id,
            "{} holds device {stored_id}, not {id}",
            path.display()
        );
        let pkcs8 = b64
            .decode(&st.private_key_pkcs8)
            .context("private key is not base64")?;
        let key = match st.key_kind.as_str() {
            "p256" => DeviceKey::P256(
                p256::ecdsa::SigningKey::from_pkcs8_der(&pkcs8)
                    .map_err(|e| anyhow::anyhow!("bad P-256 private key: {e}"))?,
            ),
            "rsa" => {
                let sk = rsa::RsaPrivateKey::from_pkcs8_der(&pkcs8)
                    .map_err(|e| anyhow::anyhow!("bad RSA private key: {e}"))?;
                sk.validate().context("bad RSA private key")?;
                DeviceKey::Rsa(Box::new(sk))
            }
            other => bail!("unknown key kind {other:?} (p256 or rsa)"),
        };
        let csr_der = b64.decode(&st.csr).context("csr is not base64")?;
        let mut issuers = HashMap::new();
        for (issuer, k) in st.issuers {
            let issuer_id: keyward_kms::types::IssuerId =
                issuer.parse().context("bad issuer id")?;
            let family: KeyFamily = k.family.parse().context("bad issuer family")?;
            let mut working = HashMap::new();
            for (role, key) in k.working {
                let role: WorkingKeyRole = role.parse().context("bad working key role")?;
                working.insert(role.as_str(), key16(&key, role.as_str())?);
            }
            issuers.insert(
                issuer_id.to_string(),
                IssuerKeys {
                    family: family_of(family),
                    tmk: key16(&k.tmk, "TMK")?,
                    auth: key16(&k.auth, "AUTH")?,
                    working,
                    version: k.version,
                },
            );
        }
        let dev = Self {
            id,
            psam: st.psam,
            esam: st.esam,
            model: st.model,
            firmware: st.firmware,
            key,
            csr_der,
            issuers,
        };
        let public = dev.public_bytes();
        ensure!(
            dev.csr_der
                .windows(public.len())
                .any(|w| w == public.as_slice()),
            "{}: the private key does not match the CSR",
            path.display()
        );
        Ok(dev)
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

/// A PKCS#10 request (PEM) over a fresh P-256 key with an empty subject: what
/// a new operator or a service sends to be certified (the CA sets the
/// subject from the request's profile).
pub fn client_csr_pem() -> Result<String> {
    let key = KeyPair::generate()?;
    Ok(CertificateParams::new(Vec::<String>::new())?
        .serialize_request(&key)?
        .pem()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    fn id(n: u8) -> DeviceId {
        DeviceId::from_bytes([0xF0, 0, 0, 0, 0, 0, 0, n])
    }

    /// Issuer keys as an accepted init package leaves them (opening packages
    /// is tested against the HSM's in `tests/tests/provisioning.rs`).
    fn give_keys(dev: &mut SimDevice, issuer: &str, family: Family, fill: u8) {
        dev.issuers.insert(
            issuer.to_owned(),
            IssuerKeys {
                family,
                tmk: [fill; 16],
                auth: [fill ^ 0xFF; 16],
                working: HashMap::new(),
                version: None,
            },
        );
    }

    fn same_device(a: &SimDevice, b: &SimDevice) {
        assert_eq!(a.id, b.id);
        assert_eq!(a.psam, b.psam);
        assert_eq!(a.esam, b.esam);
        assert_eq!(a.model, b.model);
        assert_eq!(a.firmware, b.firmware);
        assert_eq!(a.csr_der, b.csr_der);
        assert_eq!(a.key_kind(), b.key_kind());
        assert_eq!(a.public_bytes(), b.public_bytes());
        assert_eq!(a.manifest_row(), b.manifest_row());
        let mut ai: Vec<_> = a.issuers.iter().collect();
        let mut bi: Vec<_> = b.issuers.iter().collect();
        ai.sort_by_key(|(k, _)| k.as_str());
        bi.sort_by_key(|(k, _)| k.as_str());
        assert_eq!(ai.len(), bi.len());
        for ((an, ak), (bn, bk)) in ai.into_iter().zip(bi) {
            assert_eq!(an, bn);
            assert_eq!(ak.family, bk.family);
            assert_eq!(ak.tmk, bk.tmk);
            assert_eq!(ak.auth, bk.auth);
            assert_eq!(ak.working, bk.working);
        }
    }

    fn round_trip(mut dev: SimDevice) {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("devices");
        dev.esam = Some("ESAM0001".into());
        give_keys(&mut dev, "bank-a", Family::Tdes, 0x11);
        give_keys(&mut dev, "bank-b", Family::Aes, 0x22);
        dev.issuers
            .get_mut("bank-a")
            .unwrap()
            .working
            .insert("TAK", [0x33; 16]);
        dev.save(&state).unwrap();

        let path = SimDevice::state_path(&state, dev.id);
        assert!(path.ends_with(format!("{}.json", dev.id)));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let back = SimDevice::load(&state, dev.id).unwrap();
        same_device(&dev, &back);
        assert!(back.has_keys_for("bank-a") && back.has_keys_for("bank-b"));
        assert_eq!(
            back.auth_response("bank-a", &[5; 8]).unwrap(),
            dev.auth_response("bank-a", &[5; 8]).unwrap()
        );
        assert_eq!(
            back.cmac("bank-a", b"msg").unwrap(),
            dev.cmac("bank-a", b"msg").unwrap()
        );
        let held = back.held_keys();
        assert_eq!(held.len(), 2);
        assert_eq!(held[0].issuer, "bank-a");
        let names: Vec<_> = held[0].kcvs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["TMK", "AUTH", "TAK"]);
        assert_eq!(held[1].family, KeyFamily::Aes);

        // Saving again replaces the file.
        back.save(&state).unwrap();
        same_device(&dev, &SimDevice::load(&state, dev.id).unwrap());
        // No temporary files left behind.
        assert_eq!(std::fs::read_dir(&state).unwrap().count(), 1);
    }

    #[test]
    fn save_and_load_round_trip_p256() {
        round_trip(SimDevice::p256(id(1)).unwrap());
    }

    #[test]
    fn save_and_load_round_trip_rsa() {
        round_trip(SimDevice::rsa(id(2)).unwrap());
    }

    #[test]
    fn loaded_device_signs_with_its_key() {
        use p256::ecdsa::signature::Verifier as _;
        let dir = tempfile::tempdir().unwrap();
        let dev = SimDevice::p256(id(3)).unwrap();
        dev.save(dir.path()).unwrap();
        let back = SimDevice::load(dir.path(), dev.id).unwrap();
        let DeviceKey::P256(sk) = &dev.key else {
            unreachable!()
        };
        let sig = back.sign_challenge(&[9; 32]);
        let sig = p256::ecdsa::Signature::from_der(&sig).unwrap();
        sk.verifying_key().verify(&[9; 32], &sig).unwrap();
    }

    #[test]
    fn load_refuses_bad_state() {
        let dir = tempfile::tempdir().unwrap();
        let a = SimDevice::p256(id(4)).unwrap();
        let b = SimDevice::p256(id(5)).unwrap();
        assert!(SimDevice::load(dir.path(), a.id).is_err(), "missing file");
        a.save(dir.path()).unwrap();
        b.save(dir.path()).unwrap();
        let pa = SimDevice::state_path(dir.path(), a.id);
        let pb = SimDevice::state_path(dir.path(), b.id);
        let text = std::fs::read_to_string(&pa).unwrap();
        let va: serde_json::Value = serde_json::from_str(&text).unwrap();
        let vb: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&pb).unwrap()).unwrap();
        let write = |v: &serde_json::Value| std::fs::write(&pa, v.to_string()).unwrap();

        // Another device's file under this id.
        std::fs::copy(&pb, &pa).unwrap();
        assert!(SimDevice::load(dir.path(), a.id).is_err());
        // A key that is not the CSR's.
        let mut v = va.clone();
        v["private_key_pkcs8"] = vb["private_key_pkcs8"].clone();
        write(&v);
        assert!(SimDevice::load(dir.path(), a.id).is_err());
        // Wrong kind, unknown field, junk.
        let mut v = va.clone();
        v["key_kind"] = "rsa".into();
        write(&v);
        assert!(SimDevice::load(dir.path(), a.id).is_err());
        let mut v = va.clone();
        v["extra"] = 1.into();
        write(&v);
        assert!(SimDevice::load(dir.path(), a.id).is_err());
        std::fs::write(&pa, "not json").unwrap();
        assert!(SimDevice::load(dir.path(), a.id).is_err());
        // And the original loads.
        write(&va);
        SimDevice::load(dir.path(), a.id).unwrap();
    }
}
