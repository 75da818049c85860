//! Device login (docs/protocol.md §7 and §10): two steps over the device's
//! mTLS connection, each of which any replica can take.
//!
//! 1. [`Online::login_start`]: the device says who it is for one issuer. Checked against
//!    the registry: the certificate's device id, state `issued`, a binding to
//!    that issuer with the same PSAM/ESAM serials, the credential not locked,
//!    a reported key version the server knows. The answer carries an
//!    HSM-random challenge, sealed in its id for this device, issuer and
//!    certificate ([`super::challenge`]: nothing is written, any replica can
//!    check it) and, when a rotation is due ([`rotation_trigger`]), new
//!    working keys.
//! 2. [`Online::login_finish`]: the device answers `E_AUTH_d(challenge)`, compared in the
//!    HSM in constant time, and reports the KCVs of offered keys. The seal
//!    and the answer are checked first (HSM work before the write); then one
//!    unit of work uses the challenge up and applies the answer: a right one
//!    resets the failure count and opens a session, a wrong one counts a
//!    failure, and the issuer's limit locks the credential, ends its
//!    sessions and names the certificate to revoke, with the lockout's audit
//!    record, all in that one transaction. A KCV mismatch is an intrusion
//!    signal: the version is rejected, never activated.
//!
//! Every refusal, lock, intrusion and activation is audited; successful
//! logins are counted, not audited one by one (a fleet logs in every day).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keyward_ca::{RevocationReason, Serial};
use keyward_config::OnlineConfig;
use keyward_device_provisioning::{DeviceState, OperatorId, Reason};
use keyward_kms::catalog::{KeyState, VersionRecord};
use keyward_kms::db::now_ms;
use keyward_kms::types::{DeviceId, IssuerId, Kcv, KeyVersion, WorkingKeyRole};
use keyward_kms::{AnswerCheck, KmsError, WorkingKeyOffer};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::audit::{Actor, AuditEvent, Outcome};
use crate::online::challenge::{SEAL_BYTES, Scope, SealedId};
use crate::online::store::{
    Finish, Finished as StoreFinished, LoginContext, OnlineStore, Opening, StoredSession,
};
use crate::online::{Device, Online, OnlineError, OnlineEvent, Refusal};
use crate::security::{self, SecurityKind};

type Result<T> = std::result::Result<T, OnlineError>;

/// Bytes of a session token (base64url, 43 characters on the wire).
pub const SESSION_TOKEN_BYTES: usize = 32;

/// A login start, as the route read it: the device's claims for one issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartRequest {
    pub issuer: IssuerId,
    /// Must be the device of the client certificate.
    pub claimed: DeviceId,
    pub psam_serial: Option<String>,
    pub esam_serial: Option<String>,
    /// The working-key version the device uses now.
    pub key_version: Option<u32>,
}

/// The answer to a start: a sealed challenge, and new working keys when a
/// rotation is due.
#[derive(Debug, Clone)]
pub struct Challenge {
    /// The challenge id (opaque to the device, [`super::challenge`]).
    pub id: String,
    pub challenge: Vec<u8>,
    pub expires_at_ms: i64,
    /// The version the server holds active.
    pub key_version: Option<KeyVersion>,
    pub key_update: Option<WorkingKeyOffer>,
}

/// A login finish, as the route read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishRequest {
    pub issuer: IssuerId,
    /// The challenge as its id carries it (its seal not checked yet).
    pub challenge: SealedId,
    /// `E_AUTH_d(challenge)`.
    pub response: Vec<u8>,
    /// The KCVs the device computed for an offered version.
    pub confirmation: Option<ReportedKcvs>,
}

/// A device's KCVs for an offered version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedKcvs {
    pub version: u32,
    pub kcvs: Vec<(WorkingKeyRole, Kcv)>,
}

/// What a finish's key confirmation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUpdateOutcome {
    Activated,
    /// A KCV mismatch: the device keeps its current keys.
    Rejected,
}

impl KeyUpdateOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Activated => "activated",
            Self::Rejected => "rejected",
        }
    }
}

/// An opened session. Its `Debug` leaves the token out.
#[derive(Clone, PartialEq, Eq)]
pub struct Opened {
    /// The bearer token (base64url of 32 HSM-random bytes).
    pub token: String,
    pub expires_at_ms: i64,
    pub device: DeviceId,
    pub issuer: IssuerId,
    /// The active working-key version after this login.
    pub key_version: Option<KeyVersion>,
    pub key_update: Option<KeyUpdateOutcome>,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("token", &"<redacted>")
            .field("expires_at_ms", &self.expires_at_ms)
            .field("device", &self.device)
            .field("issuer", &self.issuer)
            .field("key_version", &self.key_version)
            .field("key_update", &self.key_update)
            .finish()
    }
}

/// Which step of a login was refused (its audit action).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginStep {
    Start,
    Finish,
}

impl LoginStep {
    fn action(self) -> &'static str {
        match self {
            Self::Start => "login.start",
            Self::Finish => "login.finish",
        }
    }
}

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

/// The device's state must let it log in; the codes say which state it is in.
fn require_issued(device: &Device) -> Result<()> {
    match device.state {
        DeviceState::Issued => Ok(()),
        DeviceState::Suspended => Err(OnlineError::from(Refusal::DeviceSuspended)),
        _ => Err(OnlineError::from(Refusal::DeviceNotIssued)),
    }
}

fn locked() -> OnlineError {
    OnlineError::from(Refusal::CredentialLocked)
}

/// The part of a seal an id carries.
fn first_bytes(seal: &[u8; 32]) -> [u8; SEAL_BYTES] {
    let mut out = [0u8; SEAL_BYTES];
    out.copy_from_slice(&seal[..SEAL_BYTES]);
    out
}

/// A key confirmation, parsed and checked against the catalog before the
/// challenge is used up: the version must be one the server offered and
/// still pending.
struct Confirmation {
    version: KeyVersion,
    kcvs: Vec<(WorkingKeyRole, Kcv)>,
}

fn parse_confirmation(c: &ReportedKcvs, versions: &[VersionRecord]) -> Result<Confirmation> {
    let kcvs = c.kcvs.clone();
    match versions.iter().find(|v| v.version.0 == c.version) {
        None => Err(OnlineError::from(Refusal::UnknownKeyVersion)),
        Some(v) if v.state != KeyState::Pending => {
            Err(OnlineError::from(Refusal::KeyVersionNotPending))
        }
        Some(v) => Ok(Confirmation {
            version: v.version,
            kcvs,
        }),
    }
}

fn challenge_invalid() -> OnlineError {
    OnlineError::from(Refusal::ChallengeInvalid)
}

/// How a finish's transaction ended.
enum Finished {
    /// With the active working-key version the transaction saw.
    Opened { active: Option<KeyVersion> },
    /// Refused after the challenge was checked (used, or locked meanwhile).
    Refused(OnlineError),
    /// A KCV mismatch whose policy suspends the device: the rejection is
    /// committed, no session opened.
    Suspend,
}

/// A confirmation of a version another confirmation already settled.
fn not_pending(e: KmsError) -> OnlineError {
    match e {
        KmsError::KeyVersionNotPending { .. } => Refusal::KeyVersionNotPending.into(),
        e => e.into(),
    }
}

/// What a wrong answer did.
enum Wrong {
    /// The challenge had been used already: nothing counted.
    Replayed,
    /// The credential was locked already: nothing counted.
    Locked,
    /// One more failure, below the limit.
    Counted,
    /// The failure that reached the limit: locked, sessions ended, and the
    /// certificate named here to be revoked (by the issuer's policy).
    LockedOut { revoke: Option<String> },
}

fn key_event(device: &Device, issuer: &IssuerId, version: KeyVersion) -> AuditEvent {
    OnlineEvent::KeyActivated {
        device: device.device_id,
        issuer: issuer.clone(),
        version,
    }
    .into()
}

/// The operator name and reason the online service signs its own
/// provisioning decisions with.
fn system_decision(reason: &str) -> Result<(OperatorId, Reason)> {
    let operator: OperatorId = "keyward-online".parse()?;
    let reason: Reason = reason.parse()?;
    Ok((operator, reason))
}

impl Online {
    /// Audits a refused login step (actor: the device's certificate) and
    /// counts it; returns the error. For refusals found here and for
    /// requests the route could not read. A refusal the trail cannot record
    /// is still refused.
    pub async fn login_refused(
        &self,
        device: &Device,
        step: LoginStep,
        issuer: &str,
        e: OnlineError,
    ) -> OnlineError {
        let code = e.code();
        self.metrics.logins.with_label_values(&[code]).inc();
        if e.kind().is_client() {
            let event = OnlineEvent::LoginRefused {
                device: device.device_id,
                step: step.action(),
                issuer: issuer.to_owned(),
            };
            self.audit_refusal(device, event, code).await;
        }
        e
    }

    /// Step 1: the device's claims checked, a sealed challenge (and new keys
    /// when a rotation is due).
    /// Counts a login start of `device` in its minute (per replica); past
    /// `online.login_starts_per_minute` it is refused until the minute
    /// ends, before any HSM or database work.
    fn count_start(&self, device: DeviceId) -> Result<()> {
        let now = std::time::Instant::now();
        let budget = u64::from(self.config.login_starts_per_minute);
        if let Some(wait) = self.starts.retry_after(&device, now, budget) {
            let secs = u32::try_from(wait.as_secs().saturating_add(1)).unwrap_or(u32::MAX);
            return Err(OnlineError::TooManyLogins {
                retry_after_secs: secs,
            });
        }
        // Starts are not refusals: a closed window has nothing to record.
        let _ = self.starts.admit(device, now, false, false);
        Ok(())
    }

    pub async fn login_start(&self, device: &Device, req: &StartRequest) -> Result<Challenge> {
        match self.try_start(device, req).await {
            Ok(answer) => {
                crate::fault_point!("login.start.answered");
                Ok(answer)
            }
            Err(e) => Err(self
                .login_refused(device, LoginStep::Start, req.issuer.as_str(), e)
                .await),
        }
    }

    async fn try_start(&self, device: &Device, req: &StartRequest) -> Result<Challenge> {
        let issuer = req.issuer.clone();
        if req.claimed != device.device_id {
            return Err(OnlineError::from(Refusal::DeviceIdMismatch));
        }
        self.count_start(device.device_id)?;
        require_issued(device)?;
        let context = self.check_binding(device.device_id, &issuer, req).await?;
        let cred = &context.credential;
        if cred.locked_at_ms.is_some() {
            return Err(locked());
        }
        if req.key_version.is_some() && !context.reported_known {
            return Err(OnlineError::from(Refusal::UnknownKeyVersion));
        }
        let active = context.active;
        let policy = IssuerPolicy::of(&self.config, &issuer);
        let now = now_ms();
        let trigger = rotation_trigger(
            active.and_then(|v| v.activated_at_ms),
            cred.rotate_requested_at_ms,
            context.fleet_rotation_at_ms,
            now,
            policy.rotation_max_age_ms,
        );
        let key_update = match trigger {
            None => None,
            Some(trigger) => Some(self.offer(&issuer, device.device_id, trigger).await?),
        };
        let scope = Scope {
            device: device.device_id,
            issuer: &issuer,
            serial: &device.serial,
        };
        let ttl = i64::try_from(self.challenge_ttl().as_millis()).unwrap_or(i64::MAX);
        let expires_at_ms = now.saturating_add(ttl);
        let sealed = self
            .kms
            .sealed_challenge(&issuer, scope.context(now, expires_at_ms))
            .await?;
        let id = SealedId {
            issued_at_ms: now,
            expires_at_ms,
            seal: first_bytes(&sealed.seal),
            challenge: sealed.challenge,
        };
        self.metrics
            .login_challenges
            .with_label_values(&["issued"])
            .inc();
        Ok(Challenge {
            id: id.encode(),
            challenge: id.challenge,
            expires_at_ms,
            key_version: active.map(|v| v.version),
            key_update,
        })
    }

    /// The device must be bound to the issuer, with the binding's serials;
    /// what the start needs of the binding, credential and fleet rotation
    /// comes back from the same read.
    async fn check_binding(
        &self,
        device: DeviceId,
        issuer: &IssuerId,
        req: &StartRequest,
    ) -> Result<LoginContext> {
        let reported = req.key_version.map(KeyVersion);
        let Some(context) = self.store.login_context(issuer, device, reported).await? else {
            return Err(match self.kms.issuer(issuer).await {
                Ok(_) => OnlineError::from(Refusal::IssuerNotBound),
                Err(KmsError::UnknownIssuer(_)) => OnlineError::from(Refusal::UnknownIssuer),
                Err(e) => e.into(),
            });
        };
        // Every serial the binding holds must be sent, and be the same; a serial
        // the binding does not hold (an ESAM beside a PSAM-only binding) is not
        // the issuer's to judge.
        let same = |bound: &Option<String>, sent: &Option<String>| {
            bound.as_ref().is_none_or(|b| sent.as_deref() == Some(b))
        };
        if !same(&context.psam_serial, &req.psam_serial)
            || !same(&context.esam_serial, &req.esam_serial)
        {
            return Err(OnlineError::from(Refusal::SecureElementMismatch));
        }
        Ok(context)
    }

    /// New working keys for a login: the pending offer again if the device has
    /// one it did not confirm, otherwise a new version (counted by trigger).
    async fn offer(
        &self,
        issuer: &IssuerId,
        device: DeviceId,
        trigger: RotationTrigger,
    ) -> Result<WorkingKeyOffer> {
        let offer = match self.kms.pending_offer(issuer, device).await? {
            Some(pending) => pending,
            None => {
                let made = self.kms.offer_working_keys(issuer, device).await?;
                crate::fault_point!("rotation.offer.made");
                self.metrics
                    .key_rotations
                    .with_label_values(&[issuer.as_str(), trigger.as_str()])
                    .inc();
                made
            }
        };
        Ok(offer)
    }

    /// Step 2: the response checked; a session.
    pub async fn login_finish(&self, device: &Device, req: &FinishRequest) -> Result<Opened> {
        match self.try_finish(device, req).await {
            Ok(answer) => {
                self.metrics.logins.with_label_values(&["success"]).inc();
                Ok(answer)
            }
            Err(e) => Err(self
                .login_refused(device, LoginStep::Finish, req.issuer.as_str(), e)
                .await),
        }
    }

    /// The challenge a finish answers and the answer, checked in one HSM
    /// job: the challenge issued by this service (its seal) to this device,
    /// issuer and certificate, and unexpired; the answer right or wrong; and
    /// the token of the session a right answer opens. Single use is the
    /// finish's unit of work's to enforce.
    async fn check_answer(
        &self,
        device: &Device,
        issuer: &IssuerId,
        sealed: &SealedId,
        response: &[u8],
        now: i64,
    ) -> Result<AnswerCheck<SESSION_TOKEN_BYTES>> {
        if sealed.expires_at_ms <= now {
            self.metrics
                .login_challenges
                .with_label_values(&["expired"])
                .inc();
            return Err(challenge_invalid());
        }
        let scope = Scope {
            device: device.device_id,
            issuer,
            serial: &device.serial,
        };
        let check = self
            .kms
            .check_login_answer(
                issuer,
                device.device_id,
                sealed.sealed_data(&scope),
                &sealed.seal,
                &sealed.challenge,
                response,
            )
            .await?;
        if !check.seal_ok {
            return Err(challenge_invalid());
        }
        Ok(check)
    }

    async fn try_finish(&self, device: &Device, req: &FinishRequest) -> Result<Opened> {
        let issuer = req.issuer.clone();
        let challenge = &req.challenge;
        require_issued(device)?;
        let now = now_ms();
        let check = self
            .check_answer(device, &issuer, challenge, &req.response, now)
            .await?;
        // A locked credential is refused by the finish's own transaction
        // (right answer or wrong): no read before it.
        let confirmation = match &req.confirmation {
            None => None,
            Some(c) => {
                let versions = self.kms.key_versions(&issuer, device.device_id).await?;
                Some(parse_confirmation(c, &versions)?)
            }
        };
        if !check.right {
            return Err(self.wrong_answer(device, &issuer, challenge).await);
        }
        // The KCVs are compared before the transaction (reads only); the
        // verdict is applied in it.
        let verdict = match &confirmation {
            None => None,
            Some(c) => Some(
                self.kms
                    .check_confirmation(&issuer, device.device_id, c.version, &c.kcvs)
                    .await
                    .map_err(not_pending)?,
            ),
        };
        let suspend = verdict == Some(false)
            && IssuerPolicy::of(&self.config, &issuer).suspend_on_kcv_mismatch;
        let token = URL_SAFE_NO_PAD.encode(check.random);
        let now = now_ms();
        let session = StoredSession {
            device: device.device_id,
            issuer: issuer.clone(),
            cert_serial: device.serial.clone(),
            created_at_ms: now,
            expires_at_ms: now.saturating_add(self.session_ttl_ms()),
            locked: false,
        };
        let finish = Finish {
            seal: challenge.used_key(),
            seal_expires_at_ms: challenge.expires_at_ms,
            token_hash: session_token_hash(&token),
            session,
            max_sessions: self.config.max_sessions_per_credential,
        };
        let finished = match (&confirmation, verdict) {
            (Some(c), Some(matched)) => {
                self.confirm_and_open(device, &issuer, c, matched, suspend, &finish)
                    .await?
            }
            // The steady state: grouped with the finishes of other devices.
            _ => match self.store.finish_login(finish.clone()).await? {
                StoreFinished::Opened { active } => Finished::Opened { active },
                StoreFinished::ChallengeUsed => Finished::Refused(challenge_invalid()),
                StoreFinished::Locked => Finished::Refused(locked()),
            },
        };
        if verdict.is_some() {
            self.audit.chain_staged().await;
        }
        if verdict == Some(false) {
            security::counted(&self.metrics, SecurityKind::KcvMismatch, &device.request_id);
        }
        // The active version as the finish's own transaction left it.
        let key_version = match finished {
            Finished::Opened { active } if verdict.is_some() => {
                crate::fault_point!("rotation.confirm.committed");
                active
            }
            Finished::Opened { active } => {
                crate::fault_point!("login.finish.committed");
                active
            }
            Finished::Refused(e) => return Err(e),
            Finished::Suspend => return Err(self.suspend_for_kcv_mismatch(device).await),
        };
        Ok(Opened {
            token,
            expires_at_ms: finish.session.expires_at_ms,
            device: device.device_id,
            issuer,
            key_version,
            key_update: verdict.map(|m| {
                if m {
                    KeyUpdateOutcome::Activated
                } else {
                    KeyUpdateOutcome::Rejected
                }
            }),
        })
    }

    /// A finish with a key confirmation, in one transaction: the challenge
    /// used up, the verdict applied with its audit record, and (unless the
    /// policy suspends the device) the session, which clears the rotation
    /// request a matching confirmation served.
    async fn confirm_and_open(
        &self,
        device: &Device,
        issuer: &IssuerId,
        c: &Confirmation,
        matched: bool,
        suspend: bool,
        f: &Finish,
    ) -> Result<Finished> {
        let cleared_rotation_before = matched.then_some(f.session.created_at_ms);
        self.store
            .db()
            .write("login.finish", |mut tx| async move {
                if !OnlineStore::consume_challenge_in(&mut tx, &f.seal, f.seal_expires_at_ms)
                    .await?
                {
                    return Ok((tx, Finished::Refused(challenge_invalid())));
                }
                self.kms
                    .apply_confirmation_in(&mut tx, issuer, device.device_id, c.version, matched)
                    .await?;
                let (event, outcome) = if matched {
                    (key_event(device, issuer, c.version), Outcome::Success)
                } else {
                    security::event(
                        SecurityKind::KcvMismatch,
                        format!("device:{}", device.device_id),
                        json!({ "issuer": issuer.as_str(), "version": c.version.0,
                                "step": "login.key_update" }),
                    )
                };
                self.audit
                    .stage_in(&mut tx, &device.actor, &event, outcome, &device.request_id)
                    .await?;
                if suspend {
                    return Ok((tx, Finished::Suspend));
                }
                let finished = match OnlineStore::open_session_in(
                    &mut tx,
                    f,
                    cleared_rotation_before,
                )
                .await?
                {
                    Opening::Opened { active } => Finished::Opened { active },
                    Opening::Locked => Finished::Refused(locked()),
                };
                Ok::<_, OnlineError>((tx, finished))
            })
            .await
            .map_err(|e| match e {
                OnlineError::Kms(k) => not_pending(k),
                e => e,
            })
    }

    /// A wrong response: the challenge used up and one failure counted, in one
    /// unit of work; the one that reaches the limit also locks the credential,
    /// ends its sessions, notes the certificate the policy revokes and stages
    /// the `login.lockout` audit record, in the same transaction — a lockout is
    /// whole or absent. The revocation itself follows at once
    /// ([`finish_lockouts`]; at start-up and by the maintenance job too, for a
    /// lockout a crash cut short), then the CRL and the TLS listeners.
    async fn wrong_answer(
        &self,
        device: &Device,
        issuer: &IssuerId,
        challenge: &SealedId,
    ) -> OnlineError {
        match self.try_wrong_answer(device, issuer, challenge).await {
            Ok(Wrong::Replayed) => challenge_invalid(),
            Ok(Wrong::Locked) => locked(),
            Ok(Wrong::Counted) => OnlineError::from(Refusal::ResponseInvalid),
            Ok(Wrong::LockedOut { revoke }) => {
                crate::fault_point!("login.lockout.committed");
                self.metrics
                    .login_lockouts
                    .with_label_values(&[issuer.as_str()])
                    .inc();
                self.audit.chain_staged().await;
                if let Some(serial) = revoke {
                    tracing::warn!(device = %device.device_id, issuer = %issuer, serial = %serial,
                    "credential locked: revoking the device certificate");
                    if let Err(e) = self.finish_lockouts().await {
                        tracing::error!(code = e.code(), error = %e,
                        "credential locked; its certificate is revoked by the next recovery run");
                    }
                }
                locked()
            }
            Err(e) => e,
        }
    }

    async fn try_wrong_answer(
        &self,
        device: &Device,
        issuer: &IssuerId,
        challenge: &SealedId,
    ) -> Result<Wrong> {
        let policy = IssuerPolicy::of(&self.config, issuer);
        let used = &challenge.used_key();
        let audit = &self.audit;
        self.store
            .db()
            .write("login.failure", |mut tx| async move {
                if !OnlineStore::consume_challenge_in(&mut tx, used, challenge.expires_at_ms)
                    .await?
                {
                    return Ok((tx, Wrong::Replayed));
                }
                let Some(failure) = OnlineStore::count_failure_in(
                    &mut tx,
                    issuer,
                    device.device_id,
                    policy.max_failures,
                    now_ms(),
                )
                .await?
                else {
                    return Ok((tx, Wrong::Locked));
                };
                if !failure.newly_locked {
                    return Ok((tx, Wrong::Counted));
                }
                let revoke = policy.revoke_on_lockout.then(|| device.serial.clone());
                if let Some(serial) = &revoke {
                    OnlineStore::set_revoked_serial_in(&mut tx, issuer, device.device_id, serial)
                        .await?;
                }
                let event = AuditEvent::from(OnlineEvent::Lockout {
                    device: device.device_id,
                    issuer: issuer.clone(),
                    failures: failure.count,
                    revoked_serial: revoke.clone(),
                });
                let refused = Outcome::Refused {
                    code: "credential_locked",
                };
                audit
                    .stage_in(&mut tx, &Actor::System, &event, refused, &device.request_id)
                    .await?;
                Ok((tx, Wrong::LockedOut { revoke }))
            })
            .await
    }

    /// Revokes every certificate a lockout named that is not revoked yet, then
    /// re-signs the CRL and reloads the TLS listeners once; returns how many it
    /// revoked. Safe to run anywhere, any number of times: after a lockout, at
    /// start-up and from the maintenance job, so a lockout a crash cut short is
    /// finished — never a credential locked with its certificate still valid.
    pub async fn finish_lockouts(&self) -> Result<usize> {
        let named = self.store.lockout_serials().await?;
        let mut serials = Vec::with_capacity(named.len());
        for s in &named {
            let serial: Serial = s
                .parse()
                .map_err(|_| OnlineError::from(Refusal::InvalidSerial))?;
            match self.ca.is_revoked(&serial).await {
                Ok(true) | Err(keyward_ca::CaError::UnknownSerial(_)) => {}
                Ok(false) => serials.push(serial),
                Err(e) => return Err(e.into()),
            }
        }
        if serials.is_empty() {
            return Ok(0);
        }
        let revoked = self
            .ca
            .revoke_all(&serials, RevocationReason::PrivilegeWithdrawn)
            .await?;
        self.metrics.certificates_revoked.inc_by(revoked as u64);
        crate::fault_point!("login.lockout.revoked");
        self.crl.reload("device certificates revoked by lockouts");
        Ok(revoked)
    }

    /// A KCV mismatch under the issuer's `suspend_on_kcv_mismatch`: the
    /// device is suspended (a provisioning decision, audited), which ends its
    /// sessions; the login is refused.
    async fn suspend_for_kcv_mismatch(&self, device: &Device) -> OnlineError {
        let done = async {
            let (operator, reason) = system_decision("working-key KCV mismatch at login")?;
            let decided = self
                .provisioning
                .transition(device.device_id, DeviceState::Suspended, &operator, &reason)
                .await;
            let note = match &decided {
                Ok(done) => done.note.clone(),
                Err(refused) => refused.note.clone(),
            };
            self.audit
                .append(
                    &Actor::System,
                    &AuditEvent::Provisioning(note.clone()),
                    note.outcome,
                    &device.request_id,
                )
                .await?;
            decided.map_err(|r| OnlineError::from(r.error))?;
            Ok::<_, OnlineError>(())
        };
        match done.await {
            Ok(()) => OnlineError::from(Refusal::KcvMismatch),
            Err(e) => e,
        }
    }
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
