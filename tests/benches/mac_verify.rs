//! MAC verification throughput on SoftHSM: the raw PKCS#11 loop next to the
//! same work through kms (worker pool, derived-key cache, catalog lookup), and
//! bulk verification. Prints a table; run with
//! `cargo bench -p keyward-tests --bench mac_verify` (needs SoftHSM).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use keyward_kms::catalog::Catalog;
use keyward_kms::hsm::{Hsm, KeySpec, MacMechanism, Pkcs11Hsm, SecretKind, Usage};
use keyward_kms::pool::HsmPool;
use keyward_kms::types::{DeviceId, IssuerId, Kcv, KeyFamily, MacAlgorithm, Padding};
use keyward_kms::{Kms, MacItem, MacOutcome};
use keyward_tests::db::test_database;
use keyward_tests::device::{self, Family};
use keyward_tests::softhsm::TestToken;

const RUN: Duration = Duration::from_secs(3);
const MSG: &[u8; 64] = b"0200 4000000000000123 000000010000 156 20261122 0001 TERMINAL01.";

fn raw_loop(
    hsm: &Arc<Pkcs11Hsm>,
    threads: usize,
    mech: MacMechanism,
    key: keyward_kms::hsm::ObjectId,
) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (hsm, stop, count) = (hsm.clone(), stop.clone(), count.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    hsm.mac(key, mech, MSG).unwrap();
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let start = Instant::now();
    std::thread::sleep(RUN);
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

async fn kms_single(kms: &Kms, tasks: usize, items: &[MacItem]) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let (kms, stop, count) = (kms.clone(), stop.clone(), count.clone());
        let items = items.to_vec();
        set.spawn(async move {
            let mut i = t;
            while !stop.load(Ordering::Relaxed) {
                let ok = kms
                    .verify_mac(items[i % items.len()].clone())
                    .await
                    .unwrap();
                assert!(ok);
                count.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        });
    }
    let start = Instant::now();
    tokio::time::sleep(RUN).await;
    stop.store(true, Ordering::Relaxed);
    while set.join_next().await.is_some() {}
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

async fn setup(token: &TestToken, sessions: usize) -> (Kms, Vec<MacItem>, Vec<MacItem>) {
    let cfg = token.hsm_config(sessions);
    let hsm = Arc::new(Pkcs11Hsm::open(&cfg, cfg.pin().unwrap()).unwrap());
    let pool = HsmPool::start(hsm, sessions, 100_000).unwrap();
    let db = Box::leak(Box::new(test_database().await.unwrap()));
    let kms = Kms::new(pool, Catalog::connect(&db.config).await.unwrap(), 10_000);
    let issuer: IssuerId = format!("bench-{sessions}").parse().unwrap();
    kms.create_issuer(issuer.clone(), KeyFamily::Tdes)
        .await
        .unwrap();
    let mut cmac = Vec::new();
    let mut x919 = Vec::new();
    for d in 0..16u8 {
        let device = DeviceId::from_bytes([0, 0, 0, 0, 0, 0, sessions as u8, d]);
        // The bench plays the device with a key it got from an RSA-less shortcut:
        // it asks for the init package and unwraps it in software.
        let secret = p256::SecretKey::random(&mut rand::thread_rng());
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        let point = secret
            .public_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        let pkg = kms
            .init_package(&issuer, device, keyward_kms::hsm::PublicKey::P256(point))
            .await
            .unwrap();
        let eph = p256::PublicKey::from_sec1_bytes(pkg.ephemeral_point.as_ref().unwrap()).unwrap();
        let kek: [u8; 32] = p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), eph.as_affine())
            .raw_secret_bytes()
            .as_slice()
            .try_into()
            .unwrap();
        let tmk: [u8; 16] = device::aes_kw_unwrap(&kek, &pkg.keys[0].wrapped)
            .unwrap()
            .try_into()
            .unwrap();
        let offer = kms.offer_working_keys(&issuer, device).await.unwrap();
        let kcvs: Vec<_> = offer
            .keys
            .iter()
            .map(|k| {
                let key = device::diversify(Family::Tdes, &tmk, &k.r);
                (
                    k.role,
                    Kcv {
                        method: k.kcv.method,
                        value: device::kcv(Family::Tdes, &key),
                    },
                )
            })
            .collect();
        kms.confirm_working_keys(&issuer, device, offer.version, &kcvs)
            .await
            .unwrap();
        let tak = device::diversify(Family::Tdes, &tmk, &offer.keys[1].r);
        let base = MacItem {
            issuer: issuer.clone(),
            device,
            version: offer.version,
            algorithm: MacAlgorithm::CmacTdes,
            padding: None,
            message: MSG.to_vec(),
            mac: device::cmac_tdes(&tak, MSG).to_vec(),
        };
        x919.push(MacItem {
            algorithm: MacAlgorithm::Iso9797M3,
            padding: Some(Padding::Method2),
            mac: device::mac_x919(&tak, MSG, 2).to_vec(),
            ..base.clone()
        });
        cmac.push(base);
    }
    (kms, cmac, x919)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "MAC verification on SoftHSM, 64-byte messages, {}s per figure, {} cores",
        RUN.as_secs(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!("{:<58} {:>12}", "what", "ops/s");
    // SoftHSM only sees tokens that exist when the module is first loaded.
    let token = TestToken::create().unwrap();
    for sessions in [1usize, 2] {
        // Raw loop: the same C_SignInit+C_Sign on one cached DES2 key, no pool.
        let cfg = token.hsm_config(sessions);
        let hsm = Arc::new(Pkcs11Hsm::open(&cfg, cfg.pin().unwrap()).unwrap());
        let key = hsm
            .generate_key(&KeySpec::session(
                SecretKind::Des2,
                Usage {
                    sign: true,
                    ..Usage::NONE
                },
            ))
            .unwrap();
        let raw = raw_loop(&hsm, sessions, MacMechanism::Des3Cmac, key);
        println!(
            "{:<58} {:>12.0}",
            format!("raw PKCS#11 loop, CMAC-TDES, {sessions} thread(s)"),
            raw
        );

        let (kms, cmac, x919) = rt.block_on(setup(&token, sessions));
        for tasks in [1usize, 64] {
            let r = rt.block_on(kms_single(&kms, tasks, &cmac));
            println!(
                "{:<58} {:>12.0}",
                format!("kms verify_mac CMAC-TDES, {sessions} worker(s), {tasks} task(s)"),
                r
            );
        }
        let r = rt.block_on(kms_single(&kms, 64, &x919));
        println!(
            "{:<58} {:>12.0}",
            format!("kms verify_mac X9.19 (2 HSM calls), {sessions} worker(s), 64 tasks"),
            r
        );
        let batch: Vec<MacItem> = (0..10_000).map(|i| cmac[i % cmac.len()].clone()).collect();
        let start = Instant::now();
        let mut n = 0usize;
        while start.elapsed() < RUN {
            let out = rt.block_on(kms.verify_macs(batch.clone())).unwrap();
            assert!(out.iter().all(|o| *o == MacOutcome::Valid));
            n += batch.len();
        }
        println!(
            "{:<58} {:>12.0}",
            format!("kms verify_macs bulk (10k items), {sessions} worker(s)"),
            n as f64 / start.elapsed().as_secs_f64()
        );
    }
}
