//! Device login (issue 10), first slice: the pure decisions the login flow
//! is built on, kept free of I/O so they are tested alone. The flow itself
//! (start/finish over the store, the HSM challenge, sessions) is not built
//! yet; see the branch report.
//!
//! - [`FailurePolicy`]: consecutive failed responses per (device, issuer)
//!   and when the credential locks (`online.max_login_failures`, default 10).
//! - [`session_token_hash`]: sessions are stored as the SHA-256 of their
//!   token only, so a database reader cannot replay one and lookup by hash
//!   needs no secret comparison.
//! - [`rotation_due`]: when a login must carry a working-key update.

use sha2::{Digest, Sha256};

/// Default number of consecutive failed responses that lock a credential.
pub const DEFAULT_MAX_LOGIN_FAILURES: u32 = 10;

/// When a (device, issuer) credential locks after failed responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailurePolicy {
    /// Failures that lock the credential (at least 1).
    pub max_failures: u32,
}

impl Default for FailurePolicy {
    fn default() -> Self {
        Self {
            max_failures: DEFAULT_MAX_LOGIN_FAILURES,
        }
    }
}

/// What one more failed response does to a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureOutcome {
    /// Counted; the credential stays usable. Carries the new count.
    Counted(u32),
    /// This failure reached the limit: lock (and revoke, by policy).
    Locked(u32),
}

impl FailurePolicy {
    /// The outcome of a failure when `previous` failures were counted.
    /// Saturates rather than wrapping, so a locked counter never reopens.
    pub fn after_failure(&self, previous: u32) -> FailureOutcome {
        let count = previous.saturating_add(1);
        if count >= self.max_failures.max(1) {
            FailureOutcome::Locked(count)
        } else {
            FailureOutcome::Counted(count)
        }
    }
}

/// The stored form of a session token: its SHA-256, never the token.
pub fn session_token_hash(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// Whether a login must offer new working keys: no active version yet, an
/// operator's on-demand flag, or the active version older than the policy.
pub fn rotation_due(
    active_since: Option<i64>,
    on_demand: bool,
    now: i64,
    max_age_secs: i64,
) -> bool {
    match active_since {
        None => true,
        Some(_) if on_demand => true,
        Some(since) => now.saturating_sub(since) > max_age_secs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenth_failure_locks_by_default() {
        let p = FailurePolicy::default();
        assert_eq!(p.after_failure(0), FailureOutcome::Counted(1));
        assert_eq!(p.after_failure(8), FailureOutcome::Counted(9));
        assert_eq!(p.after_failure(9), FailureOutcome::Locked(10));
        assert_eq!(p.after_failure(u32::MAX), FailureOutcome::Locked(u32::MAX));
    }

    #[test]
    fn zero_limit_locks_at_first_failure() {
        let p = FailurePolicy { max_failures: 0 };
        assert_eq!(p.after_failure(0), FailureOutcome::Locked(1));
    }

    #[test]
    fn token_hash_is_sha256() {
        let h = session_token_hash(b"abc");
        assert_eq!(
            hex::encode(h),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn rotation_policy() {
        assert!(rotation_due(None, false, 100, 50));
        assert!(rotation_due(Some(90), true, 100, 50));
        assert!(!rotation_due(Some(90), false, 100, 50));
        assert!(rotation_due(Some(10), false, 100, 50));
    }
}
