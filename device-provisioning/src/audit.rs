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
    /// ([`redact_free_text`], `own` the personal terms of the customer it is
    /// about): the trail is permanent and must not keep the e-mail, name,
    /// national id or account number someone typed into it.
    pub(crate) fn reason(&mut self, reason: &Reason, own: &[&str]) {
        self.detail("reason", reason.for_trail(own));
    }

    /// Notes an already filtered reason ([`Reason::for_trail`]).
    pub(crate) fn redacted_reason(&mut self, reason: RedactedText) {
        self.detail("reason", reason);
    }

    /// The value of a detail, if noted.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.details
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Seals the note with the operation's result.
    pub(crate) fn finish<T>(self, result: Result<T, ProvisioningError>) -> Decision<T> {
        match result {
            Ok(value) => Ok(Audited { value, note: self }),
            Err(error) => Err(self.refused(error)),
        }
    }

    /// Seals the note with a refusal that is kept: committed with what
    /// it changed ([`Kept`]).
    pub(crate) fn kept<T>(self, error: ProvisioningError) -> Kept<T> {
        let Refused { note, error } = *self.refused(error);
        Audited {
            value: Err(error),
            note,
        }
    }

    /// Seals the note with the error that ended the operation.
    pub(crate) fn refused(mut self, error: ProvisioningError) -> Box<Refused> {
        let code = error.code();
        self.outcome = if error.is_client_error() {
            Outcome::Refused { code }
        } else {
            Outcome::Failed { code }
        };
        Box::new(Refused { note: self, error })
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

/// A decision that commits even when it refuses (the refusal is itself a
/// change to keep: a package refused for good, a failed check counted): its
/// value is the answer, its note the record committed with it.
pub type Kept<T> = Audited<std::result::Result<T, ProvisioningError>>;

impl<T> Kept<T> {
    /// The committed decision as the answer: its value, or its refusal.
    pub fn answer(self) -> Decision<T> {
        match self.value {
            Ok(value) => Ok(Audited {
                value,
                note: self.note,
            }),
            Err(error) => Err(Box::new(Refused {
                note: self.note,
                error,
            })),
        }
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

/// Operator free text after [`redact_free_text`]: the only form of it an
/// audit record takes, so an event type that carries a reason cannot carry
/// it unfiltered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedactedText(String);

impl RedactedText {
    pub(crate) fn new(text: &str, own: &[&str]) -> Self {
        Self(redact_free_text(text, own))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RedactedText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What redacted personal data becomes in the trail.
pub const REDACTED: &str = "[redacted]";
/// Digits in one number from which it is taken for personal data: a
/// passport (7 digits and more), national id, account, card or phone number.
pub const REDACT_MIN_DIGITS: usize = 6;
/// Most separator characters between two digit groups of one number
/// (`110101, 1990`).
const MAX_JOIN: usize = 3;

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

/// Separators people type inside one number (`1234 5678`, `138-0013-8000`,
/// `110101,1990`, `(010) 1234`).
fn joiner(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '-' | '\u{2010}'..='\u{2015}' | '.' | '/' | '_' | ',' | '(' | ')' | '+'
        )
}

fn digit(c: char) -> bool {
    keyward_ca::names::decimal_digit(c).is_some()
}

/// `2024-05-01`, `01/05/2024`, `2024.05.01`: eight digits that are a date.
fn is_date(run: &[char]) -> bool {
    let groups: Vec<&[char]> = run.split(|c| !c.is_ascii_digit()).collect();
    let seps: Vec<char> = run
        .iter()
        .copied()
        .filter(|c| !c.is_ascii_digit())
        .collect();
    let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    seps.len() == 2
        && seps[0] == seps[1]
        && matches!(seps[0], '-' | '/' | '.')
        && (lens == [4, 2, 2] || lens == [2, 2, 4])
}

/// The one filter for operator free text on its way into the permanent
/// audit trail. After NFKC (fullwidth forms folded) and with invisible
/// characters removed, each of these becomes [`REDACTED`]:
///
/// - an e-mail address (any token with `@` inside);
/// - `own`: each of the personal terms of the customer the text is about
///   (name and its parts, national id, accounts, contact address), matched
///   without regard to case;
/// - a phone- or id-shaped number: digits of any script in groups joined by
///   up to [`MAX_JOIN`] separators (spaces, dashes, dots, slashes, commas,
///   parentheses, `+`), with the letters attached to them (`E1234567`,
///   `…123X`), holding at least [`REDACT_MIN_DIGITS`] digits, unless it is
///   a date (`2024-05-01`).
///
/// Shorter numbers (counts, years, times, short ticket numbers) stay
/// readable. It cannot recognise a name it has not been given: free text
/// about a person other than the customer is the operator's responsibility
/// (see docs/admin-api.md).
pub fn redact_free_text(text: &str, own: &[&str]) -> String {
    let chars: Vec<char> = text.nfkc().filter(|c| !invisible(*c)).collect();
    let chars = redact_emails(&chars);
    let chars = redact_terms(chars, own);
    redact_numbers(&chars).into_iter().collect()
}

fn redacted() -> impl Iterator<Item = char> {
    REDACTED.chars()
}

/// Tokens with an `@` between other characters.
fn redact_emails(chars: &[char]) -> Vec<char> {
    let stop =
        |c: char| c.is_whitespace() || matches!(c, '<' | '>' | '(' | ')' | '"' | '\'' | '[' | ']');
    let mut out = Vec::with_capacity(chars.len());
    let mut i = 0;
    while i < chars.len() {
        let end = (i..chars.len())
            .find(|&j| stop(chars[j]))
            .unwrap_or(chars.len());
        let mut token = &chars[i..end];
        while let [rest @ .., ',' | '.' | ';' | ':' | '!' | '?'] = token {
            token = rest;
        }
        let at = token.iter().position(|&c| c == '@');
        if at.is_some_and(|a| a > 0 && a + 1 < token.len()) {
            out.extend(redacted());
            out.extend(&chars[i + token.len()..end]);
        } else {
            out.extend(&chars[i..end]);
        }
        if end < chars.len() {
            out.push(chars[end]);
        }
        i = end + 1;
    }
    out
}

/// Each `own` term of two characters or more, case-insensitively; on word
/// boundaries, except for terms in scripts written without spaces (Han,
/// Kana, Hangul).
fn redact_terms(mut chars: Vec<char>, own: &[&str]) -> Vec<char> {
    let same = |a: char, b: char| a == b || a.to_lowercase().eq(b.to_lowercase());
    for term in own {
        let term: Vec<char> = term.nfkc().collect();
        if term.len() < 2 {
            continue;
        }
        let spaced = !keyward_ca::names::written_without_spaces(&term.iter().collect::<String>());
        let boundary = |c: Option<&char>| !spaced || !c.is_some_and(|c| c.is_alphanumeric());
        let mut out = Vec::with_capacity(chars.len());
        let mut i = 0;
        while i < chars.len() {
            let hit = i + term.len() <= chars.len()
                && chars[i..i + term.len()]
                    .iter()
                    .zip(&term)
                    .all(|(a, b)| same(*a, *b))
                && boundary(i.checked_sub(1).and_then(|p| chars.get(p)))
                && boundary(chars.get(i + term.len()));
            if hit {
                out.extend(redacted());
                i += term.len();
            } else {
                out.push(chars[i]);
                i += 1;
            }
        }
        chars = out;
    }
    chars
}

/// Phone- and id-shaped numbers (see [`redact_free_text`]).
fn redact_numbers(chars: &[char]) -> Vec<char> {
    let mut out: Vec<char> = Vec::with_capacity(chars.len());
    let mut i = 0;
    while i < chars.len() {
        if !digit(chars[i]) {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        // The run: letters and digits, and separators that lead to a digit.
        let (start, mut end, mut j) = (i, i, i);
        while j < chars.len() {
            if chars[j].is_alphanumeric() {
                j += 1;
                end = j;
                continue;
            }
            let seps = chars[j..].iter().take_while(|c| joiner(**c)).count();
            if seps <= MAX_JOIN && chars.get(j + seps).is_some_and(|c| digit(*c)) {
                j += seps;
            } else {
                break;
            }
        }
        let run = &chars[start..end];
        if run.iter().filter(|c| digit(**c)).count() >= REDACT_MIN_DIGITS && !is_date(run) {
            // Letters attached in front belong to it (`E1234567`).
            while out.last().is_some_and(|c| c.is_alphanumeric()) {
                out.pop();
            }
            out.extend(redacted());
        } else {
            out.extend(run);
        }
        i = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn personal_data_is_redacted_short_numbers_kept() {
        for (input, expected) in [
            ("id 110101199003074578 wrong", "id [redacted] wrong"),
            ("id 11010119900307457X wrong", "id [redacted] wrong"),
            ("call +86 138-0013-8000", "call +[redacted]"),
            ("acct 6222 0202 0000 1234", "acct [redacted]"),
            // Fullwidth digits and a zero-width space do not hide a number.
            ("id １１０１０１１９９００３", "id [redacted]"),
            ("id 1101\u{200B}0119", "id [redacted]"),
            ("ssn 123-45-6789", "ssn [redacted]"),
            // A 7-digit passport number, with or without its letter.
            ("passport 1234567 expired", "passport [redacted] expired"),
            ("passport E1234567.", "passport [redacted]."),
            ("passport E12A34567", "passport [redacted]"),
            // A national id split by commas, or by commas and spaces.
            ("id 110101,19900307,457X", "id [redacted]"),
            ("id 110, 101, 199, 003, 074, 578", "id [redacted]"),
            // Arabic-Indic digits.
            (
                "id \u{661}\u{662}\u{663}\u{664}\u{665}\u{666}\u{667}",
                "id [redacted]",
            ),
            (
                "mail han.meimei@example.com, please",
                "mail [redacted], please",
            ),
            ("<han@example.com>", "<[redacted]>"),
            (
                "ticket 12345 of 2024-05-01 at 12:30",
                "ticket 12345 of 2024-05-01 at 12:30",
            ),
            ("3 attempts, 2 left", "3 attempts, 2 left"),
            ("no digits at all", "no digits at all"),
        ] {
            assert_eq!(redact_free_text(input, &[]), expected, "{input:?}");
        }
    }

    #[test]
    fn the_customers_own_data_is_redacted() {
        let own = [
            "Han Meimei",
            "Han",
            "Meimei",
            "X1234",
            "han@example.com",
            "张伟",
        ];
        for (input, expected) in [
            ("MEIMEI HAN called", "[redacted] [redacted] called"),
            (
                "the scan of Han Meimei is blurred",
                "the scan of [redacted] is blurred",
            ),
            ("Hannah is not Han", "Hannah is not [redacted]"),
            ("id x1234 wrong", "id [redacted] wrong"),
            ("客户张伟的扫描", "客户[redacted]的扫描"),
        ] {
            assert_eq!(redact_free_text(input, &own), expected, "{input:?}");
        }
    }
}

/// A decision read and checked before its transaction opens: what its
/// `_in` step needs, and its note so far.
#[derive(Debug, Clone)]
pub struct Prepared<S> {
    pub(crate) input: S,
    pub(crate) note: AuditNote,
}

impl<S> Prepared<S> {
    /// Its note so far (what a failure of the unit around it is recorded
    /// under).
    pub fn note(&self) -> &AuditNote {
        &self.note
    }
}

/// How a decision's unit of work ended without committing: refused (rolled
/// back), or the database around it failed.
enum Undone {
    Refused(Box<Refused>),
    Database(sqlx::Error),
}

impl From<sqlx::Error> for Undone {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(e)
    }
}

impl keyward_kms::db::TxError for Undone {
    fn database_error(&self) -> Option<&sqlx::Error> {
        match self {
            Self::Refused(r) => keyward_kms::db::TxError::database_error(&r.error),
            Self::Database(e) => Some(e),
        }
    }
}

impl crate::Provisioning {
    /// Commits a decision's `_in` step in a unit of work of its own, for a
    /// caller with no rows of its own to commit with it: a refusal rolls it
    /// back; a failure of the unit itself fails the decision under `note`.
    pub(crate) async fn commit<T, F, Fut>(
        &self,
        what: &'static str,
        note: &AuditNote,
        mut step: F,
    ) -> Decision<T>
    where
        F: FnMut(keyward_kms::db::Tx) -> Fut,
        Fut: std::future::Future<Output = (keyward_kms::db::Tx, Decision<T>)>,
    {
        let done = self
            .kms()
            .db()
            .write(what, |tx| {
                let run = step(tx);
                async move {
                    match run.await {
                        (tx, Ok(done)) => Ok((tx, done)),
                        (_, Err(refused)) => Err(Undone::Refused(refused)),
                    }
                }
            })
            .await;
        match done {
            Ok(done) => Ok(done),
            Err(Undone::Refused(r)) => Err(r),
            Err(Undone::Database(e)) => Err(note.clone().refused(e.into())),
        }
    }
}
