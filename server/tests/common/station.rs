//! The provisioning station of the end-to-end tests: `kwctl -o json` as an
//! operator and `kwsim` as the devices' agent, bringing two devices of one
//! approved customer to the point where their terminals can log in.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use keyward_kms::types::DeviceId;
use keyward_tests::simulator::SimDevice;
use keyward_tests::terminal::Terminal;
use serde_json::Value;

use super::{KWCTL, Server, stdout_json};

pub const D1: &str = "F000000000000001";
pub const D2: &str = "F000000000000002";
pub const ACCOUNT: &str = "6222020200112233";

/// The id of the station's `n`th device (0-based): D1, D2, … in order.
pub fn device_id(n: usize) -> String {
    format!("F{:015X}", n + 1)
}

fn kwsim_path() -> PathBuf {
    Path::new(KWCTL).with_file_name("kwsim")
}

/// The provisioning station: `kwctl -o json` as an operator, `kwsim`.
pub struct Station<'a> {
    pub s: &'a Server,
    /// Where kwsim keeps its devices.
    pub devices: PathBuf,
}

impl<'a> Station<'a> {
    /// The station of `s`, with two operators (alice and bob, both
    /// `operator`) added for the two-person decisions provisioning needs.
    pub fn with_operators(s: &'a Server) -> Self {
        s.new_operator("alice", "operator");
        s.new_operator("bob", "operator");
        Station {
            s,
            devices: s.dir.path().join("devices"),
        }
    }

    pub fn ok(&self, who: &str, args: &[&str]) -> Value {
        let out = self.kwctl(who, args);
        let v = stdout_json(&out);
        assert!(
            out.status.success(),
            "kwctl {args:?}: {v}\n{}",
            self.s.log()
        );
        v
    }

    /// `kwctl -o json ARGS` as `who` (`admin`: the first operator), as it
    /// ended.
    pub fn kwctl(&self, who: &str, args: &[&str]) -> Output {
        let dir = if who == "admin" {
            self.s.operators()
        } else {
            self.s.dir.path().to_owned()
        };
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        self.s.kwctl(&dir, who, &all)
    }

    pub fn kwsim(&self, args: &[&str]) -> Output {
        Command::new(kwsim_path())
            .arg("--state")
            .arg(&self.devices)
            .args(args)
            .output()
            .unwrap()
    }

    pub fn agent(&self) -> String {
        format!(
            "{} --state {}",
            kwsim_path().display(),
            self.devices.display()
        )
    }

    /// D1 and D2 made, imported, checked, keyed for `issuers` and bound to
    /// one approved customer (an SMS contact), whose id it returns.
    pub fn provision(&self, issuers: &[(&str, &str)]) -> String {
        self.provision_devices(issuers, 2)
    }

    /// [`Self::provision`] for a customer whose contact is `kind` at
    /// `address`.
    pub fn provision_with_contact(
        &self,
        issuers: &[(&str, &str)],
        kind: &str,
        address: &str,
    ) -> String {
        self.provision_as(issuers, 2, kind, address)
    }

    /// [`Station::provision`] with `count` devices ([`device_id`] 0 to
    /// `count - 1`).
    pub fn provision_devices(&self, issuers: &[(&str, &str)], count: usize) -> String {
        self.provision_as(issuers, count, "sms", "+8613800138000")
    }

    /// `count` devices bound to one approved customer whose contact is
    /// `kind` at `address`.
    fn provision_as(
        &self,
        issuers: &[(&str, &str)],
        count: usize,
        kind: &str,
        address: &str,
    ) -> String {
        let customer = self.checked_devices(issuers, count, kind, address);
        let agent = self.agent();
        for d in (0..count).map(device_id) {
            let d = d.as_str();
            for (issuer, _) in issuers {
                self.ok(
                    "alice",
                    &["device", "init", d, "--issuer", issuer, "--agent", &agent],
                );
                self.ok(
                    "alice",
                    &[
                        "bind",
                        d,
                        "--customer",
                        &customer,
                        "--issuer",
                        issuer,
                        "--element",
                        "both",
                        "--account",
                        ACCOUNT,
                    ],
                );
            }
        }
        customer
    }

    /// `issuers` created, `count` devices ([`device_id`] 0 to `count - 1`)
    /// made, imported and checked, and one approved customer whose contact
    /// is `kind` at `address` (its id); nothing keyed or bound yet.
    pub fn checked_devices(
        &self,
        issuers: &[(&str, &str)],
        count: usize,
        kind: &str,
        address: &str,
    ) -> String {
        for (issuer, family) in issuers {
            self.ok("admin", &["issuer", "create", issuer, "--family", family]);
        }
        let manifest = self.s.dir.path().join("batch.csv");
        let made = self.kwsim(&[
            "make",
            "--count",
            &count.to_string(),
            "--first-id",
            D1,
            "--manifest",
            manifest.to_str().unwrap(),
        ]);
        assert!(made.status.success(), "{made:?}");
        self.ok(
            "alice",
            &[
                "device",
                "import",
                "--batch-id",
                "B-1",
                manifest.to_str().unwrap(),
            ],
        );
        let app = self.ok(
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
                kind,
                "--contact",
                address,
            ],
        );
        let app_id = app["application_id"].as_str().unwrap().to_owned();
        let customer = app["customer_id"].as_str().unwrap().to_owned();
        self.ok("bob", &["customer", "approve", &app_id]);
        let agent = self.agent();
        for d in (0..count).map(device_id) {
            self.ok("alice", &["device", "check", &d, "--agent", &agent]);
        }
        customer
    }

    /// The device's certificate and chain (PEM), as its terminal presents it.
    pub fn chain(&self, device: &str) -> String {
        let shown = self.ok("alice", &["device", "show", device]);
        let serial = shown["cert_serial"].as_str().unwrap().to_owned();
        chain_of(&self.ok("alice", &["ca", "show", &serial]))
    }

    pub fn terminal(&self, public: &str, device: &SimDevice, chain: &str) -> Terminal {
        let ca = std::fs::read_to_string(self.s.ca_pem()).unwrap();
        Terminal::new(&format!("https://{public}"), &ca, chain, device).unwrap()
    }

    pub fn device(&self, id: &str) -> SimDevice {
        SimDevice::load(&self.devices, id.parse::<DeviceId>().unwrap()).unwrap()
    }
}

/// A certificate and its chain (PEM) from `kwctl ca show`'s answer.
pub fn chain_of(cert: &Value) -> String {
    format!(
        "{}{}",
        cert["certificate_pem"].as_str().unwrap(),
        cert["chain_pem"].as_str().unwrap()
    )
}

/// Config for confirmations over signed webhooks to `receiver`: the code
/// messages of `sms` contacts to endpoint `gateway`, executions to
/// endpoint `core` (both the one receiver); the outbox drains every 100 ms
/// and a dead replica's claim lapses after 3 s. CA and secret files go to
/// `dir`.
pub fn webhook_confirmations(receiver: &keyward_tests::webhook::Receiver, dir: &Path) -> String {
    format!(
        "[confirmation]\ngateway = \"gateway\"\nexecutor_channel = \"webhook\"\n\
         executor = \"core\"\n[confirmation.channels]\nsms = \"webhook\"\nim = \"webhook\"\nemail = \"webhook\"\n\
         [outbox]\ninterval_ms = 100\nlease_ms = 3000\nmax_attempts = 50\n\
         backoff_base_ms = 50\nbackoff_max_ms = 500\n{}{}",
        receiver.config_toml("gateway", dir),
        receiver.config_toml("core", dir),
    )
}

/// The code in a delivered code message, as the customer's phone shows it.
pub fn code_in(payload: &[u8]) -> keyward_protocol::confirmation::Code {
    let payload: Value = serde_json::from_slice(payload).unwrap();
    let text = payload["text"].as_str().unwrap();
    let code = text.lines().find_map(|l| l.strip_prefix("Code ")).unwrap();
    keyward_protocol::confirmation::Code::parse(code.trim()).unwrap()
}

/// The confirm request of `tx` with `code`, signed by `dev`.
pub fn confirm_body(
    dev: &SimDevice,
    tx: &[u8],
    code: &keyward_protocol::confirmation::Code,
) -> Value {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let sig = dev.sign_confirmation(tx, code);
    serde_json::json!({"transaction": b64.encode(tx), "code": code.as_str(), "signature": b64.encode(sig)})
}
