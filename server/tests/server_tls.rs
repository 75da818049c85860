//! The two mTLS listeners, driven with curl: client certificates required,
//! operator roles, revocation through the CRL, TLS 1.2 and 1.3.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{Options, Server, sample};

#[tokio::test(flavor = "multi_thread")]
async fn first_admin_reaches_the_admin_api_with_curl() {
    let s = Server::started().await;
    // The command an operator types.
    let r = s.admin("/admin/v1/ca/certificates", &[]);
    assert_eq!(r.status, 200, "{r:?}\n{}", s.log());
    let list = r.json();
    let profiles: Vec<&str> = list["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["profile"].as_str().unwrap())
        .collect();
    assert!(profiles.contains(&"operator") && profiles.contains(&"server-tls"));

    let who = s.admin("/admin/v1/whoami", &[]).json();
    assert_eq!(who["name"], "admin");
    assert_eq!(who["role"], "admin");

    // Both protocol versions, both HTTP versions.
    for args in [
        &["--tlsv1.3"][..],
        &["--tlsv1.2", "--tls-max", "1.2"][..],
        &["--http1.1"][..],
    ] {
        let r = s.admin("/admin/v1/whoami", args);
        assert_eq!(r.status, 200, "{args:?}: {r:?}");
    }

    // One certificate by serial, with its PEM; an unknown serial is a JSON 404.
    let serial = who["serial"].as_str().unwrap();
    let one = s
        .admin(&format!("/admin/v1/ca/certificates/{serial}"), &[])
        .json();
    assert!(
        one["certificate_pem"]
            .as_str()
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    // An issued certificate comes with the chain above it (issuing CA, then root).
    let chain = one["chain_pem"].as_str().unwrap();
    assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2, "{chain}");
    let missing = s.admin("/admin/v1/ca/certificates/0ABC", &[]);
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"]["code"], "unknown_serial");

    // The CRL, PEM.
    let crl = s.admin("/admin/v1/ca/crl", &[]);
    assert_eq!(crl.status, 200);
    assert!(crl.body.contains("BEGIN X509 CRL"));
}

#[tokio::test(flavor = "multi_thread")]
async fn public_listener_refuses_a_handshake_without_client_certificate() {
    let s = Server::started().await;
    let r = s.curl(&s.public.clone(), "/v1/ping", &[]);
    assert_eq!(
        r.status, 0,
        "got an HTTP answer without a certificate: {r:?}"
    );
    assert_ne!(r.exit, 0);

    // With the admin's certificate (signed by the same CA) the handshake
    // completes, but the public listener serves devices only: 403.
    let ops = s.operators();
    let cert = ops.join("admin.pem");
    let key = ops.join("admin.key");
    let ok = s.curl(
        &s.public.clone(),
        "/v1/ping",
        &[
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    );
    assert_eq!(ok.status, 403, "{ok:?}");
    assert_eq!(ok.json()["error"]["code"], "device_certificate_required");

    // Counted and audited.
    let m = s.metrics();
    assert!(
        sample(
            &m,
            r#"keyward_tls_handshake_failures_total{listener="public"}"#
        )
        .unwrap()
            >= 1.0,
        "{m}"
    );
    let trail = s.admin("/admin/v1/audit?limit=100", &[]).json();
    assert!(
        trail["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| { r["action"] == "tls.client_refused" && r["target"] == "listener:public" }),
        "{trail}"
    );

    // The admin listener lets Prometheus in without a certificate, but not
    // into the API.
    let anon = s.curl(&s.admin.clone(), "/admin/v1/ca/certificates", &[]);
    assert_eq!(anon.status, 401, "{anon:?}");
    assert_eq!(anon.json()["error"]["code"], "client_certificate_required");
    assert_eq!(s.curl(&s.admin.clone(), "/live", &[]).status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_operator_is_refused_after_the_crl_refresh() {
    let s = Server::started_with(Options {
        crl_refresh_secs: 1,
        ..Options::default()
    })
    .await;
    let dir = s.dir.path().to_owned();
    let serial = s.new_operator("bob", "operator");
    let before = s.admin_as(&dir, "bob", "/admin/v1/whoami", &[]);
    assert_eq!(before.status, 200, "{before:?}");
    assert_eq!(before.json()["role"], "operator");

    let crl_before = sample(&s.metrics(), "keyward_crl_number").unwrap();
    let r = s.admin_post(
        &format!("/admin/v1/ca/certificates/{serial}/revoke"),
        &serde_json::json!({ "reason": "keyCompromise" }),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["status"], "revoked");
    // Revoking twice is a conflict, not a second revocation.
    let again = s.admin_post(
        &format!("/admin/v1/ca/certificates/{serial}/revoke"),
        &serde_json::json!({ "reason": "keyCompromise" }),
    );
    assert_eq!(again.status, 409, "{again:?}");

    // The new CRL is in force on both listeners: the handshake fails.
    let after = s.admin_as(&dir, "bob", "/admin/v1/whoami", &[]);
    assert_eq!(
        after.status, 0,
        "revoked certificate still accepted: {after:?}"
    );
    // (curl's own message depends on when the alert arrives; the server's
    // log says why.)
    // The server logs the refusal after it sent the alert: wait for it.
    let mut logged = false;
    for _ in 0..100 {
        logged = s.log().contains("Revoked");
        if logged {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(logged, "{}\n{}", after.stderr, s.log());
    let bob_cert = dir.join("bob.pem");
    let bob_key = dir.join("bob.key");
    let public = s.curl(
        &s.public.clone(),
        "/v1/ping",
        &[
            "--cert",
            bob_cert.to_str().unwrap(),
            "--key",
            bob_key.to_str().unwrap(),
        ],
    );
    assert_eq!(public.status, 0, "{public:?}");

    // Still refused after scheduled refreshes; the admin is unaffected.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(s.admin_as(&dir, "bob", "/admin/v1/whoami", &[]).status, 0);
    assert_eq!(s.admin("/admin/v1/whoami", &[]).status, 200);
    let m = s.metrics();
    assert!(
        sample(&m, "keyward_crl_number").unwrap() > crl_before,
        "{m}"
    );
    assert!(sample(&m, "keyward_certificates_revoked_total").unwrap() >= 1.0);
    assert!(
        sample(
            &m,
            r#"keyward_tls_handshake_failures_total{listener="admin"}"#
        )
        .unwrap()
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kept_alive_connection_does_not_outlive_its_revocation() {
    let s = Server::started().await;
    let dir = s.dir.path().to_owned();
    let serial = s.new_operator("dave", "admin");
    let (ca, cert, key) = (s.ca_pem(), dir.join("dave.pem"), dir.join("dave.key"));
    let base = format!("https://{}", s.admin);
    let tls = |args: &mut Vec<String>| {
        for a in [
            "--cacert",
            ca.to_str().unwrap(),
            "--cert",
            cert.to_str().unwrap(),
        ] {
            args.push(a.to_owned());
        }
        args.extend(["--key".to_owned(), key.to_str().unwrap().to_owned()]);
        args.extend(["-w".into(), "\n%{http_code} %{num_connects}\n".into()]);
    };
    // Two requests on one connection, 3 s apart (`--rate`): who am I, and
    // again after another admin revoked this certificate in between (an
    // operator cannot revoke its own).
    let mut args: Vec<String> = vec!["-sS".into(), "--rate".into(), "20/m".into()];
    tls(&mut args);
    args.push(format!("{base}/admin/v1/whoami"));
    args.push(format!("{base}/admin/v1/whoami"));
    let dave = std::process::Command::new("curl")
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    let r = s.admin_post(
        &format!("/admin/v1/ca/certificates/{serial}/revoke"),
        &serde_json::json!({ "reason": "keyCompromise" }),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let out = dave.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let codes: Vec<&str> = text
        .lines()
        .filter(|l| l.len() > 3 && l.as_bytes()[3] == b' ')
        .collect();
    assert_eq!(
        codes.len(),
        2,
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(codes[0], "200 1", "{text}");
    // Same connection (no new connect), yet refused.
    assert_eq!(codes[1], "403 0", "{text}");
    assert!(text.contains("certificate_revoked"), "{text}");
}

/// A revocation made through one replica reaches the other
/// replica's TLS verifier within the documented bound
/// (`server.revocation_poll_ms`, 1 s, plus the reload), not at its next
/// scheduled CRL refresh (an hour here).
#[tokio::test]
async fn a_revocation_reaches_the_other_replica_within_the_poll() {
    let s = Server::started_with(Options {
        crl_refresh_secs: 3600,
        ..Options::default()
    })
    .await;
    let b = s.replica("b");
    let dir = s.dir.path().to_owned();
    let serial = s.new_operator("bob", "operator");
    let bob = |addr: &str| {
        let cert = dir.join("bob.pem");
        let key = dir.join("bob.key");
        s.curl(
            addr,
            "/admin/v1/whoami",
            &[
                "--cert",
                cert.to_str().unwrap(),
                "--key",
                key.to_str().unwrap(),
            ],
        )
    };
    assert_eq!(bob(&b.admin).status, 200);

    // Revoked through replica A (the first process).
    let r = s.admin_post(
        &format!("/admin/v1/ca/certificates/{serial}/revoke"),
        &serde_json::json!({ "reason": "keyCompromise" }),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let revoked_at = Instant::now();
    // Replica B refuses new handshakes with it soon after.
    loop {
        let reply = bob(&b.admin);
        if reply.status == 0 {
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(5),
            "replica B still accepts the revoked certificate after {:?}: {reply:?}",
            revoked_at.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = revoked_at.elapsed();
    eprintln!("revocation seen by replica B's TLS verifier after {took:?}");
    let log = std::fs::read_to_string(&b.log).unwrap();
    assert!(log.contains("TLS listeners now check the new CRL"), "{log}");
}

/// A terminal that reconnects resumes its TLS session (no certificate
/// signature in the HSM), across a CRL change too; the resumed session of
/// a certificate revoked meanwhile is refused by the per-request check.
#[tokio::test(flavor = "multi_thread")]
async fn a_terminal_resumes_across_a_crl_change_and_revocation_still_holds() {
    use common::station::{D1, D2, Station};
    use hyper::Method;
    let s = Server::started().await;
    let st = Station::with_operators(&s);
    st.provision(&[("bank-a", "tdes")]);
    let term = st.terminal(&s.public, &st.device(D1), &st.chain(D1));
    let (term, server) = (&term, &s);
    let ping = |resumed: bool, status: u16| async move {
        let mut c = term.connect().await.unwrap();
        assert_eq!(c.resumed(), resumed, "{}", server.log());
        let r = c.call(Method::GET, "/v1/ping", None, None).await.unwrap();
        assert_eq!(r.status.as_u16(), status, "{:?}", r.body);
        r
    };
    ping(false, 200).await;
    ping(true, 200).await;
    let signed = || {
        sample(
            &s.metrics(),
            r#"keyward_hsm_operation_duration_seconds_count{operation="tls_handshake_sign",outcome="ok"}"#,
        )
        .unwrap_or(0.0)
    };
    let revoke = |device: &str| {
        let serial = st.ok("alice", &["device", "show", device])["cert_serial"]
            .as_str()
            .unwrap()
            .to_owned();
        let r = s.admin_post(
            &format!("/admin/v1/ca/certificates/{serial}/revoke"),
            &serde_json::json!({ "reason": "keyCompromise" }),
        );
        assert_eq!(r.status, 200, "{r:?}");
    };
    // Another device's revocation changes the CRL: D1 still resumes.
    revoke(D2);
    let before = signed();
    ping(true, 200).await;
    // The one signature since is the metrics scrape's own handshake (curl).
    assert_eq!(signed(), before + 1.0, "a resumption signed in the HSM");
    // D1's own: the resumed session is refused at its first request.
    revoke(D1);
    let refused = ping(true, 403).await;
    assert_eq!(
        refused.body["error"]["code"], "certificate_revoked",
        "{refused:?}"
    );
}
