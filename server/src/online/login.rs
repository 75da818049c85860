//! Device login (docs/protocol.md §10, PROTOCOL.md "Login"): two steps over
//! the device's mTLS connection, each of which any replica can take.
//!
//! 1. [`start`]: the device says who it is for one issuer. Checked against
//!    the registry: the certificate's device id, state `issued`, a binding to
//!    that issuer with the same PSAM/ESAM serials, the credential not locked,
//!    a reported key version the server knows. The answer carries an
//!    HSM-random challenge (kept by id in provisioning's challenge mechanism,
//!    scoped to the issuer, single use, expiring) and, when a rotation is due
//!    ([`rotation_trigger`]), new working keys.
//! 2. [`finish`]: the device answers `E_AUTH_d(challenge)`, compared in the
//!    HSM in constant time, and reports the KCVs of offered keys. A right
//!    answer resets the failure count and opens a session; a wrong one counts
//!    a failure, and the issuer's limit locks the credential and (by policy)
//!    revokes the device certificate. A KCV mismatch is an intrusion signal:
//!    the version is rejected, never activated.
//!
//! Every refusal, lock, intrusion and activation is audited; successful
//! logins are counted, not audited one by one (a fleet logs in every day).

use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD};
use keyward_ca::{RevocationReason, Serial};
use keyward_config::OnlineConfig;
use keyward_device_provisioning::{
    ChallengeId, ChallengePurpose, DeviceState, OperatorId, ProvisioningError, Reason,
};
use keyward_kms::catalog::{KeyState, VersionRecord};
use keyward_kms::types::{DeviceId, IssuerId, Kcv, KeyVersion, WorkingKeyRole};
use keyward_kms::{ErrorKind, KmsError};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::audit::{Actor, AuditEvent, Outcome};
use crate::online::store::StoredSession;
use crate::online::{Device, OnlineError};
use crate::security::{self, SecurityKind};
use crate::state::AppState;
use crate::wire::login as wire;

type Result<T> = std::result::Result<T, OnlineError>;

/// Bytes of a session token (base64url, 43 characters on the wire).
pub const SESSION_TOKEN_BYTES: usize = 32;

/// One issuer's login policy: the `[online]` defaults with the issuer's
/// overrides applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IssuerPolicy {
    pub max_failures: u32,
    pub revoke_on_lockout: bool,
    pub suspend_on_kcv_mismatch: bool,
    pub rotation_max_age_ms: i64,
}

impl IssuerPolicy {
    pub fn of(config: &OnlineConfig, issuer: &IssuerId) -> Self {
        let o = config.issuers.get(issuer.as_str());
        let get = |f: fn(&keyward_config::IssuerPolicyConfig) -> Option<u64>, d: u64| {
            o.and_then(f).unwrap_or(d)
        };
        Self {
            max_failures: o
                .and_then(|p| p.max_login_failures)
                .unwrap_or(config.max_login_failures)
                .max(1),
            revoke_on_lockout: o
                .and_then(|p| p.revoke_on_lockout)
                .unwrap_or(config.revoke_on_lockout),
            suspend_on_kcv_mismatch: o
                .and_then(|p| p.suspend_on_kcv_mismatch)
                .unwrap_or(config.suspend_on_kcv_mismatch),
            rotation_max_age_ms: i64::try_from(
                get(|p| p.rotation_max_age_secs, config.rotation_max_age_secs).saturating_mul(1000),
            )
            .unwrap_or(i64::MAX),
        }
    }
}

/// Why a login offers new working keys (the `trigger` label of
/// `keyward_key_rotations_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationTrigger {
    /// The device has no active version yet.
    Initial,
    /// An operator asked for this device.
    Requested,
    /// An operator asked for the issuer's whole fleet.
    Fleet,
    /// The active version is older than the issuer's policy.
    Age,
}

impl RotationTrigger {
    pub const ALL: [RotationTrigger; 4] = [Self::Initial, Self::Requested, Self::Fleet, Self::Age];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Initial => "initial",
            Self::Requested => "requested",
            Self::Fleet => "fleet",
            Self::Age => "age",
        }
    }
}

/// Whether a login must offer new working keys, and why: no active version,
/// an operator's request (for the device, or for the fleet) made after the
/// active version was activated, or the active version past its age.
pub fn rotation_trigger(
    active_since: Option<i64>,
    device_request: Option<i64>,
    fleet_request: Option<i64>,
    now: i64,
    max_age_ms: i64,
) -> Option<RotationTrigger> {
    let Some(since) = active_since else {
        return Some(RotationTrigger::Initial);
    };
    if device_request.is_some_and(|at| at >= since) {
        Some(RotationTrigger::Requested)
    } else if fleet_request.is_some_and(|at| at >= since) {
        Some(RotationTrigger::Fleet)
    } else if now.saturating_sub(since) > max_age_ms {
        Some(RotationTrigger::Age)
    } else {
        None
    }
}

/// The stored form of a session token: the hex SHA-256, never the token.
/// Lookup by hash needs no secret comparison, and a database reader cannot
/// replay a session.
pub fn session_token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn now_ms() -> i64 {
    keyward_kms::db::now_ms()
}

fn parse_issuer(s: &str) -> Result<IssuerId> {
    s.parse()
        .map_err(|_| OnlineError::invalid("invalid_issuer_id", "issuer_id is not an issuer id"))
}

/// The device's state must let it log in; the codes say which state it is in.
fn require_issued(device: &Device) -> Result<()> {
    match device.state {
        DeviceState::Issued => Ok(()),
        DeviceState::Suspended => Err(OnlineError::forbidden(
            "device_suspended",
            "the device is suspended",
        )),
        _ => Err(OnlineError::forbidden(
            "device_not_issued",
            "the device is not issued to a customer yet",
        )),
    }
}

fn locked() -> OnlineError {
    OnlineError::forbidden(
        "credential_locked",
        "this device's credential for the issuer is locked; an operator must unlock it",
    )
}

/// Audits a refused step (actor: the device's certificate) and counts it;
/// passes the error on. A refusal the trail cannot record is still refused.
async fn refused<T>(
    state: &AppState,
    device: &Device,
    action: &'static str,
    issuer: &str,
    e: OnlineError,
) -> Result<T> {
    let code = e.code();
    state.metrics.logins.with_label_values(&[code]).inc();
    if e.kind().is_client() {
        device
            .audit_refusal(state, action, json!({ "issuer": issuer }), code)
            .await;
    }
    Err(e)
}

/// Step 1: `POST /v1/login/start`.
pub async fn start(
    state: &AppState,
    device: &Device,
    req: &wire::LoginStart,
) -> Result<wire::LoginChallenge> {
    match try_start(state, device, req).await {
        Ok(answer) => Ok(answer),
        Err(e) => refused(state, device, "login.start", &req.issuer_id, e).await,
    }
}

async fn try_start(
    state: &AppState,
    device: &Device,
    req: &wire::LoginStart,
) -> Result<wire::LoginChallenge> {
    let issuer = parse_issuer(&req.issuer_id)?;
    let claimed: DeviceId = req
        .device_id
        .parse()
        .map_err(|_| OnlineError::invalid("invalid_device_id", "device_id is 16 hex digits"))?;
    if claimed != device.device_id {
        return Err(OnlineError::forbidden(
            "device_id_mismatch",
            "device_id is not the device of the client certificate",
        ));
    }
    require_issued(device)?;
    check_binding(state, device.device_id, &issuer, req).await?;
    let online = &state.online;
    let cred = online.store.credential(&issuer, device.device_id).await?;
    if cred.locked_at_ms.is_some() {
        return Err(locked());
    }
    let versions = state.kms.key_versions(&issuer, device.device_id).await?;
    if let Some(v) = req.key_version
        && !versions.iter().any(|r| r.version.0 == v)
    {
        return Err(OnlineError::refused(
            ErrorKind::Conflict,
            "unknown_key_version",
            "the server never offered the key version the device reports",
        ));
    }
    let active = versions.iter().find(|v| v.state == KeyState::Active);
    let policy = IssuerPolicy::of(&online.config, &issuer);
    let fleet = online.store.fleet_rotation(&issuer).await?;
    let now = now_ms();
    let trigger = rotation_trigger(
        active.and_then(|v| v.activated_at_ms),
        cred.rotate_requested_at_ms,
        fleet,
        now,
        policy.rotation_max_age_ms,
    );
    let key_update = match trigger {
        None => None,
        Some(trigger) => Some(offer(state, &issuer, device.device_id, trigger).await?),
    };
    let bytes = state.kms.challenge(&issuer).await?;
    let issued = state
        .provisioning
        .challenges()
        .issue(
            device.device_id,
            ChallengePurpose::Login(issuer.clone()),
            &bytes,
            online.challenge_ttl(),
        )
        .await?;
    state
        .metrics
        .login_challenges
        .with_label_values(&["issued"])
        .inc();
    Ok(wire::LoginChallenge {
        challenge_id: issued.id.to_string(),
        challenge: B64.encode(&bytes),
        expires_at_ms: issued.expires_at_ms,
        key_version: active.map(|v| v.version.0),
        key_update,
    })
}

/// The device must be bound to the issuer, with the binding's serials.
async fn check_binding(
    state: &AppState,
    device: DeviceId,
    issuer: &IssuerId,
    req: &wire::LoginStart,
) -> Result<()> {
    let bindings = state.provisioning.bindings(device).await?;
    let Some(binding) = bindings.iter().find(|b| &b.issuer == issuer) else {
        return Err(match state.kms.issuer(issuer).await {
            Ok(_) => OnlineError::forbidden(
                "issuer_not_bound",
                "the device is not bound to a customer for this issuer",
            ),
            Err(KmsError::UnknownIssuer(_)) => {
                OnlineError::refused(ErrorKind::NotFound, "unknown_issuer", "no such issuer")
            }
            Err(e) => e.into(),
        });
    };
    // Every serial the binding holds must be sent, and be the same; a serial
    // the binding does not hold (an ESAM beside a PSAM-only binding) is not
    // the issuer's to judge.
    let same = |bound: &Option<keyward_device_provisioning::SeSerial>, sent: &Option<String>| {
        bound
            .as_ref()
            .is_none_or(|b| sent.as_deref() == Some(b.as_str()))
    };
    if !same(&binding.psam_serial, &req.psam_serial)
        || !same(&binding.esam_serial, &req.esam_serial)
    {
        return Err(OnlineError::forbidden(
            "secure_element_mismatch",
            "the PSAM/ESAM serials are not those bound for this issuer",
        ));
    }
    Ok(())
}

/// New working keys for a login: the pending offer again if the device has
/// one it did not confirm, otherwise a new version (counted by trigger).
async fn offer(
    state: &AppState,
    issuer: &IssuerId,
    device: DeviceId,
    trigger: RotationTrigger,
) -> Result<wire::KeyUpdate> {
    let offer = match state.kms.pending_offer(issuer, device).await? {
        Some(pending) => pending,
        None => {
            let made = state.kms.offer_working_keys(issuer, device).await?;
            state
                .metrics
                .key_rotations
                .with_label_values(&[issuer.as_str(), trigger.as_str()])
                .inc();
            made
        }
    };
    Ok(wire::KeyUpdate {
        version: offer.version.0,
        keys: offer
            .keys
            .iter()
            .map(|k| wire::OfferedKey {
                role: k.role.as_str().to_owned(),
                r: B64.encode(k.r),
                kcv: (&k.kcv).into(),
            })
            .collect(),
    })
}

/// Step 2: `POST /v1/login/finish`.
pub async fn finish(
    state: &AppState,
    device: &Device,
    req: &wire::LoginFinish,
) -> Result<wire::LoginAnswer> {
    match try_finish(state, device, req).await {
        Ok(answer) => {
            state.metrics.logins.with_label_values(&["success"]).inc();
            Ok(answer)
        }
        Err(e) => refused(state, device, "login.finish", &req.issuer_id, e).await,
    }
}

/// A key confirmation, parsed and checked against the catalog before the
/// challenge is used up: the version must be one the server offered and
/// still pending.
struct Confirmation {
    version: KeyVersion,
    kcvs: Vec<(WorkingKeyRole, Kcv)>,
}

fn parse_confirmation(
    c: &wire::KeyConfirmation,
    versions: &[VersionRecord],
) -> Result<Confirmation> {
    let bad = || OnlineError::invalid("invalid_key_confirmation", "kcvs name a role and a KCV");
    let kcvs = c
        .kcvs
        .iter()
        .map(|k| {
            let role: WorkingKeyRole = k.role.parse().map_err(|_| bad())?;
            let kcv = Kcv::try_from(&k.kcv).map_err(|_| bad())?;
            Ok((role, kcv))
        })
        .collect::<Result<Vec<_>>>()?;
    match versions.iter().find(|v| v.version.0 == c.version) {
        None => Err(OnlineError::refused(
            ErrorKind::Conflict,
            "unknown_key_version",
            "the server never offered this key version",
        )),
        Some(v) if v.state != KeyState::Pending => Err(OnlineError::refused(
            ErrorKind::Conflict,
            "key_version_not_pending",
            "this key version is not waiting for a confirmation",
        )),
        Some(v) => Ok(Confirmation {
            version: v.version,
            kcvs,
        }),
    }
}

async fn try_finish(
    state: &AppState,
    device: &Device,
    req: &wire::LoginFinish,
) -> Result<wire::LoginAnswer> {
    let issuer = parse_issuer(&req.issuer_id)?;
    let id: ChallengeId = req.challenge_id.parse().map_err(|_| {
        OnlineError::invalid("invalid_challenge_id", "challenge_id is 32 hex digits")
    })?;
    let response = B64
        .decode(&req.response)
        .ok()
        .filter(|r| !r.is_empty() && r.len() <= 64)
        .ok_or_else(|| {
            OnlineError::invalid("invalid_response", "response is base64 of one block")
        })?;
    require_issued(device)?;
    let online = &state.online;
    let cred = online.store.credential(&issuer, device.device_id).await?;
    if cred.locked_at_ms.is_some() {
        return Err(locked());
    }
    // With a confirmation the versions are read here, once: the answer's
    // active version follows from them and the confirmation's outcome.
    let (confirmation, active_before) = match &req.key_confirmation {
        None => (None, None),
        Some(c) => {
            let versions = state.kms.key_versions(&issuer, device.device_id).await?;
            (
                Some(parse_confirmation(c, &versions)?),
                Some(active_version(&versions)),
            )
        }
    };

    // Single use from here: the challenge is gone whatever the answer.
    let challenge = match state
        .provisioning
        .challenges()
        .answer(
            &id,
            device.device_id,
            ChallengePurpose::Login(issuer.clone()),
        )
        .await
    {
        Ok(bytes) => bytes,
        Err(ProvisioningError::ChallengeInvalid) => {
            return Err(OnlineError::forbidden(
                "challenge_invalid",
                "no such challenge for this device and issuer: unknown, used, expired or replaced",
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let right = state
        .kms
        .verify_challenge_response(&issuer, device.device_id, &challenge, &response)
        .await?;
    if !right {
        return Err(wrong_answer(state, device, &issuer).await);
    }

    let mut key_update = None;
    let mut cleared_rotation_before = None;
    let mut key_version = active_before;
    if let Some(c) = confirmation {
        match state
            .kms
            .confirm_working_keys(&issuer, device.device_id, c.version, &c.kcvs)
            .await
        {
            Ok(()) => {
                key_update = Some("activated".to_owned());
                key_version = Some(Some(c.version));
                cleared_rotation_before = Some(now_ms());
                audit_key(
                    state,
                    device,
                    &issuer,
                    c.version,
                    "key.activate",
                    Outcome::Success,
                )
                .await?;
            }
            Err(KmsError::KcvMismatch(v)) => {
                key_update = Some("rejected".to_owned());
                intrusion(state, device, &issuer, v).await?;
            }
            Err(e) => return Err(e.into()),
        }
    }

    let token = URL_SAFE_NO_PAD.encode(state.kms.random::<SESSION_TOKEN_BYTES>().await?);
    let now = now_ms();
    let session = StoredSession {
        device: device.device_id,
        issuer: issuer.clone(),
        cert_serial: device.serial.clone(),
        created_at_ms: now,
        expires_at_ms: now.saturating_add(online.session_ttl_ms()),
    };
    if !online
        .store
        .login_succeeded(
            &session_token_hash(&token),
            &session,
            cleared_rotation_before,
        )
        .await?
    {
        return Err(locked());
    }
    let key_version = match key_version {
        Some(v) => v,
        None => active_version(&state.kms.key_versions(&issuer, device.device_id).await?),
    };
    Ok(wire::LoginAnswer {
        session_token: token,
        expires_at_ms: session.expires_at_ms,
        device_id: device.device_id.to_string(),
        issuer_id: issuer.to_string(),
        key_version: key_version.map(|v| v.0),
        key_update,
    })
}

/// The active version among a device's versions, if any.
fn active_version(versions: &[VersionRecord]) -> Option<KeyVersion> {
    versions
        .iter()
        .find(|v| v.state == KeyState::Active)
        .map(|v| v.version)
}

/// A wrong response: one failure counted; the one that reaches the limit
/// locks the credential, ends its sessions, drops its outstanding
/// challenges and, by the issuer's policy, revokes the device certificate
/// (the CRL and OCSP say so at once, and the TLS listeners reload the CRL).
async fn wrong_answer(state: &AppState, device: &Device, issuer: &IssuerId) -> OnlineError {
    let policy = IssuerPolicy::of(&state.online.config, issuer);
    let failure = match state
        .online
        .store
        .record_failure(issuer, device.device_id, policy.max_failures, now_ms())
        .await
    {
        Ok(f) => f,
        Err(e) => return e,
    };
    if !failure.newly_locked {
        return OnlineError::forbidden(
            "response_invalid",
            "the response to the challenge is wrong",
        );
    }
    if let Err(e) = lock_out(state, device, issuer, policy, failure.count).await {
        tracing::error!(device = %device.device_id, issuer = %issuer, code = e.code(), error = %e,
            "credential locked, but the lockout's follow-up failed");
    }
    locked()
}

async fn lock_out(
    state: &AppState,
    device: &Device,
    issuer: &IssuerId,
    policy: IssuerPolicy,
    failures: u32,
) -> Result<()> {
    state
        .metrics
        .login_lockouts
        .with_label_values(&[issuer.as_str()])
        .inc();
    let _ = state
        .provisioning
        .challenges()
        .drop_all(device.device_id, ChallengePurpose::Login(issuer.clone()))
        .await;
    let mut revoked = None;
    if policy.revoke_on_lockout {
        let serial: Serial = device
            .serial
            .parse()
            .map_err(|_| OnlineError::invalid("invalid_serial", "certificate serial"))?;
        match state
            .ca
            .revoke(&serial, RevocationReason::PrivilegeWithdrawn)
            .await
        {
            Ok(()) | Err(keyward_ca::CaError::AlreadyRevoked(_)) => {}
            Err(e) => return Err(e.into()),
        }
        state.metrics.certificates_revoked.inc();
        state
            .online
            .store
            .set_revoked_serial(issuer, device.device_id, &device.serial)
            .await?;
        crate::edge::pki::refresh_crl_logged(state, "device certificate revoked by a lockout")
            .await;
        revoked = Some(device.serial.clone());
    }
    let event = AuditEvent::Online {
        action: "login.lockout",
        target: format!("device:{}", device.device_id),
        detail: json!({ "issuer": issuer.as_str(), "failures": failures,
                        "revoked_serial": revoked }),
    };
    state
        .audit
        .append(
            &Actor::System,
            &event,
            Outcome::Refused {
                code: "credential_locked",
            },
            &device.request_id,
        )
        .await?;
    Ok(())
}

async fn audit_key(
    state: &AppState,
    device: &Device,
    issuer: &IssuerId,
    version: KeyVersion,
    action: &'static str,
    outcome: Outcome,
) -> Result<()> {
    let event = AuditEvent::Online {
        action,
        target: format!("device:{}", device.device_id),
        detail: json!({ "issuer": issuer.as_str(), "version": version.0 }),
    };
    state
        .audit
        .append(&device.actor, &event, outcome, &device.request_id)
        .await?;
    Ok(())
}

/// A KCV mismatch on a key update: the version is already rejected (kms);
/// raise the intrusion signal and, by policy, suspend the device at once.
async fn intrusion(
    state: &AppState,
    device: &Device,
    issuer: &IssuerId,
    version: KeyVersion,
) -> Result<()> {
    security::raise(
        state,
        &device.actor,
        &device.request_id,
        SecurityKind::KcvMismatch,
        format!("device:{}", device.device_id),
        json!({ "issuer": issuer.as_str(), "version": version.0, "step": "login.key_update" }),
    )
    .await?;
    if !IssuerPolicy::of(&state.online.config, issuer).suspend_on_kcv_mismatch {
        return Ok(());
    }
    let (operator, reason) = system_decision("working-key KCV mismatch at login")?;
    let decided = state
        .provisioning
        .transition(device.device_id, DeviceState::Suspended, &operator, &reason)
        .await;
    let note = match &decided {
        Ok(done) => done.note.clone(),
        Err(refused) => refused.note.clone(),
    };
    state
        .audit
        .append(
            &Actor::System,
            &AuditEvent::Provisioning(note.clone()),
            note.outcome,
            &device.request_id,
        )
        .await?;
    decided.map_err(|r| OnlineError::from(r.error))?;
    Err(OnlineError::forbidden(
        "kcv_mismatch",
        "the device reported wrong KCVs for the offered keys; it is suspended",
    ))
}

/// The operator name and reason the online service signs its own
/// provisioning decisions with.
fn system_decision(reason: &str) -> Result<(OperatorId, Reason)> {
    let operator: OperatorId = "keyward-online".parse()?;
    let reason: Reason = reason.parse()?;
    Ok((operator, reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_hash_is_sha256_hex() {
        assert_eq!(
            session_token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn rotation_triggers() {
        use RotationTrigger as T;
        assert_eq!(
            rotation_trigger(None, None, None, 100, 50),
            Some(T::Initial)
        );
        assert_eq!(
            rotation_trigger(Some(90), Some(95), None, 100, 50),
            Some(T::Requested)
        );
        assert_eq!(rotation_trigger(Some(90), Some(80), None, 100, 50), None);
        assert_eq!(
            rotation_trigger(Some(90), None, Some(90), 100, 50),
            Some(T::Fleet)
        );
        assert_eq!(rotation_trigger(Some(90), None, Some(10), 100, 50), None);
        assert_eq!(
            rotation_trigger(Some(10), None, None, 100, 50),
            Some(T::Age)
        );
        assert_eq!(rotation_trigger(Some(90), None, None, 100, 50), None);
    }

    #[test]
    fn issuer_overrides_apply_to_their_issuer_only() {
        let mut config = OnlineConfig::default();
        config.issuers.insert(
            "bank-b".into(),
            keyward_config::IssuerPolicyConfig {
                revoke_on_lockout: Some(false),
                max_login_failures: Some(3),
                ..Default::default()
            },
        );
        let a = IssuerPolicy::of(&config, &"bank-a".parse().unwrap());
        let b = IssuerPolicy::of(&config, &"bank-b".parse().unwrap());
        assert!(a.revoke_on_lockout && a.max_failures == 10);
        assert!(!b.revoke_on_lockout && b.max_failures == 3);
        assert_eq!(a.rotation_max_age_ms, b.rotation_max_age_ms);
    }
}
