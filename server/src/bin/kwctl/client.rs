//! The admin API over mutual TLS: one [`Call`] per request, a 2xx answer as
//! JSON, anything else as a [`Refused`] error.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;

/// One admin API call. A mutating call carries its own `Idempotency-Key`,
/// so that sending it again (after a lost answer) cannot do the work twice.
#[derive(Debug)]
pub struct Call {
    method: &'static str,
    path: String,
    body: Option<Value>,
    idempotency_key: Option<String>,
}

fn new_key() -> Option<String> {
    Some(format!("kwctl-{}", uuid::Uuid::new_v4()))
}

/// `GET /admin/v1{path}`.
pub fn get(path: impl AsRef<str>) -> Call {
    Call {
        method: "GET",
        path: format!("/admin/v1{}", path.as_ref()),
        body: None,
        idempotency_key: None,
    }
}

/// `POST /admin/v1{path}` with a JSON body (a `keyward_server::wire` type).
pub fn post(path: impl AsRef<str>, body: impl serde::Serialize) -> Call {
    Call {
        method: "POST",
        path: format!("/admin/v1{}", path.as_ref()),
        // Wire types are plain structs: serialising them cannot fail.
        body: Some(serde_json::to_value(body).unwrap_or_default()),
        idempotency_key: new_key(),
    }
}

/// `POST /admin/v1{path}` without a body.
pub fn post_empty(path: impl AsRef<str>) -> Call {
    Call {
        method: "POST",
        path: format!("/admin/v1{}", path.as_ref()),
        body: None,
        idempotency_key: new_key(),
    }
}

/// `?k=v&…` for the pairs that have a value.
pub fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v))))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// Percent-encodes a path segment or query value.
pub fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The server answered with an error status. `error` is the `error` object
/// of the body (`code`, `message`, `request_id`, and e.g. `rows`), or the
/// whole body when it has none.
#[derive(Debug, thiserror::Error)]
#[error("{} {}: {}", .status.as_u16(), self.code(), self.message())]
pub struct Refused {
    pub status: StatusCode,
    pub error: Value,
}

impl Refused {
    pub fn code(&self) -> &str {
        self.error
            .get("code")
            .and_then(Value::as_str)
            .unwrap_or("error")
    }

    pub fn message(&self) -> &str {
        self.error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    pub fn request_id(&self) -> &str {
        self.error
            .get("request_id")
            .and_then(Value::as_str)
            .unwrap_or("-")
    }
}

/// A mutual-TLS HTTP/1.1 client for the admin API.
pub struct Client {
    host: String,
    port: u16,
    connector: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Client {
    pub fn new(server: &str, ca: &Path, cert: &Path, key: &Path) -> anyhow::Result<Self> {
        let rest = server
            .strip_prefix("https://")
            .context("--server must be an https:// URL")?
            .trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().context("bad port in --server")?),
            None => (rest.to_owned(), 443),
        };
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca)
            .with_context(|| format!("reading {}", ca.display()))?
        {
            roots.add(c?)?;
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .with_context(|| format!("reading {}", cert.display()))?
            .collect::<Result<_, _>>()?;
        if chain.is_empty() {
            bail!("{} holds no certificate", cert.display());
        }
        let key = PrivateKeyDer::from_pem_file(key)
            .with_context(|| format!("reading {}", key.display()))?;
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
        Ok(Self {
            host,
            port,
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    /// Sends one call: the body of a 2xx answer as JSON (a body that is not
    /// JSON, such as the CRL's PEM, as a JSON string); any other status is a
    /// [`Refused`] error, trouble on the way an ordinary one.
    pub async fn call(&self, call: Call) -> anyhow::Result<Value> {
        let (status, body) = self.send(call).await?;
        let value: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
        if !status.is_success() {
            let error = value.get("error").cloned().unwrap_or(value);
            return Err(Refused { status, error }.into());
        }
        Ok(value)
    }

    /// Posts a body of `content_type` (the binary MAC encoding, say) and
    /// returns the raw answer; a non-2xx answer is a [`Refused`] error.
    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<Bytes> {
        let path = format!("/admin/v1{path}");
        let (status, bytes) = self
            .exchange("POST", &path, None, Some((content_type, Bytes::from(body))))
            .await?;
        if !status.is_success() {
            return Err(refused(status, &bytes));
        }
        Ok(bytes)
    }

    /// [`Client::post_raw`] for a streamed answer: each piece of the body
    /// goes to `on_data` as it arrives.
    pub async fn post_streamed(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
        mut on_data: impl FnMut(&[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let path = format!("/admin/v1{path}");
        let resp = self
            .request("POST", &path, None, Some((content_type, Bytes::from(body))))
            .await?;
        let status = resp.status();
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = body.collect().await?.to_bytes();
            return Err(refused(status, &bytes));
        }
        while let Some(frame) = body.frame().await {
            let frame = frame.with_context(|| format!("reading the answer to POST {path}"))?;
            if let Some(data) = frame.data_ref() {
                on_data(data)?;
            }
        }
        Ok(())
    }

    async fn send(&self, call: Call) -> anyhow::Result<(StatusCode, Bytes)> {
        let body = match &call.body {
            Some(v) => Some(("application/json", Bytes::from(serde_json::to_vec(v)?))),
            None => None,
        };
        self.exchange(
            call.method,
            &call.path,
            call.idempotency_key.as_deref(),
            body,
        )
        .await
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        idempotency_key: Option<&str>,
        body: Option<(&str, Bytes)>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let resp = self.request(method, path, idempotency_key, body).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }

    /// One request on a new mTLS connection; the answer's body is read by
    /// the caller.
    async fn request(
        &self,
        method: &str,
        path: &str,
        idempotency_key: Option<&str>,
        body: Option<(&str, Bytes)>,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .with_context(|| format!("connecting to {}:{}", self.host, self.port))?;
        let name = ServerName::try_from(self.host.clone())?;
        let tls = self.connector.connect(name, tcp).await.context(
            "TLS handshake with the admin API (is the operator certificate valid and not revoked?)",
        )?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, format!("{}:{}", self.host, self.port));
        if let Some(key) = idempotency_key {
            req = req.header("idempotency-key", key);
        }
        let body = match body {
            Some((content_type, bytes)) => {
                req = req.header(CONTENT_TYPE, content_type);
                bytes
            }
            None => Bytes::new(),
        };
        sender
            .send_request(req.body(Full::new(body))?)
            .await
            .with_context(|| format!("{method} {path}"))
    }
}

/// A non-2xx answer as a [`Refused`] error, with the server's error object.
fn refused(status: StatusCode, bytes: &[u8]) -> anyhow::Error {
    let value: Value = serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()));
    let error = value.get("error").cloned().unwrap_or(value);
    Refused { status, error }.into()
}
