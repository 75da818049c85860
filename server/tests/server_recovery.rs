//! `kill -9` of `keyward serve` during a batch import. The
//! process is killed at random points of an import of a few hundred devices
//! through the admin API, restarted on the same database and token (short
//! import lease), and the batch is all or nothing: complete with every device
//! certified, or absent with no valid certificate for its devices — and then
//! the same file imports again under the same batch id.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{Options, Server, sample};
use keyward_kms::types::DeviceId;
use keyward_tests::simulator::SimDevice;
use serde_json::{Value, json};

const DEVICES: usize = 300;
const LEASE_MS: u64 = 1000;

fn manifest(first: u32) -> String {
    let rows: Vec<String> = (0..DEVICES as u32)
        .map(|i| {
            let n = u64::from(first + i);
            let id = DeviceId::from_bytes((0xE000_0000_0000_0000u64 | n).to_be_bytes());
            SimDevice::p256(id).unwrap().manifest_row()
        })
        .collect();
    format!(
        "{}\n{}\n",
        keyward_device_provisioning::MANIFEST_HEADER,
        rows.join("\n")
    )
}

/// Valid device certificates in the CA registry (the list is paged by 1000).
fn valid_device_certs(s: &Server) -> usize {
    let mut total = 0;
    for page in 0.. {
        let r = s.admin(
            &format!(
                "/admin/v1/ca/certificates?profile=device&status=valid&limit=1000&offset={}",
                page * 1000
            ),
            &[],
        );
        assert_eq!(r.status, 200, "{r:?}");
        let n = r.json()["certificates"].as_array().unwrap().len();
        total += n;
        if n < 1000 {
            return total;
        }
    }
    unreachable!()
}

/// The import request as a curl process of its own (it outlives the server
/// it talks to): its HTTP status once it exits (0: cut off).
fn spawn_import(s: &Server, batch: &str, manifest: &str) -> std::process::Child {
    let body = s.dir.path().join(format!("{batch}.json"));
    std::fs::write(
        &body,
        json!({ "batch_id": batch, "manifest": manifest }).to_string(),
    )
    .unwrap();
    let ops = s.operators();
    std::process::Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "60",
        ])
        .arg("--cacert")
        .arg(s.ca_pem())
        .arg("--cert")
        .arg(ops.join("admin.pem"))
        .arg("--key")
        .arg(ops.join("admin.key"))
        .args(["-H", "content-type: application/json", "--data-binary"])
        .arg(format!("@{}", body.display()))
        .arg(format!("https://{}/admin/v1/batches", s.admin))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

fn import(s: &Server, batch: &str, manifest: &str) -> common::Reply {
    s.admin_post(
        "/admin/v1/batches",
        &json!({ "batch_id": batch, "manifest": manifest }),
    )
}

/// The batch once the restarted server has settled it: `None` when absent,
/// else its JSON (complete).
fn settled(s: &Server, batch: &str) -> Option<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = s.admin(&format!("/admin/v1/batches/{batch}"), &[]);
        match r.status {
            404 => return None,
            200 if r.json()["state"] == "complete" => return Some(r.json()),
            200 => {}
            _ => panic!("{r:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "batch {batch} still importing\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_import_killed_at_random_points_is_all_or_nothing_and_imports_again() {
    let mut s = Server::started_with(Options {
        extra: format!("[provisioning]\nimport_lease_ms = {LEASE_MS}\n"),
        ..Options::default()
    })
    .await;

    // A clean import first: how long one takes, to aim the kills.
    let started = Instant::now();
    let r = import(&s, "B-CLEAN", &manifest(0));
    assert_eq!(r.status, 201, "{r:?}");
    let full = started.elapsed();
    let mut valid = valid_device_certs(&s);
    assert_eq!(valid, DEVICES);
    println!("clean import of {DEVICES} devices: {full:?}");

    // Kill points: at a random time early on (maybe before the batch is
    // even reserved), once a random share of the certificates is issued
    // (twice), and at a random time about the import's end.
    enum KillAt {
        Time(f64, f64),
        Issued(f64, f64),
    }
    let points = [
        KillAt::Time(0.0, 0.3),
        KillAt::Issued(0.1, 0.5),
        KillAt::Issued(0.5, 0.95),
        KillAt::Time(0.8, 1.3),
    ];
    for (attempt, point) in points.into_iter().enumerate() {
        let batch = format!("B-KILL-{attempt}");
        let file = manifest(10_000 * (attempt as u32 + 1));
        let between = |lo: f64, hi: f64| lo + rand::random::<f64>() * (hi - lo);
        let request = spawn_import(&s, &batch, &file);
        let sent = Instant::now();
        let at = match point {
            KillAt::Time(lo, hi) => {
                std::thread::sleep(full.mul_f64(between(lo, hi)));
                "time"
            }
            KillAt::Issued(lo, hi) => {
                let want = valid + (DEVICES as f64 * between(lo, hi)) as usize;
                while valid_device_certs(&s) < want && sent.elapsed() < full * 4 {
                    std::thread::sleep(Duration::from_millis(5));
                }
                "progress"
            }
        };
        let issued = valid_device_certs(&s) - valid;
        s.kill();
        let delay = sent.elapsed();
        let out = request.wait_with_output().unwrap();
        let status: u16 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        let restarted = Instant::now();
        s.start();
        let batch_state = settled(&s, &batch);
        let settled_after = restarted.elapsed();
        let now_valid = valid_device_certs(&s);
        let recoveries = sample(
            &s.metrics(),
            r#"keyward_import_recoveries_total{outcome="success"}"#,
        )
        .unwrap_or(0.0);
        if status == 201 {
            assert!(batch_state.is_some(), "answered 201 but the batch is gone");
        }
        let state = if batch_state.is_some() {
            "complete"
        } else {
            "absent"
        };
        match batch_state {
            Some(b) => {
                // Complete: every device registered with its certificate.
                assert_eq!(b["device_count"], DEVICES, "{b}");
                assert_eq!(now_valid, valid + DEVICES);
                let list = s.admin(
                    &format!("/admin/v1/devices?batch_id={batch}&limit=10000"),
                    &[],
                );
                let devices = list.json()["devices"].as_array().unwrap().clone();
                assert_eq!(devices.len(), DEVICES);
                valid = now_valid;
                let again = import(&s, &batch, &file);
                assert_eq!(again.status, 409, "{again:?}");
                assert_eq!(again.json()["error"]["code"], "batch_exists");
            }
            None => {
                // Absent: nothing it issued is still valid ...
                assert_eq!(now_valid, valid, "orphan certificates left valid");
                // ... and the same file imports again under the same id.
                let again = import(&s, &batch, &file);
                assert_eq!(again.status, 201, "{again:?}\n{}", s.log());
                valid += DEVICES;
                assert_eq!(valid_device_certs(&s), valid);
            }
        }
        println!(
            "kill {attempt} ({at}) after {delay:?}, about {issued} of {DEVICES} issued: request {status}, batch {state}, settled {settled_after:?} after the restart, recoveries {recoveries}"
        );
    }

    // kwctl: show a batch, and abort refusals (the undo itself is what
    // recovery did above; the provisioning tests cover a live lease).
    let kwctl = |args: &[&str]| {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        let out = s.kwctl(&s.operators(), "admin", &all);
        (out.status.code(), common::stdout_json(&out))
    };
    let (code, shown) = kwctl(&["device", "batch", "B-CLEAN"]);
    assert_eq!(
        (code, shown["state"].as_str()),
        (Some(0), Some("complete")),
        "{shown}"
    );
    let (code, shown) = kwctl(&["device", "batch", "show", "B-CLEAN"]);
    assert_eq!(
        (code, shown["state"].as_str()),
        (Some(0), Some("complete")),
        "{shown}"
    );
    let (code, refused) = kwctl(&["device", "batch", "abort", "B-CLEAN"]);
    assert_eq!(
        (code, refused["code"].as_str()),
        (Some(1), Some("batch_complete")),
        "{refused}"
    );
    let (code, refused) = kwctl(&["device", "batch", "abort", "B-NONE"]);
    assert_eq!(
        (code, refused["code"].as_str()),
        (Some(1), Some("unknown_batch")),
        "{refused}"
    );
}
