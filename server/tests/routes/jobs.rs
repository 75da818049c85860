//! The job runner on a real database (SQLite, or PostgreSQL with
//! `KEYWARD_TEST_DATABASE_URL`): two runners with their own pools and names
//! play two replicas. The same with two `keyward serve` processes is in
//! `server_ops.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use keyward_kms::db::{Database, now_ms};
use keyward_server::jobs::{Job, JobError, Leases, Runner};
use keyward_server::metrics::Metrics;
use keyward_tests::db::{TestDb, test_database};

const EVERY: Duration = Duration::from_millis(100);

/// A fresh database with the server's schema, and another pool on it.
async fn two_pools() -> (TestDb, Database, Database) {
    let tdb = test_database().await.unwrap();
    let a = Database::connect(&tdb.config).await.unwrap();
    keyward_server::migrate::run(a.pool(), a.kind())
        .await
        .unwrap();
    let b = Database::connect(&tdb.config).await.unwrap();
    (tdb, a, b)
}

/// A once-across-replicas job that counts its runs in `count`.
fn counting(count: &Arc<AtomicU64>) -> Job<()> {
    let count = count.clone();
    Job::new("test.counter", EVERY, move |()| {
        let count = count.clone();
        async move {
            count.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    })
    .once_across_replicas()
}

/// Waits up to `within` for `count` to move past `from`; how long it took.
async fn moves(count: &AtomicU64, from: u64, within: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < within {
        if count.load(Ordering::SeqCst) > from {
            return Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn a_once_across_replicas_job_runs_on_one_replica_and_is_taken_over() {
    let (_tdb, db_a, db_b) = two_pools().await;
    let leases = Leases::new(db_a.clone());
    let (runs_a, runs_b) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let a = Runner::new(db_a, "replica-a")
        .with(counting(&runs_a))
        .start(());
    moves(&runs_a, 0, Duration::from_secs(5)).await.unwrap();
    let b = Runner::new(db_b, "replica-b")
        .with(counting(&runs_b))
        .start(());

    // Both running: only A's count moves.
    let before = runs_a.load(Ordering::SeqCst);
    tokio::time::sleep(EVERY * 10).await;
    assert!(
        runs_a.load(Ordering::SeqCst) >= before + 3,
        "A stopped running"
    );
    assert_eq!(
        runs_b.load(Ordering::SeqCst),
        0,
        "B ran while A held the lease"
    );
    let lease = leases.get("test.counter").await.unwrap().unwrap();
    assert_eq!(lease.holder, "replica-a");
    assert!(lease.lease_until_ms > now_ms());

    // A dies (dropped: no release); B takes over once A's lease lapsed.
    drop(a);
    let stopped_at = runs_a.load(Ordering::SeqCst);
    let took = moves(&runs_b, 0, EVERY * 3 * 10).await;
    assert!(took.is_some(), "B did not take over");
    assert_eq!(runs_a.load(Ordering::SeqCst), stopped_at);
    assert_eq!(
        leases.get("test.counter").await.unwrap().unwrap().holder,
        "replica-b"
    );

    // B stops cleanly and hands the lease back at once.
    b.stop().await;
    let lease = leases.get("test.counter").await.unwrap().unwrap();
    assert_eq!(
        (lease.holder.as_str(), lease.lease_until_ms),
        ("replica-b", 0)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_replica_hands_its_lease_over_before_it_lapses() {
    let (_tdb, db_a, db_b) = two_pools().await;
    let (runs_a, runs_b) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    // A long interval: waiting for the lease to lapse would take 30 s.
    let slow = |count: &Arc<AtomicU64>| Job {
        every: Duration::from_secs(10),
        ..counting(count)
    };
    let a = Runner::new(db_a, "replica-a").with(slow(&runs_a)).start(());
    moves(&runs_a, 0, Duration::from_secs(5)).await.unwrap();
    let b = Runner::new(db_b, "replica-b")
        .with(Job {
            every: Duration::from_millis(200),
            ..counting(&runs_b)
        })
        .start(());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(runs_b.load(Ordering::SeqCst), 0);
    a.stop().await;
    assert!(moves(&runs_b, 0, Duration::from_secs(3)).await.is_some());
    drop(b);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_replica_runs_a_job_not_marked_once() {
    let (_tdb, db_a, db_b) = two_pools().await;
    let (runs_a, runs_b) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let everywhere = |count: &Arc<AtomicU64>| Job {
        once_across_replicas: false,
        ..counting(count)
    };
    let _a = Runner::new(db_a, "replica-a")
        .with(everywhere(&runs_a))
        .start(());
    let _b = Runner::new(db_b, "replica-b")
        .with(everywhere(&runs_b))
        .start(());
    assert!(moves(&runs_a, 2, Duration::from_secs(5)).await.is_some());
    assert!(moves(&runs_b, 2, Duration::from_secs(5)).await.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_or_panicking_job_keeps_its_schedule() {
    let (_tdb, db, _) = two_pools().await;
    let runs = Arc::new(AtomicU64::new(0));
    let seen = runs.clone();
    let job = Job::new("test.flaky", EVERY, move |()| {
        let runs = seen.clone();
        async move {
            match runs.fetch_add(1, Ordering::SeqCst) {
                0 => Err(JobError::failed(
                    "test_failed",
                    anyhow::anyhow!("first run fails"),
                )),
                1 => panic!("second run panics"),
                _ => Ok(()),
            }
        }
    })
    .once_across_replicas();
    let metrics = Metrics::new().unwrap();
    let _running = Runner::new(db, "replica-a")
        .with_metrics(metrics.clone())
        .with(job)
        .start(());
    assert!(moves(&runs, 3, Duration::from_secs(5)).await.is_some());
    // The failure and the panic are counted; a success is stamped.
    let failures = metrics
        .job_failures
        .with_label_values(&["test.flaky"])
        .get();
    assert_eq!(failures, 2);
    let stamped = metrics
        .job_last_success
        .with_label_values(&["test.flaky"])
        .get();
    assert!((now_ms() / 1000 - stamped).abs() <= 5, "{stamped}");
}

#[tokio::test]
async fn one_holder_at_a_time_until_the_lease_lapses() {
    let (_tdb, db, _) = two_pools().await;
    let leases = Leases::new(db);
    let now = now_ms();
    assert!(leases.claim("t", "replica-a", now, 1_000).await.unwrap());
    assert!(
        !leases
            .claim("t", "replica-b", now + 10, 1_000)
            .await
            .unwrap()
    );
    // The holder renews; another takes over only once the lease lapsed.
    assert!(
        leases
            .claim("t", "replica-a", now + 500, 1_000)
            .await
            .unwrap()
    );
    assert!(
        !leases
            .claim("t", "replica-b", now + 1_400, 1_000)
            .await
            .unwrap()
    );
    assert!(
        leases
            .claim("t", "replica-b", now + 1_600, 1_000)
            .await
            .unwrap()
    );
    assert!(
        !leases
            .claim("t", "replica-a", now + 1_700, 1_000)
            .await
            .unwrap()
    );
    // Released leases are free at once.
    assert_eq!(leases.release_all("replica-b").await.unwrap(), 1);
    assert!(
        leases
            .claim("t", "replica-a", now + 1_800, 1_000)
            .await
            .unwrap()
    );
}
