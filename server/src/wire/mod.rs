//! Request and response bodies of both listeners, defined once: the routes
//! serialise them, `kwctl` sends and reads them, `kwsim` and the tests speak
//! them as a device or a station would. docs/admin-api.md documents each
//! shape; changing a field here changes the API.
//!
//! Request bodies refuse unknown fields (a typo is a 400, not a silently
//! ignored option); answers accept them, so a newer server does not break an
//! older `kwctl`. Binary values travel as base64 (keys, signatures) or
//! upper-case hex (challenges, KCVs), as the docs say for each.
//!
//! - [`devices`]: batches, devices, the genuine-device check, init packages,
//!   lifecycle and bindings (`/admin/v1/batches`, `/admin/v1/devices`).
//! - [`customers`]: customer review (`/admin/v1/applications`,
//!   `/admin/v1/customers`).
//! - [`issuers`]: issuers and their master keys (`/admin/v1/issuers`).
//! - [`ca`]: certificates, revocation, operators (`/admin/v1/ca`,
//!   `/admin/v1/operators`).
//! - [`macs`]: bulk MAC verification (`/admin/v1/macs/verify`), JSON and
//!   the binary encoding.
//! - [`login`]: device login and sessions (`/v1/login`, `/v1/session`), and
//!   the operators' key-rotation and credential routes.
//! - [`transactions`]: a device's transaction (MAC, account fields, PIN
//!   block) (`/v1/transactions`).
//! - [`confirmations`]: transaction confirmation over a second channel
//!   (`/v1/confirmations`).
//! - [`WhoAmI`], [`AuditRecords`], [`AuditVerified`], [`AuditCheckpoint`]:
//!   the operator and the audit trail.
//! - [`Ping`]: `GET /v1/ping` on the public listener.

pub mod ca;
pub mod channel;
pub mod confirmations;
pub mod customers;
pub mod devices;
pub mod issuers;
pub mod loads;
pub mod login;
pub mod macs;
pub mod transactions;

pub use crate::audit::AuditRecord;
/// `GET /admin/v1/audit/checkpoint`: a signed head to store elsewhere, and
/// what `verify --against` reads back.
pub use crate::audit::SignedCheckpoint as AuditCheckpoint;

use keyward_kms::types::Kcv as DomainKcv;
use serde::{Deserialize, Serialize};

/// A key check value as it travels: `{"method", "value"}` (value in hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kcv {
    pub method: String,
    pub value: String,
}

impl From<&DomainKcv> for Kcv {
    fn from(k: &DomainKcv) -> Self {
        Self {
            method: k.method.as_str().to_owned(),
            value: k.hex(),
        }
    }
}

impl TryFrom<&Kcv> for DomainKcv {
    type Error = keyward_kms::KmsError;
    fn try_from(k: &Kcv) -> Result<Self, Self::Error> {
        DomainKcv::parse(&k.method, &k.value)
    }
}

/// `GET /v1/ping`: the peer and client certificate the server saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    pub pong: bool,
    pub peer: String,
    pub client: Option<PingClient>,
}

/// The client certificate of a [`Ping`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingClient {
    /// `device`, `operator` or `other`.
    pub kind: String,
    pub common_name: String,
    pub device_id: Option<String>,
    pub role: Option<String>,
    pub serial: String,
}

/// `GET /admin/v1/whoami`: the operator the server sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoAmI {
    pub name: String,
    pub role: String,
    pub serial: String,
}

/// `GET /admin/v1/audit`: the most recent records, newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditRecords {
    pub records: Vec<AuditRecord>,
}

/// `GET /admin/v1/audit/verify` (and `keyward audit verify --json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditVerified {
    pub ok: bool,
    pub records: u64,
    /// The first record whose link, hash or MAC is wrong (or where records
    /// are missing).
    pub first_bad: Option<i64>,
    pub problem: Option<String>,
    pub head_seq: i64,
    /// The first record with an HSM MAC (`None`: not keyed yet).
    #[serde(default)]
    pub keyed_from: Option<i64>,
    /// The HSM checkpoint compared against.
    #[serde(default)]
    pub checkpoint_seq: Option<i64>,
}

impl From<&crate::audit::VerifyReport> for AuditVerified {
    fn from(r: &crate::audit::VerifyReport) -> Self {
        Self {
            ok: r.ok(),
            records: r.records,
            first_bad: r.first_bad,
            problem: r.problem.clone(),
            head_seq: r.head_seq,
            keyed_from: r.keyed_from,
            checkpoint_seq: r.checkpoint_seq,
        }
    }
}
