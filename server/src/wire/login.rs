//! Device login, sessions and working-key rotation (docs/protocol.md §10):
//! the device routes `POST /v1/login/start`, `POST /v1/login/finish`,
//! `GET|DELETE /v1/session`, and the operators' `/admin/v1/.../keys`,
//! `/admin/v1/.../credentials` routes. Binary values are base64 (challenge,
//! response, `R`), check values hex with their method, ids hex.

use serde::{Deserialize, Serialize};

use super::Kcv;

/// `POST /v1/login/start`: who the device says it is, for one issuer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginStart {
    /// Must be the device id of the client certificate.
    pub device_id: String,
    pub issuer_id: String,
    /// The secure-element serials the device holds; each must equal the
    /// binding's for this issuer (absent only where the binding has none).
    #[serde(default)]
    pub psam_serial: Option<String>,
    #[serde(default)]
    pub esam_serial: Option<String>,
    /// The working-key version the device uses now (`None`: it has none).
    #[serde(default)]
    pub key_version: Option<u32>,
}

/// The answer to [`LoginStart`]: the random-auth challenge, and new working
/// keys when a rotation is due.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginChallenge {
    pub challenge_id: String,
    /// base64 of 8 (`tdes`) or 16 (`aes`) HSM-random bytes.
    pub challenge: String,
    pub expires_at_ms: i64,
    /// The version the server holds active for this device (`None`: none).
    pub key_version: Option<u32>,
    /// Present when the device must take new working keys.
    pub key_update: Option<KeyUpdate>,
}

/// New working keys: `WK = DIV'(TMK_d, R)` for each role; only `R` and the
/// KCVs travel, the device derives the keys itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyUpdate {
    pub version: u32,
    pub keys: Vec<OfferedKey>,
}

/// One offered key: its role (`TPK`, `TAK`, `TDK`), `R` and KCV.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferedKey {
    pub role: String,
    /// base64 of the 16-byte `R`.
    pub r: String,
    pub kcv: Kcv,
}

/// `POST /v1/login/finish`: the answer to the challenge, and the KCVs of
/// the offered keys when there was a key update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginFinish {
    pub issuer_id: String,
    pub challenge_id: String,
    /// base64 of `E_AUTH_d(challenge)`.
    pub response: String,
    #[serde(default)]
    pub key_confirmation: Option<KeyConfirmation>,
}

/// The KCVs the device computed for an offered version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfirmation {
    pub version: u32,
    pub kcvs: Vec<RoleKcv>,
}

/// A KCV for one working-key role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleKcv {
    pub role: String,
    pub kcv: Kcv,
}

/// The answer to a successful [`LoginFinish`]. Its `Debug` leaves the
/// token out: a bearer secret never reaches a log line.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginAnswer {
    /// The bearer token for later online calls (`Authorization: Bearer …`),
    /// valid only over this device's current certificate.
    pub session_token: String,
    pub expires_at_ms: i64,
    pub device_id: String,
    pub issuer_id: String,
    /// The active working-key version after this login.
    pub key_version: Option<u32>,
    /// `activated` or `rejected` when the login carried a key confirmation.
    pub key_update: Option<String>,
}

impl std::fmt::Debug for LoginAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginAnswer")
            .field("session_token", &"<redacted>")
            .field("expires_at_ms", &self.expires_at_ms)
            .field("device_id", &self.device_id)
            .field("issuer_id", &self.issuer_id)
            .field("key_version", &self.key_version)
            .field("key_update", &self.key_update)
            .finish()
    }
}

/// `GET /v1/session`: the session the bearer token stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub device_id: String,
    pub issuer_id: String,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
}

/// `POST /admin/v1/devices/{id}/credentials/{issuer}/unlock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnlockRequest {
    pub reason: String,
}

/// A (device, issuer) credential as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    pub device_id: String,
    pub issuer_id: String,
    pub failures: u32,
    pub locked: bool,
    pub locked_at_ms: Option<i64>,
    /// The certificate the lockout revoked, if the policy revoked it.
    pub revoked_serial: Option<String>,
    pub rotate_requested_at_ms: Option<i64>,
    pub last_login_at_ms: Option<i64>,
}

/// The answer to an unlock: the credential now, and whether the device must
/// be re-certified (its certificate was revoked by the lockout).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnlockAnswer {
    pub credential: Credential,
    pub recertification_required: bool,
}

/// `POST /admin/v1/issuers/{issuer}/rotations`: new working keys at the next
/// login, for one device or (no `device_id`) every device of the issuer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    #[serde(default)]
    pub device_id: Option<String>,
}

/// The answer to a [`RotateRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotateAnswer {
    pub issuer_id: String,
    /// `None` for the whole fleet.
    pub device_id: Option<String>,
    pub requested_at_ms: i64,
}

/// `GET /admin/v1/devices/{id}/keys?issuer_id=I`: every working-key
/// version, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyVersions {
    pub device_id: String,
    pub issuer_id: String,
    pub versions: Vec<KeyVersion>,
}

/// One working-key version (never key bytes: the catalog holds `R`s only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyVersion {
    pub version: u32,
    /// `pending`, `active`, `retiring`, `rejected` or `retired`.
    pub state: String,
    pub created_at_ms: i64,
    pub activated_at_ms: Option<i64>,
    pub retire_at_ms: Option<i64>,
}

/// `GET /admin/v1/issuers/{issuer}/rotations/pending`: bound devices that
/// still owe a key confirmation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRotations {
    pub issuer_id: String,
    pub devices: Vec<PendingDevice>,
}

/// A device that has not confirmed new keys, and why it owes them:
/// `no_keys`, `offered` (a version waits for its KCVs), `requested` (an
/// operator asked for this device) or `fleet` (a fleet-wide rotation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingDevice {
    pub device_id: String,
    pub reason: String,
    pub active_version: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_answer_never_prints_its_token() {
        let a = LoginAnswer {
            session_token: "s3cr3t-token".into(),
            expires_at_ms: 1,
            device_id: "F000000000000001".into(),
            issuer_id: "bank-a".into(),
            key_version: Some(1),
            key_update: None,
        };
        let shown = format!("{a:?}");
        assert!(
            !shown.contains("s3cr3t-token") && shown.contains("<redacted>"),
            "{shown}"
        );
    }
}
