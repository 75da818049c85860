//! The database away or locked: every answer is a fast `503
//! database_unavailable` with `Retry-After` (not a hang until the request
//! timeout, not a 500), `/ready` says `not_ready` within a second, a metric
//! counts it, and the service recovers by itself when the database is back.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use keyward_kms::db::UNAVAILABLE_CODE;
use keyward_tests::db::TEST_DATABASE_URL_ENV;
use sqlx::Connection;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::harness::{Answer, App, anonymous};

/// The longest a refused request may take: the acquire timeout set below,
/// plus generous scheduling slack on a loaded 2-core machine.
const FAST: Duration = Duration::from_secs(4);
const ACQUIRE_MS: u64 = 700;

fn assert_unavailable(a: &Answer, took: Duration) {
    a.refused(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE_CODE);
    assert_eq!(a.headers["retry-after"], "1", "{}", a.text);
    assert!(took < FAST, "took {took:?}");
}

async fn assert_not_ready_fast(app: &App) {
    let t = Instant::now();
    let ready = app.get(&anonymous(), "/ready").await;
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        ready.text
    );
    assert_eq!(ready.body["status"], "not_ready");
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
}

async fn metric_counted(app: &App) {
    let m = app.get(&anonymous(), "/metrics").await;
    assert!(
        m.text.lines().any(|l| l
            .starts_with("keyward_dependency_unavailable_total{dependency=\"database\"}")
            && !l.ends_with(" 0")),
        "{}",
        m.text
    );
}

/// SQLite: another process holding the write lock makes writers wait at most
/// `database.acquire_timeout_ms`, then 503.
#[tokio::test]
async fn a_locked_sqlite_database_is_a_fast_503_and_recovers() {
    if std::env::var_os(TEST_DATABASE_URL_ENV).is_some() {
        return; // PostgreSQL run: see the proxy test below.
    }
    let app = App::with_config(|c| c.database.acquire_timeout_ms = ACQUIRE_MS).await;
    let url = app.state.config.database.url.clone();
    let path = url.trim_start_matches("sqlite://").to_owned();
    let mut locker = sqlx::SqliteConnection::connect(&format!("sqlite://{path}"))
        .await
        .unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut locker)
        .await
        .unwrap();

    let t = Instant::now();
    let a = app
        .post(
            &app.root,
            "/admin/v1/issuers",
            serde_json::json!({"issuer_id": "bank-a", "family": "tdes"}),
        )
        .await;
    // The audit trail's `requested` record is the first write: it is what
    // waits for the lock, and nothing is created.
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.text);
    assert_eq!(
        a.headers.get("retry-after").map(|v| v.to_str().unwrap()),
        Some("1"),
        "{}",
        a.text
    );
    assert!(t.elapsed() < FAST, "took {:?}", t.elapsed());

    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    drop(locker);
    app.issuer("bank-a", "tdes").await;
}

/// A TCP proxy in front of PostgreSQL that the test can take away (refuse
/// and reset every connection) and bring back on the same port: the
/// database server going down and up, without touching the shared cluster
/// other tests use.
struct Proxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let p = Self {
            addr,
            upstream,
            tasks: Arc::default(),
        };
        p.serve(listener).await;
        p
    }

    async fn serve(&self, listener: TcpListener) {
        let (upstream, tasks) = (self.upstream, self.tasks.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let conn = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                tasks.lock().await.push(conn);
            }
        });
        self.tasks.lock().await.push(accept);
    }

    /// Every connection reset, new ones refused.
    async fn down(&self) {
        for t in self.tasks.lock().await.drain(..) {
            t.abort();
        }
    }

    async fn up(&self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener).await;
    }
}

#[tokio::test]
async fn postgresql_away_is_a_fast_503_and_recovers() {
    if std::env::var_os(TEST_DATABASE_URL_ENV).is_none() {
        return; // SQLite run: see the lock test above.
    }
    // postgres://user:pass@HOST:PORT/db?… (each test's database URL names
    // the same server, with its own schema).
    let url = std::env::var(TEST_DATABASE_URL_ENV).unwrap();
    let host_port = url
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_owned();
    let upstream: SocketAddr = tokio::net::lookup_host(&host_port)
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = Proxy::start(upstream).await;
    let via = proxy.addr.to_string();
    let app = App::with_config(|c| {
        c.database.url = c.database.url.replacen(&host_port, &via, 1);
        c.database.acquire_timeout_ms = ACQUIRE_MS;
    })
    .await;
    app.issuer("bank-a", "tdes").await;

    proxy.down().await;
    for path in [
        "/admin/v1/issuers",
        "/admin/v1/whoami",
        "/admin/v1/issuers/bank-a",
    ] {
        let t = Instant::now();
        let a = app.get(&app.root, path).await;
        assert_unavailable(&a, t.elapsed());
    }
    assert_not_ready_fast(&app).await;
    metric_counted(&app).await;

    proxy.up().await;
    // The pool reconnects by itself.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let a = app.get(&app.root, "/admin/v1/issuers/bank-a").await;
        if a.status == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "not recovered: {}", a.text);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ready = app.get(&anonymous(), "/ready").await;
    ready.expect(StatusCode::OK);
}

/// Every connection of the pool held elsewhere: each acquisition waits
/// `database.acquire_timeout_ms`, whichever backend — the database away as
/// a request sees it. A request that finds it away answers within one such
/// wait, not one per step it would have taken (the door's registry check,
/// the refusal's audit record, the idempotency key, the handler).
#[tokio::test]
async fn a_request_that_finds_the_database_away_answers_within_one_acquire_timeout() {
    const WAIT_MS: u64 = 1_000;
    let app = App::with_config(|c| c.database.acquire_timeout_ms = WAIT_MS).await;
    let d = keyward_tests::simulator::SimDevice::p256("0102030405060799".parse().unwrap()).unwrap();
    app.import("B-AWAY", &[&d])
        .await
        .expect(StatusCode::CREATED);
    let device = crate::access::device_identity(&app, &d).await;

    let pool = app.state.kms.db().pool().clone();
    let mut held = Vec::new();
    for _ in 0..app.state.config.database.max_connections {
        held.push(pool.acquire().await.unwrap());
    }
    // The bound kept: one wait, plus slack for a loaded machine; two waits
    // in a row cannot fit.
    let bound = Duration::from_millis(WAIT_MS * 2);
    let check = |a: &Answer, took: Duration, what: &str| {
        a.refused(StatusCode::SERVICE_UNAVAILABLE, UNAVAILABLE_CODE);
        assert_eq!(a.headers["retry-after"], "1", "{}", a.text);
        assert!(took < bound, "{what} took {took:?}");
    };
    let t = Instant::now();
    let a = app.get(&app.root, "/admin/v1/whoami").await;
    check(&a, t.elapsed(), "admin read");
    let t = Instant::now();
    let req = axum::http::Request::builder()
        .method(axum::http::Method::POST)
        .uri("/admin/v1/issuers")
        .header("content-type", "application/json")
        .header("idempotency-key", "k-away")
        .body(axum::body::Body::from(
            serde_json::json!({"issuer_id": "bank-a", "family": "tdes"}).to_string(),
        ))
        .unwrap();
    let a = crate::harness::send(&app.admin, &app.root, req).await;
    check(&a, t.elapsed(), "admin write with a key");
    let t = Instant::now();
    let a = crate::harness::call(
        &app.public,
        &device,
        axum::http::Method::GET,
        "/v1/ping",
        None,
    )
    .await;
    check(&a, t.elapsed(), "public request");
    drop(held);
    // Back: the same requests go through.
    app.get(&app.root, "/admin/v1/whoami")
        .await
        .expect(StatusCode::OK);
}
