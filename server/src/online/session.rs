//! Sessions: what a login opens and every later online call (MAC, PIN,
//! confirmation, load) presents as `Authorization: Bearer <token>`.
//!
//! A session is bound to the device, the issuer and the TLS client
//! certificate it was opened over: [`Online::authorize_session`] refuses a
//! token presented by another device or over another certificate. It is
//! checked against the database on every call (one read, with the
//! credential's lock), and the public listener re-checks the certificate
//! and the device's state per request: revoking or locking ends a device's
//! sessions at its very next call, and so does any change of the device's
//! state after the login (a suspension, even one lifted since: a session is
//! over when the device changed state after it opened), with no cache and
//! nothing to delete.

use keyward_device_provisioning::DeviceState;
use keyward_kms::types::{DeviceId, IssuerId};

use crate::online::login::session_token_hash;
use crate::online::{Device, Online, OnlineError, Refusal};

type Result<T> = std::result::Result<T, OnlineError>;

/// An open session, as a handler of a session-bound route sees it.
#[derive(Debug, Clone)]
pub struct Session {
    pub device: DeviceId,
    pub issuer: IssuerId,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    /// The stored form of the token (for logout), never the token.
    pub token_hash: String,
}

impl Online {
    /// The session `token` opens for `device`, or why not.
    pub async fn authorize_session(&self, device: &Device, token: Option<&str>) -> Result<Session> {
        let token = token.ok_or_else(|| OnlineError::from(Refusal::SessionRequired))?;
        if token.is_empty() || token.len() > 128 {
            return Err(OnlineError::from(Refusal::SessionInvalid));
        }
        let hash = session_token_hash(token);
        let stored = self
            .store
            .session(&hash)
            .await?
            .ok_or_else(|| OnlineError::from(Refusal::SessionInvalid))?;
        if stored.device != device.device_id {
            return Err(OnlineError::from(Refusal::SessionDeviceMismatch));
        }
        // Serials are public: a plain comparison. The token itself was matched
        // by its hash (a primary-key lookup), never compared as a secret.
        if stored.cert_serial != device.serial {
            return Err(OnlineError::from(Refusal::SessionCertificateMismatch));
        }
        // A state change since the login (a suspension, even one already
        // lifted) ended the session.
        if stored.created_at_ms <= device.state_changed_at_ms {
            return Err(OnlineError::from(Refusal::SessionInvalid));
        }
        if stored.expires_at_ms <= keyward_kms::db::now_ms() {
            return Err(OnlineError::from(Refusal::SessionExpired));
        }
        match device.state {
            DeviceState::Issued => {}
            DeviceState::Suspended => {
                return Err(OnlineError::from(Refusal::DeviceSuspended));
            }
            _ => {
                return Err(OnlineError::from(Refusal::DeviceNotIssued));
            }
        }
        if stored.locked {
            return Err(OnlineError::from(Refusal::CredentialLocked));
        }
        Ok(Session {
            device: stored.device,
            issuer: stored.issuer,
            created_at_ms: stored.created_at_ms,
            expires_at_ms: stored.expires_at_ms,
            token_hash: hash,
        })
    }

    /// Ends `session` (logout).
    pub async fn logout(&self, session: &Session) -> Result<()> {
        self.store.end_session(&session.token_hash).await?;
        Ok(())
    }
}
