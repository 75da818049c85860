//! Device provisioning bodies (docs/admin-api.md "Provisioning", "Devices").

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use keyward_device_provisioning::{
    BatchRecord, Binding as DomainBinding, Challenge, DeviceRecord, ImportReport,
    InitRecord as DomainInitRecord, Recertification, RowOutcome,
};
use keyward_kms::types::{DeviceId, IssuerId, KeyFamily};
use keyward_kms::wrap::{InitPackage as DomainPackage, WrapScheme, WrappedKey as DomainWrapped};
use serde::{Deserialize, Serialize};

use super::Kcv;

/// Names of the keys an init package carries.
pub const INIT_KEY_NAMES: [&str; 2] = ["TMK", "AUTH"];

// ---- batches ------------------------------------------------------------------

/// `POST /admin/v1/batches`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportRequest {
    pub batch_id: String,
    /// The manifest text (format: docs/admin-api.md "Batch files").
    pub manifest: String,
}

/// The `201` answer of `POST /admin/v1/batches`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportAnswer {
    pub batch_id: String,
    pub state: String,
    pub rows: Vec<ReportRow>,
}

/// One manifest row of an import report (also the `rows` of a
/// `batch_rejected` error).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportRow {
    pub line: usize,
    pub device_id: Option<String>,
    /// `registered`, `valid` (a rejected batch's good rows) or `rejected`.
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl ReportRow {
    /// The rows of `report`, in manifest order.
    pub fn all(report: &ImportReport) -> Vec<Self> {
        report
            .rows
            .iter()
            .map(|r| {
                let mut row = Self {
                    line: r.line,
                    device_id: r.device_id.map(|d| d.to_string()),
                    outcome: String::new(),
                    cert_serial: None,
                    code: None,
                    reason: None,
                };
                match &r.outcome {
                    RowOutcome::Registered { cert_serial } => {
                        row.outcome = "registered".into();
                        row.cert_serial = Some(cert_serial.clone());
                    }
                    RowOutcome::Valid => row.outcome = "valid".into(),
                    RowOutcome::Rejected { code, reason } => {
                        row.outcome = "rejected".into();
                        row.code = Some((*code).to_owned());
                        row.reason = Some((*reason).to_owned());
                    }
                }
                row
            })
            .collect()
    }
}

/// `GET /admin/v1/batches/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Batch {
    pub batch_id: String,
    pub state: String,
    pub device_count: u32,
    pub imported_by: String,
    pub imported_at_ms: i64,
    pub completed_at_ms: Option<i64>,
}

impl From<&BatchRecord> for Batch {
    fn from(b: &BatchRecord) -> Self {
        Self {
            batch_id: b.id.as_str().to_owned(),
            state: b.state.as_str().to_owned(),
            device_count: b.device_count,
            imported_by: b.imported_by.clone(),
            imported_at_ms: b.imported_at_ms,
            completed_at_ms: b.completed_at_ms,
        }
    }
}

/// The answer of `POST /admin/v1/batches/{id}/abort`: the batch is gone.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AbortAnswer {
    pub batch_id: String,
    /// Always `aborted`.
    pub state: String,
    /// Devices whose reservation was removed.
    pub devices: usize,
    /// Certificates of those devices revoked.
    pub revoked: usize,
}

// ---- devices --------------------------------------------------------------------

/// A device as the registry holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Device {
    pub device_id: String,
    pub batch_id: String,
    pub state: String,
    pub psam_serial: Option<String>,
    pub esam_serial: Option<String>,
    pub model: String,
    pub firmware: String,
    pub key_kind: String,
    pub cert_serial: Option<String>,
    pub check_failures: u32,
    pub verified_at_ms: Option<i64>,
    pub created_at_ms: i64,
    pub state_changed_at_ms: i64,
}

impl From<&DeviceRecord> for Device {
    fn from(d: &DeviceRecord) -> Self {
        Self {
            device_id: d.device_id.to_string(),
            batch_id: d.batch_id.as_str().to_owned(),
            state: d.state.as_str().to_owned(),
            psam_serial: d.psam_serial.as_ref().map(|s| s.as_str().to_owned()),
            esam_serial: d.esam_serial.as_ref().map(|s| s.as_str().to_owned()),
            model: d.model.clone(),
            firmware: d.firmware.clone(),
            key_kind: d.key_kind.as_str().to_owned(),
            cert_serial: d.cert_serial.clone(),
            check_failures: d.check_failures,
            verified_at_ms: d.verified_at_ms,
            created_at_ms: d.created_at_ms,
            state_changed_at_ms: d.state_changed_at_ms,
        }
    }
}

/// `GET /admin/v1/devices`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceList {
    pub devices: Vec<Device>,
}

/// `GET /admin/v1/devices/{id}`: the device, its original keys, its bindings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceDetail {
    #[serde(flatten)]
    pub device: Device,
    pub inits: Vec<InitRecord>,
    pub bindings: Vec<Binding>,
}

/// A device's original keys for one issuer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitRecord {
    pub issuer_id: String,
    pub state: String,
    pub tmk_kcv: Kcv,
    pub auth_kcv: Kcv,
    pub packages: u32,
    pub packaged_at_ms: i64,
    pub confirmed_at_ms: Option<i64>,
    pub reinit_by: Option<String>,
}

impl From<&DomainInitRecord> for InitRecord {
    fn from(i: &DomainInitRecord) -> Self {
        Self {
            issuer_id: i.issuer.as_str().to_owned(),
            state: i.state.as_str().to_owned(),
            tmk_kcv: (&i.tmk_kcv).into(),
            auth_kcv: (&i.auth_kcv).into(),
            packages: i.packages,
            packaged_at_ms: i.packaged_at_ms,
            confirmed_at_ms: i.confirmed_at_ms,
            reinit_by: i.reinit_by.clone(),
        }
    }
}

/// A device bound to a customer for an issuer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Binding {
    pub device_id: String,
    pub issuer_id: String,
    pub customer_id: String,
    pub secure_element: String,
    pub psam_serial: Option<String>,
    pub esam_serial: Option<String>,
    pub accounts: Vec<String>,
    pub bound_by: String,
    pub bound_at_ms: i64,
}

impl From<&DomainBinding> for Binding {
    fn from(b: &DomainBinding) -> Self {
        Self {
            device_id: b.device.to_string(),
            issuer_id: b.issuer.as_str().to_owned(),
            customer_id: b.customer.as_str().to_owned(),
            secure_element: b.secure_element.as_str().to_owned(),
            psam_serial: b.psam_serial.as_ref().map(|s| s.as_str().to_owned()),
            esam_serial: b.esam_serial.as_ref().map(|s| s.as_str().to_owned()),
            accounts: b.accounts.iter().map(|a| a.as_str().to_owned()).collect(),
            bound_by: b.bound_by.clone(),
            bound_at_ms: b.bound_at_ms,
        }
    }
}

// ---- the genuine-device check ---------------------------------------------------

/// The `201` answer of `POST /admin/v1/devices/{id}/challenge`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChallengeAnswer {
    pub device_id: String,
    /// The challenge's id (32 hex digits), carried in the answer.
    pub challenge_id: String,
    /// Upper-case hex of the bytes the device signs.
    pub challenge: String,
    pub expires_at_ms: i64,
}

impl From<&Challenge> for ChallengeAnswer {
    fn from(c: &Challenge) -> Self {
        Self {
            device_id: c.device.to_string(),
            challenge_id: c.id.to_string(),
            challenge: hex::encode_upper(c.bytes),
            expires_at_ms: c.expires_at_ms,
        }
    }
}

/// `POST /admin/v1/devices/{id}/check`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckRequest {
    /// The id of the challenge answered (from [`ChallengeAnswer`]).
    pub challenge_id: String,
    /// Base64 of the DER signature over the challenge bytes.
    pub signature: String,
}

/// `POST /admin/v1/devices/{id}/check/reset`: clears the failed-check
/// counter of a parked device.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetCheckRequest {
    pub reason: String,
}

/// The answer of `POST /admin/v1/devices/{id}/check/reset`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResetCheckAnswer {
    pub device_id: String,
    /// The failed attempts the reset cleared.
    pub check_failures_cleared: u32,
}

// ---- re-certification -----------------------------------------------------------

/// `POST /admin/v1/devices/{id}/recertify`: asks for a certificate for the
/// device's new key; a second operator approves it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecertifyRequest {
    /// The device's new PKCS#10 request, PEM.
    pub csr_pem: String,
    pub reason: String,
}

/// The answer of `POST /admin/v1/devices/{id}/recertify` (`pending`) and of
/// `…/recertify/approve` (`done`, with the new certificate and what it
/// revoked).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecertifyAnswer {
    pub device_id: String,
    /// `pending` or `done`.
    pub state: String,
    pub requested_by: String,
    pub requested_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_serial: Option<String>,
    #[serde(default)]
    pub revoked: Vec<String>,
}

impl From<&Recertification> for RecertifyAnswer {
    fn from(r: &Recertification) -> Self {
        Self {
            device_id: r.device.to_string(),
            state: if r.cert_serial.is_some() {
                "done"
            } else {
                "pending"
            }
            .to_owned(),
            requested_by: r.requested_by.clone(),
            requested_at_ms: r.requested_at_ms,
            cert_serial: r.cert_serial.clone(),
            revoked: r.revoked.clone(),
        }
    }
}

/// A device and the state an operation left it in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceState {
    pub device_id: String,
    pub state: String,
}

// ---- original keys --------------------------------------------------------------

/// `POST /admin/v1/devices/{id}/init`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitRequest {
    pub issuer_id: String,
}

/// The init package as the device receives it: the original keys wrapped to
/// the device's public key (docs/protocol.md "Init package").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitPackage {
    pub device_id: String,
    pub issuer_id: String,
    pub family: String,
    pub scheme: String,
    /// Base64 of the HSM's ephemeral P-256 point (`04||X||Y`); `null` for RSA.
    pub ephemeral_point: Option<String>,
    pub keys: Vec<WrappedKey>,
}

/// One wrapped key of an [`InitPackage`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    /// `TMK` or `AUTH`.
    pub name: String,
    /// Base64 of the wrapped key.
    pub wrapped: String,
    pub kcv: Kcv,
}

impl From<&DomainPackage> for InitPackage {
    fn from(p: &DomainPackage) -> Self {
        Self {
            device_id: p.device.to_string(),
            issuer_id: p.issuer.as_str().to_owned(),
            family: p.family.as_str().to_owned(),
            scheme: p.scheme.as_str().to_owned(),
            ephemeral_point: p.ephemeral_point.as_ref().map(|e| B64.encode(e)),
            keys: p
                .keys
                .iter()
                .map(|k| WrappedKey {
                    name: k.name.to_owned(),
                    wrapped: B64.encode(&k.wrapped),
                    kcv: (&k.kcv).into(),
                })
                .collect(),
        }
    }
}

/// Why a received init package is unusable (the device side's checks).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("init package: {0}")]
pub struct BadPackage(String);

fn bad(what: impl Into<String>) -> BadPackage {
    BadPackage(what.into())
}

impl TryFrom<&InitPackage> for DomainPackage {
    type Error = BadPackage;

    /// What a device checks before it unwraps: ids, family, scheme against the
    /// ephemeral point, base64, KCV syntax, exactly one `TMK` and one `AUTH`.
    /// Whether a KCV's method fits the family is left to the device, which
    /// compares the KCVs.
    fn try_from(p: &InitPackage) -> Result<Self, BadPackage> {
        let device: DeviceId = p.device_id.parse().map_err(|_| bad("bad device_id"))?;
        let issuer: IssuerId = p.issuer_id.parse().map_err(|_| bad("bad issuer_id"))?;
        let family: KeyFamily = p.family.parse().map_err(|_| bad("bad family"))?;
        let scheme = [WrapScheme::EcdhP256AesKw, WrapScheme::RsaOaepSha1]
            .into_iter()
            .find(|w| w.as_str() == p.scheme)
            .ok_or_else(|| bad(format!("unknown scheme {:?}", p.scheme)))?;
        let ephemeral_point = p
            .ephemeral_point
            .as_deref()
            .map(|s| B64.decode(s))
            .transpose()
            .map_err(|_| bad("ephemeral_point is not base64"))?;
        match (scheme, &ephemeral_point) {
            (WrapScheme::EcdhP256AesKw, Some(pt)) if pt.len() == 65 && pt[0] == 0x04 => {}
            (WrapScheme::EcdhP256AesKw, Some(_)) => {
                return Err(bad(
                    "ephemeral_point must be an uncompressed P-256 point (65 bytes, 04||X||Y)",
                ));
            }
            (WrapScheme::EcdhP256AesKw, None) => {
                return Err(bad("scheme ECDH-P256+AES-KW needs an ephemeral_point"));
            }
            (WrapScheme::RsaOaepSha1, Some(_)) => {
                return Err(bad("scheme RSA-OAEP-SHA1 has \"ephemeral_point\": null"));
            }
            (WrapScheme::RsaOaepSha1, None) => {}
        }
        let mut keys: Vec<DomainWrapped> = Vec::with_capacity(p.keys.len());
        for (i, k) in p.keys.iter().enumerate() {
            let name = INIT_KEY_NAMES
                .into_iter()
                .find(|n| *n == k.name)
                .ok_or_else(|| bad(format!("keys[{i}]: unknown key name {:?}", k.name)))?;
            if keys.iter().any(|k| k.name == name) {
                return Err(bad(format!("keys[{i}]: key {name} appears twice")));
            }
            let wrapped = B64
                .decode(&k.wrapped)
                .map_err(|_| bad(format!("keys[{i}]: \"wrapped\" is not base64")))?;
            if wrapped.is_empty() {
                return Err(bad(format!("keys[{i}]: \"wrapped\" is empty")));
            }
            let kcv = (&k.kcv)
                .try_into()
                .map_err(|_| bad(format!("keys[{i}]: bad kcv")))?;
            keys.push(DomainWrapped { name, wrapped, kcv });
        }
        if let Some(missing) = INIT_KEY_NAMES
            .into_iter()
            .find(|n| keys.iter().all(|k| k.name != *n))
        {
            return Err(bad(format!("key {missing} is missing")));
        }
        Ok(Self {
            issuer,
            device,
            family,
            scheme,
            ephemeral_point,
            keys,
        })
    }
}

/// `POST /admin/v1/devices/{id}/init/confirm`: the KCVs the device computed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfirmRequest {
    pub issuer_id: String,
    pub kcvs: Vec<NamedKcv>,
}

/// A KCV the device computed for one key of the package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedKcv {
    pub name: String,
    pub method: String,
    pub value: String,
}

/// A device and issuer, and the state an operation left them in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceIssuerState {
    pub device_id: String,
    pub issuer_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// `POST /admin/v1/devices/{id}/reinit`: allows one more init package.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReinitRequest {
    pub issuer_id: String,
    pub reason: String,
}

// ---- lifecycle and binding ------------------------------------------------------

/// `POST /admin/v1/devices/{id}/state`: suspend, resume, retire.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateRequest {
    /// `suspended`, `issued` (resume) or `retired`.
    pub to: String,
    pub reason: String,
}

/// The answer of `POST /admin/v1/devices/{id}/state`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateAnswer {
    pub device_id: String,
    pub from: String,
    pub state: String,
}

/// `POST /admin/v1/devices/{id}/bindings`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindRequest {
    pub customer_id: String,
    pub issuer_id: String,
    /// `psam`, `esam` or `both`.
    pub secure_element: String,
    pub accounts: Vec<String>,
}
