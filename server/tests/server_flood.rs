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
    // The next anonymous ones from the same address are closed (on
    // probation: after a handshake that showed no certificate) and logged at
    // a bounded rate.
    for _ in 0..40 {
        if let Ok(mut c) = anonymous(&s).await {
            let _ = c.write_all(b"GET /live HTTP/1.1\r\nhost: x\r\n\r\n").await;
            let (reply, closed) = read_to_close(&mut c, Duration::from_secs(5)).await;
            assert!(reply.is_empty(), "{reply}");
            assert!(closed.is_some());
        }
    }
    // An operator at the same address still gets in: certificate holders
    // have places of their own.
    let who = s.admin("/admin/v1/whoami", &[]);
    assert_eq!(who.status, 200, "{who:?}");
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

/// Sends `POST path` announcing a 60 MiB body, without a client
/// certificate. With `wait`, no body byte goes out until an answer came (or
/// 5 s passed); without, the body is written at once while reading. The
/// answer's head, and the body bytes written when it came.
async fn anonymous_upload(s: &Server, path: &str, wait: bool) -> (String, usize) {
    const LEN: usize = 60 << 20;
    let c = anonymous(s).await.unwrap();
    let (mut rd, mut wr) = tokio::io::split(c);
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {LEN}\r\n\r\n"
    );
    wr.write_all(head.as_bytes()).await.unwrap();
    wr.flush().await.unwrap();
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (go, ready) = tokio::sync::oneshot::channel::<()>();
    let writer = {
        let sent = sent.clone();
        tokio::spawn(async move {
            if wait
                && tokio::time::timeout(Duration::from_secs(5), ready)
                    .await
                    .is_err()
            {
                return;
            }
            let piece = vec![b'0'; 64 << 10];
            while sent.load(std::sync::atomic::Ordering::SeqCst) < LEN {
                if wr.write_all(&piece).await.is_err() || wr.flush().await.is_err() {
                    break;
                }
                sent.fetch_add(piece.len(), std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let mut at = None;
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(30), rd.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        at.get_or_insert(sent.load(std::sync::atomic::Ordering::SeqCst));
        got.extend_from_slice(&buf[..n]);
        if got.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    drop(go);
    writer.abort();
    (
        String::from_utf8_lossy(&got).into_owned(),
        at.unwrap_or(usize::MAX),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_anonymous_upload_is_refused_before_its_body_is_read() {
    let s = Server::started().await;
    // Answered from the headers: not one body byte was needed.
    for path in [
        "/admin/v1/macs/verify",
        "/admin/v1/batches",
        "/admin/v1/issuers",
    ] {
        let (reply, sent) = anonymous_upload(&s, path, true).await;
        assert!(reply.starts_with("HTTP/1.1 401"), "{path}: {reply}");
        assert!(reply.contains("connection: close"), "{path}: {reply}");
        assert_eq!(sent, 0, "{path}");
    }
    // A hundred that send their body at once leave the server's memory
    // where it was.
    let (before, _) = s.memory_kib();
    for i in 0..100 {
        let path = if i % 2 == 0 {
            "/admin/v1/macs/verify"
        } else {
            "/admin/v1/batches"
        };
        let (reply, _) = anonymous_upload(&s, path, false).await;
        assert!(reply.starts_with("HTTP/1.1 401"), "{reply}");
    }
    let (after, _) = s.memory_kib();
    eprintln!("RSS before {before} KiB, after 100 anonymous 60 MiB uploads {after} KiB");
    assert!(
        after < before + 32 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_body_is_408_and_a_silent_connection_closes_at_the_header_timeout() {
    let s = Server::started_with(Options {
        // The same time for the body as for the handler (the defaults).
        extra_server: "body_read_timeout_ms = 10000\nheader_read_timeout_ms = 1500\n".into(),
        ..Options::default()
    })
    .await;
    // The body's own time limit answers, not the handler's.
    let mut slow = slow_ocsp(&s).await;
    let (reply, _) = read_to_close(&mut slow, Duration::from_secs(20)).await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("body_timeout"), "{reply}");
    // Never a byte after the handshake: closed at the header timeout, not
    // at the (default, 60 s) idle timeout.
    let mut silent = anonymous(&s).await.unwrap();
    let (_, closed) = read_to_close(&mut silent, Duration::from_secs(30)).await;
    let closed = closed.expect("a silent connection stayed open");
    assert!(closed < Duration::from_secs(5), "{closed:?}");
}

/// A 60 MiB bulk body of `0` items from an admitted caller is refused 413
/// after costing the body and at most the limit's worth of items: the items
/// past `bulk_max_items` are counted, not kept.
#[tokio::test(flavor = "multi_thread")]
async fn an_oversize_bulk_json_body_costs_its_bytes_not_its_parse() {
    let s = Server::started_with(Options {
        extra_server: "bulk_max_body_bytes = 67108864\n".into(),
        ..Options::default()
    })
    .await;
    let n = (60usize << 20) / 2;
    let mut body = String::with_capacity(60 << 20);
    body.push_str("{\"items\":[");
    for i in 0..n {
        body.push_str(if i == 0 { "0" } else { ",0" });
    }
    body.push_str("]}");
    let file = s.dir.path().join("huge.json");
    std::fs::write(&file, &body).unwrap();
    drop(body);
    let (_, peak_before) = s.memory_kib();
    let at = format!("@{}", file.display());
    let r = s.admin(
        "/admin/v1/macs/verify",
        &["-H", "content-type: application/json", "--data-binary", &at],
    );
    assert_eq!(r.status, 413, "{r:?}");
    assert!(r.body.contains("batch_too_large"), "{r:?}");
    let (_, peak_after) = s.memory_kib();
    let grew_mib = peak_after.saturating_sub(peak_before) / 1024;
    eprintln!("peak RSS {peak_before} KiB -> {peak_after} KiB (+{grew_mib} MiB) for a 60 MiB body");
    // The body itself (60 MiB) and the parse of at most `bulk_max_items`
    // items; before, the whole body was parsed (+1 GiB).
    assert!(grew_mib < 160, "+{grew_mib} MiB");
}
