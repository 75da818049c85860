//! The HSM worker pool under load and across an HSM restart, on SoftHSM.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use keyward_kms::KmsError;
use keyward_kms::hsm::{Cipher, Hsm, KeySpec, Pkcs11Hsm, SecretKind, Usage};
use keyward_kms::pool::HsmPool;
use keyward_tests::softhsm::TestToken;

fn open(token: &TestToken, sessions: usize) -> Arc<Pkcs11Hsm> {
    let cfg = token.hsm_config(sessions);
    Arc::new(Pkcs11Hsm::open(&cfg, cfg.pin().unwrap()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_tasks_share_few_sessions() {
    let token = TestToken::create().unwrap();
    let hsm = open(&token, 2);
    let pool = HsmPool::start(hsm.clone(), 2, 10_000).unwrap();
    let key = pool
        .run(|h| h.generate_key(&KeySpec::session(SecretKind::Aes(16), Usage::ENCRYPT)))
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..64u8 {
        let pool = pool.clone();
        tasks.spawn(async move {
            for i in 0..100u8 {
                let block = [t ^ i; 16];
                let a = pool
                    .run(move |h| h.encrypt(key, Cipher::AesEcb, &block))
                    .await
                    .unwrap();
                let b = pool
                    .run(move |h| h.encrypt(key, Cipher::AesEcb, &block))
                    .await
                    .unwrap();
                assert_eq!(a, b);
                assert_eq!(a.len(), 16);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    assert_eq!(
        pool.stats()
            .rejected
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_is_busy_not_a_hang() {
    let token = TestToken::create().unwrap();
    let pool = HsmPool::start(open(&token, 1), 1, 1).unwrap();
    let (release, gate) = crossbeam_channel::bounded::<()>(0);
    let blocker = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.run(move |_| {
                let _ = gate.recv_timeout(Duration::from_secs(10));
                Ok(())
            })
            .await
        })
    };
    // Wait until the worker holds the blocking job.
    while pool.stats().busy.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let queued = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.run(|h| h.random(8)).await })
    };
    while pool.queued() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let refused = pool.run(|h| h.random(8)).await;
    assert!(matches!(refused, Err(KmsError::Busy)), "{refused:?}");
    release.send(()).unwrap();
    blocker.await.unwrap().unwrap();
    assert_eq!(queued.await.unwrap().unwrap().len(), 8);
}

/// An interactive job (a login, `/ready`) runs at once while every bulk
/// worker is busy and a pile of bulk chunks waits: the lanes have their own
/// workers, and the bulk ones run at the configured lower priority.
#[tokio::test(flavor = "multi_thread")]
async fn interactive_jobs_do_not_wait_for_bulk_jobs() {
    use keyward_kms::pool::{Lane, PoolSize};
    let token = TestToken::create().unwrap();
    let size = PoolSize {
        interactive: 1,
        bulk: 1,
        bulk_nice: 7,
        queue_depth: 1000,
    };
    let pool = HsmPool::start_sized(open(&token, 1), size).unwrap();
    let (release, gate) = crossbeam_channel::bounded::<()>(0);
    let blocker = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.run_in(Lane::Bulk, move |_| {
                let _ = gate.recv_timeout(Duration::from_secs(10));
                Ok(thread_nice())
            })
            .await
        })
    };
    while pool.stats().busy.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut jobs = tokio::task::JoinSet::new();
    for _ in 0..100u32 {
        let pool = pool.clone();
        jobs.spawn(async move { pool.run_in(Lane::Bulk, |h| h.random(8)).await });
    }
    while pool.queued() < 100 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let interactive = tokio::time::timeout(
        Duration::from_secs(5),
        pool.run(|h| {
            h.ping()?;
            Ok(thread_nice())
        }),
    )
    .await
    .expect("the interactive job waited for the bulk lane")
    .unwrap();
    assert_eq!(pool.queued(), 100, "no bulk job ran meanwhile");
    release.send(()).unwrap();
    let bulk = blocker.await.unwrap().unwrap();
    while let Some(r) = jobs.join_next().await {
        assert_eq!(r.unwrap().unwrap().len(), 8);
    }
    if cfg!(target_os = "linux") {
        assert_eq!((interactive, bulk), (Some(0), Some(7)), "nice values");
    }
}

/// The calling thread's nice value (Linux), from `/proc/thread-self/stat`.
fn thread_nice() -> Option<i64> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    // Field 19; fields from 3 on follow the command name's closing ')'.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(16)?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pool_heals_after_the_token_drops_every_session() {
    let token = TestToken::create().unwrap();
    let hsm = open(&token, 2);
    let pool = HsmPool::start(hsm.clone(), 2, 100).unwrap();
    let label = "heal-test".to_string();
    let l2 = label.clone();
    pool.run(move |h| {
        h.generate_key(&KeySpec {
            kind: SecretKind::Des2,
            usage: Usage::ENCRYPT,
            token_label: Some(l2),
            extractable: false,
        })
    })
    .await
    .unwrap();
    let l3 = label.clone();
    let key = pool.run(move |h| h.find_key(&l3)).await.unwrap().unwrap();
    let before = pool
        .run(move |h| h.encrypt(key, Cipher::Des3Ecb, &[0; 8]))
        .await
        .unwrap();
    let epoch = hsm.epoch();

    // What an HSM restart or failover looks like to the application: every
    // session gone, the login with them.
    hsm.close_all_sessions().unwrap();

    // Object-free calls heal transparently.
    assert_eq!(pool.run(|h| h.random(16)).await.unwrap().len(), 16);
    assert!(hsm.epoch() > epoch);
    // An old handle is refused as stale, never used against another object...
    let stale = pool
        .run(move |h| h.encrypt(key, Cipher::Des3Ecb, &[0; 8]))
        .await;
    assert!(matches!(stale, Err(KmsError::Stale)), "{stale:?}");
    // ...and looking the key up again gives the same key.
    let key = pool
        .run(move |h| h.find_key(&label))
        .await
        .unwrap()
        .unwrap();
    let after = pool
        .run(move |h| h.encrypt(key, Cipher::Des3Ecb, &[0; 8]))
        .await
        .unwrap();
    assert_eq!(before, after);
    pool.run(|h| h.ping()).await.unwrap();
}

#[test]
fn missing_module_and_token_are_typed_errors() {
    let token = TestToken::create().unwrap();
    let mut cfg = token.hsm_config(1);
    cfg.module = "/nonexistent/libpkcs11.so".into();
    let err = Pkcs11Hsm::open(&cfg, cfg.pin().unwrap()).unwrap_err();
    assert_eq!(err.code(), "hsm_module");
    let mut cfg = token.hsm_config(1);
    cfg.token_label = "no-such-token".into();
    let err = Pkcs11Hsm::open(&cfg, cfg.pin().unwrap()).unwrap_err();
    assert_eq!(err.code(), "hsm_token_not_found");
    let cfg = token.hsm_config(1);
    let err = Pkcs11Hsm::open(&cfg, secrecy::SecretString::from("0000")).unwrap_err();
    assert_eq!(err.code(), "hsm_login");
    assert!(!err.to_string().contains("0000"));
}

#[test]
fn shutdown_finishes_queued_jobs_then_refuses() {
    let token = TestToken::create().unwrap();
    let pool = HsmPool::start(open(&token, 2), 2, 100).unwrap();
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let waiters: Vec<_> = (0..20)
        .map(|_| {
            let (pool, done) = (pool.clone(), done.clone());
            std::thread::spawn(move || {
                let r = pool.run_blocking(|h| h.random(8));
                if r.is_ok() {
                    done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                r.map(drop)
            })
        })
        .collect();
    // Every job submitted is answered, by a worker or as refused.
    std::thread::sleep(Duration::from_millis(50));
    pool.shutdown();
    for w in waiters {
        if let Err(e) = w.join().unwrap() {
            assert!(matches!(e, KmsError::PoolClosed), "{e}");
        }
    }
    assert!(done.load(std::sync::atomic::Ordering::SeqCst) > 0);
    let after = pool.run_blocking(|h| h.random(8));
    assert!(matches!(after, Err(KmsError::PoolClosed)), "{after:?}");
    pool.shutdown(); // a second call does nothing
}
