//! The OCSP responder on the admin listener, queried by the real
//! `openssl ocsp` without a client certificate: `good`, then `revoked` with
//! the reason after a revocation through the admin API, `unknown` for a
//! serial never issued; the response signature (by the issuing CA, no certs
//! included) verifies against the Keyward chain. Also `GET /ocsp/{base64}`
//! and the `malformedRequest` answer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{Server, require_tool};

/// `openssl ocsp` against `https://ADMIN/ocsp` with `args`, verifying the
/// response against the chain.
fn ocsp(s: &Server, dir: &Path, args: &[&str]) -> Output {
    Command::new("openssl")
        .arg("ocsp")
        .arg("-issuer")
        .arg(dir.join("issuing.pem"))
        .arg("-CAfile")
        .arg(dir.join("chain.pem"))
        .arg("-url")
        .arg(format!("https://{}/ocsp", s.admin))
        .args(["-resp_text", "-timeout", "30"])
        .args(args)
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn openssl_ocsp_sees_good_revoked_and_unknown() {
    require_tool("openssl", "openssl");
    require_tool("curl", "curl");
    let s = Server::started().await;
    let dir = s.dir.path().to_owned();

    // Issue a certificate through the admin API (a server's: device
    // certificates come only from provisioning).
    let (_, csr) = s.openssl_csr("dev1");
    let r = s.admin_post(
        "/admin/v1/ca/certificates",
        &serde_json::json!({
            "csr_pem": csr,
            "profile": "server-tls",
            "dns_names": ["ocsp-test.bank.example"],
        }),
    );
    assert!(r.status == 200 || r.status == 201, "{r:?}");
    let issued = r.json();
    let serial = issued["serial"].as_str().unwrap().to_owned();
    let dev = dir.join("dev1.pem");
    std::fs::write(&dev, issued["certificate_pem"].as_str().unwrap()).unwrap();
    // chain_pem is the issuing CA certificate, then the root.
    let chain = issued["chain_pem"].as_str().unwrap();
    std::fs::write(dir.join("chain.pem"), chain).unwrap();
    let end = "-----END CERTIFICATE-----";
    let issuing = &chain[..chain.find(end).unwrap() + end.len()];
    std::fs::write(dir.join("issuing.pem"), format!("{issuing}\n")).unwrap();

    // good (openssl sends a nonce by default; answers are cached and do not
    // echo it, RFC 6960 §4.4.1: openssl warns and accepts)
    let out = ocsp(&s, &dir, &["-cert", dev.to_str().unwrap()]);
    let t = text(&out);
    assert!(out.status.success(), "{t}\n{}", s.log());
    assert!(t.contains("Response verify OK"), "{t}");
    assert!(t.contains(&format!("{}: good", dev.display())), "{t}");
    assert!(t.contains("Next Update:"), "{t}");
    assert!(!t.contains("OCSP Nonce"), "{t}");
    // The same question again: served from the cache, no HSM signature.
    let out = ocsp(&s, &dir, &["-cert", dev.to_str().unwrap()]);
    assert!(text(&out).contains(&format!("{}: good", dev.display())));
    assert!(
        s.metrics()
            .contains(r#"keyward_ocsp_responses_total{source="cached"} 1"#)
    );
    assert!(t.contains("ecdsa-with-SHA256"), "{t}");

    // SHA-256 CertIDs are answered too.
    let out = ocsp(&s, &dir, &["-sha256", "-cert", dev.to_str().unwrap()]);
    let t = text(&out);
    assert!(t.contains("Response verify OK"), "{t}");
    assert!(t.contains(&format!("{}: good", dev.display())), "{t}");

    // GET /ocsp/{base64} (RFC 6960 A.1), no client certificate.
    let req = dir.join("req.der");
    let out = Command::new("openssl")
        .args(["ocsp", "-no_nonce", "-issuer"])
        .arg(dir.join("issuing.pem"))
        .arg("-cert")
        .arg(&dev)
        .arg("-reqout")
        .arg(&req)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(&req).unwrap())
    };
    let url_encoded = b64
        .replace('%', "%25")
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");
    let resp = dir.join("get.der");
    let r = s.curl(
        &s.admin.clone(),
        &format!("/ocsp/{url_encoded}"),
        &[
            "-o",
            resp.to_str().unwrap(),
            "-D",
            dir.join("get.headers").to_str().unwrap(),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let headers = std::fs::read_to_string(dir.join("get.headers")).unwrap();
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("content-type: application/ocsp-response"),
        "{headers}"
    );
    let out = Command::new("openssl")
        .args(["ocsp", "-respin"])
        .arg(&resp)
        .arg("-issuer")
        .arg(dir.join("issuing.pem"))
        .arg("-CAfile")
        .arg(dir.join("chain.pem"))
        .arg("-cert")
        .arg(&dev)
        .output()
        .unwrap();
    let t = text(&out);
    assert!(t.contains("Response verify OK"), "{t}");
    assert!(t.contains(&format!("{}: good", dev.display())), "{t}");

    // A malformed request is an OCSP answer (malformedRequest), not an HTTP error.
    let bad = dir.join("bad.der");
    let garbage = dir.join("garbage.bin");
    std::fs::write(&garbage, b"not an ocsp request").unwrap();
    let r = s.curl(
        &s.admin.clone(),
        "/ocsp",
        &[
            "-H",
            "content-type: application/ocsp-request",
            "--data-binary",
            &format!("@{}", garbage.display()),
            "-o",
            bad.to_str().unwrap(),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(std::fs::read(&bad).unwrap(), [0x30, 0x03, 0x0a, 0x01, 0x01]);
    let r = s.curl(
        &s.admin.clone(),
        "/ocsp/%%%not-base64",
        &["-o", "/dev/null"],
    );
    assert_eq!(r.status, 200, "{r:?}");

    // Revoke through the admin API: revoked, with the reason.
    let r = s.admin_post(
        &format!("/admin/v1/ca/certificates/{serial}/revoke"),
        &serde_json::json!({ "reason": "keyCompromise" }),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let out = ocsp(&s, &dir, &["-cert", dev.to_str().unwrap()]);
    let t = text(&out);
    assert!(t.contains("Response verify OK"), "{t}");
    assert!(t.contains(&format!("{}: revoked", dev.display())), "{t}");
    assert!(t.contains("Reason: keyCompromise"), "{t}");
    assert!(t.contains("Revocation Time:"), "{t}");

    // A serial never issued: unknown.
    let out = ocsp(&s, &dir, &["-serial", "0x0123456789ABCDEF"]);
    let t = text(&out);
    assert!(t.contains("Response verify OK"), "{t}");
    assert!(t.contains("0x0123456789ABCDEF: unknown"), "{t}");

    // A foreign issuer only: unauthorized (unsigned, per RFC 6960 §2.3).
    let root = dir.join("root.pem");
    let root_pem = &chain[chain.find(end).unwrap() + end.len()..];
    std::fs::write(&root, root_pem.trim_start()).unwrap();
    let out = Command::new("openssl")
        .args(["ocsp", "-issuer"])
        .arg(&root)
        .args(["-serial", "0x01", "-url"])
        .arg(format!("https://{}/ocsp", s.admin))
        .output()
        .unwrap();
    let t = text(&out);
    assert!(t.contains("unauthorized"), "{t}");

    let m = s.metrics();
    assert!(m.contains(r#"operation="ocsp_sign",outcome="ok""#), "{m}");
}
