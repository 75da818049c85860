//! Issuer bodies (docs/admin-api.md "Issuers").

use keyward_kms::catalog::IssuerRecord;
use serde::{Deserialize, Serialize};

use super::Kcv;

/// `POST /admin/v1/issuers`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateIssuer {
    pub issuer_id: String,
    /// `tdes` or `aes`.
    pub family: String,
}

/// `POST /admin/v1/issuers/{id}/keys`: give an existing issuer a token key
/// it lacks (today: `ZPK`, the zone PIN key).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddIssuerKey {
    pub role: String,
}

/// An issuer and its master keys; also what `keyward issuer` prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issuer {
    pub issuer_id: String,
    pub family: String,
    pub created_at_ms: i64,
    pub master_keys: Vec<MasterKey>,
}

/// One master key of an [`Issuer`] (HSM label and KCV, never key bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterKey {
    pub role: String,
    pub label: String,
    pub kcv: Kcv,
}

impl From<&IssuerRecord> for Issuer {
    fn from(rec: &IssuerRecord) -> Self {
        Self {
            issuer_id: rec.id.as_str().to_owned(),
            family: rec.family.as_str().to_owned(),
            created_at_ms: rec.created_at_ms,
            master_keys: rec
                .master_keys
                .iter()
                .map(|k| MasterKey {
                    role: k.role.as_str().to_owned(),
                    label: k.label.clone(),
                    kcv: (&k.kcv).into(),
                })
                .collect(),
        }
    }
}

/// `GET /admin/v1/issuers`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IssuerList {
    pub issuers: Vec<Issuer>,
}
