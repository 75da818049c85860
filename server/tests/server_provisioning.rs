//! Device provisioning as a bank runs it: `kwctl` against a running
//! `keyward serve` on SoftHSM, with software devices from `kwsim` (the
//! simulator binary of `keyward-tests`) as the device agent. A factory batch
//! is imported, devices are checked and initialised, a customer is registered
//! by one operator and approved by another, a device is bound and issued —
//! and every refusal the issue names is typed and audited.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{KWCTL, Server, require_tool, stdout_json};
use serde_json::Value;

const D1: &str = "F000000000000001";
const D2: &str = "F000000000000002";
const D3: &str = "F000000000000003";
const ACCOUNT: &str = "6222020200112233";

/// `kwsim` is built with the workspace's binaries (`ops/test.sh` builds them
/// first); it sits next to `kwctl`.
fn kwsim_path() -> PathBuf {
    let path = Path::new(KWCTL).with_file_name("kwsim");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p keyward-tests --bin kwsim` (ops/test.sh builds every binary first)",
        path.display()
    );
    path
}

struct Station<'a> {
    s: &'a Server,
    devices: PathBuf,
    kwsim: PathBuf,
}

impl Station<'_> {
    /// `kwctl -o json` as operator `who`: (exit code, stdout JSON).
    fn as_(&self, who: &str, args: &[&str]) -> (i32, Value) {
        let dir = if who == "admin" {
            self.s.operators()
        } else {
            self.s.dir.path().to_owned()
        };
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        let out = self.s.kwctl(&dir, who, &all);
        (out.status.code().unwrap_or(-1), stdout_json(&out))
    }

    fn ok(&self, who: &str, args: &[&str]) -> Value {
        let (code, v) = self.as_(who, args);
        assert_eq!(code, 0, "kwctl {args:?} as {who}: {v}\n{}", self.s.log());
        v
    }

    /// Refused by the server (exit 1) with this error code.
    fn refused(&self, who: &str, args: &[&str], code: &str) -> Value {
        let (exit, v) = self.as_(who, args);
        assert_eq!(exit, 1, "kwctl {args:?} as {who}: {v}");
        assert_eq!(v["code"], code, "kwctl {args:?} as {who}: {v}");
        v
    }

    fn agent(&self) -> String {
        format!(
            "{} --state {}",
            self.kwsim.display(),
            self.devices.display()
        )
    }

    fn kwsim(&self, args: &[&str]) -> Output {
        let out = Command::new(&self.kwsim)
            .arg("--state")
            .arg(&self.devices)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "kwsim {args:?}: {out:?}");
        out
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bank_provisions_devices_and_customers_through_kwctl() {
    require_tool("openssl", "openssl");
    let s = Server::started().await;
    s.new_operator("alice", "operator");
    s.new_operator("bob", "operator");
    s.new_operator("audrey", "auditor");
    let st = Station {
        s: &s,
        devices: s.dir.path().join("devices"),
        kwsim: kwsim_path(),
    };

    // The bank's issuer, with its master keys in the HSM (admin only).
    st.refused(
        "alice",
        &["issuer", "create", "bank-b", "--family", "aes"],
        "forbidden_role",
    );
    let issuer = st.ok("admin", &["issuer", "create", "bank-a", "--family", "tdes"]);
    assert_eq!(issuer["issuer_id"], "bank-a");

    // The factory makes three devices and their manifest.
    let manifest = s.dir.path().join("batch-1.csv");
    st.kwsim(&[
        "make",
        "--count",
        "3",
        "--first-id",
        D1,
        "--manifest",
        manifest.to_str().unwrap(),
    ]);

    // A batch with a forged CSR is refused whole, row by row.
    let good_rows = std::fs::read_to_string(&manifest).unwrap();
    let forged_row = st.kwsim(&["forge-csr", "--signer", D1, "--victim", D2]);
    let mut lines = good_rows.lines();
    let forged = format!(
        "{}\n{}\n{}",
        lines.next().unwrap(),
        lines.next().unwrap(),
        String::from_utf8_lossy(&forged_row.stdout).trim()
    );
    let forged_path = s.dir.path().join("forged.csv");
    std::fs::write(&forged_path, forged).unwrap();
    let err = st.refused(
        "alice",
        &[
            "device",
            "import",
            "--batch-id",
            "B-FORGED",
            forged_path.to_str().unwrap(),
        ],
        "batch_rejected",
    );
    let rows = err["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{err}");
    assert_eq!(rows[0]["outcome"], "valid");
    assert_eq!(rows[1]["outcome"], "rejected");
    assert_eq!(rows[1]["code"], "csr_signature");
    st.refused("alice", &["device", "show", D1], "unknown_device");

    // The real batch: every device certified.
    let report = st.ok(
        "alice",
        &[
            "device",
            "import",
            "--batch-id",
            "B-2026-001",
            manifest.to_str().unwrap(),
        ],
    );
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert!(
        rows.iter().all(|r| r["outcome"] == "registered"),
        "{report}"
    );
    let listed = st.ok("audrey", &["device", "list", "--batch-id", "B-2026-001"]);
    assert_eq!(listed["devices"].as_array().unwrap().len(), 3);

    // Genuine-device check. An unknown device is refused…
    let agent = st.agent();
    st.refused(
        "alice",
        &["device", "check", "00000000000000AA", "--agent", &agent],
        "unknown_device",
    );
    // …and so is a device whose proof of possession fails (D3's challenge
    // signed by D2's key); the challenge is single use.
    let challenge = st.ok("alice", &["device", "check", D3]);
    let hex = challenge["challenge"].as_str().unwrap();
    assert_eq!(hex.len(), 64);
    let cid = challenge["challenge_id"].as_str().unwrap();
    assert_eq!(cid.len(), 32);
    let sig = st.kwsim(&["sign-challenge", D2, hex]);
    let sig = String::from_utf8(sig.stdout).unwrap();
    st.refused(
        "alice",
        &[
            "device",
            "check",
            D3,
            "--challenge-id",
            cid,
            "--signature",
            sig.trim(),
        ],
        "proof_of_possession_failed",
    );
    let sig = st.kwsim(&["sign-challenge", D3, hex]);
    st.refused(
        "alice",
        &[
            "device",
            "check",
            D3,
            "--challenge-id",
            cid,
            "--signature",
            String::from_utf8(sig.stdout).unwrap().trim(),
        ],
        "challenge_invalid",
    );
    let d3 = st.ok("alice", &["device", "show", D3]);
    assert_eq!(d3["state"], "manufactured");
    // Only the wrong signature counts: the replay named a used challenge.
    assert_eq!(d3["check_failures"], 1);
    // A device that is not genuine never gets keys.
    st.refused(
        "alice",
        &[
            "device", "init", D3, "--issuer", "bank-a", "--agent", &agent,
        ],
        "device_state",
    );

    for d in [D1, D2] {
        let checked = st.ok("alice", &["device", "check", d, "--agent", &agent]);
        assert_eq!(checked["state"], "verified", "{checked}");
    }

    // Original keys: wrapped to the device's key, confirmed by its KCVs.
    let init = st.ok(
        "alice",
        &[
            "device", "init", D1, "--issuer", "bank-a", "--agent", &agent,
        ],
    );
    assert_eq!(init["state"], "initialised", "{init}");
    let held: Value = serde_json::from_slice(&st.kwsim(&["show", D1]).stdout).unwrap();
    assert!(held.to_string().contains("bank-a"), "{held}");
    // A second package needs an operator's reinit.
    st.refused(
        "alice",
        &[
            "device", "init", D1, "--issuer", "bank-a", "--agent", &agent,
        ],
        "reinit_required",
    );

    // A customer applies through alice; alice cannot approve her own work.
    let app = st.ok(
        "alice",
        &[
            "customer",
            "apply",
            "--name",
            "Li Lei",
            "--national-id",
            "110101199003071234",
            "--account",
            ACCOUNT,
            "--contact-kind",
            "sms",
            "--contact",
            "+8613800138000",
        ],
    );
    let app_id = app["application_id"].as_str().unwrap().to_owned();
    let customer = app["customer_id"].as_str().unwrap().to_owned();
    let bind = [
        "bind",
        D1,
        "--customer",
        &customer,
        "--issuer",
        "bank-a",
        "--element",
        "both",
        "--account",
        ACCOUNT,
    ];
    st.refused("alice", &bind, "customer_not_approved");
    st.refused("alice", &["customer", "approve", &app_id], "self_approval");
    let queue = st.ok("bob", &["customer", "list"]);
    assert!(queue.to_string().contains(&app_id));
    let approved = st.ok("bob", &["customer", "approve", &app_id]);
    assert_eq!(approved["customer_id"], customer.as_str());

    // Bound and issued.
    let binding = st.ok("alice", &bind);
    assert_eq!(binding["psam_serial"], "PSAM00000001", "{binding}");
    let d1 = st.ok("audrey", &["device", "show", D1]);
    assert_eq!(d1["state"], "issued");
    assert_eq!(d1["bindings"].as_array().unwrap().len(), 1);
    assert_eq!(d1["inits"][0]["state"], "initialised");
    let shown = st.ok("audrey", &["customer", "show", &customer]);
    assert_eq!(shown["devices"][0], D1);

    // Lifecycle: suspend and resume; auditors only read.
    st.refused(
        "audrey",
        &["device", "suspend", D1, "--reason", "lost"],
        "forbidden_role",
    );
    let suspended = st.ok(
        "alice",
        &["device", "suspend", D1, "--reason", "reported lost"],
    );
    assert_eq!(suspended["state"], "suspended");
    st.refused(
        "alice",
        &["device", "suspend", D1, "--reason", "twice"],
        "invalid_transition",
    );
    let resumed = st.ok("bob", &["device", "resume", D1, "--reason", "found"]);
    assert_eq!(resumed["state"], "issued");

    // Retiring revokes the certificate at once.
    let d2 = st.ok("alice", &["device", "show", D2]);
    let serial = d2["cert_serial"].as_str().unwrap().to_owned();
    let retired = st.ok("alice", &["device", "retire", D2, "--reason", "damaged"]);
    assert_eq!(retired["state"], "retired");
    let cert = st.ok("audrey", &["ca", "show", &serial]);
    assert_eq!(cert["status"], "revoked", "{cert}");
    st.refused(
        "alice",
        &["device", "resume", D2, "--reason", "no"],
        "invalid_transition",
    );

    // Every refusal above is in the audit trail with its code and operator.
    let trail = st.ok("audrey", &["audit", "list", "--limit", "1000"]);
    let records = trail["records"].as_array().unwrap();
    let refused: Vec<(String, String, String)> = records
        .iter()
        .filter(|r| r["outcome"] == "refused")
        .map(|r| {
            let detail: Value = serde_json::from_str(r["detail_json"].as_str().unwrap()).unwrap();
            (
                r["action"].as_str().unwrap().to_owned(),
                detail["code"].as_str().unwrap_or("").to_owned(),
                r["actor"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for (action, code) in [
        ("provisioning.import_batch", "batch_rejected"),
        ("provisioning.begin_check", "unknown_device"),
        ("provisioning.complete_check", "proof_of_possession_failed"),
        ("provisioning.complete_check", "challenge_invalid"),
        ("provisioning.init_package", "device_state"),
        ("customer.approve", "self_approval"),
        ("device.bind", "customer_not_approved"),
    ] {
        assert!(
            refused
                .iter()
                .any(|(a, c, actor)| a == action && c == code && actor.contains("alice")),
            "no refused {action} ({code}) by alice in {refused:?}"
        );
    }
    let approvals: Vec<&Value> = records
        .iter()
        .filter(|r| r["action"] == "customer.approve" && r["outcome"] == "success")
        .collect();
    assert_eq!(approvals.len(), 1);
    assert!(approvals[0]["actor"].as_str().unwrap().contains("bob"));
    // No personal data in the trail.
    let all = trail.to_string();
    assert!(!all.contains("110101199003071234"));
    assert!(!all.contains("8613800138000"));
    let verify = st.ok("audrey", &["audit", "verify"]);
    assert_eq!(verify["ok"], true);

    let metrics = s.metrics();
    assert!(
        metrics.contains("keyward_provisioning_decisions_total{action=\"customer.approve\",outcome=\"refused\"} 1"),
        "{metrics}"
    );
}
