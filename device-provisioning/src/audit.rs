//! The audit vocabulary every layer writes in ([`Actor`], [`Outcome`]), and
//! audit notes: what every provisioning decision hands back so the server can
//! write it to its audit trail (this crate keeps no audit table; the trail
//! itself is `server/src/audit.rs`).
//!
//! Each state-changing operation returns a [`Decision`]: on success an
//! [`Audited`] value with its note, on refusal or failure a [`Refused`] with
//! the note and the error. The note is built when the operation starts, so a
//! refusal is noted exactly like a success (same actor, action and target),
//! and holds no key bytes, national ids or contact addresses; operator free
//! text goes in through [`redact_free_text`].

use std::error::Error as StdError;
use std::fmt;

use keyward_kms::types::DeviceId;

use crate::error::ProvisioningError;
use crate::types::{OperatorId, Reason};
use unicode_normalization::UnicodeNormalization;

/// Who acted: one vocabulary for every audit record of every layer, whether
/// an operator, a device, a back-end service or the server itself did it.
/// Provisioning names the operator or device a decision is for; the server
/// names the certificate that made the call. [`Actor`]'s `Display` is the
/// form stored in the trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// An operator, by the name from their client certificate.
    Operator(OperatorId),
    /// A device acting for itself (the genuine-device check, login, MACs).
    Device(DeviceId),
    /// A verified client certificate: `kind` is `operator`, `device` or
    /// `certificate` (another profile); `name` the subject CN; `serial` the
    /// certificate serial (upper-case hex).
    Certificate {
        kind: &'static str,
        name: String,
        serial: String,
    },
    /// The server itself (bootstrap, schedules, background tasks).
    System,
    /// A command run by whoever holds the config and the HSM PIN.
    Cli,
    /// A TLS client without a certificate.
    Anonymous,
    /// A network peer that did not complete the TLS handshake.
    Peer(String),
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Operator(o) => write!(f, "operator:{o}"),
            Self::Device(d) => write!(f, "device:{d}"),
            Self::Certificate { kind, name, serial } => write!(f, "{kind}:{name}#{serial}"),
            Self::System => f.write_str("system"),
            Self::Cli => f.write_str("cli"),
            Self::Anonymous => f.write_str("anonymous"),
            Self::Peer(addr) => write!(f, "peer:{addr}"),
        }
    }
}

/// What was done; [`Action::as_str`] is the stable name for the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    ImportBatch,
    BeginCheck,
    CompleteCheck,
    InitPackage,
    Reinit,
    ConfirmInit,
    Apply,
    Approve,
    Reject,
    Resubmit,
    Close,
    Bind,
    Transition,
    /// An operator clears a device parked by failed genuine-device checks.
    ResetCheck,
    /// One operator asks for a new device certificate for a new key.
    RequestRecertify,
    /// A second operator approves it: the new certificate is issued and
    /// every other certificate of the device revoked.
    ApproveRecertify,
    /// The server took over an import whose lease ran out (its process died):
    /// certificates revoked, reservation removed.
    RecoverImport,
    /// An operator aborted an import whose lease ran out, the same way.
    AbortImport,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ImportBatch => "provisioning.import_batch",
            Self::BeginCheck => "provisioning.begin_check",
            Self::CompleteCheck => "provisioning.complete_check",
            Self::InitPackage => "provisioning.init_package",
            Self::Reinit => "provisioning.reinit",
            Self::ConfirmInit => "provisioning.confirm_init",
            Self::Apply => "customer.apply",
            Self::Approve => "customer.approve",
            Self::Reject => "customer.reject",
            Self::Resubmit => "customer.resubmit",
            Self::Close => "customer.close",
            Self::Bind => "device.bind",
            Self::Transition => "device.transition",
            Self::ResetCheck => "provisioning.reset_check",
            Self::RequestRecertify => "provisioning.recertify_request",
            Self::ApproveRecertify => "provisioning.recertify_approve",
            Self::RecoverImport => "provisioning.recover_import",
            Self::AbortImport => "provisioning.abort_import",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How it ended: one vocabulary for every audit record. A security
/// operation writes `Requested` before its effect and one of the others
/// after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Authorised and about to happen.
    Requested,
    Success,
    /// Refused on the request's merits (a client error); `code` is the
    /// stable error code the client was given.
    Refused {
        code: &'static str,
    },
    /// Failed on the server's side (database, HSM, CA unavailable).
    Failed {
        code: &'static str,
    },
}

impl Outcome {
    /// The stored form (and the metric label).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::Success => "success",
            Self::Refused { .. } => "refused",
            Self::Failed { .. } => "failure",
        }
    }

    /// The error code of a refusal or failure.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            Self::Requested | Self::Success => None,
            Self::Refused { code } | Self::Failed { code } => Some(code),
        }
    }
}

/// One auditable decision: actor, action, target, outcome and a few named
/// details (states, serials, the operator's reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditNote {
    pub actor: Actor,
    pub action: Action,
    /// `device:<id>`, `batch:<id>`, `application:<id>`, …
    pub target: String,
    pub outcome: Outcome,
    pub details: Vec<(&'static str, String)>,
}

impl AuditNote {
    pub(crate) fn new(actor: Actor, action: Action, target: String) -> Self {
        Self {
            actor,
            action,
            target,
            outcome: Outcome::Success,
            details: Vec::new(),
        }
    }

    pub(crate) fn detail(&mut self, name: &'static str, value: impl fmt::Display) {
        self.details.push((name, value.to_string()));
    }

    /// Notes an operator's free-text reason, redacted
    /// ([`redact_free_text`]): the trail is permanent and must not keep the
    /// national id or account number someone typed into it.
    pub(crate) fn reason(&mut self, reason: &Reason) {
        self.detail("reason", redact_free_text(reason.as_str()));
    }

    /// The value of a detail, if noted.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.details
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Seals the note with the operation's result.
    pub(crate) fn finish<T>(mut self, result: Result<T, ProvisioningError>) -> Decision<T> {
        match result {
            Ok(value) => Ok(Audited { value, note: self }),
            Err(error) => {
                let code = error.code();
                self.outcome = if error.is_client_error() {
                    Outcome::Refused { code }
                } else {
                    Outcome::Failed { code }
                };
                Err(Box::new(Refused { note: self, error }))
            }
        }
    }
}

/// A successful decision's value and its note.
#[derive(Debug, Clone)]
pub struct Audited<T> {
    pub value: T,
    pub note: AuditNote,
}

impl<T> Audited<T> {
    pub fn into_value(self) -> T {
        self.value
    }
}

/// A refused or failed decision: the note to write and the error to answer.
#[derive(Debug)]
pub struct Refused {
    pub note: AuditNote,
    pub error: ProvisioningError,
}

impl Refused {
    pub fn code(&self) -> &'static str {
        self.error.code()
    }
    pub fn is_client_error(&self) -> bool {
        self.error.is_client_error()
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl StdError for Refused {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.error.source()
    }
}

impl From<Box<Refused>> for ProvisioningError {
    fn from(r: Box<Refused>) -> Self {
        r.error
    }
}

/// What a state-changing operation returns. The refusal is boxed: it is the
/// rare path, and a note plus an error would make every `Result` large.
pub type Decision<T> = Result<Audited<T>, Box<Refused>>;

/// What a redacted run of digits becomes in the trail.
pub const REDACTED: &str = "[redacted]";
/// Digits in a run from which it is taken for a national id, an account,
/// card or phone number.
pub const REDACT_MIN_DIGITS: usize = 8;

/// Characters that render as nothing (zero-width, bidi controls, soft
/// hyphen): dropped first, so `1234\u{200B}5678` is one run.
fn invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{FEFF}'
    )
}

/// Separators people type inside one number (`1234 5678`, `138-0013-8000`).
fn joiner(c: char) -> bool {
    matches!(c, ' ' | '-' | '.' | '/' | '_')
}

/// `2024-05-01`, `01/05/2024`, `2024.05.01`: eight digits that are a date.
fn is_date(groups: &[usize], seps: &[char]) -> bool {
    let same_sep = seps.len() == 2 && seps[0] == seps[1] && matches!(seps[0], '-' | '/' | '.');
    same_sep && (groups == [4, 2, 2] || groups == [2, 2, 4])
}

/// The one filter for operator free text on its way into the audit trail:
/// after NFKC (fullwidth digits become ASCII) and with invisible characters
/// removed, every run of at least [`REDACT_MIN_DIGITS`] digits — single
/// separators between digits allowed, a trailing check letter `X`
/// included — becomes [`REDACTED`]. Shorter numbers (dates, counts, ticket
/// numbers) stay readable.
pub fn redact_free_text(text: &str) -> String {
    let chars: Vec<char> = text.nfkc().filter(|c| !invisible(*c)).collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if !chars[i].is_numeric() {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let (start, mut end, mut digits, mut j) = (i, i, 0usize, i);
        // Digit groups and the separators between them, to tell dates apart.
        let (mut groups, mut seps) = (vec![0usize], Vec::new());
        while j < chars.len() {
            if chars[j].is_numeric() {
                digits += 1;
                if let Some(g) = groups.last_mut() {
                    *g += 1;
                }
                j += 1;
                end = j;
            } else if joiner(chars[j]) && chars.get(j + 1).is_some_and(|c| c.is_numeric()) {
                seps.push(chars[j]);
                groups.push(0);
                j += 1;
            } else {
                break;
            }
        }
        if digits >= REDACT_MIN_DIGITS && !is_date(&groups, &seps) {
            let check_letter = matches!(chars.get(end), Some('X' | 'x'))
                && !chars.get(end + 1).is_some_and(|c| c.is_alphanumeric());
            if check_letter {
                end += 1;
            }
            out.push_str(REDACTED);
        } else {
            out.extend(&chars[start..end]);
        }
        i = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_digit_runs_are_redacted_short_ones_kept() {
        for (input, expected) in [
            ("id 110101199003074578 wrong", "id [redacted] wrong"),
            ("id 11010119900307457X wrong", "id [redacted] wrong"),
            ("call +86 138-0013-8000", "call +[redacted]"),
            ("acct 6222 0202 0000 1234", "acct [redacted]"),
            // Fullwidth digits and a zero-width space do not hide a number.
            ("id １１０１０１１９９００３", "id [redacted]"),
            ("id 1101\u{200B}0119", "id [redacted]"),
            ("ticket 1234567, 2024-05-01", "ticket 1234567, 2024-05-01"),
            ("ssn 123-45-6789", "ssn [redacted]"),
            ("no digits at all", "no digits at all"),
        ] {
            assert_eq!(redact_free_text(input), expected, "{input:?}");
        }
    }
}
