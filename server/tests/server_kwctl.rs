//! `kwctl` against a running `keyward serve`: it reaches the admin API over
//! mutual TLS with an operator certificate, and nothing else.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{KWCTL, Server, require_tool, stdout_json};

fn kwctl(s: &Server, dir: &Path, name: &str, args: &[&str]) -> Output {
    s.kwctl(dir, name, args)
}

fn json(out: &Output) -> serde_json::Value {
    stdout_json(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn kwctl_drives_the_ca_and_the_audit_trail() {
    require_tool("openssl", "openssl");
    let s = Server::started().await;
    let ops = s.operators();
    let admin = |args: &[&str]| kwctl(&s, &ops, "admin", args);

    let who = admin(&["-o", "json", "whoami"]);
    assert!(who.status.success(), "{who:?}");
    assert!(json(&who).to_string().contains("admin"));
    // Its own certificate it may not revoke: the refusal says why.
    let own = json(&who)["serial"].as_str().unwrap().to_owned();
    let itself = admin(&["operator", "revoke", &own]);
    assert_eq!(itself.status.code(), Some(1), "{itself:?}");
    let said = String::from_utf8_lossy(&itself.stderr);
    assert!(
        said.contains("409 self_revocation") && said.contains("another admin must revoke it"),
        "{said}"
    );
    assert!(admin(&["whoami"]).status.success());

    // A device certificate is refused (they come only from provisioning,
    // even for a registered device); a load permit from an openssl CSR is
    // issued, then revoked.
    s.register_device("0011223344556677");
    let (_, csr) = s.openssl_csr("dev1");
    let csr_path = s.dir.path().join("dev1.csr.pem");
    std::fs::write(&csr_path, csr).unwrap();
    let cert_out = s.dir.path().join("dev1.pem");
    let device = admin(&[
        "-o",
        "json",
        "ca",
        "issue",
        "--csr",
        csr_path.to_str().unwrap(),
        "--profile",
        "device",
        "--device-id",
        "0011223344556677",
    ]);
    assert_eq!(device.status.code(), Some(1), "{device:?}");
    assert_eq!(json(&device)["code"], "device_certificates_by_provisioning");
    let issued = admin(&[
        "-o",
        "json",
        "ca",
        "issue",
        "--csr",
        csr_path.to_str().unwrap(),
        "--profile",
        "server-tls",
        "--dns-name",
        "kwctl-test.bank.example",
        "--out",
        cert_out.to_str().unwrap(),
    ]);
    assert!(issued.status.success(), "{issued:?}");
    let serial = json(&issued)["serial"].as_str().unwrap().to_owned();
    assert!(
        std::fs::read_to_string(&cert_out)
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );

    let list = admin(&["ca", "list", "--profile", "server-tls"]);
    assert!(list.status.success(), "{list:?}");
    let table = String::from_utf8_lossy(&list.stdout);
    assert!(table.contains(&serial), "{table}");

    let revoked = admin(&["ca", "revoke", &serial, "--reason", "keyCompromise"]);
    assert!(revoked.status.success(), "{revoked:?}");
    let again = admin(&["-o", "json", "ca", "revoke", &serial]);
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(json(&again)["code"], "already_revoked");

    let crl = s.dir.path().join("crl.pem");
    let got = admin(&["ca", "crl", "--out", crl.to_str().unwrap()]);
    assert!(got.status.success(), "{got:?}");
    assert!(
        std::fs::read_to_string(&crl)
            .unwrap()
            .contains("BEGIN X509 CRL")
    );

    // An auditor may read and verify, not revoke.
    s.new_operator("auditor1", "auditor");
    let auditor = |args: &[&str]| kwctl(&s, s.dir.path(), "auditor1", args);
    let verify = auditor(&["-o", "json", "audit", "verify"]);
    assert!(verify.status.success(), "{verify:?}");
    assert_eq!(json(&verify)["ok"], true, "{verify:?}");
    let refused = auditor(&["-o", "json", "ca", "revoke", &serial]);
    assert_eq!(refused.status.code(), Some(1));
    assert_eq!(json(&refused)["code"], "forbidden_role");

    // Without a valid operator key the handshake itself fails.
    let stranger = kwctl(&s, s.dir.path(), "nobody", &["whoami"]);
    assert_eq!(stranger.status.code(), Some(2));

    let completions = Command::new(KWCTL)
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(completions.status.success());
    assert!(String::from_utf8_lossy(&completions.stdout).contains("kwctl"));
}
