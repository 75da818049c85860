//! `[server]`: the two listeners and their traffic limits.

use serde::Deserialize;

use crate::ConfigError;

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
    /// At most [`crate::bulk::MAX_CALL_ITEMS`]: a request is one kms call.
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
    /// TLS sessions each listener keeps in memory for resumption (about
    /// 1.5 KiB each, most with the client's certificate chain); 0 turns
    /// resumption off. A terminal that reconnects within its session
    /// resumes without a certificate signature in the HSM, so this should
    /// exceed the terminals that reconnect to one replica in a session's
    /// life. Kept across CRL changes: both listeners check revocation on
    /// every request.
    #[serde(default = "default_tls_session_cache_entries")]
    pub tls_session_cache_entries: usize,
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
    /// Open connections per client IP address on each listener without a
    /// client certificate, and as many with one (the server's
    /// `AddressSlots`: anonymous connections cannot crowd out certificate
    /// holders at the same address).
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
            tls_session_cache_entries: default_tls_session_cache_entries(),
            header_read_timeout_ms: default_header_read_timeout_ms(),
            body_read_timeout_ms: default_body_read_timeout_ms(),
            idle_timeout_ms: default_idle_timeout_ms(),
            max_connections_per_address: default_max_connections_per_address(),
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
    crate::bulk::DEFAULT_MAX_ITEMS
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
fn default_tls_session_cache_entries() -> usize {
    20_000
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

impl ServerConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        for (key, addr) in [
            ("server.public_listen", &self.public_listen),
            ("server.admin_listen", &self.admin_listen),
        ] {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                return Err(ConfigError::key(key, "must be an IP:port socket address"));
            }
        }
        if self.public_names.is_empty() {
            return Err(ConfigError::key(
                "server.public_names",
                "must name at least one host",
            ));
        }
        for (key, value) in [
            (
                "server.ocsp_max_concurrent_requests",
                self.ocsp_max_concurrent_requests as u64,
            ),
            (
                "server.ocsp_max_body_bytes",
                self.ocsp_max_body_bytes as u64,
            ),
            ("server.bulk_max_items", self.bulk_max_items as u64),
            (
                "server.bulk_max_body_bytes",
                self.bulk_max_body_bytes as u64,
            ),
            (
                "server.ocsp_signatures_per_second",
                u64::from(self.ocsp_signatures_per_second),
            ),
            ("server.ocsp_cache_entries", self.ocsp_cache_entries as u64),
            ("server.header_read_timeout_ms", self.header_read_timeout_ms),
            ("server.body_read_timeout_ms", self.body_read_timeout_ms),
            ("server.idle_timeout_ms", self.idle_timeout_ms),
            (
                "server.max_connections_per_address",
                self.max_connections_per_address as u64,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::key(key, "must be at least 1"));
            }
        }
        if self.bulk_max_items > crate::bulk::MAX_CALL_ITEMS {
            return Err(ConfigError::key(
                "server.bulk_max_items",
                format!(
                    "must be at most {} (the items one kms call verifies)",
                    crate::bulk::MAX_CALL_ITEMS
                ),
            ));
        }
        Ok(())
    }
}
