//! `keyward init`: what it creates, and that a second run changes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Server;

#[tokio::test(flavor = "multi_thread")]
async fn init_creates_everything_once() {
    let s = Server::new().await;
    let first = s.init();
    assert_eq!(first["changed"], true, "{first}");
    let created: Vec<String> = first["created"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    for what in [
        "CA root key",
        "CA issuing certificate",
        "server TLS key keyward/tls/server",
        "server TLS certificate",
        "operator certificate admin (role admin)",
        "evidence key keyward/confirmation/evidence (HSM, P-256)",
        "evidence certificate for keyward/confirmation/evidence",
        "channel key keyward/channel/rsa (HSM, RSA-2048, unwrap only)",
        "channel certificate for keyward/channel/rsa",
        "channel state KEK keyward/channel/state-kek (HSM, AES-256, wrap/unwrap only)",
        "channel implicit-rejection key keyward/channel/implicit-rejection (HSM, AES-256, derive only)",
    ] {
        assert!(
            created.iter().any(|c| c.contains(what)),
            "{what} not reported in {created:?}"
        );
    }

    // Files: server chain (leaf + issuing CA), root, operator key 0600.
    let tls = s.data.join("tls");
    let server_pem = std::fs::read_to_string(tls.join("server.pem")).unwrap();
    assert_eq!(server_pem.matches("BEGIN CERTIFICATE").count(), 2);
    assert!(
        std::fs::read_to_string(tls.join("ca.pem"))
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    let ops = s.operators();
    let key = ops.join("admin.key");
    assert!(
        std::fs::read_to_string(&key)
            .unwrap()
            .contains("BEGIN PRIVATE KEY")
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "admin.key mode {mode:o}");
    }
    assert_eq!(
        std::fs::read_to_string(ops.join("admin.pem"))
            .unwrap()
            .matches("BEGIN CERTIFICATE")
            .count(),
        2
    );
    let key_before = std::fs::read(&key).unwrap();
    let server_before = server_pem;

    // Second run: nothing changes, nothing is rewritten.
    let second = s.init();
    assert_eq!(second["changed"], false, "{second}");
    assert!(second["created"].as_array().unwrap().is_empty());
    assert_eq!(std::fs::read(&key).unwrap(), key_before);
    assert_eq!(
        std::fs::read_to_string(tls.join("server.pem")).unwrap(),
        server_before
    );
    let text = s.keyward(&["init"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("nothing changed"));

    // The admin takes the key away: init does not make another admin.
    std::fs::remove_file(&key).unwrap();
    let third = s.init();
    assert_eq!(third["changed"], false, "{third}");
    assert!(!key.exists());

    // A changed name set re-issues the server certificate (and only it).
    let cfg = std::fs::read_to_string(&s.config).unwrap().replace(
        r#"public_names = ["localhost", "127.0.0.1"]"#,
        r#"public_names = ["localhost", "127.0.0.1", "keyward.test"]"#,
    );
    std::fs::write(&s.config, cfg).unwrap();
    let fourth = s.init();
    assert_eq!(fourth["changed"], true);
    let created = fourth["created"].as_array().unwrap();
    assert_eq!(created.len(), 1, "{fourth}");
    assert!(created[0].as_str().unwrap().contains("names changed"));
    assert_ne!(
        std::fs::read_to_string(tls.join("server.pem")).unwrap(),
        server_before
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_refuses_to_start_before_init() {
    let s = Server::new().await;
    let out = s.keyward(&["serve"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("keyward init"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn issuer_create_at_the_console_is_audited() {
    let s = Server::new().await;
    s.init();
    let out = s.keyward(&["--json", "issuer", "create", "bank-x", "--family", "aes"]);
    assert!(out.status.success());
    let issuer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(issuer["issuer_id"], "bank-x");
    // IMK-TMK, IMK-AUTH, ZPK.
    assert_eq!(issuer["master_keys"].as_array().unwrap().len(), 3);
    // A second one is refused, and that too is on record.
    let again = s.keyward(&["issuer", "create", "bank-x", "--family", "aes"]);
    assert!(!again.status.success());

    let db = keyward_kms::db::Database::connect(&s.db.config)
        .await
        .unwrap();
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT actor, action, outcome FROM audit_log WHERE action LIKE 'issuer.%' ORDER BY seq",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    let got: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("cli", "issuer.create", "requested"),
            ("cli", "issuer.create", "success"),
            ("cli", "issuer.create", "requested"),
            ("cli", "issuer.create", "failure"),
        ]
    );
}
