//! [`Refusal`]: every way the online protocols refuse a device or an
//! operator's online request, each with its stable code, its kind (mapped to
//! HTTP once, in `http/error.rs`) and a message that never quotes the input.
//! One code, one meaning: the table below is the only place either is set.

use keyward_kms::ErrorKind;

/// Why an online-protocol step was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    // ---- requests that do not parse -------------------------------------
    InvalidIssuerId,
    InvalidDeviceId,
    InvalidChallengeId,
    InvalidResponse,
    InvalidKeyConfirmation,
    InvalidSerial,
    /// A transaction field that does not parse (which one is in the message).
    InvalidInput(&'static str),
    // ---- who is asking ---------------------------------------------------
    DeviceIdMismatch,
    DeviceSuspended,
    DeviceNotIssued,
    UnknownIssuer,
    IssuerNotBound,
    SecureElementMismatch,
    CredentialLocked,
    CredentialNotLocked,
    // ---- login -----------------------------------------------------------
    ChallengeInvalid,
    ResponseInvalid,
    UnknownKeyVersion,
    KeyVersionNotPending,
    KcvMismatch,
    // ---- sessions --------------------------------------------------------
    SessionRequired,
    SessionInvalid,
    SessionExpired,
    SessionDeviceMismatch,
    SessionCertificateMismatch,
    // ---- transactions ----------------------------------------------------
    PanNotBound,
}

impl Refusal {
    /// Every refusal, for the code table's test and the docs' check.
    pub const ALL: &'static [Refusal] = &[
        Self::InvalidIssuerId,
        Self::InvalidDeviceId,
        Self::InvalidChallengeId,
        Self::InvalidResponse,
        Self::InvalidKeyConfirmation,
        Self::InvalidSerial,
        Self::InvalidInput(""),
        Self::DeviceIdMismatch,
        Self::DeviceSuspended,
        Self::DeviceNotIssued,
        Self::UnknownIssuer,
        Self::IssuerNotBound,
        Self::SecureElementMismatch,
        Self::CredentialLocked,
        Self::CredentialNotLocked,
        Self::ChallengeInvalid,
        Self::ResponseInvalid,
        Self::UnknownKeyVersion,
        Self::KeyVersionNotPending,
        Self::KcvMismatch,
        Self::SessionRequired,
        Self::SessionInvalid,
        Self::SessionExpired,
        Self::SessionDeviceMismatch,
        Self::SessionCertificateMismatch,
        Self::PanNotBound,
    ];

    /// The stable machine-readable code, its kind and the message.
    fn parts(self) -> (&'static str, ErrorKind, &'static str) {
        use ErrorKind::{Conflict, Forbidden, Invalid, NotFound};
        match self {
            Self::InvalidIssuerId => (
                "invalid_issuer_id",
                Invalid,
                "issuer_id is not an issuer id",
            ),
            Self::InvalidDeviceId => ("invalid_device_id", Invalid, "device_id is 16 hex digits"),
            Self::InvalidChallengeId => (
                "invalid_challenge_id",
                Invalid,
                "challenge_id is not one this service issues",
            ),
            Self::InvalidResponse => (
                "invalid_response",
                Invalid,
                "response is base64 of one block",
            ),
            Self::InvalidKeyConfirmation => (
                "invalid_key_confirmation",
                Invalid,
                "kcvs name a role and a KCV",
            ),
            Self::InvalidSerial => ("invalid_serial", Invalid, "certificate serial"),
            Self::InvalidInput(message) => ("invalid_input", Invalid, message),
            Self::DeviceIdMismatch => (
                "device_id_mismatch",
                Forbidden,
                "device_id is not the device of the client certificate",
            ),
            Self::DeviceSuspended => ("device_suspended", Forbidden, "the device is suspended"),
            Self::DeviceNotIssued => (
                "device_not_issued",
                Forbidden,
                "the device is not issued to a customer",
            ),
            Self::UnknownIssuer => ("unknown_issuer", NotFound, "no such issuer"),
            Self::IssuerNotBound => (
                "issuer_not_bound",
                Forbidden,
                "the device is not bound to a customer for this issuer",
            ),
            Self::SecureElementMismatch => (
                "secure_element_mismatch",
                Forbidden,
                "the PSAM/ESAM serials are not those bound for this issuer",
            ),
            Self::CredentialLocked => (
                "credential_locked",
                Forbidden,
                "this device's credential for the issuer is locked; an operator must unlock it",
            ),
            Self::CredentialNotLocked => (
                "credential_not_locked",
                Conflict,
                "this credential is not locked",
            ),
            Self::ChallengeInvalid => (
                "challenge_invalid",
                Forbidden,
                "no such challenge for this device and issuer: unknown, used or expired",
            ),
            Self::ResponseInvalid => (
                "response_invalid",
                Forbidden,
                "the response to the challenge is wrong",
            ),
            Self::UnknownKeyVersion => (
                "unknown_key_version",
                Conflict,
                "the server never offered this key version",
            ),
            Self::KeyVersionNotPending => (
                "key_version_not_pending",
                Conflict,
                "this key version is not waiting for a confirmation",
            ),
            Self::KcvMismatch => (
                "kcv_mismatch",
                Forbidden,
                "the device reported wrong KCVs for the offered keys; it is suspended",
            ),
            Self::SessionRequired => (
                "session_required",
                Forbidden,
                "this call needs a session: log in and send Authorization: Bearer <token>",
            ),
            Self::SessionInvalid => ("session_invalid", Forbidden, "no such session"),
            Self::SessionExpired => (
                "session_expired",
                Forbidden,
                "the session has expired: log in again",
            ),
            Self::SessionDeviceMismatch => (
                "session_device_mismatch",
                Forbidden,
                "this session belongs to another device",
            ),
            Self::SessionCertificateMismatch => (
                "session_certificate_mismatch",
                Forbidden,
                "this session was opened over another client certificate",
            ),
            Self::PanNotBound => (
                "pan_not_bound",
                Forbidden,
                "the PIN block's PAN is not an account of this device's binding",
            ),
        }
    }

    pub fn code(self) -> &'static str {
        self.parts().0
    }

    pub fn kind(self) -> ErrorKind {
        self.parts().1
    }

    pub fn message(self) -> &'static str {
        self.parts().2
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for Refusal {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_is_in_the_code_table_with_the_status_of_its_kind() {
        use axum::http::StatusCode;
        for r in Refusal::ALL {
            let status = crate::http::error::status_of(r.code())
                .unwrap_or_else(|| panic!("{} is not in the code table", r.code()));
            let expected = match r.kind() {
                ErrorKind::Invalid => StatusCode::BAD_REQUEST,
                ErrorKind::Forbidden => StatusCode::FORBIDDEN,
                ErrorKind::NotFound => StatusCode::NOT_FOUND,
                ErrorKind::Conflict => StatusCode::CONFLICT,
                other => panic!("{}: a refusal of kind {other:?}", r.code()),
            };
            assert_eq!(status, expected, "{}", r.code());
        }
    }

    #[test]
    fn one_code_one_refusal() {
        let mut seen = std::collections::HashMap::new();
        for r in Refusal::ALL {
            if let Some(other) = seen.insert(r.code(), *r) {
                panic!("{} is the code of {other:?} and {r:?}", r.code());
            }
        }
    }
}
