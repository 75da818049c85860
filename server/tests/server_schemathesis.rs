//! API fuzzing from the OpenAPI document: schemathesis (PyPI) against the
//! `openapi.json` a running `keyward serve` serves, over mutual TLS with real
//! admin, operator, auditor, service and device certificates, every route of
//! each listener. Checks: no 5xx, every answer's status documented and its
//! body matching its schema.
//!
//! Runs when `KEYWARD_SCHEMATHESIS` names the `schemathesis` executable
//! (`ops/test.sh` installs it into a venv under the target dir and sets it);
//! otherwise it says so and passes. `KEYWARD_SCHEMATHESIS_EXAMPLES` (default
//! 10) and `KEYWARD_SCHEMATHESIS_SECONDS` (default 20, per certificate) make
//! the long run (ops/README.md, "Fuzzing"); `KEYWARD_SCHEMATHESIS_SEED`
//! (default 1) draws other examples; `KEYWARD_SCHEMATHESIS_AS=operator,admin`
//! runs only those certificates' parts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Server;

/// The checks schemathesis runs on every answer.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_schema_conformance,response_headers_conformance";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Writes `NAME.pem` (leaf + chain) for a certificate the admin API shows.
fn save_certificate(s: &Server, serial: &str, path: &Path) {
    let r = s.admin(&format!("/admin/v1/ca/certificates/{serial}"), &[]);
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    let pem = format!(
        "{}{}",
        v["certificate_pem"].as_str().unwrap(),
        v["chain_pem"].as_str().unwrap()
    );
    std::fs::write(path, pem).unwrap();
}

/// One schemathesis run against `addr` as the client whose certificate and
/// key are `cert` and `key`, over the operations `paths` (a regex) match.
fn run(
    st: &str,
    s: &Server,
    schema: &Path,
    addr: &str,
    cert: &Path,
    key: &Path,
    paths: &str,
) -> (bool, String) {
    let examples = env_or("KEYWARD_SCHEMATHESIS_EXAMPLES", 10);
    let seconds = env_or("KEYWARD_SCHEMATHESIS_SECONDS", 20);
    let seed = env_or("KEYWARD_SCHEMATHESIS_SEED", 1);
    // Its cache and reports go to the installation's temp dir.
    let out = Command::new(st)
        .current_dir(s.dir.path())
        .arg("run")
        .arg(schema)
        .args(["--url", &format!("https://{addr}")])
        .arg("--tls-verify")
        .arg(s.ca_pem())
        .arg("--request-cert")
        .arg(cert)
        .arg("--request-cert-key")
        .arg(key)
        .args(["--include-path-regex", paths])
        // POST /ocsp: a DER body schemathesis cannot generate (no serializer
        // for application/ocsp-request); tests/fuzz's `ocsp` target fuzzes
        // it. Revocation: an admin's run finds its own serial in the
        // listing and revokes it, and every later request fails the TLS
        // handshake; the bad-input corpus covers the route.
        .args(["--exclude-path-regex", "^/ocsp$|/revoke$"])
        .args(["--checks", CHECKS])
        .args(["--max-examples", &examples.to_string()])
        .args(["--max-time", &seconds.to_string()])
        .args(["--request-timeout", "15", "--workers", "1"])
        .args(["--seed", &seed.to_string(), "--no-color"])
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_answer_matches_the_openapi_document() {
    let Some(st) = std::env::var_os("KEYWARD_SCHEMATHESIS") else {
        eprintln!("KEYWARD_SCHEMATHESIS not set: schemathesis not run (ops/test.sh sets it)");
        return;
    };
    let st = st.to_string_lossy().into_owned();
    let s = Server::started().await;
    let dir = s.dir.path().to_owned();

    // The document the server serves is the one fuzzed.
    let served = s.curl(&s.admin.clone(), "/openapi.json", &[]);
    assert_eq!(served.status, 200, "{served:?}");
    let schema = dir.join("openapi.json");
    std::fs::write(&schema, &served.body).unwrap();

    // Operators of each role, a service and a registered device.
    s.new_operator("auditor1", "auditor");
    s.new_operator("operator1", "operator");
    let (_, csr) = s.openssl_csr("switch1");
    let svc = s.admin_post(
        "/admin/v1/services",
        &serde_json::json!({"csr_pem": csr, "name": "switch1"}),
    );
    assert_eq!(svc.status, 201, "{svc:?}");
    save_certificate(
        &s,
        svc.json()["serial"].as_str().unwrap(),
        &dir.join("switch1.pem"),
    );
    let device = "0011223344556677";
    s.register_device(device);
    let d = s.admin(&format!("/admin/v1/devices/{device}"), &[]);
    assert_eq!(d.status, 200, "{d:?}");
    let serial = d.json()["cert_serial"].as_str().unwrap().to_owned();
    let device_pem = dir.join("device.pem");
    save_certificate(&s, &serial, &device_pem);

    let ops = s.operators();
    let pem = |dir: &Path, n: &str| -> (PathBuf, PathBuf) {
        (dir.join(format!("{n}.pem")), dir.join(format!("{n}.key")))
    };
    let admin_paths = "^/(admin/|ocsp|live|ready|metrics|openapi)";
    // The least privileged first: an admin's fuzzed writes may revoke or
    // supersede the other clients' certificates.
    let runs = [
        (
            "device",
            s.public.clone(),
            (device_pem, dir.join(format!("factory-{device}.key"))),
            "^/v1/",
        ),
        (
            "service",
            s.admin.clone(),
            pem(&dir, "switch1"),
            "^/admin/v1/(macs|outbox)",
        ),
        (
            "auditor",
            s.admin.clone(),
            pem(&dir, "auditor1"),
            admin_paths,
        ),
        (
            "operator",
            s.admin.clone(),
            pem(&dir, "operator1"),
            admin_paths,
        ),
        ("admin", s.admin.clone(), pem(&ops, "admin"), admin_paths),
    ];
    // `KEYWARD_SCHEMATHESIS_AS=operator,admin`: only those certificates.
    let only = std::env::var("KEYWARD_SCHEMATHESIS_AS").unwrap_or_default();
    let chosen = |who: &str| only.is_empty() || only.split(',').any(|w| w.trim() == who);
    // A misspelt name would run nothing and pass.
    for name in only.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        assert!(
            runs.iter().any(|r| r.0 == name),
            "KEYWARD_SCHEMATHESIS_AS names {name:?}, which is not one of the parts"
        );
    }
    let mut failed = Vec::new();
    for (who, addr, (cert, key), paths) in runs.iter().filter(|r| chosen(r.0)) {
        let (mut ok, text) = run(&st, &s, &schema, addr, cert, key, paths);
        eprintln!("== schemathesis as {who} ==\n{text}");
        // A connection lost under a loaded CI machine (once in several
        // runs, on PostgreSQL, not reproduced) is a network error, not a
        // check's failure: that run is made once more, and a second one
        // fails the test.
        if !ok && text.contains("Network Error") && !text.contains("FAILURES") {
            let (again, text) = run(&st, &s, &schema, addr, cert, key, paths);
            eprintln!("== schemathesis as {who}, again after a network error ==\n{text}");
            ok = again;
        }
        if !ok {
            failed.push(*who);
        }
    }
    assert!(
        failed.is_empty(),
        "schemathesis found failures as {failed:?} (output above)"
    );
}
