//! Device-provisioning throughput in process, through
//! `keyward_device_provisioning::Provisioning` on a SoftHSM token (2 HSM
//! sessions) with the real Keyward CA and the test database (SQLite, or
//! PostgreSQL with `KEYWARD_TEST_DATABASE_URL`), the devices played by
//! `keyward_tests::simulator::SimDevice` (P-256):
//!
//! - batch import (`import_batch`: CSR checks, then one CA certificate per
//!   device signed in the HSM), devices/s and total seconds;
//! - the genuine-device check (`begin_check`, the device signs,
//!   `complete_check`), sequential and 16 concurrent tasks;
//! - original keys for a TDES issuer (`init_package`, the device opens it,
//!   `confirm_init`), sequential and 16 concurrent tasks. The device's side
//!   (`SimDevice::load_init_package`) is not timed: every package of a run is
//!   fetched, then opened off the clock, then confirmed.
//!
//! Under the import line, parts of it measured on their own for scale: the
//! CSR check (done once per row, at import), the issuing CA key's HSM
//! signature, and the CA's `certify` of a checked CSR (on extra devices
//! outside the batch).
//!
//! Key generation, CSRs and the manifest are made before the clock starts
//! (that is the device's and the factory's cost). Each device is checked and
//! initialised once, so the sequential figures use the first half of the
//! batch and the concurrent ones the second half. Prints a table; run with
//!
//! ```text
//! SOFTHSM2_CONF=/path/to/softhsm2.conf cargo bench -p keyward-tests --bench provisioning
//! ```
//!
//! (the harness makes its own token directory next to that config). The
//! batch holds 1000 devices; `KW_BENCH_DEVICES=N` changes that.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use keyward_ca::{Ca, ISSUING_KEY_LABEL};
use keyward_config::{CaConfig, DatabaseKind};
use keyward_device_provisioning::{BatchId, DeviceState, OperatorId, Provisioning, RowOutcome};
use keyward_kms::Kms;
use keyward_kms::catalog::Catalog;
use keyward_kms::hsm::{Pkcs11Hsm, SignMechanism};
use keyward_kms::pool::HsmPool;
use keyward_kms::types::{DeviceId, IssuerId, KeyFamily};
use keyward_kms::wrap::InitPackage;
use keyward_tests::db::{TEST_DATABASE_URL_ENV, TestDb, test_database};
use keyward_tests::simulator::SimDevice;
use keyward_tests::softhsm::TestToken;

const DEFAULT_DEVICES: usize = 1000;
const SESSIONS: usize = 2;
const TASKS: usize = 16;

fn device_count() -> usize {
    match std::env::var("KW_BENCH_DEVICES") {
        Ok(v) => {
            let n: usize = v.trim().parse().expect("KW_BENCH_DEVICES must be a number");
            assert!(n >= 2, "KW_BENCH_DEVICES must be at least 2");
            n
        }
        Err(_) => DEFAULT_DEVICES,
    }
}

fn dev_id(i: usize) -> DeviceId {
    let n = u32::try_from(i).unwrap().to_be_bytes();
    DeviceId::from_bytes([0x62, 0x22, 0x02, 0x00, n[0], n[1], n[2], n[3]])
}

fn row(what: impl std::fmt::Display, rate: f64, unit: &str, secs: f64) {
    println!("{what:<58} {rate:>10.0} {unit:<10} {secs:>9.2}");
}

async fn setup(token: &TestToken) -> (Provisioning, TestDb) {
    let cfg = token.hsm_config(SESSIONS);
    let hsm = Pkcs11Hsm::open(&cfg, cfg.pin().unwrap()).unwrap();
    let pool = HsmPool::start(Arc::new(hsm), SESSIONS, 100_000).unwrap();
    let db = test_database().await.unwrap();
    let kms = Kms::new(pool, Catalog::connect(&db.config).await.unwrap(), 10_000);
    let (ca, _) = Ca::bootstrap(&kms, kms.db(), &CaConfig::default())
        .await
        .unwrap();
    let prov = Provisioning::new(kms, Arc::new(ca)).await.unwrap();
    (prov, db)
}

/// `begin_check` + device signature + `complete_check` for every device,
/// `tasks` at a time. Returns the wall time.
async fn checks(prov: &Provisioning, devs: Arc<Vec<SimDevice>>, tasks: usize) -> Duration {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let (prov, devs, next) = (prov.clone(), devs.clone(), next.clone());
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(dev) = devs.get(i) else { break };
                let ch = prov.begin_check(dev.id).await.unwrap().value;
                let sig = dev.sign_challenge(&ch.bytes);
                prov.complete_check(dev.id, &ch.id, &sig).await.unwrap();
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    start.elapsed()
}

/// Original keys for every device under `issuer`, `tasks` at a time: all
/// packages fetched (timed), opened by the devices (not timed), then all
/// confirmed (timed). Returns the two timed phases.
async fn inits(
    prov: &Provisioning,
    devs: &mut [SimDevice],
    issuer: &IssuerId,
    tasks: usize,
) -> (Duration, Duration) {
    let ids: Arc<Vec<DeviceId>> = Arc::new(devs.iter().map(|d| d.id).collect());

    // Phase 1: init_package.
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let (prov, ids, next, issuer) = (prov.clone(), ids.clone(), next.clone(), issuer.clone());
        set.spawn(async move {
            let station: OperatorId = "station".parse().unwrap();
            let mut out: Vec<(usize, InitPackage)> = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(id) = ids.get(i) else { break };
                out.push((
                    i,
                    prov.init_package(*id, &issuer, &station)
                        .await
                        .unwrap()
                        .value,
                ));
            }
            out
        });
    }
    let mut pkgs: Vec<Option<InitPackage>> = vec![None; devs.len()];
    while let Some(r) = set.join_next().await {
        for (i, p) in r.unwrap() {
            pkgs[i] = Some(p);
        }
    }
    let package_time = start.elapsed();

    // The devices open their packages, off the clock.
    let answers: Arc<Vec<_>> = Arc::new(
        devs.iter_mut()
            .zip(pkgs)
            .map(|(d, p)| {
                let a = d.load_init_package(&p.unwrap()).unwrap();
                assert!(a.accepted);
                a.kcvs
            })
            .collect(),
    );

    // Phase 2: confirm_init.
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let (prov, ids, answers, next, issuer) = (
            prov.clone(),
            ids.clone(),
            answers.clone(),
            next.clone(),
            issuer.clone(),
        );
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(id) = ids.get(i) else { break };
                prov.confirm_init(*id, &issuer, &answers[i]).await.unwrap();
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    (package_time, start.elapsed())
}

fn main() {
    let n = device_count();
    // SoftHSM only sees tokens that exist when the module is first loaded,
    // and the harness sets SOFTHSM2_CONF: before any other thread runs.
    let token = TestToken::create().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (prov, db) = rt.block_on(setup(&token));
    let db_kind = match db.kind() {
        DatabaseKind::Sqlite => "SQLite (temp file)".to_owned(),
        DatabaseKind::Postgres => format!("PostgreSQL ({TEST_DATABASE_URL_ENV}, own schema)"),
    };
    println!(
        "Device provisioning on SoftHSM (token {}, SOFTHSM2_CONF={}), {} HSM sessions, \
         db {db_kind}, CA key p256, {n} P-256 devices, {} cores",
        token.label,
        std::env::var("SOFTHSM2_CONF").unwrap_or_default(),
        SESSIONS,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );

    // The factory's side, off the clock.
    let t = Instant::now();
    let mut devs: Vec<SimDevice> = (0..n)
        .map(|i| SimDevice::p256(dev_id(i)).unwrap())
        .collect();
    let manifest = format!(
        "# bench batch\n{}\n{}\n",
        keyward_device_provisioning::MANIFEST_HEADER,
        devs.iter()
            .map(SimDevice::manifest_row)
            .collect::<Vec<_>>()
            .join("\n")
    );
    println!(
        "(made {n} device keys, CSRs and the manifest ({} KiB) in {:.2}s, not timed)",
        manifest.len() / 1024,
        t.elapsed().as_secs_f64()
    );
    println!();
    println!("{:<58} {:>21} {:>9}", "what", "rate", "seconds");

    // 1. Batch import.
    let batch: BatchId = "BENCH-1".parse().unwrap();
    let operator = "factory-desk".parse().unwrap();
    let start = Instant::now();
    let report = rt
        .block_on(prov.import_batch(&batch, &manifest, &operator))
        .unwrap()
        .value;
    let secs = start.elapsed().as_secs_f64();
    assert!(report.accepted());
    assert_eq!(report.rows.len(), n);
    assert!(matches!(
        report.rows[0].outcome,
        RowOutcome::Registered { .. }
    ));
    row(
        format!("import_batch, {n} devices (one call)"),
        n as f64 / secs,
        "devices/s",
        secs,
    );
    // Parts of the import on their own, for scale: the software CSR check
    // (import runs it once on every row; certifying reuses its result).
    let start = Instant::now();
    for d in &devs {
        prov.certifier().check_csr(d.csr_der()).unwrap();
    }
    let csr_secs = start.elapsed().as_secs_f64();
    row(
        format!("  alone: CSR check (software), {n} CSRs"),
        n as f64 / csr_secs,
        "CSRs/s",
        csr_secs,
    );
    // The issuing CA key's ECDSA signature alone (through the worker pool),
    // over a certificate-sized message.
    let key = rt
        .block_on(prov.kms().signing_key(ISSUING_KEY_LABEL))
        .unwrap();
    let tbs = vec![0x5a_u8; 400];
    let start = Instant::now();
    for _ in 0..n {
        rt.block_on(key.sign(SignMechanism::EcdsaSha256, &tbs))
            .unwrap();
    }
    let sign_secs = start.elapsed().as_secs_f64();
    row(
        format!("  alone: HSM ECDSA P-256 sign (CA key, via pool), {n}"),
        n as f64 / sign_secs,
        "sigs/s",
        sign_secs,
    );
    // The CA alone (HSM signature, self-check, certificate row) on devices
    // outside the batch, their CSRs checked off the clock.
    let extra: Vec<_> = (n..n + n.min(200))
        .map(|i| {
            let d = SimDevice::p256(dev_id(i)).unwrap();
            (d.id, prov.certifier().check_csr(d.csr_der()).unwrap())
        })
        .collect();
    let start = Instant::now();
    for (id, csr) in &extra {
        rt.block_on(prov.certifier().certify(csr, *id)).unwrap();
    }
    let ca_secs = start.elapsed().as_secs_f64();
    row(
        format!(
            "  alone: CA certify (sign, self-check, cert row), {}",
            extra.len()
        ),
        extra.len() as f64 / ca_secs,
        "certs/s",
        ca_secs,
    );

    // 2. Genuine-device check: first half sequential, second half concurrent.
    let half = n / 2;
    let second = devs.split_off(half);
    let (first, second) = (Arc::new(devs), Arc::new(second));
    for (devs, tasks) in [(&first, 1usize), (&second, TASKS)] {
        let d = rt.block_on(checks(&prov, devs.clone(), tasks));
        row(
            format!(
                "genuine-device check, {} devices, {tasks} task(s)",
                devs.len()
            ),
            devs.len() as f64 / d.as_secs_f64(),
            "checks/s",
            d.as_secs_f64(),
        );
    }
    let probe = rt.block_on(prov.device(second[0].id)).unwrap();
    assert_eq!(probe.state, DeviceState::Verified);

    // 3. Init packages for a TDES issuer.
    let issuer: IssuerId = "bench-tdes".parse().unwrap();
    rt.block_on(prov.kms().create_issuer(issuer.clone(), KeyFamily::Tdes))
        .unwrap();
    let mut first = Arc::try_unwrap(first).unwrap();
    let mut second = Arc::try_unwrap(second).unwrap();
    for (devs, tasks) in [(&mut first, 1usize), (&mut second, TASKS)] {
        let (pkg, confirm) = rt.block_on(inits(&prov, devs, &issuer, tasks));
        let count = devs.len() as f64;
        let total = (pkg + confirm).as_secs_f64();
        row(
            format!(
                "init (package + confirm), TDES, {} devices, {tasks} task(s)",
                devs.len()
            ),
            count / total,
            "inits/s",
            total,
        );
        row(
            "  of which: init_package",
            count / pkg.as_secs_f64(),
            "pkgs/s",
            pkg.as_secs_f64(),
        );
        row(
            "  of which: confirm_init",
            count / confirm.as_secs_f64(),
            "confirms/s",
            confirm.as_secs_f64(),
        );
    }
    let probe = rt.block_on(prov.device(second[0].id)).unwrap();
    assert_eq!(probe.state, DeviceState::Initialised);
    println!("(device side of the init, load_init_package, not timed)");
    drop(prov);
    drop(db);
}
