//! A real local HTTPS webhook receiver (hyper + rustls, a test CA made with
//! rcgen) that checks every Standard Webhooks v1 signature with its own
//! HMAC and keeps the message ids it saw, in arrival order: the SMS gateway
//! or core banking system of the outbox tests, in process (route tests) or
//! in front of a real `keyward serve` (end-to-end tests).

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use keyward_kms::db::now_ms;
use keyward_server::outbox::senders::{WebhookSecret, WebhookSender};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::Sha256;
use tokio::net::TcpListener;

/// A CA and a `127.0.0.1` server certificate it issued.
#[derive(Debug)]
pub struct TestCa {
    pub ca_der: CertificateDer<'static>,
    pub ca_pem: String,
    pub leaf_der: CertificateDer<'static>,
    pub leaf_key: Vec<u8>,
}

pub fn test_ca() -> TestCa {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    TestCa {
        ca_der: ca.der().clone(),
        ca_pem: ca.pem(),
        leaf_der: leaf.der().clone(),
        leaf_key: leaf_key.serialize_der(),
    }
}

/// Each good request as it arrives: its message id, body and arrival.
pub type Feed = tokio::sync::mpsc::UnboundedSender<(String, Vec<u8>, std::time::Instant)>;

/// What the receiver saw and how it answers.
#[derive(Debug, Default)]
pub struct Seen {
    /// Message ids of requests with a good signature, in arrival order.
    pub ids: Mutex<Vec<String>>,
    /// Bodies by message id.
    pub bodies: Mutex<HashMap<String, Vec<u8>>>,
    pub bad_signatures: AtomicUsize,
    /// Statuses to answer, in order; 200 once empty.
    pub script: Mutex<VecDeque<u16>>,
    /// Milliseconds to wait before answering the next request.
    pub stall_ms: Mutex<VecDeque<u64>>,
    /// Where each good request goes as it arrives (id, body, when), for a
    /// client that waits for its message (the benches).
    pub feed: Mutex<Option<Feed>>,
}

impl Seen {
    pub fn ids(&self) -> Vec<String> {
        self.ids.lock().unwrap().clone()
    }

    /// Every (id, body) received with a good signature, one per id.
    pub fn bodies(&self) -> HashMap<String, Vec<u8>> {
        self.bodies.lock().unwrap().clone()
    }
}

#[derive(Debug)]
pub struct Receiver {
    /// `https://127.0.0.1:PORT/hook`.
    pub url: String,
    pub ca: TestCa,
    pub secret: Vec<u8>,
    pub seen: Arc<Seen>,
}

impl Receiver {
    /// A receiver on 127.0.0.1 with a fresh CA and secret.
    pub async fn start() -> Self {
        let ca = test_ca();
        let secret: Vec<u8> = (0..32).map(|_| rand::random::<u8>()).collect();
        let seen = Arc::new(Seen::default());
        let (state, key) = (seen.clone(), secret.clone());
        let base = serve_https(&ca, move |req| handle(state.clone(), key.clone(), req)).await;
        let url = format!("{base}/hook");
        Self {
            url,
            ca,
            secret,
            seen,
        }
    }

    /// The secret's configuration form, `whsec_<base64>`.
    pub fn secret_text(&self) -> String {
        format!("whsec_{}", BASE64.encode(&self.secret))
    }

    /// A sender for this receiver, trusting `ca` (its own by default).
    pub fn sender(&self, ca: &CertificateDer<'static>) -> WebhookSender {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone()).unwrap();
        let secret = WebhookSecret::parse(&self.secret_text()).unwrap();
        WebhookSender::new(
            self.url.parse().unwrap(),
            vec![secret],
            roots,
            Duration::from_secs(2),
            Duration::from_secs(5),
        )
        .unwrap()
    }

    /// `[outbox.webhooks.NAME]` for a server configuration, its CA and
    /// secret files written in `dir`.
    pub fn config_toml(&self, name: &str, dir: &Path) -> String {
        let ca = dir.join(format!("{name}-ca.pem"));
        let secret = dir.join(format!("{name}.secret"));
        std::fs::write(&ca, &self.ca.ca_pem).unwrap();
        std::fs::write(&secret, self.secret_text()).unwrap();
        format!(
            "[outbox.webhooks.{name}]\nurl = {url:?}\nca_file = {ca:?}\nsecret_files = [{secret:?}]\n\
             connect_timeout_ms = 500\nrequest_timeout_ms = 1000\n",
            url = self.url,
            ca = ca.display().to_string(),
            secret = secret.display().to_string(),
        )
    }
}

async fn handle(
    seen: Arc<Seen>,
    key: Vec<u8>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (id, timestamp, signatures) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let Ok(body) = req.into_body().collect().await else {
        return Ok(answer(400));
    };
    let body = body.to_bytes();
    // Standard Webhooks: HMAC-SHA256 over "id.timestamp.body", any of the
    // space-separated v1 signatures, timestamp within five minutes.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(&body);
    let expected = format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()));
    let fresh = timestamp
        .parse::<i64>()
        .is_ok_and(|t| (t - now_ms() / 1000).abs() <= 300);
    if !fresh || !signatures.split(' ').any(|s| s == expected) {
        seen.bad_signatures.fetch_add(1, Ordering::SeqCst);
        return Ok(answer(401));
    }
    if let Some(feed) = seen.feed.lock().unwrap().as_ref() {
        let _ = feed.send((id.clone(), body.to_vec(), std::time::Instant::now()));
    }
    seen.ids.lock().unwrap().push(id.clone());
    seen.bodies.lock().unwrap().insert(id, body.to_vec());
    let stall = seen.stall_ms.lock().unwrap().pop_front();
    if let Some(ms) = stall {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let status = seen.script.lock().unwrap().pop_front().unwrap_or(200);
    Ok(answer(status))
}

/// A TLS acceptor presenting `ca`'s `127.0.0.1` leaf certificate.
pub fn tls_acceptor(ca: &TestCa) -> tokio_rustls::TlsAcceptor {
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![ca.leaf_der.clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ca.leaf_key.clone())),
    )
    .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(tls))
}

/// Serves HTTPS on 127.0.0.1 with `ca`'s leaf certificate, every request
/// to `handler`; the base URL (`https://127.0.0.1:PORT`).
pub async fn serve_https<F, Fut>(ca: &TestCa, handler: F) -> String
where
    F: Fn(Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<Full<Bytes>>, std::convert::Infallible>>
        + Send
        + 'static,
{
    let acceptor = tls_acceptor(ca);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("https://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, handler) = (acceptor.clone(), handler.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(handler);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    base
}

fn answer(status: u16) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r
}
