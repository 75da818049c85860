//! Crash safety of provisioning, the login, key rotation, lockouts, bulk MAC
//! batches, the CRL and the audit trail, end to end (docs/protocol.md
//! §12.5): the sweep of every fault point the confirmation and load crash
//! tests do not cover (`keyward_server::fault::SWEEPS`).
//!
//! For every such point × {kill, panic}, a real `keyward serve` built with
//! fault points is armed there and runs one scenario that meets every point:
//! a one-device batch imported, a device's init package and binding, its
//! first login (working keys offered and confirmed), a second login, a bulk
//! MAC batch over its key, the device as a card in the secure channel
//! (opened, a carried login, a key update, closed, then resumed), wrong responses until its credential locks (its
//! certificate revoked, the CRL re-signed), all audited and checkpointed.
//! Whenever the server dies it is started again without faults and the
//! client carries on as a station or terminal would (the same request
//! again). After each case the server is restarted without faults, its
//! recovery runs, and:
//!
//! - the batch is all or nothing: complete with its device certified, or
//!   absent with no valid certificate for it (and then it imports again);
//! - no credential is locked with its certificate still valid, and the TLS
//!   listener refuses the locked device's certificate (the CRL in force);
//! - every credential has at most one active and one pending working-key
//!   version, and a bound device that logged in has an active one;
//! - every stored channel has its opening's audit record;
//! - `keyward audit verify` finds the chain and the HSM checkpoint whole.
//!
//! `KEYWARD_FAULT_SWEEP_POINTS=a,b` limits the sweep to those points. It
//! prints its figures (cases, restarts, time, violations).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use common::process::{self, STEP};
use common::station::{ACCOUNT, Station, chain_of, device_id};
use common::{Options, Server};
use keyward_kms::db::Database;
use keyward_server::fault::ENV;
use keyward_tests::simulator::SimDevice;
use keyward_tests::terminal::{self, LoginOptions, Terminal};
use serde_json::{Value, json};
use sqlx::Row;

/// `[online] max_login_failures` of this server: two wrong answers lock.
const MAX_FAILURES: u32 = 2;
/// The issuer every device is keyed for.
const ISSUER: &str = "bank-a";

/// The hit a case arms its point at: the server's own start record is the
/// trail's first append, so a case's first is the second.
fn hit(point: &str) -> &'static [u64] {
    if point == "audit.append.committed" {
        &[2]
    } else {
        &[1]
    }
}

struct Rig {
    s: Server,
    db: Database,
    /// Where kwsim keeps the devices.
    devices: PathBuf,
    customer: String,
    root: String,
    /// Times the server died (or a request panicked) and the client went
    /// on after it.
    restarts: u32,
}

impl Rig {
    fn station(&self) -> Station<'_> {
        Station {
            s: &self.s,
            devices: self.devices.clone(),
        }
    }

    /// After a request got no good answer: a dying server is given time
    /// to die ([`process::let_die`]), then started again.
    async fn after_failure(&mut self, answered: bool) {
        process::let_die(&mut self.s, answered).await;
        process::revive(&mut self.s, &mut self.restarts);
    }

    /// `kwctl -o json ARGS` as alice until it succeeds; after a failure a
    /// repeat may find the step done (`done_code`), which counts as done.
    async fn kwctl(&mut self, args: &[&str], done_code: Option<&str>) -> Value {
        let deadline = Instant::now() + STEP;
        let mut failed = false;
        let mut last = Value::Null;
        loop {
            assert!(
                Instant::now() < deadline,
                "kwctl {args:?}: no success: {last}\n{}",
                self.s.log()
            );
            let out = self.station().kwctl("alice", args);
            let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            last = v.clone();
            if out.status.success() {
                return v;
            }
            if failed && done_code.is_some_and(|c| v["code"] == c) {
                return v;
            }
            failed = true;
            self.after_failure(!v.is_null()).await;
        }
    }

    /// The device's certificate and chain (PEM), as its terminal presents
    /// it ([`Station::chain`], asked until answered: a timer's point, the
    /// CRL's, may kill the server at any step).
    async fn chain(&mut self, device: &str) -> String {
        let shown = self.kwctl(&["device", "show", device], None).await;
        let serial = shown["cert_serial"].as_str().unwrap().to_owned();
        chain_of(&self.kwctl(&["ca", "show", &serial], None).await)
    }

    /// A one-device batch `batch` imported (all or nothing; a batch the
    /// crash left absent imports again).
    async fn import(&mut self, batch: &str, manifest: &str) {
        let deadline = Instant::now() + STEP;
        loop {
            assert!(
                Instant::now() < deadline,
                "import {batch}\n{}",
                self.s.log()
            );
            let r = self.s.admin_post(
                "/admin/v1/batches",
                &json!({ "batch_id": batch, "manifest": manifest }),
            );
            if r.status == 201 {
                return;
            }
            self.after_failure(r.status != 0).await;
            if settled(&mut self.s, batch).await.is_some() {
                return;
            }
        }
    }

    /// A login of `dev` until a session opens; its answer.
    async fn login(&mut self, dev: &mut SimDevice, chain: &str) -> Value {
        let deadline = Instant::now() + STEP;
        loop {
            assert!(Instant::now() < deadline, "login\n{}", self.s.log());
            let t = Terminal::new(
                &format!("https://{}", self.s.public),
                &self.root,
                chain,
                dev,
            )
            .unwrap();
            let out = terminal::login(&t, dev, ISSUER, LoginOptions::default());
            let answered = match tokio::time::timeout(Duration::from_secs(10), out).await {
                Ok(Ok(out)) => {
                    if out.finish.status.is_success() {
                        return out.finish.body;
                    }
                    assert!(
                        out.finish.status.is_server_error(),
                        "login refused: {} {}",
                        out.finish.status,
                        out.finish.body
                    );
                    true
                }
                // A start answered 500 (its text holds the status).
                Ok(Err(e)) => e.to_string().contains(" 500 "),
                Err(_) => false,
            };
            self.after_failure(answered).await;
        }
    }

    /// `dev` as a bank card in the secure channel (kwsim: the handshake, a
    /// carried ping and login, a key update, a close, then a resumption)
    /// until one whole run succeeds; a run cut by a fault is
    /// started again with a new channel, as a card would.
    async fn channel(&mut self, device: &str, chain: &str) {
        let card = self.s.dir.path().join(format!("card-{device}.pem"));
        std::fs::write(&card, chain).unwrap();
        let deadline = Instant::now() + STEP;
        let mut last = String::new();
        loop {
            assert!(
                Instant::now() < deadline,
                "channel: {last}\n{}",
                self.s.log()
            );
            // The listener's port changes at every restart.
            let (server, ca) = (format!("https://{}", self.s.public), self.s.ca_pem());
            let args = [
                "channel",
                device,
                "--issuer",
                ISSUER,
                "--server",
                &server,
                "--ca",
                ca.to_str().unwrap(),
                "--cert",
                card.to_str().unwrap(),
                "--resume-on",
                &server,
            ];
            let out = self.station().kwsim(&args);
            if out.status.success() {
                return;
            }
            last = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            // Any line at all: the server answered before it failed.
            self.after_failure(!out.stdout.is_empty()).await;
        }
    }

    /// Whether `device`'s credential is locked.
    async fn locked(&self, device: &str) -> bool {
        sqlx::query_scalar::<_, Option<i64>>(
            "SELECT locked_at_ms FROM online_credentials WHERE device_id = $1 AND issuer_id = $2",
        )
        .bind(device)
        .bind(ISSUER)
        .fetch_optional(self.db.pool())
        .await
        .unwrap()
        .flatten()
        .is_some()
    }

    /// Wrong responses until the credential is locked.
    async fn lock_out(&mut self, dev: &mut SimDevice, chain: &str) {
        let deadline = Instant::now() + STEP;
        let id = dev.id.to_string();
        while !self.locked(&id).await {
            assert!(Instant::now() < deadline, "lockout\n{}", self.s.log());
            let t = Terminal::new(
                &format!("https://{}", self.s.public),
                &self.root,
                chain,
                dev,
            )
            .unwrap();
            let wrong = LoginOptions {
                wrong_response: true,
            };
            let out = terminal::login(&t, dev, ISSUER, wrong);
            match tokio::time::timeout(Duration::from_secs(10), out).await {
                Ok(Ok(out)) if out.finish.status.is_client_error() => {}
                Ok(Ok(_)) => self.after_failure(true).await,
                _ => self.after_failure(false).await,
            }
        }
    }

    /// One bulk MAC batch over `dev`'s key `version`, until answered.
    async fn bulk(&mut self, dev: &SimDevice, version: u64) {
        let msg = b"0200|6222020200112233|000000010000";
        let mac = dev.transaction_mac(ISSUER, "ISO9797-1-M3", 1, msg).unwrap();
        let body = json!({ "items": [{
            "device_id": dev.id.to_string(), "issuer_id": ISSUER, "key_version": version,
            "algorithm": "ISO9797-1-M3", "padding": 1,
            "message": B64.encode(msg), "mac": B64.encode(&mac[..4]),
        }]});
        let deadline = Instant::now() + STEP;
        loop {
            assert!(Instant::now() < deadline, "bulk\n{}", self.s.log());
            let r = self.s.admin_post("/admin/v1/macs/verify", &body);
            if r.status == 200 {
                assert_eq!(r.json()["results"][0]["result"], "valid", "{}", r.body);
                return;
            }
            self.after_failure(r.status != 0).await;
        }
    }
}

/// The batch once the server has settled it: `None` when absent, else its
/// JSON (complete). A server that dies meanwhile is not revived here.
async fn settled(s: &mut Server, batch: &str) -> Option<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = s.admin(&format!("/admin/v1/batches/{batch}"), &[]);
        match r.status {
            404 => return None,
            200 if r.json()["state"] == "complete" => return Some(r.json()),
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "batch {batch} still importing: {r:?}\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A one-device manufacturing batch (a factory's CSR) for `device`.
fn factory_manifest(s: &Server, device: &str) -> String {
    let (_, csr) = s.openssl_csr(&format!("factory-{device}"));
    format!(
        "{}\n{device},P{device},,TEST-MODEL,1.0,{}\n",
        keyward_device_provisioning::MANIFEST_HEADER,
        B64.encode(csr)
    )
}

/// Valid certificates of `device` in the CA registry.
async fn valid_certs(db: &Database, device: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM certificates \
         WHERE device_id = $1 AND profile = 'device' AND status = 'valid'",
    )
    .bind(device)
    .fetch_one(db.pool())
    .await
    .unwrap()
}

/// An installation with `count` devices made (kwsim), imported, checked,
/// and one approved customer; the server runs.
async fn bank(count: usize) -> Rig {
    let mut s = Server::with_options(Options {
        extra: format!(
            "[provisioning]\nimport_lease_ms = 1000\n\
             [online]\nmax_login_failures = {MAX_FAILURES}\n\
             login_starts_per_minute = 1000\n"
        ),
        ..Default::default()
    })
    .await;
    s.init();
    s.start();
    s.new_operator("alice", "operator");
    s.new_operator("bob", "operator");
    let devices = s.dir.path().join("devices");
    let st = Station {
        s: &s,
        devices: devices.clone(),
    };
    let customer = st.checked_devices(&[(ISSUER, "tdes")], count, "sms", "+8613800138000");
    let (db, root) = process::db_and_root(&s).await;
    Rig {
        s,
        db,
        devices,
        customer,
        root,
        restarts: 0,
    }
}

/// The checks after a case (see the module), on a server restarted
/// without faults; `batch` and `device` are the case's.
async fn check(rig: &mut Rig, batch: &str, factory: &str, device: &str, what: &str) {
    // All or nothing; an absent batch imports again.
    match settled(&mut rig.s, batch).await {
        Some(b) => {
            assert_eq!(b["device_count"], 1, "{what}: {b}");
            assert_eq!(valid_certs(&rig.db, factory).await, 1, "{what}");
        }
        None => {
            assert_eq!(
                valid_certs(&rig.db, factory).await,
                0,
                "{what}: orphan certificate"
            );
            let manifest = factory_manifest(&rig.s, factory);
            let r = rig.s.admin_post(
                "/admin/v1/batches",
                &json!({ "batch_id": batch, "manifest": manifest }),
            );
            assert_eq!(r.status, 201, "{what}: {r:?}");
        }
    }

    // No credential locked with its certificate still valid (recovery at
    // start finishes a lockout a crash cut short).
    let valid_locked: Vec<String> = sqlx::query(
        "SELECT o.device_id FROM online_credentials o \
         JOIN certificates c ON c.device_id = o.device_id AND c.profile = 'device' \
         WHERE o.locked_at_ms IS NOT NULL AND o.revoked_serial IS NOT NULL \
           AND c.status = 'valid'",
    )
    .fetch_all(rig.db.pool())
    .await
    .unwrap()
    .iter()
    .map(|r| r.get("device_id"))
    .collect();
    assert!(
        valid_locked.is_empty(),
        "{what}: locked with a valid certificate: {valid_locked:?}"
    );
    // ... and the listener refuses it: the CRL in force lists it.
    let dev = rig.station().device(device);
    let chain = rig.station().chain(device);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let t = Terminal::new(
            &format!("https://{}", rig.s.public),
            &rig.root,
            &chain,
            &dev,
        )
        .unwrap();
        let r = t.call(hyper::Method::GET, "/v1/session", None, None).await;
        if r.is_err() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the locked device's certificate still passes TLS: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every channel stored was recorded with it (the record staged in the
    // channel's transaction is chained at start).
    let unrecorded: Vec<String> = sqlx::query(
        "SELECT c.id FROM channels c WHERE NOT EXISTS (SELECT 1 FROM audit_log a \
         WHERE a.target = 'channel:' || c.id AND a.action IN ('channel.open', 'channel.resume') \
           AND a.outcome = 'success')",
    )
    .fetch_all(rig.db.pool())
    .await
    .unwrap()
    .iter()
    .map(|r| r.get("id"))
    .collect();
    assert!(
        unrecorded.is_empty(),
        "{what}: channels without their record: {unrecorded:?}"
    );

    // Working keys: at most one active and one pending version per
    // credential; the case's device has an active one.
    let bad: Vec<(String, i64, i64)> = sqlx::query(
        "SELECT device_id, \
           SUM(CASE WHEN state = 'active' THEN 1 ELSE 0 END) AS active, \
           SUM(CASE WHEN state = 'pending' THEN 1 ELSE 0 END) AS pending \
         FROM working_key_versions GROUP BY issuer_id, device_id",
    )
    .fetch_all(rig.db.pool())
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get("device_id"), r.get("active"), r.get("pending")))
    .filter(|(d, a, p)| *a > 1 || *p > 1 || (d == device && *a != 1))
    .collect();
    assert!(bad.is_empty(), "{what}: working-key versions: {bad:?}");

    // The trail and its HSM checkpoint (offline, as an auditor would).
    rig.s.kill();
    let out = rig.s.keyward(&["--json", "audit", "verify"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert!(
        out.status.success() && v["ok"] == true,
        "{what}: audit verify: {v}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_other_fault_point_killed_or_panicked_recovers_whole() {
    let points = process::sweep_points("server_fault_sweep", "KEYWARD_FAULT_SWEEP_POINTS");
    let cases = process::sweep_cases(&points, hit);
    let mut rig = bank(cases.len()).await;
    rig.s.kill();
    let started = Instant::now();
    for (i, spec) in cases.iter().enumerate() {
        eprintln!("fault sweep case {i}: {ENV}={spec}");
        let case_started = Instant::now();
        let fires = process::fired(&rig.s);
        rig.s.start_with_env(&[], &[(ENV, spec)]);
        let device = device_id(i);

        // Provisioning: a factory batch, the device's init package and
        // binding.
        let batch = format!("S-{i}");
        let factory = format!("E{:015X}", i + 1);
        let manifest = factory_manifest(&rig.s, &factory);
        rig.import(&batch, &manifest).await;
        let agent = rig.station().agent();
        // A repeat after a lost answer may find the keys confirmed.
        rig.kwctl(
            &[
                "device", "init", &device, "--issuer", ISSUER, "--agent", &agent,
            ],
            Some("reinit_required"),
        )
        .await;
        let customer = rig.customer.clone();
        rig.kwctl(
            &[
                "bind",
                &device,
                "--customer",
                &customer,
                "--issuer",
                ISSUER,
                "--element",
                "both",
                "--account",
                ACCOUNT,
            ],
            Some("already_bound"),
        )
        .await;

        // The login: keys offered and confirmed, then a plain one; a bulk
        // batch over the key; a lockout.
        let mut dev = rig.station().device(&device);
        let chain = rig.chain(&device).await;
        rig.login(&mut dev, &chain).await;
        let second = rig.login(&mut dev, &chain).await;
        let version = second["key_version"].as_u64().unwrap();
        rig.bulk(&dev, version).await;
        rig.channel(&device, &chain).await;
        rig.lock_out(&mut dev, &chain).await;

        // A background point (CRL, checkpoint) may still be due.
        process::until_fired(&rig.s, fires, spec).await;
        rig.s.kill();
        rig.s.start();
        check(&mut rig, &batch, &factory, &device, spec).await;
        eprintln!(
            "fault sweep case {i}: {spec} whole after {:.1?}",
            case_started.elapsed()
        );
    }
    eprintln!(
        "fault sweep: {} cases ({} points × kill, panic) in {:.0?}, every point fired; \
         {} restarts or repeats after a fault; violations 0",
        cases.len(),
        points.len(),
        started.elapsed(),
        rig.restarts,
    );
}

/// A panic in the audit checkpoint writer loses that run, not the writer:
/// the next checkpoint is still written (its point met a second time, where
/// it kills the server).
#[tokio::test(flavor = "multi_thread")]
async fn the_audit_checkpoint_writer_survives_a_panic() {
    let mut s = Server::new().await;
    s.init();
    s.start_with_env(
        &[],
        &[(
            ENV,
            "audit.checkpoint.written=panic@1,audit.checkpoint.written=kill@2",
        )],
    );
    // The trail grows: each operator issued is a record to checkpoint.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut n = 0;
    while s.running() {
        assert!(
            Instant::now() < deadline,
            "no checkpoint after the panic\n{}",
            s.log()
        );
        if !s.log().contains("audit.checkpoint.written=panic@1 fires") {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        n += 1;
        s.new_operator(&format!("op{n}"), "operator");
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    assert!(
        s.log().contains("audit.checkpoint.written=kill@2 fires"),
        "{}",
        s.log()
    );
    s.kill();
}
