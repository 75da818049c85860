//! The HTTPS webhook sender, following Standard Webhooks v1: a `POST` of the
//! payload with
//!
//! - `webhook-id`: the message id (the same on every attempt),
//! - `webhook-timestamp`: the attempt's time, in Unix seconds,
//! - `webhook-signature`: `v1,<base64 HMAC-SHA256 over "id.timestamp.body">`
//!   under each configured secret, space-separated (several during a
//!   rotation; the receiver accepts any that verifies).
//!
//! The endpoint's certificate must chain to the configured CA file; connect
//! and whole-request timeouts apply; connections are pooled. 2xx is sent;
//! 408, 429, 5xx and trouble on the way are retried; any other answer is
//! final.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, Limited};
use hyper::Uri;
use hyper::header::{CONTENT_TYPE, USER_AGENT};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo};
use keyward_config::WebhookConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use zeroize::Zeroizing;

use super::{Outgoing, SendError, Sender, SetupError};

/// The prefix of a secret's text form.
pub const SECRET_PREFIX: &str = "whsec_";

/// The most of an answer's body read (then dropped) so the connection can
/// be reused.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// One signing secret (the bytes after `whsec_`, base64-decoded). `Debug`
/// never shows it; it is wiped when dropped.
#[derive(Clone)]
pub struct WebhookSecret(Zeroizing<Vec<u8>>);

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret([redacted])")
    }
}

impl WebhookSecret {
    /// Parses `whsec_<base64>` (surrounding whitespace ignored). Standard
    /// Webhooks secrets are 24 to 64 bytes.
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        let b64 = text
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or("a secret must start with whsec_")?;
        let bytes = Zeroizing::new(
            BASE64
                .decode(b64)
                .map_err(|_| "a secret must be whsec_ followed by base64")?,
        );
        if !(24..=64).contains(&bytes.len()) {
            return Err("a secret must be 24 to 64 bytes");
        }
        Ok(Self(bytes))
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        BASE64.encode(self.mac_bytes(id, timestamp, body))
    }

    fn mac_bytes(&self, id: &str, timestamp: i64, body: &[u8]) -> [u8; 32] {
        // HMAC takes a key of any length: this never fails.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().into()
    }
}

/// Whether a `webhook-signature` value holds a `v1` signature of `id`,
/// `timestamp` and `body` under one of `secrets`, each compared in constant
/// time (a receiver's check; other versions and malformed entries are
/// skipped).
pub fn verify(
    secrets: &[WebhookSecret],
    id: &str,
    timestamp: i64,
    body: &[u8],
    signature: &str,
) -> bool {
    use subtle::ConstantTimeEq;
    let given: Vec<Vec<u8>> = signature
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|b64| BASE64.decode(b64).ok())
        .collect();
    secrets.iter().any(|secret| {
        let expected = secret.mac_bytes(id, timestamp, body);
        given
            .iter()
            .any(|g| bool::from(expected.as_slice().ct_eq(g.as_slice())))
    })
}

/// Reads one `whsec_` secret from each file; `key` names the configuration
/// table in errors (never the secret).
pub fn read_secrets(
    key: &str,
    files: &[std::path::PathBuf],
) -> Result<Vec<WebhookSecret>, SetupError> {
    files
        .iter()
        .map(|path| {
            let file_error = |reason: String| SetupError::File {
                key: key.to_owned(),
                what: "secret file",
                path: path.display().to_string(),
                reason,
            };
            let text = Zeroizing::new(
                std::fs::read_to_string(path).map_err(|e| file_error(e.kind().to_string()))?,
            );
            WebhookSecret::parse(&text).map_err(|reason| file_error(reason.to_owned()))
        })
        .collect()
}

/// The `webhook-signature` value: one `v1,<signature>` per secret, in order,
/// space-separated.
pub fn signature(secrets: &[WebhookSecret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|s| format!("v1,{}", s.mac(id, timestamp, body)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// An HTTPS client that trusts only its roots (HTTP/1.1, TLS 1.2/1.3,
/// a connect timeout and one for the whole exchange): the webhook sender's
/// and the confirmation's pre-send check's.
#[derive(Clone)]
pub struct HttpsClient {
    request_timeout: Duration,
    client: Client<TlsConnector, Full<Bytes>>,
}

impl fmt::Debug for HttpsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpsClient")
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl HttpsClient {
    pub fn new(
        roots: rustls::RootCertStore,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<Self, String> {
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let connector = TlsConnector {
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            connect_timeout,
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Self {
            request_timeout,
            client,
        })
    }

    /// Sends `req` and reads at most 64 KiB of the answer, all within the
    /// request timeout.
    pub async fn exchange(
        &self,
        req: hyper::Request<Full<Bytes>>,
    ) -> Result<(hyper::StatusCode, Bytes), SendError> {
        let exchange = async {
            let resp = self.client.request(req).await.map_err(classify)?;
            let status = resp.status();
            // Read the answer (so the connection goes back to the pool).
            let body = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Ok((status, body))
        };
        tokio::time::timeout(self.request_timeout, exchange)
            .await
            .unwrap_or(Err(SendError::Timeout))
    }
}

/// The certificates of a PEM CA file as trust roots; an error if it holds
/// none.
pub fn read_roots(path: &std::path::Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| e.to_string())?;
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err("it holds no usable certificate".to_owned());
    }
    Ok(roots)
}

/// One configured endpoint.
pub struct WebhookSender {
    url: Uri,
    secrets: Vec<WebhookSecret>,
    http: HttpsClient,
}

impl fmt::Debug for WebhookSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSender")
            .field("url", &self.url)
            .field("secrets", &self.secrets.len())
            .field("request_timeout", &self.http.request_timeout)
            .finish_non_exhaustive()
    }
}

impl WebhookSender {
    /// Reads the endpoint's CA and secret files.
    pub fn from_config(name: &str, cfg: &WebhookConfig) -> Result<Self, SetupError> {
        let file_error = |what, path: &std::path::Path, reason: String| SetupError::File {
            key: format!("webhooks.{name}"),
            what,
            path: path.display().to_string(),
            reason,
        };
        let secrets = read_secrets(&format!("webhooks.{name}"), &cfg.secret_files)?;
        let roots = read_roots(&cfg.ca_file).map_err(|e| file_error("CA file", &cfg.ca_file, e))?;
        let problem = |problem: String| SetupError::Webhook {
            endpoint: name.to_owned(),
            problem,
        };
        let url: Uri = cfg
            .url
            .parse()
            .map_err(|_| problem("url is not a valid URL".to_owned()))?;
        Self::new(
            url,
            secrets,
            roots,
            Duration::from_millis(cfg.connect_timeout_ms),
            Duration::from_millis(cfg.request_timeout_ms),
        )
        .map_err(problem)
    }

    /// An endpoint at `url` (https) trusting `roots`.
    pub fn new(
        url: Uri,
        secrets: Vec<WebhookSecret>,
        roots: rustls::RootCertStore,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<Self, String> {
        if url.scheme_str() != Some("https") || url.host().is_none() {
            return Err("url must be https:// with a host".to_owned());
        }
        if secrets.is_empty() {
            return Err("at least one secret is needed".to_owned());
        }
        Ok(Self {
            url,
            secrets,
            http: HttpsClient::new(roots, connect_timeout, request_timeout)?,
        })
    }

    async fn exchange(&self, msg: &Outgoing) -> Result<(), SendError> {
        let id = msg.message_id.to_string();
        let timestamp = keyward_kms::db::now_ms() / 1000;
        let req = hyper::Request::post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, "keyward-outbox")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                signature(&self.secrets, &id, timestamp, &msg.payload),
            )
            .body(Full::new(Bytes::copy_from_slice(&msg.payload)))
            .map_err(|e| SendError::Request(e.to_string()))?;
        let (status, _) = self.http.exchange(req).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(SendError::Status(status.as_u16()))
        }
    }
}

impl Sender for WebhookSender {
    async fn send(&self, msg: &Outgoing) -> Result<(), SendError> {
        self.exchange(msg).await
    }
}

/// The client's error, by what went wrong: TLS, connecting (its timeout
/// included), or the exchange.
fn classify(e: hyper_util::client::legacy::Error) -> SendError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return SendError::Timeout;
            }
            if let Some(tls) = io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                return SendError::Tls(tls.to_string());
            }
        }
        if let Some(tls) = s.downcast_ref::<rustls::Error>() {
            return SendError::Tls(tls.to_string());
        }
        source = s.source();
    }
    let detail = std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string());
    if e.is_connect() {
        SendError::Connect(detail)
    } else {
        SendError::Request(detail)
    }
}

/// Connects TCP, then TLS verified against the endpoint's roots, within the
/// connect timeout.
#[derive(Clone)]
struct TlsConnector {
    tls: tokio_rustls::TlsConnector,
    connect_timeout: Duration,
}

impl tower::Service<Uri> for TlsConnector {
    type Response = TokioIo<TlsStream>;
    type Error = std::io::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        let limit = self.connect_timeout;
        Box::pin(async move {
            let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
            if uri.scheme_str() != Some("https") {
                return Err(bad("only https is allowed"));
            }
            let host = uri
                .host()
                .ok_or_else(|| bad("no host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let name = ServerName::try_from(host.clone()).map_err(|_| bad("bad host name"))?;
            let connect = async move {
                let tcp = TcpStream::connect((host.as_str(), port)).await?;
                tcp.set_nodelay(true)?;
                tls.connect(name, tcp).await
            };
            let stream = tokio::time::timeout(limit, connect)
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
            Ok(TokioIo::new(TlsStream(stream)))
        })
    }
}

impl fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnector")
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

/// A client TLS connection the pool can hold.
#[derive(Debug)]
pub struct TlsStream(tokio_rustls::client::TlsStream<TcpStream>);

impl Connection for TlsStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks specification's published example.
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TIMESTAMP: i64 = 1_614_265_330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn signs_the_standard_webhooks_test_vector() {
        let secret = WebhookSecret::parse(SPEC_SECRET).unwrap();
        assert_eq!(
            signature(&[secret], SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY),
            SPEC_SIGNATURE
        );
    }

    #[test]
    fn every_secret_signs_during_a_rotation() {
        let old = WebhookSecret::parse(SPEC_SECRET).unwrap();
        let new = WebhookSecret::parse(&format!("whsec_{}", BASE64.encode([7u8; 32]))).unwrap();
        let header = signature(&[old, new.clone()], SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY);
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], SPEC_SIGNATURE);
        assert_eq!(
            parts[1],
            signature(&[new], SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY)
        );
    }

    #[test]
    fn secrets_are_checked_and_never_shown() {
        for bad in [
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_not base64!",
            "whsec_c2hvcnQ=",
        ] {
            assert!(WebhookSecret::parse(bad).is_err(), "{bad}");
        }
        let secret = WebhookSecret::parse(&format!(" {SPEC_SECRET}\n")).unwrap();
        assert_eq!(format!("{secret:?}"), "WebhookSecret([redacted])");
    }
}
