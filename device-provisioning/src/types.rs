//! Domain types of provisioning. Each validates on construction, so a bad
//! value is refused at the edge with [`ProvisioningError::Invalid`] naming the
//! field (never quoting the value).

use std::fmt;
use std::str::FromStr;

use crate::error::ProvisioningError;

fn invalid(field: &'static str, reason: &'static str) -> ProvisioningError {
    ProvisioningError::Invalid { field, reason }
}

/// Printable text without control characters, `1..=max` characters.
fn printable(s: &str, max: usize) -> bool {
    !s.is_empty() && s.chars().count() <= max && !s.chars().any(char::is_control) && s.trim() == s
}

/// A name or identifier in the form it is stored and compared in (NFKC, no
/// format, zero-width or bidi-control characters:
/// [`keyward_ca::normal_name`]), or `None`.
fn normal(s: &str, max: usize) -> Option<String> {
    keyward_ca::normal_name(s, max)
}

/// A person's name: [`normal`] and of one script
/// ([`keyward_ca::person_name`]), or `None`.
fn person(s: &str, max: usize) -> Option<String> {
    keyward_ca::person_name(s, max)
}

/// A manufacturing batch: 1-64 characters of `A-Z a-z 0-9 . _ -`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BatchId(String);

impl BatchId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for BatchId {
    type Err = ProvisioningError;
    fn from_str(s: &str) -> Result<Self, ProvisioningError> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(invalid(
                "batch_id",
                "must be 1-64 characters of A-Z, a-z, 0-9, '.', '_' and '-'",
            ))
        }
    }
}

impl fmt::Display for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The operator an action is attributed to: the name the server took from the
/// operator's client certificate. 1-64 printable characters of one script, in
/// NFKC, without format, zero-width or bidi-control characters, so that
/// maker-checker compares people, not byte strings (`alice` + U+200B and
/// `аlice` with a Cyrillic `а` are refused, fullwidth `ａｌｉｃｅ` is
/// `alice`); and maker-checker compares skeletons ([`OperatorId::same_person`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OperatorId(String);

impl OperatorId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `other` (a stored maker's name) is this operator or looks
    /// like them: the UTS #39 confusable skeletons of the lower-cased names
    /// are equal (Cyrillic `соре` is `cope`). Maker-checker refuses a checker
    /// who is the maker by this rule, not by string equality.
    pub fn same_person(&self, other: &str) -> bool {
        keyward_ca::names::skeleton(&self.0) == keyward_ca::names::skeleton(other)
    }
}

impl FromStr for OperatorId {
    type Err = ProvisioningError;
    fn from_str(s: &str) -> Result<Self, ProvisioningError> {
        match person(s, 64) {
            Some(n) => Ok(Self(n)),
            None => Err(invalid(
                "operator",
                "must be 1-64 printable characters of one script without format, zero-width or bidi-control characters",
            )),
        }
    }
}

impl fmt::Display for OperatorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why an operator acts (reinit, reject, close, transitions): 1-256 printable
/// characters. It is stored as typed beside the decision (the application,
/// the init record), and reaches the permanent audit trail only through
/// [`crate::audit::redact_free_text`]: it has no `Display`, so it cannot be
/// noted unfiltered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason(String);

impl Reason {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Reason {
    type Err = ProvisioningError;
    fn from_str(s: &str) -> Result<Self, ProvisioningError> {
        if printable(s, 256) {
            Ok(Self(s.to_owned()))
        } else {
            Err(invalid("reason", "must be 1-256 printable characters"))
        }
    }
}

impl Reason {
    /// The form the permanent audit trail keeps: personal data redacted,
    /// `own` being the terms of the customer concerned, if any
    /// ([`crate::audit::redact_free_text`]).
    pub fn for_trail(&self, own: &[&str]) -> crate::audit::RedactedText {
        crate::audit::RedactedText::new(&self.0, own)
    }
}

/// Where a device is in its life. The edges:
///
/// ```text
/// manufactured ─check─▶ verified ─confirm_init─▶ initialised ─bind─▶ issued ⇄ suspended
///      └──────────────────┴─────────────────────────┴──────────────────┴─────────┴──▶ retired
/// ```
///
/// The first three edges carry evidence (a proof of possession, matching
/// KCVs, an approved customer) and are taken only by their operations;
/// `issued ⇄ suspended` and `→ retired` are operator transitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceState {
    Manufactured,
    Verified,
    Initialised,
    Issued,
    Suspended,
    Retired,
}

impl DeviceState {
    pub const ALL: [DeviceState; 6] = [
        Self::Manufactured,
        Self::Verified,
        Self::Initialised,
        Self::Issued,
        Self::Suspended,
        Self::Retired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Manufactured => "manufactured",
            Self::Verified => "verified",
            Self::Initialised => "initialised",
            Self::Issued => "issued",
            Self::Suspended => "suspended",
            Self::Retired => "retired",
        }
    }

    /// Whether `self → to` is an edge of the lifecycle at all.
    pub fn has_edge(self, to: DeviceState) -> bool {
        use DeviceState::*;
        matches!(
            (self, to),
            (Manufactured, Verified)
                | (Verified, Initialised)
                | (Initialised, Issued)
                | (Issued, Suspended)
                | (Suspended, Issued)
        ) || (to == Retired && self != Retired)
    }

    /// Whether an operator may take `self → to` with [`crate::Provisioning::transition`]:
    /// the edges that need no evidence beyond the operator's decision.
    pub fn operator_edge(self, to: DeviceState) -> bool {
        use DeviceState::*;
        self.has_edge(to)
            && matches!(
                (self, to),
                (Issued, Suspended) | (Suspended, Issued) | (_, Retired)
            )
    }
}

impl FromStr for DeviceState {
    type Err = ProvisioningError;
    fn from_str(s: &str) -> Result<Self, ProvisioningError> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| invalid("state", "unknown device state"))
    }
}

impl fmt::Display for DeviceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A secure-element serial (PSAM or ESAM): 1-32 characters of `A-Z 0-9`
/// (lower case is folded to upper).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SeSerial(String);

impl SeSerial {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for SeSerial {
    type Err = ProvisioningError;
    fn from_str(s: &str) -> Result<Self, ProvisioningError> {
        if !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_alphanumeric()) {
            Ok(Self(s.to_ascii_uppercase()))
        } else {
            Err(invalid(
                "secure_element_serial",
                "must be 1-32 characters of A-Z and 0-9",
            ))
        }
    }
}

impl fmt::Display for SeSerial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which of a device's secure elements a binding covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecureElement {
    Psam,
    Esam,
    Both,
}

impl SecureElement {
    pub const ALL: [SecureElement; 3] = [Self::Psam, Self::Esam, Self::Both];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Psam => "psam",
            Self::Esam => "esam",
            Self::Both => "both",
        }
    }
    pub fn includes_psam(self) -> bool {
        matches!(self, Self::Psam | Self::Both)
    }
    pub fn includes_esam(self) -> bool {
        matches!(self, Self::Esam | Self::Both)
    }
}

impl FromStr for SecureElement {
    type Err = ProvisioningError;
    fn from_str(s: &str) -> Result<Self, ProvisioningError> {
        match s {
            "psam" => Ok(Self::Psam),
            "esam" => Ok(Self::Esam),
            "both" => Ok(Self::Both),
            _ => Err(invalid("secure_element", "must be psam, esam or both")),
        }
    }
}

/// A national identity number in its canonical form, the one it is stored
/// and compared in: after NFKC (fullwidth forms folded) and without format,
/// zero-width or bidi-control characters, digits of any script become ASCII
/// digits (Arabic-Indic `١٢٣` is `123`; mixing two scripts' digits is
/// refused), separators (spaces, dashes, dots, slashes) are removed, and
/// Latin letters are upper case (a check character `x` is `X`). Any other
/// character is refused, a letter of another script that looks like a Latin
/// one (Cyrillic `Х`, UTS #39 confusables) with its own reason: so one id
/// has one form, and one customer per national id is enforced on it.
/// `Debug` redacts it and it has no `Display`: it never reaches a log line or
/// an audit note by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct NationalId(String);

impl NationalId {
    /// 1-64 characters of `A-Z 0-9` once canonical (see the type).
    pub fn new(s: impl Into<String>) -> Result<Self, ProvisioningError> {
        canonical_national_id(&s.into())
            .map(Self)
            .map_err(|reason| invalid("national_id", reason))
    }

    /// A stored value: canonical if it can be, else as stored (a row written
    /// before the canonical form that the backfill could not rewrite, see
    /// [`NationalId::is_canonical`]).
    pub(crate) fn from_stored(s: String) -> Self {
        canonical_national_id(&s).map_or(Self(s), Self)
    }

    /// Whether the value is in canonical form; approving a customer needs it.
    pub fn is_canonical(&self) -> bool {
        canonical_national_id(&self.0).is_ok_and(|c| c == self.0)
    }

    /// The value, for the reviewer's screen and the database only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// The canonical form of a national id (see [`NationalId`]), or why not.
fn canonical_national_id(s: &str) -> Result<String, &'static str> {
    use keyward_ca::names::{decimal_digit, looks_ascii};
    use unicode_properties::{GeneralCategory as G, UnicodeGeneralCategory};
    let n = normal(s, 64).ok_or(
        "must be 1-64 printable characters without format, zero-width or bidi-control characters",
    )?;
    let mut out = String::with_capacity(n.len());
    let mut zero = None;
    for c in n.chars() {
        if let Some(v) = decimal_digit(c) {
            let z = c as u32 - v;
            if *zero.get_or_insert(z) != z {
                return Err("mixes the digits of two scripts");
            }
            out.push(char::from(b'0' + v as u8));
        } else if c.is_whitespace()
            || c.general_category() == G::DashPunctuation
            || matches!(c, '.' | '/' | '\u{2212}')
        {
            continue;
        } else if c.is_ascii_alphabetic() {
            out.push(c.to_ascii_uppercase());
        } else if looks_ascii(c) {
            return Err("holds a letter of another script that looks like a Latin letter or digit");
        } else {
            return Err(
                "must be digits and Latin letters (spaces, dashes, dots and slashes are ignored)",
            );
        }
    }
    if out.is_empty() {
        return Err("must hold at least one digit or letter");
    }
    Ok(out)
}

impl fmt::Debug for NationalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NationalId(<redacted>)")
    }
}

/// A bank account number: 6-34 characters of `A-Z 0-9` (card numbers, IBANs;
/// lower case is folded to upper).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Account(String);

impl Account {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Account {
    type Err = ProvisioningError;
    fn from_str(s: &str) -> Result<Self, ProvisioningError> {
        if (6..=34).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric()) {
            Ok(Self(s.to_ascii_uppercase()))
        } else {
            Err(invalid("account", "must be 6-34 characters of A-Z and 0-9"))
        }
    }
}

/// Most accounts one application may list.
pub const MAX_ACCOUNTS: usize = 32;

/// The second channel a customer is reached on (seed CN101184107A).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContactKind {
    Sms,
    Email,
    Im,
}

impl ContactKind {
    pub const ALL: [ContactKind; 3] = [Self::Sms, Self::Email, Self::Im];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sms => "sms",
            Self::Email => "email",
            Self::Im => "im",
        }
    }
}

impl FromStr for ContactKind {
    type Err = ProvisioningError;
    fn from_str(s: &str) -> Result<Self, ProvisioningError> {
        match s {
            "sms" => Ok(Self::Sms),
            "email" => Ok(Self::Email),
            "im" => Ok(Self::Im),
            _ => Err(invalid("contact.kind", "must be sms, email or im")),
        }
    }
}

/// A second-channel address. Personal data: never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Contact {
    pub kind: ContactKind,
    address: String,
}

impl Contact {
    /// `sms`: `+` and 6-20 digits or digits alone; `email`: `local@domain`,
    /// at most 254 characters; `im`: 1-128 printable characters.
    pub fn new(kind: ContactKind, address: impl Into<String>) -> Result<Self, ProvisioningError> {
        let address = address.into();
        let ok = match kind {
            ContactKind::Sms => {
                let digits = address.strip_prefix('+').unwrap_or(&address);
                (6..=20).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
            }
            ContactKind::Email => {
                printable(&address, 254)
                    && !address.contains(char::is_whitespace)
                    && address
                        .split_once('@')
                        .is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.contains('@'))
            }
            ContactKind::Im => printable(&address, 128),
        };
        if ok {
            Ok(Self { kind, address })
        } else {
            Err(invalid(
                "contact.address",
                "not a valid address for its kind",
            ))
        }
    }
    pub fn address(&self) -> &str {
        &self.address
    }
}

impl fmt::Debug for Contact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Contact")
            .field("kind", &self.kind)
            .field("address", &"<redacted>")
            .finish()
    }
}

/// What a customer hands in (seed CN102004977A, customer registration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerApplication {
    /// Full name, 1-128 printable characters of one script (Latin with Han,
    /// Kana or Hangul allowed); stored in NFKC, format, zero-width and
    /// bidi-control characters refused.
    pub name: String,
    pub national_id: NationalId,
    /// 1 to [`MAX_ACCOUNTS`] accounts, no repeats.
    pub accounts: Vec<Account>,
    pub contact: Contact,
}

impl CustomerApplication {
    /// The personal data of this application that free text bound for the
    /// audit trail must not repeat: the name and each of its words, the
    /// national id, the accounts and the contact address.
    pub(crate) fn personal_terms(&self) -> Vec<&str> {
        let mut terms = vec![
            self.name.as_str(),
            self.national_id.expose(),
            self.contact.address(),
        ];
        terms.extend(self.name.split_whitespace());
        terms.extend(self.accounts.iter().map(Account::as_str));
        terms
    }

    /// Checks the application and puts the name in normal form.
    pub(crate) fn validate(&mut self) -> Result<(), ProvisioningError> {
        self.name = person(&self.name, 128).ok_or_else(|| {
            invalid(
                "name",
                "must be 1-128 printable characters of one script without format, zero-width or bidi-control characters",
            )
        })?;
        if self.accounts.is_empty() || self.accounts.len() > MAX_ACCOUNTS {
            return Err(invalid("accounts", "between 1 and 32 accounts"));
        }
        for (i, a) in self.accounts.iter().enumerate() {
            if self.accounts[..i].contains(a) {
                return Err(invalid("accounts", "an account is listed twice"));
            }
        }
        Ok(())
    }
}

macro_rules! random_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $field:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub(crate) fn generate() -> Self {
                Self(format!(concat!($prefix, "{}"), hex::encode(rand::random::<[u8; 12]>())))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = ProvisioningError;
            fn from_str(s: &str) -> Result<Self, ProvisioningError> {
                match s.strip_prefix($prefix) {
                    Some(h) if h.len() == 24
                        && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
                    {
                        Ok(Self(s.to_owned()))
                    }
                    _ => Err(invalid($field, concat!("must be '", $prefix, "' and 24 lower-case hex digits"))),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

random_id!(
    /// A customer application; its customer id is allocated with it.
    ApplicationId,
    "app-",
    "application_id"
);
random_id!(
    /// A registered customer: the customer id of an approved application.
    CustomerId,
    "cust-",
    "customer_id"
);

/// Where an application is in review.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApplicationState {
    /// Waiting for a checker.
    Submitted,
    /// The customer exists and may be bound to devices.
    Approved,
    /// Sent back: the maker corrects and resubmits, or closes it.
    Rejected,
    /// Ended for good.
    Closed,
}

impl ApplicationState {
    pub const ALL: [ApplicationState; 4] = [
        Self::Submitted,
        Self::Approved,
        Self::Rejected,
        Self::Closed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Submitted => "submitted",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
            Self::Closed => "closed",
        }
    }
}

impl FromStr for ApplicationState {
    type Err = ProvisioningError;
    fn from_str(s: &str) -> Result<Self, ProvisioningError> {
        match s {
            "submitted" => Ok(Self::Submitted),
            "approved" => Ok(Self::Approved),
            "rejected" => Ok(Self::Rejected),
            "closed" => Ok(Self::Closed),
            _ => Err(invalid("state", "unknown application state")),
        }
    }
}

impl fmt::Display for ApplicationState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_edges() {
        use DeviceState::*;
        let edges: Vec<(DeviceState, DeviceState)> = DeviceState::ALL
            .into_iter()
            .flat_map(|a| DeviceState::ALL.into_iter().map(move |b| (a, b)))
            .filter(|(a, b)| a.has_edge(*b))
            .collect();
        assert_eq!(edges.len(), 5 + 5);
        assert!(Manufactured.has_edge(Verified));
        assert!(!Manufactured.has_edge(Initialised));
        assert!(!Verified.has_edge(Issued));
        assert!(!Retired.has_edge(Issued));
        assert!(!Issued.has_edge(Initialised));
        assert!(Issued.operator_edge(Suspended));
        assert!(Suspended.operator_edge(Issued));
        assert!(Manufactured.operator_edge(Retired));
        assert!(!Manufactured.operator_edge(Verified));
        assert!(!Initialised.operator_edge(Issued));
        assert!(!Retired.operator_edge(Retired));
    }

    #[test]
    fn ids_validate() {
        assert!("BATCH-2024.01_a".parse::<BatchId>().is_ok());
        assert!("batch 1".parse::<BatchId>().is_err());
        let a = ApplicationId::generate();
        assert_eq!(a.as_str().parse::<ApplicationId>().unwrap(), a);
        assert!("cust-00".parse::<CustomerId>().is_err());
        assert!(a.as_str().parse::<CustomerId>().is_err());
        assert!("6222020200112233".parse::<Account>().is_ok());
        assert!("62-22".parse::<Account>().is_err());
        assert!(" alice".parse::<OperatorId>().is_err());
    }

    #[test]
    fn look_alikes_are_refused_or_folded() {
        assert!("alice\u{200B}".parse::<OperatorId>().is_err());
        assert!("\u{202E}ecila".parse::<OperatorId>().is_err());
        assert_eq!(
            "ａｌｉｃｅ".parse::<OperatorId>().unwrap(),
            "alice".parse::<OperatorId>().unwrap()
        );
        let plain = NationalId::new("11010119900307123X").unwrap();
        assert_eq!(
            NationalId::new("１１０１０１１９９００３０７１２３ｘ").unwrap(),
            plain
        );
        assert_eq!(NationalId::new("11010119900307123x").unwrap(), plain);
        assert!(NationalId::new("110101199003071234\u{200B}").is_err());
        assert!(NationalId::new("\u{2067}110101199003071234").is_err());
        let mut app = CustomerApplication {
            name: "Ｌｉ Lei".into(),
            national_id: plain,
            accounts: vec!["6222020200112233".parse().unwrap()],
            contact: Contact::new(ContactKind::Sms, "+8613800138000").unwrap(),
        };
        app.validate().unwrap();
        assert_eq!(app.name, "Li Lei");
        app.name = "Li\u{200B} Lei".into();
        assert!(app.validate().is_err());
    }

    #[test]
    fn one_national_id_has_one_canonical_form() {
        let plain = NationalId::new("11010119900307123X").unwrap();
        for same in [
            "11010119900307123x",
            "110101 19900307 123X",
            "110101-1990-0307-123X",
            "110101.19900307/123X",
            "110101\u{2013}19900307\u{2212}123X",
            // Arabic-Indic and extended Arabic-Indic digits.
            "\u{661}\u{661}\u{660}\u{661}\u{660}\u{661}\u{661}\u{669}\u{669}\u{660}\u{660}\u{663}\u{660}\u{667}\u{661}\u{662}\u{663}X",
            "\u{6F1}\u{6F1}\u{6F0}\u{6F1}\u{6F0}\u{6F1}\u{6F1}\u{6F9}\u{6F9}\u{6F0}\u{6F0}\u{6F3}\u{6F0}\u{6F7}\u{6F1}\u{6F2}\u{6F3}x",
        ] {
            let id = NationalId::new(same).unwrap();
            assert_eq!(id, plain, "{same:?}");
            assert_eq!(id.expose(), "11010119900307123X");
            assert!(id.is_canonical());
        }
        // A Cyrillic Х (or х) check character, a Greek Χ: confusables.
        for look_alike in [
            "11010119900307123\u{425}",
            "11010119900307123\u{445}",
            "11010119900307123\u{3A7}",
        ] {
            let e = NationalId::new(look_alike).unwrap_err();
            assert!(e.to_string().contains("looks like"), "{look_alike:?}: {e}");
        }
        for bad in [
            // Two scripts' digits in one id.
            "1101011990030712\u{663}X",
            "11010119900307123\u{416}",
            "110101,19900307",
            "---",
        ] {
            assert!(NationalId::new(bad).is_err(), "{bad:?}");
        }
        // A value stored before the canonical form reads back as it was and
        // says so.
        let legacy = NationalId::from_stored("11010119900307123\u{425}".into());
        assert!(!legacy.is_canonical());
        assert_eq!(
            NationalId::from_stored("110101-19900307-123x".into()),
            plain
        );
    }

    #[test]
    fn operators_of_mixed_scripts_are_refused_look_alikes_are_one_person() {
        for bad in ["\u{430}lice", "alic\u{435}"] {
            assert!(bad.parse::<OperatorId>().is_err(), "{bad:?}");
        }
        let cope: OperatorId = "cope".parse().unwrap();
        let cyrillic: OperatorId = "\u{441}\u{43e}\u{440}\u{435}".parse().unwrap();
        assert!(cyrillic.same_person(cope.as_str()));
        assert!(cope.same_person("Cope"));
        assert!(!cope.same_person("bob"));
        let mut app = CustomerApplication {
            name: "H\u{430}n Meimei".into(),
            national_id: NationalId::new("110101198001010011").unwrap(),
            accounts: vec!["6222020200112233".parse().unwrap()],
            contact: Contact::new(ContactKind::Sms, "+8613800138000").unwrap(),
        };
        assert!(app.validate().is_err());
        app.name = "Zhang Wei \u{5f20}\u{4f1f}".into();
        app.validate().unwrap();
    }

    #[test]
    fn personal_data_is_redacted() {
        let n = NationalId::new("110101199001011234").unwrap();
        assert!(!format!("{n:?}").contains("1234"));
        let c = Contact::new(ContactKind::Email, "a@example.com").unwrap();
        assert!(!format!("{c:?}").contains("example"));
        assert!(Contact::new(ContactKind::Sms, "+8613800138000").is_ok());
        assert!(Contact::new(ContactKind::Sms, "call me").is_err());
        assert!(Contact::new(ContactKind::Email, "nobody").is_err());
    }
}
