//! Anonymous traffic on the admin listener cannot starve
//! operators. Slow-body `POST /ocsp` requests neither make `/ready` and
//! `/metrics` answer 503 nor hold a request slot past the body timeout; idle
//! anonymous TLS connections are closed; one address cannot hold more than
//! its share of connections; refused-connection log lines are rate-limited.
//! Driven over real TLS with rustls (no client certificate), like an
//! attacker would.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Options, Server};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

fn connector(s: &Server) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(s.ca_pem()).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(cfg))
}

/// An anonymous TLS connection to the admin listener.
async fn anonymous(s: &Server) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(&s.admin).await?;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    connector(s).connect(name, tcp).await
}

/// A `POST /ocsp` whose body never comes.
async fn slow_ocsp(s: &Server) -> TlsStream<TcpStream> {
    let mut c = anonymous(s).await.unwrap();
    c.write_all(
        b"POST /ocsp HTTP/1.1\r\nhost: x\r\ncontent-type: application/ocsp-request\r\ncontent-length: 100\r\n\r\n\x30",
    )
    .await
    .unwrap();
    c.flush().await.unwrap();
    c
}

/// Reads until the server closes (or `limit` passes): what arrived and when.
async fn read_to_close(
    c: &mut TlsStream<TcpStream>,
    limit: Duration,
) -> (String, Option<Duration>) {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(start.elapsed()), c.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (String::from_utf8_lossy(&got).into(), Some(start.elapsed()));
            }
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&got).into(), None),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_anonymous_ocsp_does_not_starve_ready_metrics_or_the_admin_api() {
    let s = Server::started_with(Options {
        max_concurrent_requests: 4,
        extra_server: "ocsp_max_concurrent_requests = 2\nbody_read_timeout_ms = 3000\n".into(),
        ..Options::default()
    })
    .await;
    // More slow bodies than the whole admin budget.
    let mut slow = Vec::new();
    for _ in 0..8 {
        slow.push(slow_ocsp(&s).await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for path in ["/ready", "/metrics", "/live"] {
        let r = s.curl(&s.admin.clone(), path, &[]);
        assert_eq!(r.status, 200, "{path}: {r:?}");
    }
    let who = s.admin("/admin/v1/whoami", &[]);
    assert_eq!(who.status, 200, "{who:?}");
    // The slow senders get 408 once the body timeout passes, and the
    // connection ends.
    let (reply, closed) = read_to_close(&mut slow[0], Duration::from_secs(15)).await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("body_timeout"), "{reply}");
    assert!(closed.is_some(), "{reply}");
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_anonymous_connections_are_closed() {
    let s = Server::started_with(Options {
        extra_server: "idle_timeout_ms = 1000\nheader_read_timeout_ms = 1500\n".into(),
        ..Options::default()
    })
    .await;
    // Never a byte after the handshake.
    let mut silent = anonymous(&s).await.unwrap();
    let (_, closed) = read_to_close(&mut silent, Duration::from_secs(20)).await;
    let closed = closed.expect("a silent connection stayed open");
    assert!(closed < Duration::from_secs(10), "{closed:?}");

    // Kept alive after one request, then idle.
    let mut kept = anonymous(&s).await.unwrap();
    kept.write_all(b"GET /live HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (reply, closed) = read_to_close(&mut kept, Duration::from_secs(20)).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let closed = closed.expect("an idle kept-alive connection stayed open");
    assert!(closed < Duration::from_secs(10), "{closed:?}");

    // Headers that never finish.
    let mut dribble = anonymous(&s).await.unwrap();
    dribble.write_all(b"GET /live HTTP/1.1\r\n").await.unwrap();
    let (_, closed) = read_to_close(&mut dribble, Duration::from_secs(20)).await;
    assert!(
        closed.is_some(),
        "unfinished headers kept the connection open"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_address_cannot_hold_every_connection() {
    let s = Server::started_with(Options {
        extra_server: "max_connections_per_address = 3\n".into(),
        ..Options::default()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(anonymous(&s).await.unwrap());
    }
    // The next ones from the same address are closed before the handshake,
    // and logged at a bounded rate.
    for _ in 0..40 {
        assert!(anonymous(&s).await.is_err());
    }
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m = s.metrics();
    assert!(
        m.contains(
            r#"keyward_connections_refused_total{listener="admin",reason="per_address_limit"} 40"#
        ),
        "{m}"
    );
    assert!(
        m.contains(r#"keyward_log_suppressed_total{listener="admin"}"#),
        "{m}"
    );
    let log = s.log();
    let lines = log.matches("too many from this address").count();
    assert!((1..=30).contains(&lines), "{lines} lines\n{log}");
    assert!(log.contains("suppressed_before"), "{log}");
}
