//! Stable error codes: one status per code, from the one table in
//! `http/error.rs` ([`CODES`]), the same in docs/protocol.md and
//! docs/admin-api.md; and the answers that used to disagree with them.

use std::collections::BTreeMap;

use axum::http::{Method, StatusCode};
use keyward_server::http::error::CODES;
use keyward_tests::simulator::SimDevice;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{App, call};

fn doc(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Whether `w` looks like a code (`a_code`, not `server.max_body_bytes`,
/// `/ocsp` or `D`).
fn is_code(w: &str) -> bool {
    !w.is_empty()
        && w.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The backticked words of `text` that look like codes.
fn codes_in(text: &str) -> Vec<&str> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|w| is_code(w))
        .collect()
}

/// (code, status) of every row of the docs' code tables: rows whose first
/// cell is a status (`| 403 | `a_code`, … | when |`).
fn doc_tables(text: &str) -> Vec<(String, u16)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 || !cells[0].is_empty() {
            continue;
        }
        let Some(status) = cells[1]
            .parse::<u16>()
            .ok()
            .filter(|s| (400..600).contains(s))
        else {
            continue;
        };
        for code in codes_in(cells[2]) {
            out.push((code.to_owned(), status));
        }
    }
    out
}

/// Every "`409 a_code`" the docs' prose names.
fn doc_inline(text: &str) -> Vec<(String, u16)> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter_map(|w| {
            let (status, code) = w.split_once(' ')?;
            let status: u16 = status.parse().ok().filter(|s| (400..600).contains(s))?;
            is_code(code).then(|| (code.to_owned(), status))
        })
        .collect()
}

#[test]
fn every_code_has_one_status_and_the_docs_agree() {
    let mut table = BTreeMap::new();
    for (code, status) in CODES {
        assert!(
            table.insert(*code, status.as_u16()).is_none(),
            "{code} is in CODES twice"
        );
    }
    let docs = [doc("protocol.md"), doc("admin-api.md")];
    let rows: Vec<(String, u16)> = docs.iter().flat_map(|d| doc_tables(d)).collect();
    let inline: Vec<(String, u16)> = docs.iter().flat_map(|d| doc_inline(d)).collect();
    let mut wrong = Vec::new();
    for (code, status) in rows.iter().chain(&inline) {
        match table.get(code.as_str()) {
            Some(s) if s == status => {}
            Some(s) => wrong.push(format!("docs: {status} {code}, CODES: {s}")),
            None => wrong.push(format!("docs: {status} {code}, not in CODES")),
        }
    }
    for (code, status) in &table {
        if !rows.iter().any(|(c, s)| c == code && s == status) {
            wrong.push(format!(
                "CODES: {status} {code}, in no code table of the docs"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// A JSON body with a member the route does not know is malformed like any
/// other: 400 `invalid_request`, on both listeners.
#[tokio::test]
async fn an_unknown_member_is_400_invalid_request() {
    let app = App::new().await;
    app.post(
        &app.root,
        "/admin/v1/issuers",
        json!({"issuer_id": "bank-a", "family": "tdes", "colour": "red"}),
    )
    .await
    .refused(StatusCode::BAD_REQUEST, "invalid_request");
    let d = SimDevice::p256("0102030405060788".parse().unwrap()).unwrap();
    app.import("B-MEMBER", &[&d])
        .await
        .expect(StatusCode::CREATED);
    let who = crate::access::device_identity(&app, &d).await;
    let mut body = crate::login::start_body(&d, "bank-a");
    body["colour"] = json!("red");
    call(
        &app.public,
        &who,
        Method::POST,
        "/v1/login/start",
        Some(body),
    )
    .await
    .refused(StatusCode::BAD_REQUEST, "invalid_request");
}

/// `issuer_not_bound` is 403 wherever it is answered: login, and a
/// rotation asked for a device the issuer has no binding with.
#[tokio::test]
async fn issuer_not_bound_is_403_on_the_admin_side_too() {
    let app = App::new().await;
    app.issuer("bank-a", "tdes").await;
    let d = SimDevice::p256("0102030405060789".parse().unwrap()).unwrap();
    app.import("B-UNBOUND", &[&d])
        .await
        .expect(StatusCode::CREATED);
    app.post(
        &app.root,
        "/admin/v1/issuers/bank-a/rotations",
        json!({"device_id": d.id.to_string()}),
    )
    .await
    .refused(StatusCode::FORBIDDEN, "issuer_not_bound");
}

/// A body over the limit, sent whole over a real connection, gets its
/// `413 body_too_large` in full: the server reads the rest before it
/// answers, so the connection is not reset under the answer.
#[tokio::test]
async fn an_oversize_body_gets_a_readable_413() {
    let app = App::new().await;
    // OCSP admits anonymous callers (the other routes answer 401 before
    // reading a body, which this connection without TLS could not pass).
    let limit = app.state.config.server.ocsp_max_body_bytes;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = app.admin.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    let size = 5 << 20;
    assert!(size > limit);
    for _ in 0..3 {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut rx, mut tx) = stream.into_split();
        let writer = tokio::spawn(async move {
            let head = format!(
                "POST /ocsp HTTP/1.1\r\nhost: kw\r\n\
                 content-type: application/ocsp-request\r\ncontent-length: {size}\r\n\r\n"
            );
            tx.write_all(head.as_bytes()).await?;
            let chunk = vec![b' '; 64 << 10];
            let mut sent = 0;
            while sent < size {
                let n = chunk.len().min(size - sent);
                tx.write_all(&chunk[..n]).await?;
                sent += n;
                // Still sending when the server has seen enough to refuse.
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            tx.flush().await?;
            Ok::<_, std::io::Error>(tx)
        });
        // Read only once all was sent, as a client that writes its whole
        // request first does: an answer followed by a reset would be lost.
        let _ = writer.await;
        let mut answer = Vec::new();
        let read = rx.read_to_end(&mut answer).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(read.is_ok(), "{read:?}, read so far: {text}");
        assert!(text.starts_with("HTTP/1.1 413"), "{text}");
        assert!(text.contains("\"body_too_large\""), "{text}");
        // Closed on purpose, after the body was read to its end.
        assert!(
            text.to_ascii_lowercase().contains("connection: close"),
            "{text}"
        );
    }
    server.abort();
}
