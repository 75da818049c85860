//! Certificate profiles: what a certificate of each kind contains. The
//! profile alone decides subject, extensions and validity; nothing is taken
//! from a CSR but its public key.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use keyward_config::CaConfig;
use keyward_kms::types::DeviceId;
use rcgen::string::PrintableString;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, DnValue, ExtendedKeyUsagePurpose, IsCa,
    KeyUsagePurpose, SanType,
};

use crate::error::{CaError, Result};
use crate::hsm_key::SubjectKey;
use crate::names::{normal_name, person_name};

/// X.520 `serialNumber` (2.5.4.5): the device id in a device certificate's
/// subject, so a verifier can read it without parsing the CN.
pub(crate) const OID_DN_SERIAL_NUMBER: &[u64] = &[2, 5, 4, 5];

/// Longest operator name or common name accepted, in characters (X.520 ub-common-name).
const MAX_NAME_CHARS: usize = 64;
/// SANs in one server certificate.
const MAX_DNS_NAMES: usize = 32;

/// The kinds of certificate the issuing CA signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Profile {
    /// A terminal's TLS client certificate: CN and serialNumber = device id.
    Device,
    /// A Keyward server's TLS certificate: DNS/IP SANs, serverAuth.
    ServerTls,
    /// An operator's admin-API client certificate: CN = name, OU = role.
    Operator,
    /// The key that signs e-purse load permits: digitalSignature only.
    LoadPermit,
    /// A back-end system's admin-API client certificate (the transaction
    /// switch that verifies MACs in bulk): CN = name, OU = `service`.
    Service,
    /// The key that signs confirmation evidence receipts: digitalSignature
    /// and contentCommitment (non-repudiation) only, no extended key usage,
    /// so it can neither serve TLS nor log in.
    Evidence,
    /// The RSA key cards encrypt the secure channel's pre-master to:
    /// keyEncipherment only, no extended key usage, so it can neither sign
    /// nor serve TLS.
    Channel,
}

impl Profile {
    pub const ALL: [Profile; 7] = [
        Profile::Device,
        Profile::ServerTls,
        Profile::Operator,
        Profile::LoadPermit,
        Profile::Service,
        Profile::Evidence,
        Profile::Channel,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Device => "device",
            Self::ServerTls => "server-tls",
            Self::Operator => "operator",
            Self::LoadPermit => "load-permit",
            Self::Service => "service",
            Self::Evidence => "evidence",
            Self::Channel => "channel",
        }
    }

    /// Days a certificate of this profile is valid (load-permit and
    /// evidence keys are server keys and follow `server_validity_days`).
    pub fn validity_days(self, cfg: &CaConfig) -> u32 {
        match self {
            Self::Device => cfg.device_validity_days,
            Self::ServerTls | Self::LoadPermit | Self::Service | Self::Evidence | Self::Channel => {
                cfg.server_validity_days
            }
            Self::Operator => cfg.operator_validity_days,
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Profile {
    type Err = CaError;
    fn from_str(s: &str) -> Result<Self> {
        Profile::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or(CaError::Invalid {
                field: "profile",
                reason: "one of device, server-tls, operator, load-permit, service, evidence, channel",
            })
    }
}

/// An operator's role, carried as the OU of an operator certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Admin,
    Operator,
    Auditor,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Admin, Role::Operator, Role::Auditor];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Operator => "operator",
            Self::Auditor => "auditor",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = CaError;
    fn from_str(s: &str) -> Result<Self> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or(CaError::Invalid {
                field: "role",
                reason: "one of admin, operator, auditor",
            })
    }
}

/// What to certify under which profile. Each profile takes only its own
/// fields and refuses the others, so a mistaken request fails instead of
/// being silently narrowed; the constructors fill in the right ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueRequest {
    pub profile: Profile,
    /// Device profile only, required.
    pub device_id: Option<DeviceId>,
    /// Operator profile only, required: the operator's name and role.
    pub operator: Option<(String, Role)>,
    /// Server-TLS profile only, at least one: DNS names and IP literals.
    pub dns_names: Vec<String>,
    /// Load-permit and evidence profiles, optional: the subject CN (default
    /// "`<organization>` Load Permit", "`<organization>` Confirmation
    /// Evidence"); service profile, required: the service's name.
    pub common_name: Option<String>,
}

impl IssueRequest {
    fn empty(profile: Profile) -> Self {
        Self {
            profile,
            device_id: None,
            operator: None,
            dns_names: Vec::new(),
            common_name: None,
        }
    }

    pub fn device(device_id: DeviceId) -> Self {
        Self {
            device_id: Some(device_id),
            ..Self::empty(Profile::Device)
        }
    }

    pub fn server_tls<S: Into<String>>(names: impl IntoIterator<Item = S>) -> Self {
        Self {
            dns_names: names.into_iter().map(Into::into).collect(),
            ..Self::empty(Profile::ServerTls)
        }
    }

    pub fn operator(name: impl Into<String>, role: Role) -> Self {
        Self {
            operator: Some((name.into(), role)),
            ..Self::empty(Profile::Operator)
        }
    }

    pub fn load_permit(common_name: Option<String>) -> Self {
        Self {
            common_name,
            ..Self::empty(Profile::LoadPermit)
        }
    }

    pub fn service(name: impl Into<String>) -> Self {
        Self {
            common_name: Some(name.into()),
            ..Self::empty(Profile::Service)
        }
    }

    pub fn evidence(common_name: Option<String>) -> Self {
        Self {
            common_name,
            ..Self::empty(Profile::Evidence)
        }
    }

    pub fn channel(common_name: Option<String>) -> Self {
        Self {
            common_name,
            ..Self::empty(Profile::Channel)
        }
    }
}

/// What the registry records about a certificate besides its PEM.
#[derive(Debug, Clone)]
pub(crate) struct ProfileFacts {
    pub device_id: Option<DeviceId>,
    pub role: Option<Role>,
}

/// The certificate parameters `req` yields for `key`, minus serial and
/// validity (the caller sets those). Refuses a request that does not meet its
/// profile.
pub(crate) fn params_for(
    req: &IssueRequest,
    key: &SubjectKey,
    organization: &str,
) -> Result<(CertificateParams, ProfileFacts)> {
    let p = req.profile;
    let refuse = |reason| Err(CaError::profile(p, reason));
    if p != Profile::Device && req.device_id.is_some() {
        return refuse("a device id belongs only in a device certificate");
    }
    if p != Profile::Operator && req.operator.is_some() {
        return refuse("an operator belongs only in an operator certificate");
    }
    if p != Profile::ServerTls && !req.dns_names.is_empty() {
        return refuse("DNS names belong only in a server-tls certificate");
    }
    if !matches!(
        p,
        Profile::LoadPermit | Profile::Service | Profile::Evidence | Profile::Channel
    ) && req.common_name.is_some()
    {
        return refuse(
            "a free common name belongs only in a load-permit, evidence, channel or service \
             certificate",
        );
    }

    let mut params = CertificateParams::default();
    // The CSR's wishes never reach here; state every decision explicitly.
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    params.subject_alt_names = Vec::new();
    params.extended_key_usages = Vec::new();
    params.custom_extensions = Vec::new();
    params.name_constraints = None;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, organization);
    let mut facts = ProfileFacts {
        device_id: None,
        role: None,
    };

    match p {
        Profile::Device => {
            let Some(id) = req.device_id else {
                return refuse("a device id is required");
            };
            let id_text = id.to_string();
            let printable = PrintableString::try_from(id_text.as_str())
                .map_err(|_| CaError::profile(p, "device id is not printable"))?;
            dn.push(DnType::CommonName, id_text.as_str());
            dn.push(
                DnType::CustomDnType(OID_DN_SERIAL_NUMBER.to_vec()),
                DnValue::PrintableString(printable),
            );
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            facts.device_id = Some(id);
        }
        Profile::ServerTls => {
            if req.dns_names.is_empty() {
                return refuse("at least one DNS name or IP address is required");
            }
            if req.dns_names.len() > MAX_DNS_NAMES {
                return refuse("at most 32 DNS names");
            }
            let mut sans = Vec::with_capacity(req.dns_names.len());
            for name in &req.dns_names {
                let san = match IpAddr::from_str(name) {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) if is_dns_name(name) => SanType::DnsName(
                        name.to_ascii_lowercase()
                            .try_into()
                            .map_err(|_| CaError::profile(p, "DNS name is not IA5"))?,
                    ),
                    Err(_) => return refuse("a name is neither a DNS name nor an IP address"),
                };
                if !sans.contains(&san) {
                    sans.push(san);
                }
            }
            dn.push(DnType::CommonName, req.dns_names[0].to_ascii_lowercase());
            params.subject_alt_names = sans;
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            if key.is_rsa() {
                params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
            }
        }
        Profile::Operator => {
            let Some((name, role)) = &req.operator else {
                return refuse("an operator name and role are required");
            };
            let Some(name) = person_name(name, MAX_NAME_CHARS) else {
                return refuse(
                    "operator name must be 1 to 64 printable characters of one script, \
                     without format, zero-width or bidi-control characters",
                );
            };
            dn.push(DnType::OrganizationalUnitName, role.as_str());
            dn.push(DnType::CommonName, name);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            facts.role = Some(*role);
        }
        Profile::LoadPermit | Profile::Evidence | Profile::Channel => {
            let default = match p {
                Profile::LoadPermit => "Load Permit",
                Profile::Channel => "Secure Channel",
                _ => "Confirmation Evidence",
            };
            let cn = match &req.common_name {
                Some(cn) => match normal_name(cn, MAX_NAME_CHARS) {
                    Some(cn) => cn,
                    None => return refuse("common name must be 1 to 64 printable characters"),
                },
                None => format!("{organization} {default}"),
            };
            dn.push(DnType::CommonName, cn);
            if p == Profile::Evidence {
                // What it signs is a statement the bank stands behind.
                params.key_usages.push(KeyUsagePurpose::ContentCommitment);
            }
            if p == Profile::Channel {
                // Cards encrypt to it; it signs nothing.
                if !key.is_rsa() {
                    return refuse("the channel key must be RSA");
                }
                params.key_usages = vec![KeyUsagePurpose::KeyEncipherment];
            }
        }
        Profile::Service => {
            let Some(name) = req.common_name.as_deref().and_then(service_name) else {
                return refuse(
                    "a service name of 1 to 64 characters a-z, 0-9, '-', '.' and '_' is required",
                );
            };
            // OU `service` is what the admin listener reads the kind from;
            // no role OU, so an operator route never admits it.
            dn.push(DnType::OrganizationalUnitName, SERVICE_OU);
            dn.push(DnType::CommonName, name);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
    }
    params.distinguished_name = dn;
    Ok((params, facts))
}

/// The subject OU of a service certificate.
pub const SERVICE_OU: &str = "service";

/// A service name: a machine identifier, so plain ASCII (no look-alikes to
/// fold), 1 to 64 characters.
fn service_name(s: &str) -> Option<String> {
    let ok = (1..=MAX_NAME_CHARS).contains(&s.len())
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'_')
        });
    ok.then(|| s.to_owned())
}

/// A DNS host name (LDH labels, optional trailing dot not allowed), or a
/// single leading `*.` wildcard label.
fn is_dns_name(name: &str) -> bool {
    let body = name.strip_prefix("*.").unwrap_or(name);
    !body.is_empty()
        && name.len() <= 253
        && body.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
fn is_display_name(s: &str) -> bool {
    normal_name(s, MAX_NAME_CHARS).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_dns_name("keyward.bank.example"));
        assert!(is_dns_name("*.bank.example"));
        assert!(is_dns_name("localhost"));
        assert!(!is_dns_name("a..b"));
        assert!(!is_dns_name("-a.b"));
        assert!(!is_dns_name("a b"));
        assert!(!is_dns_name("*."));
        assert!(is_display_name("Zhang Wei 张伟"));
        assert!(!is_display_name(" x"));
        assert!(!is_display_name(""));
        assert!(!is_display_name("a\nb"));
        // Look-alikes: invisible and bidi characters are refused, compatibility
        // forms are folded.
        for bad in [
            "alice\u{200B}",
            "al\u{200D}ice",
            "\u{202E}ecila",
            "alice\u{2066}",
            "\u{FEFF}alice",
            "ali\u{00AD}ce",
            "alice\u{FE0F}",
            "alice\u{E0061}",
        ] {
            assert_eq!(normal_name(bad, 64), None, "{bad:?}");
        }
        assert_eq!(normal_name("ａｌｉｃｅ", 64).as_deref(), Some("alice"));
        assert_eq!(normal_name("１１０１", 64).as_deref(), Some("1101"));
        assert_eq!(
            normal_name("Zhang Wei 张伟", 64).as_deref(),
            Some("Zhang Wei 张伟")
        );
    }

    #[test]
    fn profile_and_role_names_round_trip() {
        for p in Profile::ALL {
            assert_eq!(p.as_str().parse::<Profile>().unwrap(), p);
        }
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
        }
        assert_eq!(
            "root".parse::<Profile>().unwrap_err().code(),
            "invalid_input"
        );
    }
}
