//! Keyward configuration.
//!
//! One TOML file, overridable from the environment, validated before anything
//! touches the HSM or the database. Error messages name the offending key and
//! never echo its value: a misplaced PIN or database password must not end up in
//! a log line.
//!
//! # Layout
//! - [`Config`] and its sections: the schema (`deny_unknown_fields` everywhere).
//! - [`Config::load`]: file → environment overrides (`KEYWARD__SECTION__KEY`) → validation.
//! - [`HsmConfig::pin`]: the user PIN, read from a file or an environment variable, never inline.
//! - [`ConfigError`]: what can go wrong, each variant naming a key or a path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use secrecy::SecretString;
use serde::Deserialize;

/// Prefix of environment variables that override file settings:
/// `KEYWARD__HSM__SESSIONS=4` sets `hsm.sessions`.
pub const ENV_PREFIX: &str = "KEYWARD__";

/// Why a configuration was refused. Messages carry key names and paths, never values.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML (line {line})")]
    Syntax { path: PathBuf, line: usize },
    #[error("config key `{key}`: {problem}")]
    Key { key: String, problem: String },
    #[error("environment override {var} does not name a config key")]
    BadOverride { var: String },
    #[error("cannot read the HSM PIN from {source_name}: {reason}")]
    Pin { source_name: String, reason: String },
}

impl ConfigError {
    fn key(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Key {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Directory for the embedded database and local state; relative paths in
    /// the file are resolved against the config file's directory.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    pub hsm: HsmConfig,
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub ca: CaConfig,
    #[serde(default)]
    pub provisioning: ProvisioningConfig,
    #[serde(default)]
    pub online: OnlineConfig,
}

/// The online service terminals use every day: login (random
/// challenge/response, lockout), sessions and working-key rotation
/// (docs/protocol.md §10). Issuer policy: the `[online]` values are the
/// defaults, `[online.issuers.<id>]` overrides them for one issuer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnlineConfig {
    /// How long a login challenge may be answered.
    #[serde(default = "default_login_challenge_ttl_ms")]
    pub challenge_ttl_ms: u64,
    /// How long a session lasts from its login (a terminal's working day).
    #[serde(default = "default_session_ttl_secs")]
    pub session_ttl_secs: u64,
    /// Consecutive failed responses that lock a (device, issuer) credential.
    #[serde(default = "default_max_login_failures")]
    pub max_login_failures: u32,
    /// Whether a lockout also revokes the device certificate (PROTOCOL.md:
    /// yes). The certificate is the device's for every issuer.
    #[serde(default = "yes")]
    pub revoke_on_lockout: bool,
    /// Whether a KCV mismatch on a key update suspends the device at once
    /// (otherwise the version is rejected and the device keeps its keys).
    #[serde(default)]
    pub suspend_on_kcv_mismatch: bool,
    /// Age of the active working-key version after which a login offers a
    /// new one.
    #[serde(default = "default_rotation_max_age_secs")]
    pub rotation_max_age_secs: u64,
    /// How long the version a rotation replaced stays accepted.
    #[serde(default = "default_rotation_grace_secs")]
    pub rotation_grace_secs: u64,
    /// How often each replica offers to run the background jobs (grace-period
    /// retirement, expired sessions and challenges); one replica runs them.
    #[serde(default = "default_jobs_interval_ms")]
    pub jobs_interval_ms: u64,
    /// Per-issuer overrides, by issuer id.
    #[serde(default)]
    pub issuers: BTreeMap<String, IssuerPolicyConfig>,
}

/// One issuer's overrides of the `[online]` defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerPolicyConfig {
    pub max_login_failures: Option<u32>,
    pub revoke_on_lockout: Option<bool>,
    pub suspend_on_kcv_mismatch: Option<bool>,
    pub rotation_max_age_secs: Option<u64>,
}

impl Default for OnlineConfig {
    fn default() -> Self {
        Self {
            challenge_ttl_ms: default_login_challenge_ttl_ms(),
            session_ttl_secs: default_session_ttl_secs(),
            max_login_failures: default_max_login_failures(),
            revoke_on_lockout: true,
            suspend_on_kcv_mismatch: false,
            rotation_max_age_secs: default_rotation_max_age_secs(),
            rotation_grace_secs: default_rotation_grace_secs(),
            jobs_interval_ms: default_jobs_interval_ms(),
            issuers: BTreeMap::new(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_login_challenge_ttl_ms() -> u64 {
    60_000
}
fn default_session_ttl_secs() -> u64 {
    8 * 3600
}
fn default_max_login_failures() -> u32 {
    10
}
fn default_rotation_max_age_secs() -> u64 {
    30 * 24 * 3600
}
fn default_rotation_grace_secs() -> u64 {
    24 * 3600
}
fn default_jobs_interval_ms() -> u64 {
    5_000
}

/// Device provisioning.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisioningConfig {
    /// Failed genuine-device checks after which a device is parked until an
    /// operator resets it (`kwctl device check-reset`).
    #[serde(default = "default_check_attempt_limit")]
    pub check_attempt_limit: u32,
    /// How long a batch import holds its batch without renewing (renewed
    /// every sixth of it). A process killed mid-import leaves a batch that
    /// is taken over and undone once this has passed; it is also how often
    /// `serve` looks for such batches.
    #[serde(default = "default_import_lease_ms")]
    pub import_lease_ms: u64,
}

impl Default for ProvisioningConfig {
    fn default() -> Self {
        Self {
            check_attempt_limit: default_check_attempt_limit(),
            import_lease_ms: default_import_lease_ms(),
        }
    }
}

fn default_import_lease_ms() -> u64 {
    30_000
}

fn default_check_attempt_limit() -> u32 {
    5
}

/// The network service: a public mTLS listener for devices and a separate
/// admin listener (admin API over mTLS with operator certificates, plus
/// `/metrics`, `/live`, `/ready`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_public_listen")]
    pub public_listen: String,
    #[serde(default = "default_admin_listen")]
    pub admin_listen: String,
    /// DNS names and IP addresses put in the server TLS certificate.
    #[serde(default = "default_public_names")]
    pub public_names: Vec<String>,
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Requests served at once; more are shed with 503.
    #[serde(default = "default_max_concurrent_requests")]
    pub max_concurrent_requests: usize,
    /// Time limit of a manufacturing batch import (`POST /admin/v1/batches`),
    /// which certifies every device of the batch in the HSM.
    #[serde(default = "default_batch_timeout_ms")]
    pub batch_timeout_ms: u64,
    /// Largest batch import body: a 10 000-device manifest with base64 CSRs
    /// is about 7 MB.
    #[serde(default = "default_batch_max_body_bytes")]
    pub batch_max_body_bytes: usize,
    /// Most items one bulk MAC verification (`POST /admin/v1/macs/verify`)
    /// may carry; a larger batch is refused whole (413 `batch_too_large`).
    #[serde(default = "default_bulk_max_items")]
    pub bulk_max_items: usize,
    /// Largest bulk MAC verification body (100 000 items of short messages
    /// in JSON are about 25 MB). Its time limit is `batch_timeout_ms`.
    #[serde(default = "default_bulk_max_body_bytes")]
    pub bulk_max_body_bytes: usize,
    /// How often the CRL used for client-certificate checks is rebuilt.
    #[serde(default = "default_crl_refresh_secs")]
    pub crl_refresh_secs: u64,
    /// How often a replica looks in the database for a revocation made by
    /// another replica (one small read); a revocation reaches every replica's
    /// TLS verifier within about this long.
    #[serde(default = "default_revocation_poll_ms")]
    pub revocation_poll_ms: u64,
    /// Anonymous OCSP requests served at once, a budget of their own so that
    /// a flood of them cannot make `/ready`, `/metrics` or the admin API
    /// answer 503.
    #[serde(default = "default_ocsp_max_concurrent_requests")]
    pub ocsp_max_concurrent_requests: usize,
    /// Largest OCSP request body (8 CertIDs are well under 1 KiB).
    #[serde(default = "default_ocsp_max_body_bytes")]
    pub ocsp_max_body_bytes: usize,
    /// OCSP answers signed per second on cache misses; past it `tryLater`.
    #[serde(default = "default_ocsp_signatures_per_second")]
    pub ocsp_signatures_per_second: u32,
    /// Signed OCSP answers kept until the registry changes.
    #[serde(default = "default_ocsp_cache_entries")]
    pub ocsp_cache_entries: usize,
    /// Time a client has to send a request's headers (HTTP/1.1, also while a
    /// kept-alive connection waits for its next request).
    #[serde(default = "default_header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// Time a client has to send a request's body, from its headers
    /// (batch imports: `batch_timeout_ms`).
    #[serde(default = "default_body_read_timeout_ms")]
    pub body_read_timeout_ms: u64,
    /// A connection with no request in flight for this long is closed.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Open connections per client IP address on each listener; more are
    /// closed before the TLS handshake.
    #[serde(default = "default_max_connections_per_address")]
    pub max_connections_per_address: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            public_listen: default_public_listen(),
            admin_listen: default_admin_listen(),
            public_names: default_public_names(),
            request_timeout_ms: default_request_timeout_ms(),
            max_body_bytes: default_max_body_bytes(),
            max_concurrent_requests: default_max_concurrent_requests(),
            batch_timeout_ms: default_batch_timeout_ms(),
            batch_max_body_bytes: default_batch_max_body_bytes(),
            bulk_max_items: default_bulk_max_items(),
            bulk_max_body_bytes: default_bulk_max_body_bytes(),
            crl_refresh_secs: default_crl_refresh_secs(),
            revocation_poll_ms: default_revocation_poll_ms(),
            ocsp_max_concurrent_requests: default_ocsp_max_concurrent_requests(),
            ocsp_max_body_bytes: default_ocsp_max_body_bytes(),
            ocsp_signatures_per_second: default_ocsp_signatures_per_second(),
            ocsp_cache_entries: default_ocsp_cache_entries(),
            header_read_timeout_ms: default_header_read_timeout_ms(),
            body_read_timeout_ms: default_body_read_timeout_ms(),
            idle_timeout_ms: default_idle_timeout_ms(),
            max_connections_per_address: default_max_connections_per_address(),
        }
    }
}

/// Keyward's certificate authority.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    /// Key algorithm of the CA keys: `p256` or `rsa3072`.
    #[serde(default)]
    pub key_algorithm: CaKeyAlgorithm,
    /// Organisation (O) in CA and issued subjects.
    #[serde(default = "default_ca_organization")]
    pub organization: String,
    #[serde(default = "default_root_validity_days")]
    pub root_validity_days: u32,
    #[serde(default = "default_issuing_validity_days")]
    pub issuing_validity_days: u32,
    #[serde(default = "default_device_validity_days")]
    pub device_validity_days: u32,
    #[serde(default = "default_server_validity_days")]
    pub server_validity_days: u32,
    #[serde(default = "default_operator_validity_days")]
    pub operator_validity_days: u32,
    /// CRL next-update distance; the CRL is re-signed well before it.
    #[serde(default = "default_crl_validity_hours")]
    pub crl_validity_hours: u32,
}

/// Key algorithm of the CA key pairs in the HSM. Typed here so that a bad
/// value stops the start in [`Config::load`], before the HSM is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CaKeyAlgorithm {
    /// ECDSA P-256.
    #[default]
    P256,
    /// RSA, 3072 bits.
    Rsa3072,
}

impl CaKeyAlgorithm {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::P256 => "p256",
            Self::Rsa3072 => "rsa3072",
        }
    }
}

impl std::fmt::Display for CaKeyAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Default for CaConfig {
    fn default() -> Self {
        Self {
            key_algorithm: CaKeyAlgorithm::default(),
            organization: default_ca_organization(),
            root_validity_days: default_root_validity_days(),
            issuing_validity_days: default_issuing_validity_days(),
            device_validity_days: default_device_validity_days(),
            server_validity_days: default_server_validity_days(),
            operator_validity_days: default_operator_validity_days(),
            crl_validity_hours: default_crl_validity_hours(),
        }
    }
}

fn default_public_listen() -> String {
    "127.0.0.1:8443".into()
}
fn default_admin_listen() -> String {
    "127.0.0.1:9443".into()
}
fn default_public_names() -> Vec<String> {
    vec!["localhost".into(), "127.0.0.1".into()]
}
fn default_request_timeout_ms() -> u64 {
    10_000
}
fn default_max_body_bytes() -> usize {
    4 * 1024 * 1024
}
fn default_max_concurrent_requests() -> usize {
    1024
}
fn default_batch_timeout_ms() -> u64 {
    15 * 60 * 1000
}
fn default_batch_max_body_bytes() -> usize {
    32 * 1024 * 1024
}
fn default_bulk_max_items() -> usize {
    100_000
}
fn default_bulk_max_body_bytes() -> usize {
    64 * 1024 * 1024
}
fn default_revocation_poll_ms() -> u64 {
    1000
}

fn default_crl_refresh_secs() -> u64 {
    60
}
fn default_ocsp_max_concurrent_requests() -> usize {
    64
}
fn default_ocsp_max_body_bytes() -> usize {
    8 * 1024
}
fn default_ocsp_signatures_per_second() -> u32 {
    50
}
fn default_ocsp_cache_entries() -> usize {
    10_000
}
fn default_header_read_timeout_ms() -> u64 {
    10_000
}
fn default_body_read_timeout_ms() -> u64 {
    10_000
}
fn default_idle_timeout_ms() -> u64 {
    60_000
}
fn default_max_connections_per_address() -> usize {
    128
}
fn default_ca_organization() -> String {
    "Keyward".into()
}
fn default_root_validity_days() -> u32 {
    7300
}
fn default_issuing_validity_days() -> u32 {
    3650
}
fn default_device_validity_days() -> u32 {
    1825
}
fn default_server_validity_days() -> u32 {
    397
}
fn default_operator_validity_days() -> u32 {
    365
}
fn default_crl_validity_hours() -> u32 {
    24
}

/// How to reach the PKCS#11 token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HsmConfig {
    /// Path of the PKCS#11 module (`.so`).
    pub module: PathBuf,
    /// Token label. Slots are chosen by label only: slot numbers change between
    /// HSM restarts and SoftHSM derives them from the token serial.
    pub token_label: String,
    /// File holding the user PIN (first line). Exactly one of `pin_file`, `pin_env`.
    pub pin_file: Option<PathBuf>,
    /// Name of an environment variable holding the user PIN.
    pub pin_env: Option<String>,
    /// Worker threads, each owning one long-lived session.
    #[serde(default = "default_sessions")]
    pub sessions: usize,
    /// Jobs that may wait for a worker before callers get a "busy" error.
    #[serde(default = "default_queue_depth")]
    pub queue_depth: usize,
    /// Derived per-device keys kept as session objects (LRU).
    #[serde(default = "default_derived_key_cache")]
    pub derived_key_cache: usize,
    /// Serialise object creation, lookup and destruction in the process
    /// (SoftHSM 2.6.1 races without it, SoftHSMv2 #573). Off only for a
    /// module known not to.
    #[serde(default = "yes")]
    pub serialize_object_ops: bool,
    /// Mechanism numbers to use instead of the PKCS#11 standard ones, for
    /// HSMs that expose an operation under a vendor code.
    #[serde(default)]
    pub mechanisms: MechanismOverrides,
}

/// Per-operation PKCS#11 mechanism numbers. `None` means the standard mechanism
/// (or, for the retail MAC, the portable emulation).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MechanismOverrides {
    /// `CKM_DES3_ECB_ENCRYPT_DATA` (0x1102) replacement.
    pub des3_ecb_encrypt_data: Option<u64>,
    /// `CKM_AES_ECB_ENCRYPT_DATA` (0x1104) replacement.
    pub aes_ecb_encrypt_data: Option<u64>,
    /// `CKM_DES3_CMAC` (0x138) replacement.
    pub des3_cmac: Option<u64>,
    /// A vendor ANSI X9.19 retail-MAC mechanism (e.g. `CKM_VENDOR_DEFINED + 0x150`);
    /// without one the MAC is built from single-DES-equivalent DES2 keys.
    pub des3_retail_mac: Option<u64>,
    /// A vendor PIN-translation mechanism (TPK → ZPK inside the HSM). SoftHSM
    /// has none: without one, PIN routes answer `501 hsm_mechanism_missing`.
    pub pin_translate: Option<u64>,
}

/// Where the key catalog lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` (embedded default) or `postgres://…`. A relative SQLite
    /// path is resolved against `data_dir`.
    #[serde(default = "default_database_url")]
    pub url: String,
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// How long a request waits for the database — a pooled connection, a
    /// new connection, SQLite's write lock — before it is answered `503
    /// database_unavailable` instead of hanging until the request timeout.
    #[serde(default = "default_acquire_timeout_ms")]
    pub acquire_timeout_ms: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: default_database_url(),
            max_connections: default_max_connections(),
            acquire_timeout_ms: default_acquire_timeout_ms(),
        }
    }
}

fn default_acquire_timeout_ms() -> u64 {
    1500
}

/// Log output.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `keyward_kms=debug,info`.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// `text` for people, `json` for log shippers.
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: default_log_level(),
            format: LogFormat::default(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("var")
}
fn default_sessions() -> usize {
    2
}
fn default_queue_depth() -> usize {
    4096
}
fn default_derived_key_cache() -> usize {
    10_000
}
fn default_database_url() -> String {
    "sqlite://keyward.db".into()
}
fn default_max_connections() -> u32 {
    8
}
fn default_log_level() -> String {
    "info".into()
}

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseKind {
    Sqlite,
    Postgres,
}

impl DatabaseConfig {
    /// The backend the URL selects; validation guarantees one of the two.
    pub fn kind(&self) -> DatabaseKind {
        if self.url.starts_with("sqlite:") {
            DatabaseKind::Sqlite
        } else {
            DatabaseKind::Postgres
        }
    }
}

impl HsmConfig {
    /// Reads the user PIN from its file or environment variable.
    pub fn pin(&self) -> Result<SecretString, ConfigError> {
        let (source_name, raw) = match (&self.pin_file, &self.pin_env) {
            (Some(path), None) => (
                path.display().to_string(),
                std::fs::read_to_string(path).map_err(|e| ConfigError::Pin {
                    source_name: path.display().to_string(),
                    reason: e.kind().to_string(),
                })?,
            ),
            (None, Some(var)) => (
                format!("${var}"),
                std::env::var(var).map_err(|_| ConfigError::Pin {
                    source_name: format!("${var}"),
                    reason: "variable is not set or not UTF-8".into(),
                })?,
            ),
            _ => {
                return Err(ConfigError::key(
                    "hsm.pin_file",
                    "exactly one of hsm.pin_file and hsm.pin_env must be set",
                ));
            }
        };
        let pin = raw.lines().next().unwrap_or("").trim().to_owned();
        if pin.is_empty() {
            return Err(ConfigError::Pin {
                source_name,
                reason: "it is empty".into(),
            });
        }
        Ok(SecretString::from(pin))
    }
}

impl Config {
    /// Loads `path`, applies `KEYWARD__…` overrides from the process
    /// environment, resolves relative paths against the file's directory and
    /// validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let env: BTreeMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_parts(&text, path, &env, base)
    }

    /// [`Config::load`] without touching the filesystem or the process
    /// environment (for tests and tools).
    pub fn from_parts(
        text: &str,
        path: &Path,
        env: &BTreeMap<String, String>,
        base_dir: &Path,
    ) -> Result<Self, ConfigError> {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].lines().count().max(1))
                .unwrap_or(0);
            ConfigError::Syntax {
                path: path.to_owned(),
                line,
            }
        })?;
        for (var, value) in env {
            apply_override(&mut table, var, value)?;
        }
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| ConfigError::key(e.path().to_string(), redact_serde(e.inner())))?;
        config.resolve_paths(base_dir);
        config.validate()?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path) {
        self.data_dir = normalize(&base.join(&self.data_dir));
        if let Some(pin_file) = &self.hsm.pin_file {
            self.hsm.pin_file = Some(normalize(&base.join(pin_file)));
        }
        if let Some(rest) = self.database.url.strip_prefix("sqlite://") {
            let p = Path::new(rest.split('?').next().unwrap_or(rest));
            if p.is_relative() && rest != ":memory:" {
                let query = rest.find('?').map(|i| &rest[i..]).unwrap_or("");
                self.database.url =
                    format!("sqlite://{}{}", self.data_dir.join(p).display(), query);
            }
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let online = &self.online;
        if !(1_000..=600_000).contains(&online.challenge_ttl_ms) {
            return Err(ConfigError::key(
                "online.challenge_ttl_ms",
                "must be 1000 to 600000",
            ));
        }
        if !(60..=7 * 24 * 3600).contains(&online.session_ttl_secs) {
            return Err(ConfigError::key(
                "online.session_ttl_secs",
                "must be 60 to 604800",
            ));
        }
        if online.jobs_interval_ms < 100 {
            return Err(ConfigError::key(
                "online.jobs_interval_ms",
                "must be at least 100",
            ));
        }
        let failures = std::iter::once((
            "online.max_login_failures".to_owned(),
            online.max_login_failures,
        ))
        .chain(online.issuers.iter().filter_map(|(id, p)| {
            p.max_login_failures
                .map(|n| (format!("online.issuers.{id}.max_login_failures"), n))
        }));
        for (key, n) in failures {
            if !(1..=100).contains(&n) {
                return Err(ConfigError::key(key, "must be 1 to 100"));
            }
        }
        if !(1..=100).contains(&self.provisioning.check_attempt_limit) {
            return Err(ConfigError::key(
                "provisioning.check_attempt_limit",
                "must be 1 to 100",
            ));
        }
        if !(100..=3_600_000).contains(&self.provisioning.import_lease_ms) {
            return Err(ConfigError::key(
                "provisioning.import_lease_ms",
                "must be 100 to 3600000 (one hour)",
            ));
        }
        let hsm = &self.hsm;
        if hsm.token_label.is_empty() || hsm.token_label.len() > 32 {
            return Err(ConfigError::key(
                "hsm.token_label",
                "must be 1 to 32 characters (PKCS#11 label length)",
            ));
        }
        if hsm.pin_file.is_some() == hsm.pin_env.is_some() {
            return Err(ConfigError::key(
                "hsm.pin_file",
                "exactly one of hsm.pin_file and hsm.pin_env must be set (the PIN is never inline)",
            ));
        }
        if !(1..=256).contains(&hsm.sessions) {
            return Err(ConfigError::key(
                "hsm.sessions",
                "must be between 1 and 256",
            ));
        }
        if hsm.queue_depth < hsm.sessions {
            return Err(ConfigError::key(
                "hsm.queue_depth",
                "must be at least hsm.sessions",
            ));
        }
        if hsm.derived_key_cache == 0 {
            return Err(ConfigError::key(
                "hsm.derived_key_cache",
                "must be at least 1",
            ));
        }
        let url = &self.database.url;
        if !(url.starts_with("sqlite://")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(ConfigError::key(
                "database.url",
                "must start with sqlite://, postgres:// or postgresql://",
            ));
        }
        for (key, addr) in [
            ("server.public_listen", &self.server.public_listen),
            ("server.admin_listen", &self.server.admin_listen),
        ] {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                return Err(ConfigError::key(key, "must be an IP:port socket address"));
            }
        }
        if self.server.public_names.is_empty() {
            return Err(ConfigError::key(
                "server.public_names",
                "must name at least one host",
            ));
        }
        let srv = &self.server;
        for (key, value) in [
            (
                "server.ocsp_max_concurrent_requests",
                srv.ocsp_max_concurrent_requests as u64,
            ),
            ("server.ocsp_max_body_bytes", srv.ocsp_max_body_bytes as u64),
            ("server.bulk_max_items", srv.bulk_max_items as u64),
            ("server.bulk_max_body_bytes", srv.bulk_max_body_bytes as u64),
            (
                "server.ocsp_signatures_per_second",
                u64::from(srv.ocsp_signatures_per_second),
            ),
            ("server.ocsp_cache_entries", srv.ocsp_cache_entries as u64),
            ("server.header_read_timeout_ms", srv.header_read_timeout_ms),
            ("server.body_read_timeout_ms", srv.body_read_timeout_ms),
            ("server.idle_timeout_ms", srv.idle_timeout_ms),
            (
                "server.max_connections_per_address",
                srv.max_connections_per_address as u64,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::key(key, "must be at least 1"));
            }
        }
        if self.database.max_connections == 0 {
            return Err(ConfigError::key(
                "database.max_connections",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// Removes `.` and `..` lexically: SQLite URLs with `..` in the path do not
/// open, and paths in messages read better without them.
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// `KEYWARD__HSM__SESSIONS=4` → `hsm.sessions = 4`. The value is read as a TOML
/// scalar when it parses as one (numbers, booleans), else as a string.
fn apply_override(table: &mut toml::Table, var: &str, value: &str) -> Result<(), ConfigError> {
    let bad = || ConfigError::BadOverride {
        var: var.to_owned(),
    };
    let path: Vec<String> = var
        .strip_prefix(ENV_PREFIX)
        .ok_or_else(bad)?
        .split("__")
        .map(str::to_ascii_lowercase)
        .collect();
    if path.iter().any(String::is_empty) {
        return Err(bad());
    }
    let (last, parents) = path.split_last().ok_or_else(bad)?;
    let mut cursor = table;
    for part in parents {
        cursor = cursor
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(bad)?;
    }
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .filter(|v| !v.is_table() && !v.is_array())
        .unwrap_or_else(|| toml::Value::String(value.to_owned()));
    cursor.insert(last.clone(), parsed);
    Ok(())
}

/// Keeps serde's description of what was expected and drops what was found,
/// which may be a secret typed into the wrong key.
fn redact_serde(e: &toml::de::Error) -> String {
    let msg = e.message();
    if msg.starts_with("unknown field") || msg.starts_with("missing field") {
        return msg.split(", expected").next().unwrap_or(msg).to_owned();
    }
    if msg.starts_with("unknown variant") {
        // "unknown variant `<value>`, expected …": keep only what was expected.
        return match msg.rsplit_once(", expected ") {
            Some((_, expected)) => format!("unknown variant, expected {expected}"),
            None => "unknown variant".to_owned(),
        };
    }
    match (msg.split(':').next(), msg.rsplit_once(", expected ")) {
        (Some(kind), Some((_, expected))) => format!("{kind}, expected {expected}"),
        (Some(kind), None) => kind.to_owned(),
        _ => "invalid value".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[hsm]
module = "/usr/lib/softhsm/libsofthsm2.so"
token_label = "keyward"
pin_env = "KW_PIN"
"#;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_parts(
            text,
            Path::new("/etc/keyward/keyward.toml"),
            &env,
            Path::new("/etc/keyward"),
        )
    }

    #[test]
    fn defaults_resolve_against_the_config_dir() -> Result<(), ConfigError> {
        let c = parse(MINIMAL, &[])?;
        assert_eq!(c.data_dir, Path::new("/etc/keyward/var"));
        assert_eq!(c.database.url, "sqlite:///etc/keyward/var/keyward.db");
        assert_eq!(c.database.kind(), DatabaseKind::Sqlite);
        assert_eq!(c.hsm.sessions, 2);
        let up = parse(
            &MINIMAL.replace("[hsm]", "data_dir = \"../var\"\n[hsm]"),
            &[],
        )?;
        assert_eq!(up.database.url, "sqlite:///etc/var/keyward.db");
        Ok(())
    }

    #[test]
    fn env_overrides_typed_values() -> Result<(), ConfigError> {
        let c = parse(
            MINIMAL,
            &[
                ("KEYWARD__HSM__SESSIONS", "4"),
                ("KEYWARD__DATABASE__URL", "postgres://u:p@127.0.0.1/db"),
                ("KEYWARD__HSM__MECHANISMS__DES3_RETAIL_MAC", "0x80000150"),
            ],
        )?;
        assert_eq!(c.hsm.sessions, 4);
        assert_eq!(c.database.kind(), DatabaseKind::Postgres);
        assert_eq!(c.hsm.mechanisms.des3_retail_mac, Some(0x8000_0150));
        Ok(())
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse(&format!("{MINIMAL}\nsesions = 3\n"), &[])
            .map(|_| ())
            .err();
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("sesions"), "{msg}");
    }

    #[test]
    fn wrong_type_names_key_not_value() {
        let text = MINIMAL.replace(
            "token_label = \"keyward\"",
            "token_label = \"keyward\"\nsessions = \"s3cr3t-1234\"",
        );
        let msg = parse(&text, &[])
            .map(|_| ())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("hsm.sessions"), "{msg}");
        assert!(!msg.contains("s3cr3t"), "{msg}");
    }

    #[test]
    fn inline_pin_is_refused_and_not_echoed() {
        let text = MINIMAL.replace("pin_env = \"KW_PIN\"", "pin = \"987654\"");
        let msg = parse(&text, &[])
            .map(|_| ())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("pin"), "{msg}");
        assert!(!msg.contains("987654"), "{msg}");
    }

    #[test]
    fn exactly_one_pin_source() {
        let text = MINIMAL.replace("pin_env = \"KW_PIN\"", "");
        let msg = parse(&text, &[])
            .map(|_| ())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("hsm.pin_file"), "{msg}");
    }

    #[test]
    fn bad_database_scheme() {
        let msg = parse(MINIMAL, &[("KEYWARD__DATABASE__URL", "mysql://x")])
            .map(|_| ())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("database.url"), "{msg}");
        assert!(!msg.contains("mysql://x"), "{msg}");
    }

    #[test]
    fn ca_key_algorithm_is_typed_at_load() -> Result<(), ConfigError> {
        assert_eq!(parse(MINIMAL, &[])?.ca.key_algorithm, CaKeyAlgorithm::P256);
        let rsa = parse(
            &format!("{MINIMAL}\n[ca]\nkey_algorithm = \"rsa3072\"\n"),
            &[],
        )?;
        assert_eq!(rsa.ca.key_algorithm, CaKeyAlgorithm::Rsa3072);
        let env = parse(MINIMAL, &[("KEYWARD__CA__KEY_ALGORITHM", "rsa3072")])?;
        assert_eq!(env.ca.key_algorithm, CaKeyAlgorithm::Rsa3072);
        // A bad value is refused by the load (before any HSM is opened),
        // naming the key and the choices, never the value.
        let msg = parse(
            &format!("{MINIMAL}\n[ca]\nkey_algorithm = \"s3cr3t-ed25519\"\n"),
            &[],
        )
        .map(|_| ())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(msg.contains("ca.key_algorithm"), "{msg}");
        assert!(msg.contains("p256") && msg.contains("rsa3072"), "{msg}");
        assert!(!msg.contains("s3cr3t"), "{msg}");
        Ok(())
    }

    #[test]
    fn pin_from_file() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let pin = dir.path().join("pin");
        std::fs::write(&pin, "1234\n")?;
        let text = MINIMAL.replace("pin_env = \"KW_PIN\"", &format!("pin_file = {:?}", pin));
        let c = parse(&text, &[])?;
        use secrecy::ExposeSecret;
        assert_eq!(c.hsm.pin()?.expose_secret(), "1234");
        Ok(())
    }

    /// Issue 9 §3: the slow-client and OCSP limits have defaults and refuse 0.
    #[test]
    fn traffic_limits_default_and_refuse_zero() -> Result<(), ConfigError> {
        let c = parse(MINIMAL, &[])?;
        assert_eq!(c.server.ocsp_max_concurrent_requests, 64);
        assert_eq!(c.server.idle_timeout_ms, 60_000);
        assert_eq!(c.server.max_connections_per_address, 128);
        for key in [
            "OCSP_MAX_CONCURRENT_REQUESTS",
            "IDLE_TIMEOUT_MS",
            "MAX_CONNECTIONS_PER_ADDRESS",
            "OCSP_SIGNATURES_PER_SECOND",
        ] {
            let var = format!("KEYWARD__SERVER__{key}");
            let msg = parse(MINIMAL, &[(var.as_str(), "0")])
                .map(|_| ())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(msg.contains(&key.to_ascii_lowercase()), "{key}: {msg}");
        }
        Ok(())
    }

    #[test]
    fn shipped_examples_parse() -> Result<(), ConfigError> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        for name in ["example.toml", "dev.toml"] {
            let path = dir.join(name);
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            Config::from_parts(&text, &path, &BTreeMap::new(), dir)?;
        }
        Ok(())
    }
}
