//! A terminal's online client: mutual TLS with the device's own key and
//! certificate to the public listener, and the login flow of
//! docs/protocol.md §10 done the device's way (the [`SimDevice`] computes
//! every response and KCV; nothing here calls the server's code — the
//! request and answer shapes are the shared wire types).
//!
//! [`Terminal::call`] is one request on a fresh TLS connection (a terminal
//! that dials in); [`Terminal::connect`] opens one that is kept alive for
//! several requests; [`login`] is the whole flow on one connection (as
//! docs/protocol.md advises terminal makers): start, take the key update if
//! one is offered, answer the challenge, report the KCVs.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use keyward_kms::types::{Kcv, WorkingKeyRole};
use keyward_server::wire::login as wire;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::Value;

use crate::simulator::SimDevice;

/// What the server answered.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
}

impl Reply {
    /// The stable error code of a refusal (`""` for a success).
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

/// An mTLS client of the public listener, holding the device's key.
#[derive(Clone)]
pub struct Terminal {
    host: String,
    port: u16,
    connector: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for Terminal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Terminal({}:{})", self.host, self.port)
    }
}

impl Terminal {
    /// `server` is `https://host:port`; `ca_pem` the trust anchor(s) of the
    /// server's certificate; `chain_pem` the device certificate (and the
    /// issuing CA after it).
    pub fn new(server: &str, ca_pem: &str, chain_pem: &str, dev: &SimDevice) -> Result<Self> {
        let rest = server
            .strip_prefix("https://")
            .context("the server must be an https:// URL")?
            .trim_end_matches('/');
        let (host, port) = rest
            .rsplit_once(':')
            .context("the server URL needs a port")?;
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c?)?;
        }
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(chain_pem.as_bytes()).collect::<Result<_, _>>()?;
        if chain.is_empty() {
            bail!("no device certificate given");
        }
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(dev.private_key_pkcs8()?));
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
        Ok(Self {
            host: host.to_owned(),
            port: port.parse().context("bad port")?,
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    /// The same client with TLS session resumption off: every connection
    /// is a full handshake (certificates, signatures) with the server.
    pub fn without_resumption(&self) -> Self {
        let mut config = rustls::ClientConfig::clone(self.connector.config());
        config.resumption = rustls::client::Resumption::disabled();
        Self {
            host: self.host.clone(),
            port: self.port,
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        }
    }

    /// One request over a fresh TLS connection.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        session: Option<&str>,
    ) -> Result<Reply> {
        self.connect()
            .await?
            .call(method, path, body, session)
            .await
    }

    /// A fresh TLS connection, kept alive for the requests made on it.
    pub async fn connect(&self) -> Result<Connection> {
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .with_context(|| format!("connecting to {}:{}", self.host, self.port))?;
        let name = ServerName::try_from(self.host.clone())?;
        let tls = self
            .connector
            .connect(name, tcp)
            .await
            .context("TLS handshake with the public listener")?;
        let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        Ok(Connection {
            host: format!("{}:{}", self.host, self.port),
            sender,
            resumed,
        })
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Reply> {
        self.call(Method::POST, path, Some(body), None).await
    }
}

/// One kept-alive mTLS connection to the public listener.
pub struct Connection {
    host: String,
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    resumed: bool,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Connection({})", self.host)
    }
}

impl Connection {
    /// Whether the handshake resumed a TLS session (no certificates sent,
    /// no signature made).
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// One request on this connection.
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        session: Option<&str>,
    ) -> Result<Reply> {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.host.as_str());
        if let Some(token) = session {
            req = req.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let bytes = match body {
            Some(v) => {
                req = req.header(CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(v)?)
            }
            None => Bytes::new(),
        };
        self.sender.ready().await?;
        let resp = self
            .sender
            .send_request(req.body(Full::new(bytes))?)
            .await?;
        let status = resp.status();
        let raw = resp.into_body().collect().await?.to_bytes();
        let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        Ok(Reply { status, body })
    }

    pub async fn post(&mut self, path: &str, body: &Value) -> Result<Reply> {
        self.call(Method::POST, path, Some(body), None).await
    }
}

/// Something that takes a terminal's requests to the public listener: a
/// kept-alive [`Connection`], or a card's channel carrying them
/// (`crate::channel::Carrier`). The login flow runs over either.
#[allow(async_fn_in_trait)]
pub trait Caller {
    async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        session: Option<&str>,
    ) -> Result<Reply>;
}

impl Caller for Connection {
    async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        session: Option<&str>,
    ) -> Result<Reply> {
        self.call(method, path, body, session).await
    }
}

/// How a [`login`] should misbehave (for tests and the demo).
#[derive(Debug, Clone, Copy, Default)]
pub struct LoginOptions {
    /// Answer the challenge with a wrong response.
    pub wrong_response: bool,
}

/// What a login did.
#[derive(Debug, Clone)]
pub struct LoginOutcome {
    /// The start answer (its `key_update`, if any, was taken).
    pub challenge: wire::LoginChallenge,
    /// The finish reply: a [`wire::LoginAnswer`] on success, a refusal
    /// otherwise.
    pub finish: Reply,
    /// Whether the device's own KCVs all matched an offered key update.
    pub keys_matched: Option<bool>,
}

impl LoginOutcome {
    pub fn answer(&self) -> Result<wire::LoginAnswer> {
        if !self.finish.status.is_success() {
            bail!("login refused: {} {}", self.finish.status, self.finish.body);
        }
        Ok(serde_json::from_value(self.finish.body.clone())?)
    }
}

/// The body of a login start for `dev` at `issuer`.
pub fn start_body(dev: &SimDevice, issuer: &str) -> wire::LoginStart {
    wire::LoginStart {
        device_id: dev.id.to_string(),
        issuer_id: issuer.to_owned(),
        psam_serial: dev.psam.clone(),
        esam_serial: dev.esam.clone(),
        key_version: dev.key_version(issuer),
    }
}

/// The device's side of a key update: its KCVs for the offered keys.
pub fn confirm_update(
    dev: &mut SimDevice,
    issuer: &str,
    update: &wire::KeyUpdate,
) -> Result<(wire::KeyConfirmation, bool)> {
    let mut offered = Vec::new();
    for k in &update.keys {
        let role: WorkingKeyRole = k.role.parse().context("unknown working-key role")?;
        let r: [u8; 16] = B64
            .decode(&k.r)?
            .try_into()
            .map_err(|_| anyhow::anyhow!("R is not 16 bytes"))?;
        let kcv = Kcv::parse(&k.kcv.method, &k.kcv.value)?;
        offered.push((role, r, kcv));
    }
    let (kcvs, matched) = dev.take_key_update(issuer, update.version, &offered)?;
    let confirmation = wire::KeyConfirmation {
        version: update.version,
        kcvs: kcvs
            .iter()
            .map(|(role, kcv)| wire::RoleKcv {
                role: role.as_str().to_owned(),
                kcv: kcv.into(),
            })
            .collect(),
    };
    Ok((confirmation, matched))
}

/// The finish body answering `challenge` as `dev` (right or, by `opts`,
/// wrong), with `confirmation` of a key update.
pub fn finish_body(
    dev: &SimDevice,
    issuer: &str,
    challenge: &wire::LoginChallenge,
    confirmation: Option<wire::KeyConfirmation>,
    opts: LoginOptions,
) -> Result<wire::LoginFinish> {
    let bytes = B64.decode(&challenge.challenge)?;
    let mut response = dev.auth_response(issuer, &bytes)?;
    if opts.wrong_response {
        response[0] ^= 0xFF;
    }
    Ok(wire::LoginFinish {
        issuer_id: issuer.to_owned(),
        challenge_id: challenge.challenge_id.clone(),
        response: B64.encode(response),
        key_confirmation: confirmation,
    })
}

/// The whole login of `dev` at `issuer` through `terminal`, start and
/// finish on one kept-alive connection.
pub async fn login(
    terminal: &Terminal,
    dev: &mut SimDevice,
    issuer: &str,
    opts: LoginOptions,
) -> Result<LoginOutcome> {
    let mut conn = terminal.connect().await?;
    login_over(&mut conn, dev, issuer, opts).await
}

/// The whole login of `dev` at `issuer` over `to` (a connection or a
/// channel).
pub async fn login_over(
    to: &mut impl Caller,
    dev: &mut SimDevice,
    issuer: &str,
    opts: LoginOptions,
) -> Result<LoginOutcome> {
    let start = to
        .request(
            Method::POST,
            "/v1/login/start",
            Some(&serde_json::to_value(start_body(dev, issuer))?),
            None,
        )
        .await?;
    if start.status != StatusCode::CREATED {
        bail!(
            "login start refused: {} {} ({})",
            start.status,
            start.code(),
            start.body
        );
    }
    let challenge: wire::LoginChallenge = serde_json::from_value(start.body)?;
    let (confirmation, keys_matched) = match &challenge.key_update {
        Some(update) => {
            let (c, matched) = confirm_update(dev, issuer, update)?;
            (Some(c), Some(matched))
        }
        None => (None, None),
    };
    let body = finish_body(dev, issuer, &challenge, confirmation, opts)?;
    let finish = to
        .request(
            Method::POST,
            "/v1/login/finish",
            Some(&serde_json::to_value(body)?),
            None,
        )
        .await?;
    Ok(LoginOutcome {
        challenge,
        finish,
        keys_matched,
    })
}

/// The body of `POST /v1/transactions` for `text`, MACed by `dev` with its
/// current TAK for `issuer` (CMAC-TDES or CMAC-AES by the issuer's family).
pub fn transaction_body(dev: &SimDevice, issuer: &str, text: &str) -> Result<Value> {
    let algorithm = match dev.held_keys().iter().find(|k| k.issuer == issuer) {
        Some(k) if k.family == keyward_kms::types::KeyFamily::Aes => "CMAC-AES",
        _ => "CMAC-TDES",
    };
    let version = dev.key_version(issuer).context("no working keys")?;
    let mac = dev.mac(issuer, algorithm, None, text.as_bytes(), 8)?;
    Ok(
        serde_json::json!({"key_version": version, "algorithm": algorithm,
                          "message": B64.encode(text), "mac": B64.encode(mac)}),
    )
}
